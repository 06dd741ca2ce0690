"""``python -m pipelines.studies.two_sample_validation``: the study in ``study.py``."""

from pipelines.studies.two_sample_validation.study import main

main()
