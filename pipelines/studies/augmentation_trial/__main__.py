"""``python -m pipelines.studies.augmentation_trial``: the study in ``study.py``."""

from pipelines.studies.augmentation_trial.study import main

main()
