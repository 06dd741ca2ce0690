"""Seeded 3D thorax phantoms in Hounsfield units, with optional lung nodules.

Coordinates are patient coordinates in millimetres, DICOM LPS: ``x`` grows towards the
patient's left, ``y`` towards posterior, ``z`` towards superior. Volumes are indexed
``(z, y, x)``: slices run inferior -> superior, rows anterior -> posterior, columns patient
right -> left (the layout :mod:`medsynth.data.readers` returns).

The anatomy of a patient is drawn from its seed *independently of the voxel grid*: the same
seed rasterised on a 4 mm grid and on a 1 mm grid is the same patient (same body, lungs,
vessel tree, nodule). Only the fine lung texture is grid dependent (it comes from its own
seeded stream).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

log = logging.getLogger(__name__)

#: Nominal tissue values, HU.
HU = {
    "air": -1000.0,
    "lung": -850.0,
    "fat": -100.0,
    "soft": 40.0,
    "blood": 40.0,
    "liver": 60.0,
    "bone_cortical": 900.0,
    "bone_rib": 420.0,
    "bone_cancellous": 250.0,
}

#: scale of patient-to-patient anatomical variation: every drawn size/position parameter is
#: ``mid + ANATOMY_VARIATION * (U(lo, hi) - mid)`` (1 = the full physiological ranges);
#: calibrated with pipelines/studies/phantom_difficulty/
ANATOMY_VARIATION = 1.0
#: branches of the pulmonary vessel tree stop below this radius (mm)
VESSEL_MIN_RADIUS_MM = 1.0

DEFAULT_SHAPE = (96, 96, 96)
DEFAULT_SPACING = (4.0, 4.0, 4.0)


@dataclass
class Patient:
    """One phantom patient rasterised on a grid.

    Attributes:
        volume_hu: ``(Z, Y, X)`` float32, Hounsfield units (about -1000..1000), noise free.
        nodule_mask: ``(Z, Y, X)`` uint8 in {0, 1}; all zero without a nodule.
        spacing: ``(z, y, x)`` voxel size in mm.
        origin: ``(x, y, z)`` LPS position in mm of the centre of voxel ``[0, 0, 0]``.
        nodule: ``None`` or a dict: ``diameter_mm`` (nominal), ``equivalent_diameter_mm``
            (from the mask volume), ``volume_mm3``, ``centre_mm`` (x, y, z LPS),
            ``centre_voxel`` (z, y, x floats), ``texture`` (solid | part-solid |
            ground-glass), ``shape`` (smooth | lobulated | spiculated), ``hu``, ``side``.
        lung_mask: ``(Z, Y, X)`` uint8 lungs (nodule excluded from nothing).
        params: the drawn anatomical parameters (mm), for provenance.
    """

    volume_hu: np.ndarray
    nodule_mask: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    nodule: dict | None
    lung_mask: np.ndarray
    params: dict = field(default_factory=dict)

    @property
    def label(self) -> int:
        """1 when a nodule is present, else 0."""
        return int(self.nodule is not None)

    def affine_lps(self) -> np.ndarray:
        """4x4 matrix mapping voxel ``(x, y, z)`` indices (note: reversed) to LPS mm."""
        sz, sy, sx = self.spacing
        a = np.diag([sx, sy, sz, 1.0])
        a[:3, 3] = self.origin
        return a


# ----------------------------------------------------------------------------- parameters
def _draw_params(rng: np.random.Generator) -> dict:
    """Draw the grid-independent anatomical parameters of one patient (mm, degrees)."""
    s = ANATOMY_VARIATION

    def u(a, b, size=None):
        m = 0.5 * (a + b)
        return m + s * (rng.uniform(a, b, size) - m)

    ax = u(140.0, 185.0)
    ay = ax * u(0.60, 0.74)
    fat = u(5.0, 32.0)
    H = u(215.0, 290.0)  # lung height, apex to dome base
    p = {
        "ax": ax,
        "ay": ay,
        "fat": fat,
        "H": H,
        "x_shift": u(-10.0, 10.0),
        "z_base": -0.46 * H + u(-15.0, 15.0),
        "dome_r": u(18.0, 40.0) + u(5.0, 18.0),
        "dome_l": u(18.0, 40.0),
        "lung_hu": u(-880.0, -810.0),
        "lung_ap_gradient": u(20.0, 60.0),
        "heart_x": u(12.0, 35.0),
        "heart_z": u(35.0, 70.0),
        "heart_axes": (u(48.0, 68.0), u(38.0, 52.0), u(48.0, 64.0)),
        "heart_angle": np.deg2rad(u(20.0, 45.0)),
        "spine_r": u(15.0, 20.0),
        "rib_r": u(3.5, 5.0),
        "rib_drop": u(55.0, 95.0),
        "rib_gap": u(0.085, 0.10),  # rib spacing as a fraction of H (x ~ 24 mm)
        "aorta_r": u(11.0, 15.0),
        "trachea_r": u(7.5, 10.0),
        "carina_depth": u(55.0, 85.0),
        "breast": bool(rng.random() < 0.45 * s),
        "breast_r": u(45.0, 75.0),
        "breast_h": u(25.0, 70.0),
        "stomach_gas": bool(rng.random() < 0.6 * s),
        "scapula": u(0.0, 1.0),
        "vessel_root_r": u(5.0, 7.0),
        "vessel_seed": int(rng.integers(2**31)),
    }
    p["thorax_x"] = max(ax - fat - 16.0, 60.0)
    p["thorax_y"] = max(ay - fat - 12.0, 45.0)
    p["z_apex"] = p["z_base"] + H
    p["spine_y"] = p["thorax_y"] - p["spine_r"] - 2.0
    p["carina_z"] = p["z_apex"] - p["carina_depth"]
    return p


def _profile(z, p):
    """Thorax cross-section scale in [0, 1] at height ``z`` (apex taper)."""
    t = np.clip((z - p["z_base"]) / p["H"], 0.0, None)
    return np.sqrt(np.clip(1.0 - t**2.6, 0.0, 1.0))


def _lung_fn(x, y, z, p):
    """Analytic lung membership (broadcasting arrays of mm). Returns a bool array."""
    x = x - p["x_shift"]
    c = _profile(z, p)
    tx, ty = p["thorax_x"], p["thorax_y"]
    cs = np.maximum(c, 1e-3)
    inside = ((x / (tx * cs)) ** 2 + (y / (ty * cs)) ** 2 <= 1.0) & (z <= p["z_apex"])
    # diaphragm domes
    left = x > 0
    xc = np.where(left, 0.5 * tx, -0.5 * tx)
    q = ((x - xc) / (0.55 * tx)) ** 2 + (y / (0.95 * ty)) ** 2
    dome = np.where(left, p["dome_l"], p["dome_r"])
    floor = p["z_base"] + np.maximum(dome * (1.0 - q), -45.0)
    inside &= z >= floor
    # mediastinum: wider anteriorly and lower down, spine posteriorly
    yn = y / ty
    w_med = 18.0 + 22.0 * np.clip(-yn, 0.0, 1.0) + 10.0 * (z < p["carina_z"])
    inside &= np.abs(x) >= w_med
    inside &= (x**2 + (y - p["spine_y"]) ** 2) >= (p["spine_r"] + 14.0) ** 2
    # heart
    inside &= _heart_q(x + p["x_shift"], y, z, p) > 1.12
    # descending aorta beside the spine
    ay_c = p["spine_y"] - p["spine_r"] - 2.0
    inside &= ((x - 24.0) ** 2 + (y - ay_c) ** 2) >= (p["aorta_r"] + 3.0) ** 2
    return inside


def _heart_q(x, y, z, p):
    """Quadratic form of the heart ellipsoid (<= 1 inside)."""
    x = x - p["x_shift"] - p["heart_x"]
    y = y + 0.32 * p["thorax_y"]
    z = z - (p["z_base"] + p["heart_z"])
    ca, sa = np.cos(p["heart_angle"]), np.sin(p["heart_angle"])
    xr = ca * x + sa * y
    yr = -sa * x + ca * y
    a, b, c = p["heart_axes"]
    return (xr / a) ** 2 + (yr / b) ** 2 + (z / c) ** 2


# ----------------------------------------------------------------------------- tubes
def _segment_points(a, b, ra, rb, step):
    n = max(int(np.ceil(np.linalg.norm(b - a) / step)), 1) + 1
    t = np.linspace(0.0, 1.0, n)[:, None]
    return a + t * (b - a), (ra + t[:, 0] * (rb - ra))


def _random_turn(rng, d, angle):
    """Rotate unit vector ``d`` by ``angle`` radians about a random perpendicular axis."""
    v = rng.normal(size=3)
    v -= v.dot(d) * d
    v /= np.linalg.norm(v) + 1e-12
    return np.cos(angle) * d + np.sin(angle) * v


def _vessel_tree(p, rng, step=1.5):
    """Branching pulmonary vessel/airway centrelines grown inside the lungs.

    Returns lists of point arrays (P, 3) in mm (x, y, z) and radii (P,) for vessels and for
    airways (lumen radius).
    """
    vpts, vrad, apts, arad = [], [], [], []

    def inside(pt):
        return bool(_lung_fn(pt[0], pt[1], pt[2], p))

    for side in (-1.0, 1.0):
        hilum = np.array([side * 42.0 + p["x_shift"], -0.05 * p["thorax_y"], p["carina_z"] - 25.0])
        primaries = [
            np.array([side * 0.5, 0.15, 0.85]),
            np.array([side * 0.95, -0.25, 0.05]),
            np.array([side * 0.55, 0.35, -0.75]),
            np.array([side * 0.45, -0.6, -0.55]),
        ]
        stack = []
        for d in primaries:
            d = d / np.linalg.norm(d)
            stack.append((hilum, d, p["vessel_root_r"] * rng.uniform(0.8, 1.1), 40.0, 0))
        while stack:
            start, d, r, length, gen = stack.pop()
            end = None
            for attempt in range(8):
                dd = d if gen == 0 else _random_turn(rng, d, rng.uniform(0.0, 0.3 + 0.25 * attempt))
                cand = start + dd * length * rng.uniform(0.8, 1.2) * (1.0 - 0.08 * attempt)
                if gen == 0 or inside(cand):
                    end, d = cand, dd
                    break
                end = None
            if end is None:
                continue
            r_end = r * 0.78
            pts, rad = _segment_points(start, end, r, r_end, step)
            vpts.append(pts)
            vrad.append(rad)
            if gen <= 1:  # bronchi run beside the larger arteries
                off = _random_turn(rng, d, np.pi / 2) * (r + 2.5)
                apts.append(pts + off)
                arad.append(rad * 0.6)
            if r_end > VESSEL_MIN_RADIUS_MM and gen < 9:
                for sgn in (-1.0, 1.0):
                    ang = rng.uniform(0.35, 0.7)
                    nd = _random_turn(rng, d, ang)
                    stack.append((end, nd, r_end * rng.uniform(0.85, 1.0), length * 0.8, gen + 1))
    return vpts, vrad, apts, arad


def _rib_curves(p, step=1.5):
    """Centrelines of ribs, clavicles (mm) with radii."""
    pts, rad = [], []
    gap = p["rib_gap"] * p["H"]
    z0 = p["z_apex"] + 8.0
    for k in range(12):
        zk = z0 - k * gap
        c = float(np.clip(_profile(np.array(zk), p), 0.45, 1.0))
        rx = (p["thorax_x"] + 9.0) * c
        ry = (p["thorax_y"] + 7.0) * c
        theta_end = np.pi * (0.85 if k < 9 else (0.55 if k == 9 else 0.4))
        th = np.linspace(0.12 * np.pi, theta_end, 60)
        for side in (-1.0, 1.0):
            x = side * rx * np.sin(th) + p["x_shift"]
            y = ry * np.cos(th)
            z = zk - p["rib_drop"] * (th / np.pi) ** 1.3 * (0.7 + 0.03 * k)
            rr = np.full_like(th, p["rib_r"])
            pts.append(np.stack([x, y, z], axis=1))
            rad.append(rr)
    # clavicles: from the sternal notch laterally, rising
    for side in (-1.0, 1.0):
        a = np.array([side * 22.0 + p["x_shift"], -p["thorax_y"] - 5.0, p["z_apex"] + 5.0])
        b = np.array([side * p["ax"] * 0.95 + p["x_shift"], -0.2 * p["thorax_y"], p["z_apex"] + 30.0])
        q, r = _segment_points(a, b, 7.0, 6.0, step)
        pts.append(q)
        rad.append(r)
    return pts, rad


def _great_vessels(p, step=1.5):
    """Aorta (soft tissue) and trachea/main bronchi (air) centrelines."""
    xs = p["x_shift"]
    ay_c = p["spine_y"] - p["spine_r"] - 2.0
    arch_z = p["carina_z"] + 25.0
    # aorta: ascending -> arch -> descending
    t = np.linspace(0.0, np.pi, 40)
    arch = np.stack(
        [xs + 8.0 + 16.0 * (1 - np.cos(t)) / 2, -0.3 * p["thorax_y"] + (ay_c + 0.3 * p["thorax_y"]) * (1 - np.cos(t)) / 2,
         arch_z + 22.0 * np.sin(t)], axis=1)
    asc, _ = _segment_points(np.array([xs + 8.0, -0.3 * p["thorax_y"], p["z_base"] + p["heart_z"]]), arch[0], 0, 0, step)
    desc, _ = _segment_points(arch[-1], np.array([xs + 24.0, ay_c, p["z_base"] - 60.0]), 0, 0, step)
    aorta = np.concatenate([asc, arch, desc])
    # trachea and main bronchi
    tz_top = p["z_apex"] + 200.0
    ty_c = p["spine_y"] - p["spine_r"] - 22.0
    trachea, _ = _segment_points(np.array([xs, ty_c, tz_top]), np.array([xs, ty_c, p["carina_z"]]), 0, 0, step)
    bron = []
    for side in (-1.0, 1.0):
        q, _ = _segment_points(np.array([xs, ty_c, p["carina_z"]]),
                               np.array([xs + side * 40.0, -0.05 * p["thorax_y"], p["carina_z"] - 25.0]), 0, 0, step)
        bron.append(q)
    air = np.concatenate([trachea] + bron)
    air_r = np.concatenate([np.full(len(trachea), p["trachea_r"])] + [np.full(len(b), 0.65 * p["trachea_r"]) for b in bron])
    return aorta, np.full(len(aorta), p["aorta_r"]), air, air_r


def _rasterise_tubes(shape, spacing, origin, pts, rad):
    """Distance to the surface of a set of variable-radius tubes.

    Returns ``(signed, radius)``: ``signed`` = distance to the nearest centreline minus that
    centreline's radius (mm; negative inside), ``radius`` the nearest centreline's radius.
    """
    sz, sy, sx = spacing
    ox, oy, oz = origin
    if not pts:
        return np.full(shape, np.inf, np.float32), np.zeros(shape, np.float32)
    P = np.concatenate(pts)
    R = np.concatenate(rad)
    idx = np.rint(np.stack([(P[:, 2] - oz) / sz, (P[:, 1] - oy) / sy, (P[:, 0] - ox) / sx], axis=1)).astype(np.int64)
    ok = np.all((idx >= 0) & (idx < np.array(shape)), axis=1)
    idx, R = idx[ok], R[ok]
    signed = np.full(shape, np.inf, np.float32)
    near_r = np.zeros(shape, np.float32)
    if len(idx) == 0:
        return signed, near_r
    # work in the bounding box of the centrelines plus the largest radius
    pad = np.ceil((R.max() + 2.0 * max(spacing)) / np.array(spacing)).astype(np.int64) + 1
    lo = np.maximum(idx.min(0) - pad, 0)
    hi = np.minimum(idx.max(0) + pad + 1, np.array(shape))
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    rmap = np.zeros(tuple(hi - lo), np.float32)
    j = idx - lo
    np.maximum.at(rmap, (j[:, 0], j[:, 1], j[:, 2]), R.astype(np.float32))
    dist, inds = ndimage.distance_transform_edt(rmap <= 0, sampling=spacing, return_indices=True)
    nr = rmap[inds[0], inds[1], inds[2]]
    signed[box] = dist - nr
    near_r[box] = nr
    return signed, near_r


def _soft(signed, h):
    """Partial-volume fraction in [0, 1] from a signed distance (mm) and voxel size ``h``."""
    return np.clip(0.5 - signed / h, 0.0, 1.0).astype(np.float32)


# ----------------------------------------------------------------------------- nodules
#: nominal nodule diameters, mm. 10..30 mm (was 4..30): at 6 mm radiograph pixels nodules
#: under ~10 mm are invisible and only acted as label noise for the X-ray task
NODULE_DIAMETER_RANGE = (10.0, 30.0)
#: exponent k of the diameter distribution ``lo + (hi - lo) * U**k`` (1 = uniform; k < 1
#: favours larger nodules; was 0.7)
NODULE_SIZE_SKEW = 0.5
#: probabilities of the nodule textures (solid, part-solid, ground-glass); ground-glass and
#: part-solid nodules (-650..-400 HU) are kept as the rare hard cases (was 0.8, 0.12, 0.08)
NODULE_TEXTURE_P = (0.92, 0.05, 0.03)
#: HU range of solid nodules (soft tissue)
NODULE_SOLID_HU = (-10.0, 60.0)


def _draw_nodule(p, rng, diameter_mm=None):
    """Draw a nodule: centre inside a lung, diameter, texture and shape parameters."""
    lo, hi = NODULE_DIAMETER_RANGE
    if diameter_mm is None:
        # lo + (hi - lo) * U^k: k > 1 skews towards small nodules (calibrated, see
        # pipelines/studies/phantom_difficulty/)
        diameter_mm = float(lo + (hi - lo) * rng.uniform() ** NODULE_SIZE_SKEW)
    R = diameter_mm / 2.0
    kind = rng.choice(["solid", "part-solid", "ground-glass"], p=list(NODULE_TEXTURE_P))
    shape = rng.choice(["smooth", "lobulated", "spiculated"], p=[0.45, 0.35, 0.2])
    if kind == "solid":
        hu = rng.uniform(*NODULE_SOLID_HU)
    else:
        hu = rng.uniform(-650.0, -400.0)
    core = rng.uniform(0.35, 0.65) if kind == "part-solid" else 0.0
    # centre: rejection sampling inside the lung bounding box, away from the pleura
    tx, ty = p["thorax_x"], p["thorax_y"]
    dirs = rng.normal(size=(14, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    centre = None
    for _ in range(400):
        c = np.array([rng.uniform(-tx, tx) + p["x_shift"], rng.uniform(-ty, ty),
                      rng.uniform(p["z_base"] - 30.0, p["z_apex"])])
        probe = c + dirs * max(0.6 * R, 3.0)
        if _lung_fn(c[0], c[1], c[2], p) and _lung_fn(probe[:, 0], probe[:, 1], probe[:, 2], p).all():
            centre = c
            break
    if centre is None:  # pragma: no cover - practically unreachable
        centre = np.array([0.6 * tx + p["x_shift"], 0.0, p["z_base"] + 0.5 * p["H"]])
    n_lob = {"smooth": 3, "lobulated": int(rng.integers(4, 8)), "spiculated": int(rng.integers(4, 7))}[shape]
    amp = {"smooth": (0.0, 0.06), "lobulated": (0.12, 0.28), "spiculated": (0.08, 0.2)}[shape]
    bumps_u = rng.normal(size=(n_lob, 3))
    bumps_a = rng.uniform(*amp, size=n_lob)
    bumps_k = rng.uniform(3.0, 8.0, size=n_lob)
    if shape == "spiculated":
        n_sp = int(rng.integers(6, 16))
        bumps_u = np.concatenate([bumps_u, rng.normal(size=(n_sp, 3))])
        bumps_a = np.concatenate([bumps_a, rng.uniform(0.5, 1.3, size=n_sp)])
        bumps_k = np.concatenate([bumps_k, rng.uniform(60.0, 160.0, size=n_sp)])
    bumps_u /= np.linalg.norm(bumps_u, axis=1, keepdims=True)
    return {
        "diameter_mm": float(diameter_mm),
        "radius_mm": R,
        "texture": str(kind),
        "shape": str(shape),
        "hu": float(hu),
        "core_fraction": float(core),
        "centre_mm": tuple(float(v) for v in centre),
        "side": "left" if centre[0] - p["x_shift"] > 0 else "right",
        "_u": bumps_u,
        "_a": bumps_a,
        "_k": bumps_k,
    }


def _nodule_fields(nod, shape, spacing, origin):
    """Rasterise a nodule: returns (slices, fraction, core_fraction) on a local box."""
    sz, sy, sx = spacing
    ox, oy, oz = origin
    cx, cy, cz = nod["centre_mm"]
    R = nod["radius_mm"]
    reach = R * (1.0 + nod["_a"].max() if len(nod["_a"]) else 1.0) + 2.0 * max(spacing)
    lo = [int(np.floor((c - reach - o) / s)) for c, o, s in ((cz, oz, sz), (cy, oy, sy), (cx, ox, sx))]
    hi = [int(np.ceil((c + reach - o) / s)) + 1 for c, o, s in ((cz, oz, sz), (cy, oy, sy), (cx, ox, sx))]
    lo = [max(v, 0) for v in lo]
    hi = [min(v, n) for v, n in zip(hi, shape)]
    if any(h <= l for l, h in zip(lo, hi)):
        return None
    zz = oz + np.arange(lo[0], hi[0]) * sz - cz
    yy = oy + np.arange(lo[1], hi[1]) * sy - cy
    xx = ox + np.arange(lo[2], hi[2]) * sx - cx
    Z, Y, X = np.meshgrid(zz, yy, xx, indexing="ij")
    r = np.sqrt(X**2 + Y**2 + Z**2)
    d = np.stack([X, Y, Z], axis=-1) / np.maximum(r, 1e-6)[..., None]
    cos = d @ nod["_u"].T  # (..., n_bumps)
    bump = (nod["_a"] * np.exp(nod["_k"] * (cos - 1.0))).sum(-1)
    Rd = R * (1.0 + bump) / (1.0 + nod["_a"][: 3].mean() * 0.3)
    h = float(np.mean(spacing))
    frac = np.clip(0.5 + (Rd - r) / h, 0.0, 1.0).astype(np.float32)
    core = np.zeros_like(frac)
    if nod["core_fraction"] > 0:
        core = np.clip(0.5 + (nod["core_fraction"] * Rd - r) / h, 0.0, 1.0).astype(np.float32)
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    return sl, frac, core, r <= Rd


# ----------------------------------------------------------------------------- patient
def _rng_streams(seed_or_rng):
    if isinstance(seed_or_rng, np.random.Generator):
        ss = np.random.SeedSequence(int(seed_or_rng.integers(2**63)))
    elif isinstance(seed_or_rng, np.random.SeedSequence):
        # children derived without calling spawn() (which would mutate the caller's sequence
        # and make a second call with the same object give another patient)
        ss = seed_or_rng
        return [np.random.default_rng(np.random.SeedSequence(ss.entropy, spawn_key=(*ss.spawn_key, k)))
                for k in range(4)]
    else:
        ss = np.random.SeedSequence(int(seed_or_rng))
    return [np.random.default_rng(s) for s in ss.spawn(4)]


def make_patient(
    seed_or_rng,
    *,
    shape: tuple[int, int, int] = DEFAULT_SHAPE,
    spacing_mm: tuple[float, float, float] | float = DEFAULT_SPACING,
    nodule: bool | None = None,
    nodule_diameter_mm: float | None = None,
    origin: tuple[float, float, float] | None = None,
) -> Patient:
    """Simulate one chest phantom on a voxel grid.

    Args:
        seed_or_rng: an int seed, a ``numpy.random.SeedSequence`` or a ``Generator`` (from which
            one integer is drawn). The same int always gives the same patient.
        shape: grid ``(Z, Y, X)``.
        spacing_mm: voxel size ``(z, y, x)`` mm (or one number for isotropic voxels).
        nodule: ``True``/``False`` forces a nodule in or out; ``None`` draws it with p = 0.5.
        nodule_diameter_mm: force the nominal nodule diameter (else drawn in
            ``NODULE_DIAMETER_RANGE`` (10..30 mm), see ``NODULE_SIZE_SKEW``).
        origin: LPS ``(x, y, z)`` of voxel ``[0, 0, 0]``; default centres the grid on the
            thorax (x = 0, y = 0, z = 0 near the middle of the lungs).

    Returns:
        A :class:`Patient`; ``volume_hu`` ``(Z, Y, X)`` float32 HU, noise free.
    """
    if np.isscalar(spacing_mm):
        spacing_mm = (float(spacing_mm),) * 3
    spacing = tuple(float(s) for s in spacing_mm)
    shape = tuple(int(s) for s in shape)
    r_anat, r_tex, r_nod, r_tree = _rng_streams(seed_or_rng)
    p = _draw_params(r_anat)
    has_nodule = bool(r_nod.random() < 0.5) if nodule is None else bool(nodule)
    nod = _draw_nodule(p, r_nod, nodule_diameter_mm) if has_nodule else None

    sz, sy, sx = spacing
    Z, Y, X = shape
    if origin is None:
        origin = (-(X - 1) / 2 * sx, -(Y - 1) / 2 * sy, -(Z - 1) / 2 * sz)
    ox, oy, oz = (float(v) for v in origin)
    x = (ox + np.arange(X) * sx)[None, None, :]
    y = (oy + np.arange(Y) * sy)[None, :, None]
    z = (oz + np.arange(Z) * sz)[:, None, None]
    h = float(np.mean(spacing))
    xr = x - p["x_shift"]

    # body outline: skin/fat ellipse, muscle ellipse, narrowing to a neck above the apex
    neck = np.clip((z - p["z_apex"] - 10.0) / 40.0, 0.0, 1.0)
    scale_x = 1.0 - 0.58 * neck
    scale_y = 1.0 - 0.35 * neck
    q_body = (xr / (p["ax"] * scale_x)) ** 2 + (y / (p["ay"] * scale_y)) ** 2
    body_r = np.sqrt(q_body)
    q_mus = (xr / ((p["ax"] - p["fat"]) * scale_x)) ** 2 + (y / ((p["ay"] - p["fat"]) * scale_y)) ** 2
    vol = np.full(shape, HU["air"], np.float32)
    body_edge = p["ax"] * (1 - body_r)  # approximate mm inside the skin
    vol = np.where(body_edge > -h, HU["air"] + (HU["fat"] - HU["air"]) * np.clip(0.5 + body_edge / h, 0, 1), vol)
    vol = np.where(q_mus <= 1.0, HU["soft"] + 10.0, vol).astype(np.float32)
    if p["breast"]:
        for side in (-1.0, 1.0):
            bq = (((xr - side * 0.45 * p["ax"]) / p["breast_r"]) ** 2
                  + ((z - (p["z_base"] + 40.0)) / (p["breast_r"] * 0.9)) ** 2
                  + ((y + p["ay"] * 0.75) / (p["breast_h"] + 0.25 * p["ay"])) ** 2)
            vol = np.where((bq <= 1.0) & (vol < -200), -60.0, vol)
            vol = np.where((bq <= 0.45) & (vol < 0), 10.0, vol).astype(np.float32)

    # abdomen under the diaphragm: liver right, stomach (maybe with gas) left
    thorax_q = (xr / p["thorax_x"]) ** 2 + (y / p["thorax_y"]) ** 2
    lung = _lung_fn(x, y, z, p)
    below = (z < p["z_base"] + 0.5 * p["dome_r"]) & (thorax_q <= 1.0) & ~lung
    vol = np.where(below & (xr < 20.0), HU["liver"], vol)
    if p["stomach_gas"]:
        gq = ((xr - 0.45 * p["thorax_x"]) / 35.0) ** 2 + ((y + 0.2 * p["thorax_y"]) / 30.0) ** 2 + (
            (z - (p["z_base"] + p["dome_l"] - 35.0)) / 18.0) ** 2
        vol = np.where((gq <= 1.0) & ~lung, HU["air"] + 50.0, vol)

    # lungs with a gravity gradient and fine texture
    lung_hu = p["lung_hu"] + p["lung_ap_gradient"] * (y / p["thorax_y"])
    tex = ndimage.gaussian_filter(r_tex.standard_normal(shape).astype(np.float32), 1.0 * 4.0 / h)
    tex *= 25.0 / (tex.std() + 1e-6)
    lung_vals = (lung_hu + tex).astype(np.float32)
    lung_soft = ndimage.gaussian_filter(lung.astype(np.float32), 0.5)
    vol = vol + lung_soft * (lung_vals - vol) * (thorax_q <= 1.2)

    # heart and mediastinal fat
    hq = _heart_q(x, y, z, p)
    vol = np.where((hq <= 1.25) & ~lung, -80.0, vol)
    vol = np.where(hq <= 1.0, HU["blood"], vol).astype(np.float32)

    # great vessels and central airways
    aorta, aorta_r, air, air_r = _great_vessels(p)
    sd, _ = _rasterise_tubes(shape, spacing, (ox, oy, oz), [aorta], [aorta_r])
    vol = vol + _soft(sd, h) * (HU["blood"] - vol)
    sd, _ = _rasterise_tubes(shape, spacing, (ox, oy, oz), [air], [air_r])
    wall = _soft(sd - 2.0, h)
    vol = vol + wall * (HU["soft"] - vol)
    vol = vol + _soft(sd, h) * (HU["air"] - vol)

    # pulmonary vessels and airways inside the lungs
    vpts, vrad, apts, arad = _vessel_tree(p, r_tree)
    sd, _ = _rasterise_tubes(shape, spacing, (ox, oy, oz), vpts, vrad)
    vfrac = _soft(sd, h) * lung_soft
    vol = vol + vfrac * (HU["blood"] - vol)
    sd, _ = _rasterise_tubes(shape, spacing, (ox, oy, oz), apts, arad)
    lung_in = lung_soft > 0.5
    vol = np.where(lung_in, vol + _soft(sd - 1.2, h) * (HU["soft"] - vol), vol)
    vol = np.where(lung_in, vol + _soft(sd, h) * (HU["air"] - vol), vol).astype(np.float32)

    # nodule
    mask = np.zeros(shape, np.uint8)
    info = None
    if nod is not None:
        res = _nodule_fields(nod, shape, spacing, (ox, oy, oz))
        if res is not None:
            sl, frac, core, inside = res
            target = nod["hu"] + core * (r_nod.uniform(0.0, 50.0) - nod["hu"])
            local = vol[sl]
            vol[sl] = np.maximum(local, local + frac * (target - local))
            mask[sl] = inside.astype(np.uint8)
        cx, cy, cz = nod["centre_mm"]
        cv = ((cz - oz) / sz, (cy - oy) / sy, (cx - ox) / sx)
        ci = tuple(int(np.clip(round(c), 0, n - 1)) for c, n in zip(cv, shape))
        if res is not None and not mask.any():
            mask[ci] = 1  # sub-voxel nodule: keep a one-voxel ground truth
        vox = sz * sy * sx
        v = float(mask.sum()) * vox
        info = {k: v_ for k, v_ in nod.items() if not k.startswith("_")}
        info.update({
            "volume_mm3": v,
            "equivalent_diameter_mm": float((6.0 * v / np.pi) ** (1 / 3)),
            "centre_voxel": tuple(float(c) for c in cv),
            "in_grid": res is not None,
        })

    # bones: spine (bodies, discs, posterior elements), ribs, clavicles, sternum, scapulae
    spy = p["spine_y"]
    rs = np.sqrt(xr**2 + (y - spy) ** 2)
    period = 0.095 * p["H"] + 3.0
    disc = np.abs(((z - p["z_base"]) % period) - period / 2) > period / 2 - 4.0
    body_v = rs <= p["spine_r"]
    vol = np.where(body_v, np.where(rs > p["spine_r"] - 3.0, HU["bone_cortical"], HU["bone_cancellous"]), vol)
    vol = np.where(body_v & disc, 80.0, vol)
    canal_y = spy + p["spine_r"] + 9.0
    rc = np.sqrt(xr**2 + (y - canal_y) ** 2)
    vol = np.where((rc > 7.0) & (rc <= 12.0), HU["bone_cortical"] * 0.7, vol)
    vol = np.where(rc <= 7.0, 15.0, vol)
    spinous = (np.abs(xr) <= 4.0) & (y > canal_y + 10.0) & (y < canal_y + 38.0) & ~disc
    vol = np.where(spinous, 600.0, vol).astype(np.float32)
    ribs, rib_r = _rib_curves(p)
    sd, _ = _rasterise_tubes(shape, spacing, (ox, oy, oz), ribs, rib_r)
    shell = _soft(sd, h)
    vol = vol + shell * (HU["bone_rib"] - vol)
    sternum = (np.abs(xr) <= 14.0) & (np.abs(y + p["thorax_y"] + 6.0) <= 5.0) & (z > p["z_base"] + 20.0) & (
        z < p["z_apex"] - 10.0)
    vol = np.where(sternum, 450.0, vol)
    if p["scapula"] > 0.25:
        scap = ((np.abs(xr) > 0.35 * p["ax"]) & (np.abs(xr) < 0.85 * p["ax"])
                & (np.abs(np.sqrt((xr / (p["thorax_x"] + 22.0)) ** 2 + (y / (p["thorax_y"] + 20.0)) ** 2) - 1.0) < 0.04)
                & (y > 0.3 * p["ay"]) & (z > p["z_apex"] - 150.0 * p["scapula"]) & (z < p["z_apex"] + 15.0))
        vol = np.where(scap, 500.0, vol)
    vol = np.clip(vol, -1024.0, 3000.0).astype(np.float32)
    params = {k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in p.items()}
    return Patient(vol, mask, spacing, (ox, oy, oz), info, lung.astype(np.uint8), params)
