"""``python -m pipelines.studies.input_probes``: the study in ``study.py``; ``README.md`` gives its command."""

from pipelines.studies.input_probes.study import main

main()
