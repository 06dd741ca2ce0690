"""Every test file that ships inside the installed pydicom package goes through read_image.

Only files already on disk are used (the package's ``data/test_files`` folder); nothing is
downloaded. Each file must either decode to a finite float32 array or raise a one-line
MedsynthError naming the file: never another exception. Passes with and without the optional
``codecs`` extra (pylibjpeg, pylibjpeg-libjpeg, pylibjpeg-openjpeg, pyjpegls).
"""

from __future__ import annotations

import importlib.util

import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import pydicom
from medsynth.data.readers import _codecs_installed, read_dicom_series, read_image
from medsynth.errors import MedsynthError

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
FILES = sorted(p for p in TEST_FILES.rglob("*") if p.is_file()) if TEST_FILES.is_dir() else []
CODECS = _codecs_installed()

pytestmark = pytest.mark.skipif(not FILES, reason=f"pydicom ships no test files at {TEST_FILES}")


def _outcome(path: Path):
    """('ok', record) or ('error', MedsynthError); any other exception propagates."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the deliberately broken files
        try:
            return "ok", read_image(path)
        except MedsynthError as exc:
            return "error", exc


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(TEST_FILES)) for p in FILES])
def test_decodes_or_raises_one_line_medsynth_error(path):
    kind, result = _outcome(path)
    if kind == "ok":
        arr = result.array
        assert arr.dtype == np.float32 and arr.ndim in (2, 3) and arr.size > 0
        assert np.isfinite(arr).all()
        assert len(result.spacing) == arr.ndim
    else:
        msg = str(result)
        assert "\n" not in msg and str(path) in msg and result.problem


def test_summary_and_known_files():
    outcomes = {p.relative_to(TEST_FILES).as_posix(): _outcome(p) for p in FILES}
    decoded = [k for k, (kind, _) in outcomes.items() if kind == "ok"]
    reasons = Counter(r.problem.split(" (")[0].split(":")[0] for kind, r in outcomes.values() if kind == "error")
    # pydicom 3.0 ships ~176 files: ~81 decode without the codecs extra, ~89 with it
    assert len(decoded) >= (85 if CODECS else 75), (len(decoded), reasons)
    # uncompressed, RLE and big-endian variants of the same MR image decode identically
    mr = outcomes["MR_small.dcm"][1].array
    for name in ("MR_small_RLE.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm", "MR_small_expb.dcm"):
        np.testing.assert_array_equal(outcomes[name][1].array, mr)
    ct = outcomes["CT_small.dcm"][1]
    assert ct.modality == "ct" and ct.array.min() < -500  # HU after rescale
    # non-image DICOM objects are reported as such
    assert "no pixel data" in outcomes["rtplan.dcm"][1].problem
    # JPEG-LS lossless needs a JPEG-LS decoder (pyjpegls: the codecs extra, also installed with highdicom):
    # decoded with it, a clear hint without it
    kind, res = outcomes["MR_small_jpeg_ls_lossless.dcm"]
    if importlib.util.find_spec("jpeg_ls") is not None:
        assert kind == "ok"
        np.testing.assert_array_equal(res.array, mr)
    else:
        assert kind == "error" and "medsynth-gan[codecs]" in res.problem and "JPEG-LS" in res.problem


def test_dicomdir_tree_series():
    folder = TEST_FILES / "dicomdirtests" / "77654033" / "CT2"
    if not folder.is_dir():
        pytest.skip(f"{folder} not shipped")
    # CT2 holds instances 18 and 180-182 of one series: a 202.5 mm gap in a 1.25 mm series.
    # It used to be read as a 4-slice volume with 1.25 mm spacing; now it is refused, naming the gap.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(MedsynthError) as ei:
            read_dicom_series(folder)
    msg = str(ei.value)
    assert "\n" not in msg and "uneven slice spacing" in msg and "202.5 mm gap" in msg and "1.25 mm" in msg
    assert "1.3.6.1.4.1.5962.1.1.0.0.0.1196530851.28319.0.2" in msg  # the series, by UID
    # the three contiguous slices alone form an even 1.25 mm volume
    import pydicom as _pd

    items = [(f, _pd.dcmread(f, stop_before_pixels=True)) for f in sorted(folder.rglob("*")) if f.is_file()]
    from medsynth.data.readers import _read_series

    rec = _read_series("uid", [it for it in items if int(it[1].InstanceNumber) >= 180], None)
    assert rec.meta["n_slices"] == 3 and abs(rec.spacing[0] - 1.25) < 1e-3 and np.isfinite(rec.array).all()
