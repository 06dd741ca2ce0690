"""``python -m pipelines.studies.baselines``: the study in ``study.py``; ``README.md`` gives its commands."""

from pipelines.studies.baselines.study import main

main()
