"""Imaging physics for phantoms: CT noise and digitally reconstructed radiographs (DRR).

X-ray model (parallel beam along the anterior-posterior axis):
HU -> linear attenuation ``mu = mu_water * (1 + HU / 1000)`` (mu_water ~ 0.02 /mm at an
effective ~60 keV), Beer-Lambert line integrals ``L = sum(mu * dy)``, expected photon counts
``N0 * exp(-L)`` plus a low-frequency scatter term, Poisson quantum noise, detector blur, log
transform and a 12-bit presentation curve (dense = bright, MONOCHROME2 sense).

Presentation ("for presentation" processing, :func:`present`): detail enhancement, then a
logistic characteristic curve centred on the lung fields (the :data:`LUNG_CENTRE_PERCENTILE`
percentile of the processed signal inside the projected lung mask) with latitude
:data:`LATITUDE`. Clinical DX processing optimises the grey scale for the lungs; an earlier
version centred the curve on the whole-image median (air, mediastinum and abdomen included)
with latitude 1.0. Mediastinum, abdomen and bone are now compressed towards white, as on a
clinical chest image. Note (pipelines/studies/phantom_difficulty/): nodule detection at 64 x 64
remains hard for a small CNN trained on 200 images; a 20 mm solid nodule changes the noise-free
line integral by only ~0.2-0.35 against rib/vessel/edge structure of similar amplitude.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

#: Linear attenuation of water at an effective ~60 keV, per mm.
MU_WATER_PER_MM = 0.0206
#: Line-integral value mapped to the top of the 12-bit range.
LOG_FULL_SCALE = 6.5
#: presentation processing: detail (unsharp-mask) gain and large-scale range compression
DETAIL_GAIN = 0.5
#: logistic latitude, log units (was 1.0 around the whole-image median; 0.5 around the lungs)
LATITUDE = 0.5
#: the characteristic curve is centred on this percentile of the processed log signal
#: inside the projected lung fields (clinical processing optimises the lungs)
LUNG_CENTRE_PERCENTILE = 50.0
#: detector point-spread Gaussian sigma, output pixels (the pixel aperture itself is already
#: modelled by the anti-aliased resampling of the projection)
DETECTOR_BLUR_PX = 0.7
#: weight kept of the large-scale (``sigma_mm``) component in presentation processing
#: (1 = none removed; clinical multi-scale processing compresses it so that the mediastinum
#: and the retro-cardiac / sub-diaphragmatic lung stay readable)
RANGE_KEEP = 1.0


def hu_to_mu(hu: np.ndarray, mu_water: float = MU_WATER_PER_MM) -> np.ndarray:
    """HU -> linear attenuation coefficient (1/mm), clipped at 0. Same shape, float32."""
    return np.clip(mu_water * (1.0 + np.asarray(hu, np.float32) / 1000.0), 0.0, None).astype(np.float32)


def add_ct_noise(
    image_hu: np.ndarray,
    rng: np.random.Generator,
    *,
    sigma_hu: float = 15.0,
    correlation_voxels: float = 0.8,
) -> np.ndarray:
    """Add spatially correlated Gaussian noise (like filtered back-projection noise).

    Args:
        image_hu: ``(Z, Y, X)`` or ``(H, W)`` HU.
        rng: numpy generator.
        sigma_hu: standard deviation of the added noise, HU.
        correlation_voxels: Gaussian correlation length of the noise, voxels (in-plane).

    Returns:
        float32 array, same shape, HU.
    """
    image_hu = np.asarray(image_hu, np.float32)
    white = rng.standard_normal(image_hu.shape).astype(np.float32)
    sig = [correlation_voxels] * image_hu.ndim
    if image_hu.ndim == 3:
        sig[0] = correlation_voxels * 0.5  # weaker correlation across slices
    noise = ndimage.gaussian_filter(white, sig)
    noise *= sigma_hu / (noise.std() + 1e-12)
    return image_hu + noise


@dataclass
class Radiograph:
    """A simulated frontal (AP) chest radiograph.

    Attributes:
        pixels: ``(H, W)`` uint16 in 0..4095, dense = bright (MONOCHROME2 sense); rows run
            superior -> inferior, columns patient right -> left (``PatientOrientation L\\F``).
        line_integral: ``(H, W)`` float32, noise-free ``sum(mu * dy)`` (dimensionless).
        nodule_mask: ``(H, W)`` uint8 projection of the nodule (all zero without one).
        pixel_spacing: ``(row, col)`` mm at the detector.
        nodule_rc: ``(row, col)`` pixel position of the nodule centre or ``None``.
        log_signal: ``(H, W)`` float32 noisy log detector signal before presentation
            processing (:func:`present`).
    """

    pixels: np.ndarray
    line_integral: np.ndarray
    nodule_mask: np.ndarray
    pixel_spacing: tuple[float, float]
    nodule_rc: tuple[float, float] | None
    log_signal: np.ndarray | None = None


def _resize2d(img: np.ndarray, size: tuple[int, int], order: int = 1) -> np.ndarray:
    f = (size[0] / img.shape[0], size[1] / img.shape[1])
    if min(f) < 1.0:  # anti-alias before decimating
        img = ndimage.gaussian_filter(img, [0.45 / min(fi, 1.0) if fi < 1 else 0 for fi in f])
    out = ndimage.zoom(img, f, order=order, grid_mode=True, mode="nearest")
    return out[: size[0], : size[1]]


def simulate_radiograph(
    patient,
    rng: np.random.Generator,
    *,
    size: int | tuple[int, int] = 64,
    photons: float = 2.0e4,
    scatter_fraction: float = 0.3,
    blur_px: float | None = None,
    gamma: float = 1.0,
    mu_water: float = MU_WATER_PER_MM,
    detail_gain: float | None = None,
    latitude: float | None = None,
) -> Radiograph:
    """Digitally reconstructed radiograph of a :class:`~medsynth.phantom.anatomy.Patient`.

    Args:
        patient: the phantom (its ``volume_hu`` (Z, Y, X) HU, ``spacing``, ``nodule_mask``).
        rng: numpy generator for the quantum noise.
        size: output ``H`` (= ``W``) or ``(H, W)`` pixels; the detector covers the grid's
            x-z field of view.
        photons: mean unattenuated photons per output pixel (sets the quantum noise).
        scatter_fraction: scatter added as this fraction of the blurred primary.
        blur_px: detector point-spread Gaussian sigma, output pixels (default
            :data:`DETECTOR_BLUR_PX`).
        gamma: presentation curve exponent on the log signal.
        mu_water: water attenuation, 1/mm.
        detail_gain, latitude: presentation processing (:func:`present`); module
            defaults :data:`DETAIL_GAIN`, :data:`LATITUDE` when ``None``.

    Returns:
        :class:`Radiograph` with 12-bit ``pixels``.
    """
    if isinstance(size, int):
        size = (size, size)
    detail_gain = DETAIL_GAIN if detail_gain is None else detail_gain
    latitude = LATITUDE if latitude is None else latitude
    blur_px = DETECTOR_BLUR_PX if blur_px is None else blur_px
    sz, sy, sx = patient.spacing
    mu = hu_to_mu(patient.volume_hu, mu_water)
    L = (mu.sum(axis=1) * sy)[::-1]  # (Z, X), superior row first
    L = np.clip(_resize2d(L, size), 0.0, None).astype(np.float32)
    Z, _, X = patient.volume_hu.shape
    spacing = (Z * sz / size[0], X * sx / size[1])
    primary = photons * np.exp(-L)
    scatter = scatter_fraction * ndimage.gaussian_filter(primary, 60.0 / spacing[0], mode="nearest")
    counts = rng.poisson(primary + scatter).astype(np.float32)
    counts = ndimage.gaussian_filter(counts, blur_px, mode="nearest")
    logsig = -np.log(np.maximum(counts, 0.5) / (photons * (1.0 + scatter_fraction))).astype(np.float32)
    lung_proj = patient.lung_mask.max(axis=1)[::-1].astype(np.float32)
    lung_field = _resize2d(lung_proj, size) >= 0.5
    pixels = present(logsig, spacing[0], detail_gain=detail_gain, latitude=latitude, gamma=gamma,
                     region=lung_field)

    proj = patient.nodule_mask.max(axis=1)[::-1].astype(np.float32)
    nm = (_resize2d(proj, size) >= 0.5).astype(np.uint8) if proj.any() else np.zeros(size, np.uint8)
    rc = None
    if patient.nodule is not None:
        cz, _, cx = patient.nodule["centre_voxel"]
        rc = ((Z - 1 - cz + 0.5) * size[0] / Z - 0.5, (cx + 0.5) * size[1] / X - 0.5)
        if proj.any() and not nm.any():
            r = int(np.clip(round(rc[0]), 0, size[0] - 1))
            c = int(np.clip(round(rc[1]), 0, size[1] - 1))
            nm[r, c] = 1
    return Radiograph(pixels, L, nm, spacing, rc, logsig)


def present(
    log_signal: np.ndarray,
    pixel_mm: float,
    *,
    detail_gain: float = DETAIL_GAIN,
    latitude: float = LATITUDE,
    gamma: float = 1.0,
    sigma_mm: float = 40.0,
    region: np.ndarray | None = None,
    centre_percentile: float | None = None,
) -> np.ndarray:
    """"For presentation" processing: detail enhancement + an S-shaped characteristic curve.

    Like the processing of clinical DX systems: the detail (signal minus its Gaussian
    large-scale component, ``sigma_mm``) is amplified by ``1 + detail_gain``, then a
    logistic (film-like H&D) curve centred on the lung fields with ``latitude`` (log units)
    maps it to 12 bits, compressing air and the dense mediastinum/abdomen/bone so that the
    lung fields use most of the grey range.

    Args:
        log_signal: ``(H, W)`` float32 log detector signal (about 0..7, dense = high).
        pixel_mm: detector pixel size, mm.
        detail_gain: unsharp-mask gain (``0`` = none).
        latitude: logistic scale, log units (smaller = steeper, more contrast).
        gamma: exponent applied after the curve (display gamma).
        sigma_mm: Gaussian sigma of the large-scale component, mm.
        region: optional ``(H, W)`` bool mask of the lung fields; the curve is centred on
            the ``centre_percentile`` percentile of the processed signal inside it (the
            whole-image median when ``None`` or fewer than 16 pixels).
        centre_percentile: default :data:`LUNG_CENTRE_PERCENTILE`.

    Returns:
        ``(H, W)`` uint16 in 0..4095, dense = bright.
    """
    low = ndimage.gaussian_filter(log_signal, sigma_mm / pixel_mm, mode="nearest")
    proc = RANGE_KEEP * low + (1.0 + detail_gain) * (log_signal - low)
    q = LUNG_CENTRE_PERCENTILE if centre_percentile is None else centre_percentile
    if region is not None and int(np.count_nonzero(region)) >= 16:
        centre = float(np.percentile(proc[np.asarray(region, bool)], q))
    else:
        centre = float(np.median(proc))
    v = 1.0 / (1.0 + np.exp(-(proc - centre) / latitude))
    v = np.clip(v, 0.0, 1.0) ** gamma
    return np.rint(v * 4095.0).astype(np.uint16)
