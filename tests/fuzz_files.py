"""Generators of broken and odd inputs: DICOM, NIfTI, PNG files and manifests (issue 17).

Used by ``tests/test_fuzz_inputs.py`` (each CLI command against each input) and by the probe
study ``pipelines/studies/input_probes`` (``from tests.fuzz_files import ...`` from the
repository root). Self-contained (pydicom, nibabel, Pillow, numpy only), seeded, small
(32 px images, a few KB per file), fast (all of them in well under a second).

A **case** is one input and what medsynth must make of it:

* ``readable``: ``medsynth info FILE`` describes it (exit 0; its ``usable`` line says what a run
  would do with it) rather than refusing it (exit 2, one ``error:`` line naming the file);
* ``usable``: the run modalities (``"xray"``, ``"ct"``) whose training accepts the file. For the
  others, a folder holding it skips it (counted in a summary line, named in the run's records)
  or is refused in one line naming it; a manifest listing it is refused in one line naming it.

:func:`write_file_cases` writes every file case into a folder, :func:`write_base_set` the
valid images a manifest case needs around its broken row, :func:`write_manifest_cases` every
manifest case.
"""

from __future__ import annotations

import csv
import io
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

#: file names chosen to upset shells, HTML and log parsers (each is a legal POSIX name)
HOSTILE_NAME = "Müller ü名 <img src=x onerror=alert(1)>; $(rm -rf ~) 'x\" %s {0}.dcm"
#: the same, with a newline inside the name: one error line must stay one line
NEWLINE_NAME = "two\nlines.dcm"
#: a header value with every kind of trouble: non-ASCII, HTML, format strings, control characters
HOSTILE_TEXT = "Zoë^<b>Ünïcødé</b>^%s{0}\x1b[31m"

_SOP = {
    "DX": "1.2.840.10008.5.1.4.1.1.1.1", "CT": "1.2.840.10008.5.1.4.1.1.2", "MR": "1.2.840.10008.5.1.4.1.1.4",
    "US": "1.2.840.10008.5.1.4.1.1.6.1", "NM": "1.2.840.10008.5.1.4.1.1.20", "SC": "1.2.840.10008.5.1.4.1.1.7",
    "ENHANCED_CT": "1.2.840.10008.5.1.4.1.1.2.1",
}
SIZE = 32


# ----------------------------------------------------------------------------- valid images
def radiograph(seed: int, *, lesion: bool = False, size: int = SIZE) -> np.ndarray:
    """(size, size) uint16 detector-like radiograph: a soft gradient, noise, a bright disc if ``lesion``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    img = 1000 + 2000 * np.exp(-(((xx - size / 2) / (size / 3)) ** 2)) + rng.normal(0, 60, (size, size))
    if lesion:
        img[(yy - size // 3) ** 2 + (xx - size // 3) ** 2 < 12] += 900
    return np.clip(img, 0, 4095).astype(np.uint16)


def ct_volume(seed: int, depth: int = 8, size: int = SIZE) -> np.ndarray:
    """(depth, size, size) float32 HU: air, a soft-tissue body, lungs, noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    body = ((yy - size / 2) / (size * 0.45)) ** 2 + ((xx - size / 2) / (size * 0.45)) ** 2 < 1
    lung = ((yy - size / 2) / (size * 0.3)) ** 2 + ((xx - size / 2) / (size * 0.3)) ** 2 < 1
    sl = np.full((size, size), -1000.0)
    sl[body], sl[lung] = 40.0, -850.0
    return (sl[None] + rng.normal(0, 15, (depth, size, size))).astype(np.float32)


def dicom_dataset(rows: int, cols: int, *, modality: str, patient_id: str, series_uid: str | None = None,
             transfer_syntax=None, sop: str | None = None, patient_name: str = "Test^Phantom"):
    """A minimal 16-bit unsigned grey DICOM dataset (no pixel data yet; shared with ``conftest``); ``sop`` overrides the SOP
    class (default: DX for ``modality="DX"``, else CT)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop or ("1.2.840.10008.5.1.4.1.1.1.1" if modality == "DX" else "1.2.840.10008.5.1.4.1.1.2")
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax or ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.PatientID = patient_id
    ds.PatientName = patient_name
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    return ds


def _dataset(rows: int, cols: int, *, modality: str = "DX", sop: str | None = None, patient_id: str = "P000",
             transfer_syntax: str | None = None, series_uid: str | None = None):
    ds = dicom_dataset(rows, cols, modality=modality, patient_id=patient_id, series_uid=series_uid,
                       transfer_syntax=transfer_syntax, sop=sop or _SOP.get(modality, _SOP["SC"]),
                       patient_name="Fuzz^Phantom")
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.ImagerPixelSpacing = [0.2, 0.2]
    return ds


def _save(ds, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_dx(path: Path, array: np.ndarray, *, patient_id: str = "P000", **tags) -> Path:
    """A valid DICOM DX radiograph of ``array`` (H, W) uint16, extra ``tags`` set on the dataset."""
    arr = np.asarray(array, dtype=np.uint16)
    ds = _dataset(*arr.shape, patient_id=patient_id)
    for k, v in tags.items():
        setattr(ds, k, v)
    ds.PixelData = arr.tobytes()
    return _save(ds, Path(path))


def write_png(path: Path, array: np.ndarray) -> Path:
    """A PNG of ``array``: (H, W) uint8 or uint16 grey, (H, W, 3|4) uint8 colour."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array)).save(path)
    return path


def write_nifti(path: Path, array: np.ndarray, *, zooms=(1.0, 1.0, 1.0)) -> Path:
    import nibabel as nib

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array), np.diag([*zooms[:3], 1.0])), str(path))
    return path


# ----------------------------------------------------------------------------- broken DICOM
def _dcm_zero(p: Path) -> Path:
    p.write_bytes(b"")
    return p


def _dcm_random(p: Path) -> Path:
    p.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return p


def _dcm_truncated(p: Path) -> Path:
    tmp = write_dx(p, radiograph(2))
    data = tmp.read_bytes()
    p.write_bytes(data[: len(data) * 2 // 3])  # cut inside the pixel data (an interrupted copy)
    return p


def _dcm_truncated_header(p: Path) -> Path:
    tmp = write_dx(p, radiograph(2))
    p.write_bytes(tmp.read_bytes()[:300])  # cut inside the file meta / dataset header
    return p


def _dcm_no_pixels(p: Path) -> Path:
    return _save(_dataset(SIZE, SIZE), p)


def _dcm_short_pixels(p: Path) -> Path:
    ds = _dataset(SIZE, SIZE)
    ds.PixelData = radiograph(3).tobytes()[: SIZE * SIZE]  # half of Rows x Columns x 2 bytes
    return _save(ds, p)


def _dcm_rows_zero(p: Path) -> Path:
    ds = _dataset(0, SIZE)
    ds.PixelData = b""
    return _save(ds, p)


def _dcm_bits_12(p: Path) -> Path:
    ds = _dataset(SIZE, SIZE)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 12, 12, 11
    ds.PixelData = bytes(SIZE * SIZE * 3 // 2)
    return _save(ds, p)


def _dcm_compressed(p: Path) -> Path:
    from pydicom.encaps import encapsulate

    # JPEG-LS lossless with a truncated stream: refused whether or not a decoder is installed
    ds = _dataset(SIZE, SIZE, transfer_syntax="1.2.840.10008.1.2.4.80")
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xf7" + bytes(64) + b"\xff\xd9"])
    ds["PixelData"].VR = "OB"
    return _save(ds, p)


def _dcm_modality(modality: str) -> Callable[[Path], Path]:
    def make(p: Path) -> Path:
        ds = _dataset(SIZE, SIZE, modality=modality)
        del ds.ImagerPixelSpacing
        ds.PixelSpacing = [1.0, 1.0]
        ds.PixelData = radiograph(4).tobytes()
        return _save(ds, p)

    make.__name__ = f"_dcm_{modality.lower()}"
    return make


def _dcm_rgb(p: Path) -> Path:
    rng = np.random.default_rng(5)
    rgb = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    ds = _dataset(SIZE, SIZE)
    ds.SamplesPerPixel, ds.PlanarConfiguration, ds.PhotometricInterpretation = 3, 0, "RGB"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = rgb.tobytes()
    return _save(ds, p)


def _dcm_monochrome1(p: Path) -> Path:
    return write_dx(p, 4095 - radiograph(6), PhotometricInterpretation="MONOCHROME1", BitsStored=12, HighBit=11)


def _dcm_sc_claiming_ct(p: Path) -> Path:
    ds = _dataset(SIZE, SIZE, modality="CT", sop=_SOP["SC"])
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = (radiograph(7) // 16).astype(np.uint8).tobytes()  # a screen grab: grey levels 0..255
    return _save(ds, p)


def _dcm_hostile(p: Path) -> Path:
    p = p.with_name(HOSTILE_NAME)
    return write_dx(p, radiograph(8, lesion=True), patient_id=HOSTILE_TEXT, PatientName=HOSTILE_TEXT,
                    InstitutionName=HOSTILE_TEXT, SeriesDescription=HOSTILE_TEXT)


def _dcm_newline_zero(p: Path) -> Path:
    p = p.with_name(NEWLINE_NAME)
    p.write_bytes(b"")
    return p


def _ct_slice(path: Path, hu: np.ndarray, *, z: float, uid: str, instance: int) -> Path:
    ds = _dataset(*hu.shape, modality="CT", series_uid=uid, patient_id="C000")
    del ds.ImagerPixelSpacing
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.PixelSpacing, ds.SliceThickness = [0.7, 0.7], 1.0
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [0.0, 0.0, float(z)]
    ds.InstanceNumber = instance
    ds.PixelData = np.clip(np.round(hu + 1024), 0, 65535).astype(np.uint16).tobytes()
    return _save(ds, path)


def write_ct_series(folder: Path, *, z: list[float], seed: int = 0) -> Path:
    """A CT series, one slice file per position ``z`` (mm), in ``folder``; returns the folder."""
    from pydicom.uid import generate_uid

    uid = generate_uid()
    vol = ct_volume(seed, depth=len(z))
    for k, zk in enumerate(z):
        _ct_slice(Path(folder) / f"IM{k:04d}.dcm", vol[k], z=zk, uid=uid, instance=k + 1)
    return Path(folder)


#: slice positions of the gap series: 1 mm apart, then a 33 mm jump, then 1 mm again
GAP_Z = [0.0, 1.0, 2.0, 3.0, 36.0, 37.0, 38.0, 39.0]


def _ct_series_gap(p: Path) -> Path:
    return write_ct_series(p.with_suffix(""), z=GAP_Z)


#: Enhanced CT: stored values 0..1196 with rescale -1024 in the functional groups -> HU -1024..172
ENHANCED_STORED = (0, 1196)
ENHANCED_HU = (-1024.0, 172.0)


def _enhanced_ct(p: Path) -> Path:
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    frames, size = 4, SIZE
    stored = np.linspace(*ENHANCED_STORED, frames * size * size).reshape(frames, size, size).astype(np.uint16)
    ds = _dataset(size, size, modality="CT", sop=_SOP["ENHANCED_CT"], patient_id="E000")
    del ds.ImagerPixelSpacing
    ds.NumberOfFrames = frames
    shared, pm, po, pv = Dataset(), Dataset(), Dataset(), Dataset()
    pm.PixelSpacing, pm.SliceThickness = [0.5, 0.5], 1.0
    po.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    pv.RescaleSlope, pv.RescaleIntercept, pv.RescaleType = 1, -1024, "HU"
    shared.PixelMeasuresSequence = Sequence([pm])
    shared.PlaneOrientationSequence = Sequence([po])
    shared.PixelValueTransformationSequence = Sequence([pv])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per = []
    for k in range(frames):
        item, pp = Dataset(), Dataset()
        pp.ImagePositionPatient = [0.0, 0.0, float(k)]
        item.PlanePositionSequence = Sequence([pp])
        per.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per)
    ds.PixelData = stored.tobytes()
    return _save(ds, p)


# ----------------------------------------------------------------------------- broken NIfTI
def _nii_zero(p: Path) -> Path:
    p.write_bytes(b"")
    return p


def _nii_valid(p: Path) -> Path:
    return write_nifti(p, ct_volume(9, depth=6).transpose(2, 1, 0))


def _nii_truncated(p: Path) -> Path:
    data = _nii_valid(p).read_bytes()
    p.write_bytes(data[: 352 + (len(data) - 352) // 3])  # header intact, two thirds of the voxels gone
    return p


def _nii_wrong_magic(p: Path) -> Path:
    data = bytearray(_nii_valid(p).read_bytes())
    data[344:348] = b"xyz\0"
    p.write_bytes(bytes(data))
    return p


def _nii_4d(p: Path) -> Path:
    return write_nifti(p, np.stack([ct_volume(10, depth=4).transpose(2, 1, 0)] * 2, axis=-1))


def _nii_nan(p: Path) -> Path:
    vol = ct_volume(11, depth=4).transpose(2, 1, 0).copy()
    vol[3, 4, 1], vol[5, 6, 2] = np.nan, np.inf
    return write_nifti(p, vol)


def _nii_zero_dim(p: Path) -> Path:
    data = bytearray(_nii_valid(p).read_bytes())
    dim = list(struct.unpack_from("<8h", data, 40))
    dim[2] = 0  # the second axis claims zero voxels
    struct.pack_into("<8h", data, 40, *dim)
    p.write_bytes(bytes(data))
    return p


# ----------------------------------------------------------------------------- broken PNG
def _png_zero(p: Path) -> Path:
    p.write_bytes(b"")
    return p


def _png_truncated(p: Path) -> Path:
    data = write_png(p, (radiograph(12) // 16).astype(np.uint8)).read_bytes()
    p.write_bytes(data[: len(data) // 2])
    return p


def _png_16bit(p: Path) -> Path:
    return write_png(p, (radiograph(13, lesion=True) * 16).astype(np.uint16))


def _png_8bit(p: Path) -> Path:
    return write_png(p, (radiograph(15, lesion=True) // 16).astype(np.uint8))


def _png_rgba(p: Path) -> Path:
    rgba = np.random.default_rng(14).integers(0, 256, (SIZE, SIZE, 4), dtype=np.uint8)
    return write_png(p, rgba)


def _png_1x1(p: Path) -> Path:
    return write_png(p, np.array([[128]], dtype=np.uint8))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png_huge(p: Path) -> Path:
    """A 100 000 x 100 000 px claim with a few bytes of data (a decompression bomb's header)."""
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(bytes(100)))
                  + _png_chunk(b"IEND", b""))
    return p


# ----------------------------------------------------------------------------- the file catalogue
@dataclass(frozen=True)
class FileCase:
    """One input file (or series folder) and what medsynth must make of it.

    Attributes:
        name: the case id (also the written file's stem unless the generator picks a name).
        suffix: the file's extension (``""`` for a series folder).
        make: ``make(path) -> path given to commands`` (may differ from ``path``: hostile names).
        readable: ``medsynth info`` describes it (exit 0) instead of refusing it (exit 2).
        usable: run modalities whose training accepts it.
        note: what the case is about, for tables.
    """

    name: str
    suffix: str
    make: Callable[[Path], Path]
    readable: bool
    usable: tuple[str, ...] = ()
    note: str = ""
    header_ok: tuple[str, ...] | None = None

    @property
    def usable_by_header(self) -> tuple[str, ...]:
        """The run modalities whose header checks pass it (``info``'s ``usable`` line); a file
        refused only for its content (a constant image) passes them."""
        return self.usable if self.header_ok is None else self.header_ok

    @property
    def family(self) -> str:
        return {".dcm": "dicom", ".nii": "nifti", ".nii.gz": "nifti", ".png": "png", "": "dicom"}[self.suffix]


FILE_CASES: tuple[FileCase, ...] = (
    FileCase("dcm_zero_bytes", ".dcm", _dcm_zero, False, note="0-byte .dcm"),
    FileCase("dcm_random_bytes", ".dcm", _dcm_random, False, note="random bytes named .dcm"),
    FileCase("dcm_truncated_pixels", ".dcm", _dcm_truncated, False, note="DX cut inside its pixel data"),
    FileCase("dcm_truncated_header", ".dcm", _dcm_truncated_header, False, note="DX cut inside its header"),
    FileCase("dcm_no_pixel_data", ".dcm", _dcm_no_pixels, False, note="valid header, no PixelData"),
    FileCase("dcm_short_pixel_data", ".dcm", _dcm_short_pixels, False, note="PixelData half of Rows x Columns"),
    FileCase("dcm_rows_zero", ".dcm", _dcm_rows_zero, False, note="Rows = 0"),
    FileCase("dcm_bits_allocated_12", ".dcm", _dcm_bits_12, False, note="BitsAllocated 12"),
    FileCase("dcm_jpegls_no_decoder", ".dcm", _dcm_compressed, False, note="JPEG-LS transfer syntax, truncated stream (no decoder, or a decoder that fails)"),
    FileCase("dcm_mr", ".dcm", _dcm_modality("MR"), True, note="MR image"),
    FileCase("dcm_us", ".dcm", _dcm_modality("US"), True, note="ultrasound image"),
    FileCase("dcm_nm", ".dcm", _dcm_modality("NM"), True, note="nuclear medicine image"),
    FileCase("dcm_rgb", ".dcm", _dcm_rgb, True, note="DX with RGB photometric"),
    FileCase("dcm_monochrome1", ".dcm", _dcm_monochrome1, True, ("xray",), note="DX MONOCHROME1, 12 bits stored"),
    FileCase("dcm_sc_8bit_claiming_ct", ".dcm", _dcm_sc_claiming_ct, True,
             note="8-bit secondary capture with Modality CT"),
    FileCase("dcm_hostile_strings", ".dcm", _dcm_hostile, True, ("xray",),
             note="hostile file name and header strings"),
    FileCase("dcm_newline_in_name", ".dcm", _dcm_newline_zero, False, note="0-byte file with a newline in its name"),
    FileCase("ct_series_33mm_gap", "", _ct_series_gap, True, note="CT series, 33 mm gap"),
    FileCase("enhanced_ct", ".dcm", _enhanced_ct, True, ("ct",), note="Enhanced CT, rescale in functional groups"),
    FileCase("nii_zero_bytes", ".nii.gz", _nii_zero, False, note="0-byte .nii.gz"),
    FileCase("nii_truncated", ".nii", _nii_truncated, False, note="NIfTI cut inside its voxels"),
    FileCase("nii_wrong_magic", ".nii", _nii_wrong_magic, False, note="NIfTI with a wrong magic"),
    FileCase("nii_4d", ".nii.gz", _nii_4d, False, note="4D NIfTI"),
    FileCase("nii_nan_inf", ".nii.gz", _nii_nan, False, note="NIfTI with NaN and inf voxels"),
    FileCase("nii_zero_size_dim", ".nii", _nii_zero_dim, False, note="NIfTI with a zero-size dimension"),
    FileCase("png_zero_bytes", ".png", _png_zero, False, note="0-byte .png"),
    FileCase("png_truncated", ".png", _png_truncated, False, note="PNG cut in half"),
    FileCase("png_16bit", ".png", _png_16bit, True, ("xray", "ct"), note="16-bit grey PNG"),
    FileCase("png_8bit_grey", ".png", _png_8bit, True, ("xray", "ct"),
             note="8-bit grey PNG (a CT run takes PNG slices as already-windowed grey, never as HU)"),
    FileCase("png_rgba", ".png", _png_rgba, True, note="RGBA colour PNG"),
    FileCase("png_1x1", ".png", _png_1x1, True, note="1 x 1 PNG (constant: nothing to learn, found on loading)",
             header_ok=("xray", "ct")),
    FileCase("png_huge_claim", ".png", _png_huge, False, note="PNG header claiming 100000 x 100000 px"),
)
CASES_BY_NAME = {c.name: c for c in FILE_CASES}


def write_file_cases(folder: Path, cases=FILE_CASES) -> dict[str, Path]:
    """Write each case into ``folder/<case name>/`` (one folder each, so a folder command sees it
    alone); returns ``{case name: the path commands are given}``."""
    out = {}
    for c in cases:
        sub = Path(folder) / c.name
        sub.mkdir(parents=True, exist_ok=True)
        out[c.name] = c.make(sub / f"{c.name}{c.suffix}")
    return out


# ----------------------------------------------------------------------------- base set + manifests
#: the valid set a manifest case is built around: 8 patients x 2 DX images, label by patient
#: (odd patients have a lesion), 4 patients train, 2 val, 2 test (each side both classes)
BASE_PATIENTS = 8
BASE_SPLITS = ("train", "train", "train", "train", "val", "val", "test", "test")
MANIFEST_COLUMNS = ["path", "label", "patient_id", "split", "modality"]


def base_rows() -> list[dict]:
    return [dict(path=f"img/P{p}_{j}.dcm", label=p % 2, patient_id=f"P{p}", split=BASE_SPLITS[p], modality="xray")
            for p in range(BASE_PATIENTS) for j in range(2)]


def write_base_set(folder: Path) -> list[dict]:
    """The base set's 16 valid DX radiographs under ``folder/img/``; returns their manifest rows
    (paths relative to ``folder``)."""
    rows = base_rows()
    for i, r in enumerate(rows):
        write_dx(Path(folder) / r["path"], radiograph(100 + i, lesion=r["label"] == 1), patient_id=r["patient_id"])
    return rows


def write_rows(csv_path: Path, rows: list[dict], columns=MANIFEST_COLUMNS) -> Path:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    csv_path.write_text(buf.getvalue(), encoding="utf-8")
    return csv_path


def manifest_with_file(folder: Path, broken: Path, *, modality: str = "xray") -> Path:
    """``folder/manifest_<name>.csv``: the base set (written by :func:`write_base_set` into
    ``folder``) plus one row for ``broken`` (absolute path, its own patient, train split)."""
    rows = write_base_set(folder) if not (Path(folder) / "img").is_dir() else base_rows()
    rows = rows + [dict(path=str(broken), label=0, patient_id="PX", split="train", modality=modality)]
    safe = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in Path(broken).name)
    return write_rows(Path(folder) / f"manifest_{safe}.csv", rows)


@dataclass(frozen=True)
class ManifestCase:
    """A broken (or odd) manifest over the base set.

    Attributes:
        name: case id; the CSV is ``<name>.csv`` beside the base set.
        make: ``make(folder, base rows) -> csv path``.
        names: what a refusal's error line must contain (default: the CSV's name).
        warns: a text the warning of a load that accepts it must contain.
    """

    name: str
    make: Callable[[Path, list[dict]], Path]
    names: str | None = None
    warns: str | None = None
    note: str = ""


def _m_missing_columns(folder, rows):
    return write_rows(folder / "missing_columns.csv", rows, columns=["path", "label"])


def _m_unknown_split(folder, rows):
    rows = [dict(r) for r in rows]
    rows[0]["split"] = "training"
    return write_rows(folder / "unknown_split.csv", rows)


def _m_duplicate_rows(folder, rows):
    return write_rows(folder / "duplicate_rows.csv", rows + [dict(rows[0]), dict(rows[1])])


def _m_same_path_two_patients(folder, rows):
    rows = [dict(r) for r in rows]
    leak = dict(rows[0], patient_id="P99", split="test")  # P0's training image again, as a test patient
    return write_rows(folder / "same_path_two_patients.csv", rows + [leak])


def _m_copy_two_patients(folder, rows):
    import shutil

    rows = [dict(r) for r in rows]
    shutil.copy(folder / rows[0]["path"], folder / "img" / "copy_of_P0_0.dcm")
    leak = dict(rows[0], path="img/copy_of_P0_0.dcm", patient_id="P99", split="test")
    return write_rows(folder / "copy_two_patients.csv", rows + [leak])


def _m_missing_file(folder, rows):
    return write_rows(folder / "missing_file.csv", rows + [dict(rows[0], path="../outside/nowhere.dcm",
                                                                  patient_id="P98")])


def _m_empty(folder, rows):
    p = folder / "empty.csv"
    p.write_bytes(b"")
    return p


def _m_header_only(folder, rows):
    return write_rows(folder / "header_only.csv", [])


def _m_non_utf8(folder, rows):
    p = write_rows(folder / "non_utf8.csv", rows)
    p.write_bytes(p.read_bytes().replace(b"P1,", "Pé\xff,".encode("latin-1")))
    return p


def _m_label_not_int(folder, rows):
    rows = [dict(r) for r in rows]
    rows[2]["label"] = "yes"
    return write_rows(folder / "label_not_int.csv", rows)


def _m_patient_two_sides(folder, rows):
    rows = [dict(r) for r in rows]
    rows[1]["split"] = "test"  # P0's second image on the test side
    return write_rows(folder / "patient_two_sides.csv", rows)


def _m_both_labels(folder, rows):
    rows = [dict(r) for r in rows]
    for r in rows:  # each patient has one normal and one lesion image (label by image, not by patient)
        r["label"] = int(r["path"].endswith("_1.dcm"))
    return write_rows(folder / "both_labels.csv", rows)


def _m_mr_row(folder, rows):
    _dcm_modality("MR")(folder / "img" / "mr_row.dcm")
    return write_rows(folder / "mr_row.csv", rows + [dict(rows[0], path="img/mr_row.dcm", patient_id="P97")])


MANIFEST_CASES: tuple[ManifestCase, ...] = (
    ManifestCase("missing_columns", _m_missing_columns, note="no patient_id/split columns"),
    ManifestCase("unknown_split", _m_unknown_split, note="split value 'training'"),
    ManifestCase("duplicate_rows", _m_duplicate_rows, warns="duplicate",
                 note="two rows repeated"),
    ManifestCase("same_path_two_patients", _m_same_path_two_patients, names="P0_0.dcm",
                 note="one file under P0 (train) and P99 (test)"),
    ManifestCase("copy_two_patients", _m_copy_two_patients, names="copy_of_P0_0.dcm",
                 note="a byte copy of a training image as another patient's test image"),
    ManifestCase("missing_file", _m_missing_file, names="nowhere.dcm", note="a row outside the folder, missing"),
    ManifestCase("empty", _m_empty, note="0-byte manifest"),
    ManifestCase("header_only", _m_header_only, note="header row, no rows"),
    ManifestCase("non_utf8", _m_non_utf8, note="latin-1 bytes in a patient_id"),
    ManifestCase("label_not_int", _m_label_not_int, note="label 'yes'"),
    ManifestCase("patient_two_sides", _m_patient_two_sides, note="patient P0 in train and test"),
    ManifestCase("both_labels", _m_both_labels,
                 note="every patient has a normal and a lesion image (label by image)"),
    ManifestCase("mr_row", _m_mr_row, names="mr_row.dcm", note="an MR file listed for an X-ray run"),
)


def write_manifest_cases(folder: Path, cases=MANIFEST_CASES) -> dict[str, Path]:
    """The base set in ``folder`` and each manifest case beside it; ``{case name: csv}``."""
    folder = Path(folder)
    rows = write_base_set(folder)
    return {c.name: c.make(folder, rows) for c in cases}

