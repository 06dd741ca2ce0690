"""``python -m pipelines.studies.phantom_difficulty``: the study in ``study.py``; ``README.md`` gives its commands."""

from pipelines.studies.phantom_difficulty.study import main

main()
