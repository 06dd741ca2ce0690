"""``python -m pipelines.studies.lesion_insertion``: the study in ``study.py``; ``README.md`` gives its commands."""

from pipelines.studies.lesion_insertion.study import main

main()
