"""``python -m pipelines.studies.reader_study_example``: the study in ``study.py``; ``README.md`` gives its commands."""

from pipelines.studies.reader_study_example.study import main

r = main()
print(r["study"]["interpretation"])
print("control:", r["control"]["interpretation"])
