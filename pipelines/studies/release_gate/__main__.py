"""``python -m pipelines.studies.release_gate``: the study in ``study.py``."""

from pipelines.studies.release_gate.study import main

main()
