"""Diffusion against StyleGAN2 at equal CPU budget (issue 19): fidelity, memorisation, attacks, speed."""
