"""``python -m pipelines.studies.equal_time``: the study in ``study.py``; ``README.md`` gives its commands."""

from pipelines.studies.equal_time.study import main

main()
