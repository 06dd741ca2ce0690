"""The downstream tumour-detection benchmark: does synthetic augmentation help a classifier?

:mod:`~medsynth.downstream.classifier` trains and scores the detection classifier;
:mod:`~medsynth.downstream.benchmark` runs the arms (real, classic augmentation, synthetic) over
real-data fractions with patient-level splits and writes ``results.{csv,json}`` and a plot.
"""
