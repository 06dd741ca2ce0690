"""Input probes (issue 17): every probe class of the issue through the real command line; ``study.py``."""
