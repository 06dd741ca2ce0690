"""Chest phantom simulator behind ``sample_data/``: seeded 3D thorax phantoms in HU with lung
nodules, CT noise, digitally reconstructed radiographs, and the sample-data generator.

Quick use::

    from medsynth.phantom import make_patient, simulate_radiograph
    p = make_patient(7, nodule=True)                   # Patient: volume_hu (Z, Y, X) HU, ...
    r = simulate_radiograph(p, np.random.default_rng(7), size=64)   # r.pixels 12-bit
"""

from medsynth.phantom.anatomy import HU, NODULE_DIAMETER_RANGE, Patient, make_patient
from medsynth.phantom.imaging import (
    MU_WATER_PER_MM,
    Radiograph,
    add_ct_noise,
    hu_to_mu,
    simulate_radiograph,
)
from medsynth.phantom.sample import generate_sample_data, patient_id, simulate_xray_arrays

__all__ = [
    "HU",
    "NODULE_DIAMETER_RANGE",
    "MU_WATER_PER_MM",
    "Patient",
    "Radiograph",
    "add_ct_noise",
    "generate_sample_data",
    "hu_to_mu",
    "make_patient",
    "patient_id",
    "simulate_radiograph",
    "simulate_xray_arrays",
]
