"""DICOM Segmentation (SEG) objects for image/mask pairs: one binary "nodule" segment per image.

:func:`write_seg` writes a mask as a BINARY DICOM SEG (highdicom) that references the image (a
DICOM DX / CT file or a CT series, written by :mod:`medsynth.data.writers` or by the phantom
simulator) by its SOP Instance UIDs; a viewer or PACS shows it as an overlay of that image.

Where a mask comes from is said in the file (:class:`MaskOrigin`, one per source):

* :func:`generator_origin`: the mask domain of a generator (CoGAN image/mask pairs, thresholded
  at 0 in ``[-1, 1]``): ``AUTOMATIC``, algorithm family *Artificial Intelligence*, the algorithm
  named by medsynth, the model and the run, version = the medsynth version.
* :func:`phantom_origin`: the phantom's nodule masks. They are the simulator's **ground truth**
  (the voxels of the simulated nodule, projected along the beam for radiographs): nobody drew
  them (so not ``MANUAL``, which DICOM defines as user-entered) and no algorithm estimated them
  from the image; they are computed by software without user input, which DICOM calls
  ``AUTOMATIC``. The algorithm name ("... simulator ground truth"), family *Analytical
  Algorithm* and the segment description say what they are.
* :func:`translation_origin`: where a CycleGAN translation made the image denser
  (:func:`translation_difference_mask`): a heuristic "change region", labelled *Lesion* (not
  *Nodule*) and described as a thresholded difference, not a delineation of anything.

Marking, as the writers mark images (:mod:`medsynth.data.writers`): the SEG copies the patient and
study of its source image, which are already synthetic (``SYNTHETIC-<n>`` / ``SYNTHETIC``),
translated (``TRANSLATED-<n>``) or phantom (``PHANTOM-<nnnn>``) identities; sources written by
anything but medsynth, or with other patient IDs, are refused, so no identifier of an input can
reach a SEG. ``SeriesDescription``, ``ImageComments`` and ``DerivationDescription`` say that the
object segments a synthetic (translated, phantom) image and where the mask comes from;
``ManufacturerModelName`` names medsynth and the model. No path is written. The SEG IOD requires a
``ContentDate``/``ContentTime`` (Type 1): they hold the SEG's creation time (not a patient's date);
the source images keep no dates.

Empty masks (an image without a nodule): ``empty="write"`` (default) writes a SEG whose nodule
segment has no pixels (every frame present, all zero; ``ContentDescription`` says "empty"): a PACS
user sees explicitly that the mask of this image is empty, and image/mask pairs stay one to one.
``empty="skip"`` writes nothing and returns ``None`` (the caller records it): used for the
phantom's nodule-free images, which have no mask at all.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medsynth.atomic import atomic_path
from medsynth.data.writers import MANUFACTURER, SyntheticInfo, write_csv
from medsynth.errors import MedsynthError
from medsynth.progress import Progress

log = logging.getLogger(__name__)

SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"  # Segmentation Storage
#: patient ID prefixes of the images medsynth writes (synthetic, translated, phantom identities)
MEDSYNTH_PATIENT_PREFIXES = ("SYNTHETIC-", "TRANSLATED-", "PHANTOM-")
#: series number of a SEG series (the images' series are numbered 1)
SEG_SERIES_NUMBER = 100
EMPTY_CHOICES = ("write", "skip")


def _version() -> str:
    import medsynth

    return str(medsynth.__version__)


@dataclass(frozen=True)
class MaskOrigin:
    """Where a mask comes from, as the SEG states it (segment and algorithm identification).

    Attributes:
        algorithm_name: Segment Algorithm Name (<= 64 chars).
        algorithm_family: ``"ai"`` (DCM 123110 Artificial Intelligence) or ``"analytical"``
            (DCM 128480 Analytical Algorithm).
        algorithm_type: ``"AUTOMATIC"``, ``"SEMIAUTOMATIC"`` or ``"MANUAL"``.
        text: one sentence saying what the mask is (Segment Description, ImageComments).
        parameters: algorithm parameters written in the algorithm identification (name -> value).
        label: Segment Label.
        property_type: ``"nodule"`` (SCT 27925004) or ``"lesion"`` (SCT 52988006); category is
            always SCT 49755003 Morphologically Abnormal Structure, anatomic region SCT Lung.
        content_label: Content Label (DICOM CS: upper case, digits, underscore, <= 16 chars).
    """

    algorithm_name: str
    algorithm_family: str
    algorithm_type: str
    text: str
    parameters: dict = field(default_factory=dict)
    label: str = "nodule"
    property_type: str = "nodule"
    content_label: str = "NODULE"


def generator_origin(info: SyntheticInfo, *, threshold: float = 0.0) -> MaskOrigin:
    """A generator's mask domain (CoGAN pairs), binarised at ``threshold`` of ``[-1, 1]``.

    Args:
        info: the run's provenance (model, run, seed).
        threshold: pixels of the generated mask above it are inside.
    """
    params = {"run": info.run, "mask threshold": f"{threshold:g} of [-1, 1]"}
    if info.seed is not None:
        params["seed"] = str(info.seed)
    return MaskOrigin(
        algorithm_name=f"medsynth {info.model} run {info.run}"[:64], algorithm_family="ai",
        algorithm_type="AUTOMATIC", parameters=params,
        text=(f"nodule mask generated with the image by medsynth model {info.model} (run {info.run}), "
              f"the generator's mask domain thresholded at {threshold:g}; synthetic, not an annotation"))


def phantom_origin(*, projected: bool) -> MaskOrigin:
    """The phantom simulator's ground-truth nodule mask.

    Args:
        projected: ``True`` for radiographs (the nodule's voxels projected along the AP beam and
            resampled to the detector, inside where at least half a pixel is covered), ``False``
            for CT (the nodule's voxels on the CT grid).
    """
    how = ("the simulated nodule's voxels projected along the AP beam onto the detector (pixels at "
           "least half covered)" if projected else "the simulated nodule's voxels on the CT grid")
    return MaskOrigin(
        algorithm_name="medsynth chest phantom simulator ground truth", algorithm_family="analytical",
        algorithm_type="AUTOMATIC", parameters={"source": "simulator ground truth",
                                                "geometry": "AP projection" if projected else "CT voxels"},
        text=f"ground truth of the medsynth chest phantom: {how}; computed by the simulator, not drawn")


def translation_origin(info: SyntheticInfo, *, fraction: float, floor: float) -> MaskOrigin:
    """The change region of a translation (:func:`translation_difference_mask`)."""
    return MaskOrigin(
        algorithm_name=f"medsynth {info.model} {info.translation or ''} difference"[:64], algorithm_family="ai",
        algorithm_type="AUTOMATIC", label="translation change", property_type="lesion", content_label="CHANGE",
        parameters={"run": info.run, "direction": str(info.translation), "fraction of peak": f"{fraction:g}",
                    "floor": f"{floor:g} of [-1, 1]"},
        text=(f"where the {info.model} translation ({info.translation}) made the image denser: translated minus "
              f"source >= max({fraction:g} x peak, {floor:g}), the connected region at the peak; a heuristic "
              "change region, not a delineation validated against any ground truth"))


def translation_difference_mask(source: np.ndarray, translated: np.ndarray, *, fraction: float = 0.5,
                                floor: float = 0.1) -> np.ndarray:
    """Where a translation (CycleGAN lesion insertion) made the image denser, as a binary mask.

    The difference ``translated - source`` (dense = bright in both, ``[-1, 1]``) is thresholded at
    ``max(fraction * peak, floor)`` (``peak`` = its largest value; 0.5 = the region at half the
    peak's height, as a full width at half maximum delimits a blob), and the connected region
    (8-/26-connectivity) holding the peak is kept. Empty when the translation brightened nothing by
    ``floor`` or more. A heuristic change region: a translation changes every pixel a little, and
    no ground truth of an inserted lesion's outline exists.

    Args:
        source: ``(H, W)`` or ``(D, H, W)`` float in ``[-1, 1]``, the image before translation.
        translated: the same shape, after.
        fraction: threshold as a fraction of the peak difference, in ``(0, 1]``.
        floor: smallest difference counted, in ``[-1, 1]`` intensity units (> 0).

    Returns:
        uint8 mask of the same shape, values 0/1.

    Raises:
        MedsynthError: shapes differ, not 2D/3D, or a parameter out of range.
    """
    from scipy import ndimage

    a = np.asarray(source, np.float64)
    b = np.asarray(translated, np.float64)
    if a.shape != b.shape or a.ndim not in (2, 3):
        raise MedsynthError(None, f"source {a.shape} and translated {b.shape} must be equal 2D or 3D shapes")
    if not 0.0 < fraction <= 1.0 or floor <= 0.0:
        raise MedsynthError(None, f"fraction must be in (0, 1] and floor > 0, got {fraction}, {floor}")
    diff = b - a
    peak = float(diff.max())
    out = np.zeros(a.shape, np.uint8)
    if peak < floor:
        return out
    above = diff >= max(fraction * peak, floor)
    lab, _ = ndimage.label(above, structure=np.ones((3,) * a.ndim, bool))
    out[lab == lab.flat[int(np.argmax(diff))]] = 1
    return out


# ----------------------------------------------------------------------------- checks
def _check_sources(sources, path: Path) -> list:
    if not isinstance(sources, (list, tuple)):
        sources = [sources]
    if not sources:
        raise MedsynthError(path, "a SEG needs at least one source image")
    for ds in sources:
        pid = str(ds.get("PatientID", ""))
        if ds.get("Manufacturer") != MANUFACTURER or not pid.startswith(MEDSYNTH_PATIENT_PREFIXES):
            raise MedsynthError(path, "SEG source images must be images medsynth wrote (synthetic, translated or "
                                      f"phantom identities {', '.join(MEDSYNTH_PATIENT_PREFIXES)}): their patient "
                                      "and study are copied into the SEG")
        if "PixelData" not in ds and "Rows" not in ds:
            raise MedsynthError(path, "a SEG source must be an image (no Rows/Columns)")
    if len({str(ds.SeriesInstanceUID) for ds in sources}) != 1:
        raise MedsynthError(path, "the source images of one SEG must be one series")
    return list(sources)


def _check_mask(mask, sources: list, path: Path) -> np.ndarray:
    m = np.asarray(mask)
    if m.dtype != bool:
        if not np.issubdtype(m.dtype, np.integer):
            raise MedsynthError(path, f"the mask must be bool or integer 0/1, got {m.dtype} (threshold it first)")
        if m.size and (m.min() < 0 or m.max() > 1):
            raise MedsynthError(path, f"a binary mask holds 0 and 1 only, got values {m.min()}..{m.max()}")
    if m.ndim == 2:
        m = m[None]
    if m.ndim != 3:
        raise MedsynthError(path, f"the mask must be (H, W) or (D, H, W), got shape {tuple(np.shape(mask))}")
    if m.shape[0] != len(sources):
        raise MedsynthError(path, f"{m.shape[0]} mask slices for {len(sources)} source images")
    for ds in sources:
        if (int(ds.Rows), int(ds.Columns)) != m.shape[1:]:
            raise MedsynthError(path, f"mask {m.shape[1:]} and image ({ds.Rows}, {ds.Columns}) differ in size")
    return m.astype(np.uint8)


# ----------------------------------------------------------------------------- the writer
def _marking(origin: MaskOrigin, info: SyntheticInfo | None) -> tuple[str, str, str]:
    """(SeriesDescription <= 64, ImageComments, ManufacturerModelName <= 64) of the SEG."""
    if info is None:  # the phantom: its images say "(synthetic phantom)" in their series description
        what = "a medsynth chest PHANTOM image (simulated, not a real patient)"
        return ("medsynth phantom nodule SEG (simulator ground truth)"[:64],
                f"SEGMENTATION of {what}: {origin.text}", "medsynth phantom")
    if info.translation is not None:
        lead = "SEGMENTATION of a TRANSLATION of a real image by medsynth; NOT SYNTHETIC: derived from patient data"
    else:
        lead = "SEGMENTATION of a SYNTHETIC IMAGE by medsynth; not a real patient"
    return (f"SEG {info.description()}"[:64], f"{lead}. {origin.text}. Image: {info.long_description()}",
            f"medsynth {info.model}"[:64])


def write_seg(
    path: str | Path,
    sources,
    mask: np.ndarray,
    *,
    origin: MaskOrigin,
    info: SyntheticInfo | None = None,
    empty: str = "write",
    series_uid: str | None = None,
    series_number: int = SEG_SERIES_NUMBER,
    uid_entropy: str | None = None,
) -> Path | None:
    """Write a binary mask of an image as a DICOM SEG (one segment) that references the image.

    Args:
        path: output ``.dcm`` (written atomically).
        sources: the image's pydicom Dataset (DX, one CT slice) or the datasets of a CT series
            in the mask's slice order, as medsynth wrote them (pixel data not needed).
        mask: ``(H, W)`` (one source) or ``(D, H, W)`` (D sources), bool or integer 0/1, the
            sources' rows and columns.
        origin: where the mask comes from (:func:`generator_origin`, :func:`phantom_origin`,
            :func:`translation_origin`).
        info: the images' :class:`~medsynth.data.writers.SyntheticInfo` (synthetic or
            translated); ``None`` for phantom images.
        empty: ``"write"`` an empty mask as a SEG with an empty segment, or ``"skip"`` it
            (nothing written, ``None`` returned).
        series_uid: the SEG series (a fresh one by default; give one to put several SEGs of one
            study in one series).
        series_number: the SEG series number.
        uid_entropy: derive the SEG's UIDs from this string (reproducible files); random by default.

    Returns:
        ``path``, or ``None`` when an empty mask was skipped.

    Raises:
        MedsynthError: sources not written by medsynth or of several series, a mask that is not
            binary or does not match the images, an unknown ``empty`` choice.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    path = Path(path)
    if empty not in EMPTY_CHOICES:
        raise MedsynthError(path, f"empty must be one of {EMPTY_CHOICES}, got {empty!r}")
    srcs = _check_sources(sources, path)
    m = _check_mask(mask, srcs, path)
    is_empty = not m.any()
    if is_empty and empty == "skip":
        log.debug("%s: empty mask, no SEG written", path)
        return None

    def uid_for(role: str) -> str:
        return generate_uid(entropy_srcs=[uid_entropy, role]) if uid_entropy else generate_uid()

    family = {"ai": codes.DCM.ArtificialIntelligence, "analytical": codes.DCM.AnalyticalAlgorithm}[
        origin.algorithm_family]
    prop = {"nodule": codes.SCT.Nodule, "lesion": codes.SCT.Lesion}[origin.property_type]
    algorithm = hd.AlgorithmIdentificationSequence(
        name=origin.algorithm_name[:64], family=family, version=_version(), source="medsynth",
        parameters={k: str(v)[:64] for k, v in origin.parameters.items()} or None)
    segment = hd.seg.SegmentDescription(
        segment_number=1, segment_label=origin.label[:64],
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure, segmented_property_type=prop,
        algorithm_type=origin.algorithm_type, algorithm_identification=algorithm,
        anatomic_regions=[codes.SCT.Lung])
    segment.SegmentDescription = origin.text[:1024]
    series_desc, comments, model_name = _marking(origin, info)
    pixels = m if len(srcs) > 1 else m[0]
    with warnings.catch_warnings():
        # highdicom warns that a one-component PatientName ("SYNTHETIC") is unlikely to be a
        # person's name: it is not one, by design (the writers' synthetic identity)
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name.*")
        seg = hd.seg.Segmentation(
            source_images=srcs, pixel_array=pixels, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=[segment], series_instance_uid=series_uid or uid_for("seg-series"),
            series_number=int(series_number), sop_instance_uid=uid_for("seg-instance"), instance_number=1,
            manufacturer=MANUFACTURER, manufacturer_model_name=model_name, software_versions=_version(),
            device_serial_number="0", content_description=(f"empty: no {origin.label} pixels" if is_empty else
                                                           f"{origin.label} mask")[:64],
            content_label=origin.content_label, series_description=series_desc,
            omit_empty_frames=not is_empty)
    seg.ImageComments = comments
    seg.DerivationDescription = comments
    seg.BurnedInAnnotation = "NO"
    if "FrameOfReferenceUID" not in srcs[0]:
        # no patient coordinates (DX): the image's row/column directions (General Image, Type 2C)
        seg.PatientOrientation = srcs[0].get("PatientOrientation", "")
    with atomic_path(path, ".dcm") as tmp:
        seg.save_as(tmp, enforce_file_format=True)
    return path


#: the table :func:`write_pair_segs` writes beside the SEG files (not ``manifest.csv``: its rows
#: are not images a run could train on)
SEG_TABLE = "seg.csv"


def _row_sources(image_dir: Path, row: dict) -> list:
    """The written image files of one manifest row (a file, or a series folder in slice order)."""
    target = image_dir / row["path"]
    if row["format"] == "dicom_series":
        return read_sources(sorted(target.glob("*.dcm")))
    if row["format"] != "dicom":
        raise MedsynthError(target, f"a SEG references DICOM images, this row is {row['format']!r}")
    return read_sources(target)


def write_pair_segs(out_dir: str | Path, image_dir: str | Path, images_df, masks, *, info: SyntheticInfo,
                    threshold: float = 0.0, empty: str = "write", origin: MaskOrigin | None = None):
    """Write the mask of each generated image/mask pair as a SEG referencing the pair's written image.

    Reports its progress (:mod:`medsynth.progress`): ``generate: writing SEG: i/N files``.

    Args:
        out_dir: folder of the SEG files ``<image stem>_seg.dcm`` and of :data:`SEG_TABLE` (created).
        image_dir: the folder the images were written to (holding their ``manifest.csv``).
        images_df: the images' manifest rows, as :func:`~medsynth.data.writers.write_synthetic_set`
            returned them (``path``, ``format`` ``dicom``/``dicom_series``, ``patient_id``), row
            ``i`` = pair ``i``.
        masks: ``(N, 1, H, W)`` or ``(N, 1, D, H, W)`` float in ``[-1, 1]`` (the generator's mask
            domain; tensor or array), the images' shape.
        info: the images' provenance (the SEGs name the same model and run).
        threshold: mask pixels above it are inside.
        empty: ``"write"`` (default) or ``"skip"`` empty masks (:func:`write_seg`).
        origin: where the masks come from; default :func:`generator_origin` (a generator's mask
            domain); :func:`translation_origin` for translation change masks (0/1, ``threshold`` 0).

    Returns:
        DataFrame ``path, image, patient_id, referenced_sop_instance_uid, mask_pixels`` (``path``
        the SEG relative to ``out_dir``, empty when skipped; ``image`` relative to ``out_dir``;
        UIDs of a series joined by ``;``), also written to ``out_dir/seg.csv``.

    Raises:
        MedsynthError: masks not matching the images, images not DICOM.
    """
    import pandas as pd
    from pydicom.uid import generate_uid

    out_dir, image_dir = Path(out_dir), Path(image_dir)
    try:
        import torch

        if isinstance(masks, torch.Tensor):
            masks = masks.detach().cpu().float().numpy()
    except ImportError:  # pragma: no cover
        pass
    x = np.asarray(masks, np.float32)
    rows_in = images_df.to_dict("records")
    if x.ndim not in (4, 5) or x.shape[1] != 1 or len(x) != len(rows_in):
        raise MedsynthError(out_dir, f"masks must be (N, 1, H, W) or (N, 1, D, H, W) for {len(rows_in)} images, "
                                     f"got {tuple(x.shape)}")
    origin = origin or generator_origin(info, threshold=threshold)
    series_of_study: dict[str, str] = {}
    rows = []
    with Progress("generate: writing SEG", len(rows_in), "files") as bar:
        for i, row in enumerate(rows_in):
            srcs = _row_sources(image_dir, row)
            mask = (x[i, 0] > threshold).astype(np.uint8)
            study = str(srcs[0].StudyInstanceUID)
            if study not in series_of_study:  # one SEG series per study of the images
                series_of_study[study] = generate_uid()
            stem = Path(str(row["path"])).name.removesuffix(".dcm")
            rel = f"{stem}_seg.dcm"
            written = write_seg(out_dir / rel, srcs, mask, origin=origin, info=info, empty=empty,
                                series_uid=series_of_study[study])
            rows.append({"path": rel if written else "",
                         "image": os.path.relpath(image_dir / row["path"], out_dir).replace(os.sep, "/"),
                         "patient_id": row["patient_id"],
                         "referenced_sop_instance_uid": ";".join(str(s.SOPInstanceUID) for s in srcs),
                         "mask_pixels": int(mask.sum())})
            bar.update(1)
    df = pd.DataFrame(rows, columns=["path", "image", "patient_id", "referenced_sop_instance_uid", "mask_pixels"])
    write_csv(out_dir / SEG_TABLE, df)
    log.info("wrote %d SEG files (%d with an empty mask) to %s", int((df["path"] != "").sum()),
             int((df["mask_pixels"] == 0).sum()), out_dir)
    return df


def read_sources(paths) -> list:
    """The headers (no pixel data) of the image files a SEG references, in the order given.

    Args:
        paths: one path or a sequence of paths (a CT series in slice order).

    Returns:
        list of pydicom Datasets.

    Raises:
        MedsynthError: a file that cannot be read as DICOM.
    """
    import pydicom

    if isinstance(paths, (str, Path)):
        paths = [paths]
    out = []
    for p in paths:
        try:
            out.append(pydicom.dcmread(p, stop_before_pixels=True))
        except Exception as e:  # pydicom raises several types for unreadable files
            raise MedsynthError(p, f"cannot be read as DICOM ({type(e).__name__})") from e
    return out
