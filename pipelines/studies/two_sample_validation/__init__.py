"""Validation of the classifier two-sample test (:mod:`medsynth.metrics.two_sample`) on known distortions.

``python -m pipelines.studies.two_sample_validation`` runs ``study.py`` and writes
``reports/two_sample_validation.json``.
"""
