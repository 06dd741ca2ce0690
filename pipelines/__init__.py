"""Runnable pipelines beside the product, run from a source checkout and not installed.

``studies/<study>/``: one folder per study (``study.py``, ``README.md`` with the command that
reproduces its ``reports/`` folder), run as ``python -m pipelines.studies.<study>``.
``benches/``: performance benches, run as ``python -m pipelines.benches.<bench>``.
The product is the ``medsynth`` package; nothing in it imports ``pipelines``.
"""
