"""``python -m pipelines.studies.first_minutes``: the study in ``study.py``."""

from pipelines.studies.first_minutes.study import main

main()
