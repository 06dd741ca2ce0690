"""``python -m pipelines.studies.fullres``: the study in ``study.py``."""

from pipelines.studies.fullres.study import main

main()
