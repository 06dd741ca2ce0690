"""``python -m pipelines.studies.cogan_pairs``: the study in ``study.py``; ``README.md`` gives its commands."""

import json

from pipelines.studies.cogan_pairs.study import main

r = main()
print(json.dumps({k: r[k] for k in ("contrast", "mask_area", "window_error", "marginal_fd") if k in r}, indent=1))
