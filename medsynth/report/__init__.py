"""Reports built from run directories (never imports ``medsynth.train``)."""

from medsynth.report.build import build_report

__all__ = ["build_report"]
