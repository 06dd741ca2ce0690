"""Data layer: readers (DICOM, NIfTI, PNG/JPEG, npz), manifests, MONAI pipelines, image sets.

Public names are imported lazily (PEP 562) so that ``import medsynth.data`` stays cheap (no
torch/MONAI until needed). ``writers`` and ``lidc`` are separate modules: import them directly.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "ImageSet": "imageset",
    "load_image_set": "dataset",
    "ImageRecord": "readers",
    "read_image": "readers",
    "read_dicom_series": "readers",
    "take_slices": "readers",
    "read_manifest": "manifest",
    "write_manifest": "manifest",
    "patient_split": "manifest",
    "check_patient_split": "manifest",
    "select_rows": "manifest",
    "describe": "info",
    "ct_pipeline": "transforms",
    "xray_pipeline": "transforms",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        module = importlib.import_module(f"{__name__}.{_EXPORTS[name]}")
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
