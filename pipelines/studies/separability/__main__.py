"""``python -m pipelines.studies.separability``: the study in ``study.py``."""

from pipelines.studies.separability.study import main

main()
