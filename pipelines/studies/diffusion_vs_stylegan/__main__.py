"""``python -m pipelines.studies.diffusion_vs_stylegan``: the study in ``study.py``."""

from pipelines.studies.diffusion_vs_stylegan.study import main

main()
