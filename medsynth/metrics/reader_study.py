"""A blinded reader study (visual Turing test): can radiologists tell real from synthetic images?

Two steps, behind ``medsynth reader-study build`` and ``medsynth reader-study score``:

**build** (:func:`build`) draws ``n_real`` real images (a manifest, folder, ``.npz`` or the LIDC
folder, loaded by :func:`medsynth.data.dataset.load_image_set`) and ``n_synthetic`` synthetic ones
(a synthetic manifest/folder, loaded the same way, or a run directory sampled now), seeded, shuffles
them and writes each as a *case file* named only by an opaque number (``case_0001.png`` or
``.dcm``) into the case folder, with

* ``README.txt``: what the study is, the rating scale, how to answer, and that the case files must
  never leave the study (they hold unmarked synthetic images and real patient images);
* ``responses_template.csv``: ``case, reader, rating``, one row per case, to be filled in.

The **answer key** goes to a separate folder (default: the sibling ``<cases>_key/``; refused
inside the case folder, or holding it): ``key.csv`` (``case, truth, label, source_index,
patient, generator``: truth ``real|synthetic``, the nodule label, the image's index in the loaded
source, a patient pseudonym ``P0000``... for real images, the generator run for synthetic ones),
``study.json`` (counts, format, rating scale, seed, the sources' shareable names) and
``local/sources.csv`` (the real input path of every real case: NEVER SHARE, like ``RUN/local/``).

Blinding (this is the one place where medsynth withholds synthetic marking, which is why the
case files must stay inside the study):

* real and synthetic images pass through the same loader size and the same case writer, so both
  classes are re-encoded identically: same dimensions, bit depth (PNG: 16-bit X-ray, 8-bit CT),
  compression and header;
* PNG: no text (or any ancillary) chunk, stored with zlib level 0, so a file's size depends only on
  its dimensions, never on how compressible its content is;
* DICOM: every case has the same tags with the same values apart from the pixel data, the case's
  own UIDs (SOP instance; fixed length), ``PatientID`` ``CASE-0001``, ``PatientName``
  ``CASE^0001`` and ``InstanceNumber`` (the case number); ``ImageType DERIVED\\SECONDARY`` for all
  (every case is a re-encoded copy); uncompressed, so the sizes are equal too. No patient
  identifier of a real image is written: cases carry only their number;
* files are written in case order (itself random) and given one common modification time.

**score** (:func:`score`) reads one or more answer CSVs (``case, reader, rating``; one file may
hold several readers, a reader's answers lie in one file) and the key. Ratings: ``confidence``
scale, an integer 1-5, the confidence that the image is REAL (5 certainly real, 3 cannot say, 1
certainly synthetic); or ``binary``, ``real`` or ``synthetic`` (a 2-level rating, scored 1/0).
Per reader:

* **AUC** of the ratings for real vs synthetic (Mann-Whitney: the probability that a real case
  is rated higher than a synthetic one, ties count one half): 0.5 = the reader cannot tell,
  1 = every real case rated above every synthetic one. 95 % CI by percentile bootstrap over
  cases (:func:`medsynth.metrics.stats.bootstrap_ci`) and, beside it, DeLong's asymptotic CI
  (variance from the structural components, :func:`delong`);
* **synthetic judged real**: the fraction of synthetic cases rated above the midpoint (``4-5``;
  binary: ``real``), with the fraction **undecided** (``3``);
* **sensitivity / specificity for spotting synthetic** (synthetic = positive): sensitivity is the
  fraction of synthetic cases rated below the midpoint (``1-2``; binary: ``synthetic``),
  specificity the fraction of real cases *not* rated below it;

each with a bootstrap CI. **Pooled** over readers: the reader-averaged AUC (and the averaged
fractions), with a CI from one bootstrap over cases that resamples the same cases for every
reader (each resample evaluates all readers on it, then averages), so the CI carries the
case-sampling variance shared by the readers. Every reader must rate every case. The results are
written as ``reader_study.json`` and ``reader_study.md`` (:func:`write_results`).

Answer files are checked before anything is scored; each problem is one :class:`MedsynthError`
naming the file: unreadable, missing columns, unknown cases, missing cases, duplicate answers,
ratings off the scale, an empty reader name, a reader in two files.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import re
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from medsynth.atomic import atomic_path, write_text
from medsynth.data.dataset import load_image_set
from medsynth.data.imageset import ImageSet
from medsynth.data.manifest import read_manifest
from medsynth.data.writers import unit_to_dx, unit_to_uint, write_ct_series, write_csv, write_dicom_dx
from medsynth.errors import MedsynthError
from medsynth.metrics.stats import bootstrap_ci
from medsynth.results import jsonable

log = logging.getLogger(__name__)

#: rating scales: name -> the allowed ratings (as written in answer files), lowest (synthetic) first
SCALES: dict[str, tuple[str, ...]] = {
    "confidence": ("1", "2", "3", "4", "5"),
    "binary": ("synthetic", "real"),
}
FORMATS = ("png", "dicom")
README = "README.txt"
TEMPLATE = "responses_template.csv"
KEY_FILE = "key.csv"
STUDY_FILE = "study.json"
SOURCES_FILE = Path("local") / "sources.csv"
RESULTS_JSON = "reader_study.json"
RESULTS_MD = "reader_study.md"
KIND = "reader_study"
SCHEMA_VERSION = 1
#: the description written into every DICOM case (identical for real and synthetic cases)
CASE_DESCRIPTION = "reader study case"
_CASE = re.compile(r"^case_(\d+)$")


# ============================================================================ build
@dataclass(frozen=True)
class BuiltStudy:
    """What :func:`build` wrote.

    Attributes:
        cases: the case folder (hand it to the readers).
        key: the answer-key folder (keep it apart).
        case_files: the case files, in case order.
        n_real, n_synthetic: how many of each.
        generator: the synthetic images' origin (run name, or the source's shareable name).
    """

    cases: Path
    key: Path
    case_files: tuple[Path, ...]
    n_real: int
    n_synthetic: int
    generator: str


def default_key_folder(cases: str | Path) -> Path:
    """The default answer-key folder of a case folder: the sibling ``<cases>_key/``."""
    cases = Path(cases)
    return cases.parent / f"{cases.name}_key"


def _inside(a: Path, b: Path) -> bool:
    """Whether ``a`` is ``b`` or lies under it (both resolved)."""
    a, b = a.resolve(), b.resolve()
    return a == b or b in a.parents


def _check_folders(cases: Path, key: Path) -> None:
    if _inside(key, cases):
        raise MedsynthError("--key-out", f"{key} is inside the case folder {cases}: the answer key must be kept "
                                         "apart from the cases the readers get (default: the sibling "
                                         f"{default_key_folder(cases).name}/)")
    if _inside(cases, key):
        raise MedsynthError("--out", f"the case folder {cases} is inside the answer-key folder {key}: keep them apart")


def _is_run(source: Path) -> bool:
    return source.is_dir() and (source / "checkpoints").is_dir() and (source / "config.yaml").is_file()


def _synthetic_from_run(run: Path, n: int, seed: int, modality: str | None) -> tuple[ImageSet, dict]:
    """``n`` images sampled now from the run's generator (balanced classes for a conditional one)."""
    from medsynth.data.writers import sample_in_batches
    from medsynth.runs import load_trained

    cfg, model, _ = load_trained(run)
    d = cfg.data
    if modality is not None and modality != d.modality:
        raise MedsynthError("--modality", f"the run {run.name} makes {d.modality} images, not {modality}")
    if d.spatial_dims != 2:
        raise MedsynthError(run, "a reader study shows 2D images; this run makes 3D volumes")
    if model.supports_translation or model.supports_pairs:
        raise MedsynthError(run, f"{cfg.model.name} does not sample single images: write its output with "
                                 "`medsynth generate` and pass that manifest as --synthetic")
    labels = None if model.num_classes <= 0 else torch.arange(n) % model.num_classes
    g = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        images = sample_in_batches(model, n, labels=labels, generator=g, desc="reader-study: sampling").cpu()
    lab = labels if labels is not None else torch.full((n,), -1, dtype=torch.long)
    ims = ImageSet(images=images.float().clamp(-1, 1), labels=lab, patient_ids=[""] * n,
                   paths=[f"run:{run.name}#{i}" for i in range(n)], splits=[""] * n, modality=d.modality)
    info = {"run": run.name, "model": cfg.model.name, "size": int(d.size), "modality": d.modality,
            "ct_window": d.ct_window, "sampled": True}
    return ims, info


def _refuse_non_synthetic_rows(source: Path) -> None:
    """A synthetic manifest whose ``source`` column lists real or translated rows is refused."""
    if not (source.is_file() and source.suffix.lower() == ".csv"):
        return
    df = read_manifest(source)
    if "source" in df.columns:
        bad = df[df["source"].astype(str).str.lower().isin(["real", "translated"])]
        if len(bad):
            raise MedsynthError(source, f"lists {len(bad)} row(s) with source {bad['source'].iloc[0]!r} (e.g. "
                                        f"{Path(str(bad['path'].iloc[0])).name}): a reader study's synthetic side "
                                        "must hold synthetic images only")


def _generator_of(source: Path) -> str | None:
    """The run that wrote a ``RUN/synthetic/manifest.csv`` (``medsynth generate``'s default), if any."""
    folder = source.parent if source.is_file() else source
    run = folder.parent
    return run.name if (run / "config.yaml").is_file() else None


def _pseudonyms(patient_ids: list[str]) -> list[str]:
    """``P0000``... in the sorted order of the distinct IDs of the whole loaded source."""
    index = {pid: i for i, pid in enumerate(sorted(set(patient_ids)))}
    width = max(4, len(str(len(index))))
    return [f"P{index[p]:0{width}d}" for p in patient_ids]


def _source_name(source: Path, images: torch.Tensor) -> str:
    from medsynth.runs import images_fingerprint, shareable_source

    return shareable_source(str(source), fingerprint=images_fingerprint(images))


def _draw(n_have: int, n_want: int, rng: np.random.Generator, what: str, source) -> np.ndarray:
    if n_want > n_have:
        raise MedsynthError(source, f"holds {n_have} {what} image(s); the study asks for {n_want}")
    return np.sort(rng.choice(n_have, size=n_want, replace=False))


def _image_hashes(images: torch.Tensor) -> list[bytes]:
    import hashlib

    x = images.detach().cpu().float().contiguous().numpy()
    return [hashlib.sha256(a.tobytes()).digest() for a in x]


# ---------------------------------------------------------------------------- case writers
def _write_case_png(path: Path, image: np.ndarray, bits: int) -> None:
    """Greyscale PNG, no ancillary chunk, zlib level 0 (size set by the dimensions alone)."""
    from PIL import Image

    pil = Image.fromarray(unit_to_uint(image, bits))
    with atomic_path(path, ".png") as tmp:
        pil.save(tmp, format="PNG", compress_level=0)


def _case_uid(root: str, number: int) -> str:
    """A case's SOP instance UID: the study root + a fixed-width component (equal lengths)."""
    return f"{root}.1{number:06d}"


def _write_case_dicom(path: Path, image: np.ndarray, *, number: int, width: int, modality: str, root: str,
                      ct_window) -> None:
    """A DICOM case: DX (X-ray, 12-bit) or a CT slice (HU), one header layout for every case."""
    import pydicom
    from medsynth.data.windows import unit_to_hu

    case = f"{number:0{width}d}"
    ident = dict(patient_id=f"CASE-{case}", patient_name=f"CASE^{case}", study_uid=f"{root}.0",
                 series_uid=f"{root}.1", series_number=1)
    if modality == "xray":
        written = write_dicom_dx(path, unit_to_dx(image), instance_number=number,
                                 series_description=CASE_DESCRIPTION, sop_uid=_case_uid(root, number), **ident)
    else:
        hu = unit_to_hu(np.clip(image, -1, 1), ct_window)
        written = write_ct_series(path.parent, hu, series_description=CASE_DESCRIPTION, window=ct_window,
                                  prefix=f".{path.stem}", **ident)[0]
    ds = pydicom.dcmread(written)
    ds.ImageType = ["DERIVED", "SECONDARY"] + (["AXIAL"] if modality == "ct" else [])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = _case_uid(root, number)
    ds.InstanceNumber = number
    if modality == "ct":
        ds.FrameOfReferenceUID = f"{root}.2"
    with atomic_path(path, ".dcm") as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    if Path(written) != path:
        Path(written).unlink()


def _readme(*, n_cases: int, fmt: str, scale: str, first: str, last: str) -> str:
    if scale == "confidence":
        how = ("rating: an integer from 1 to 5, your confidence that the image is REAL:\n"
               "              5 = certainly real, 4 = probably real, 3 = cannot say,\n"
               "              2 = probably synthetic, 1 = certainly synthetic")
    else:
        how = "rating: real or synthetic (the word), whichever you think the image is"
    return f"""READER STUDY: real or synthetic?  ({n_cases} cases, {first} .. {last}, {fmt.upper()})

This folder holds a randomised, blinded mix of real chest images and synthetic images made by a
generative model (medsynth). The proportion of each is not disclosed. For every case, say whether
you think the image is real.

HOW TO ANSWER
  Copy {TEMPLATE}, fill in the columns
    case:   the case number as given (e.g. {first}); do not change it
    reader: your reader name or code, the same on every row
    {how}
  one row per case, every case rated once, and return the CSV to the study organiser.
  Look at the images with any viewer, in any order; do not compare notes with other readers.

RULES: THESE FILES MUST NEVER LEAVE THE STUDY
  * The synthetic images here carry NO marking that they are synthetic (everywhere else medsynth
    marks them in the file); the real images are patient images. Outside this study a synthetic
    case could pass for a patient's image, and a real case is patient data.
  * Do not copy the case files into a PACS, a teaching file, a data set or any other folder; do not
    pass them on. Delete them when the study ends.
  * The answer key is kept apart by the organiser; nothing in these files says which case is which.
"""


def build(
    real: str | Path,
    synthetic: str | Path,
    *,
    out: str | Path,
    key_out: str | Path | None = None,
    n_real: int,
    n_synthetic: int,
    fmt: str = "png",
    scale: str = "confidence",
    seed: int = 0,
    modality: str | None = None,
    size: int | None = None,
    ct_window: str | tuple[float, float] = "lung",
    overwrite: bool = False,
) -> BuiltStudy:
    """Write a blinded reader study: shuffled case files, a README, a response template, and the key apart.

    Args:
        real: real data: a manifest CSV, folder, ``.npz`` or the LIDC folder.
        synthetic: a synthetic manifest CSV / folder / ``.npz`` (e.g. ``RUN/synthetic/manifest.csv``
            from ``medsynth generate``), or a run directory (sampled now with ``seed``).
        out: the case folder (new or empty; ``overwrite`` replaces medsynth's earlier output).
        key_out: the answer-key folder; default :func:`default_key_folder` of ``out``. Refused
            inside ``out`` (and ``out`` inside it).
        n_real, n_synthetic: images drawn of each (>= 1; without replacement).
        fmt: ``"png"`` or ``"dicom"``.
        scale: ``"confidence"`` (1-5 that the image is real) or ``"binary"`` (real/synthetic).
        seed: seeds the draws, the shuffle and the sampling of a run.
        modality: ``"xray"`` or ``"ct"``; default: the run's, else ``"xray"``.
        size: side length of every case; default: the run's image size, else 64.
        ct_window: CT window (the run's when the synthetic source is a run).
        overwrite: replace medsynth's earlier output in ``out`` and the key folder.

    Returns:
        :class:`BuiltStudy`.

    Raises:
        MedsynthError: bad counts/format/scale, the key inside the case folder, sources that cannot
            be loaded or hold too few images, synthetic rows marked real, the same image on both
            sides, output folders not empty.
    """
    from medsynth.runs import check_output_folder, command_output

    cases = Path(out)
    key = Path(key_out) if key_out is not None else default_key_folder(cases)
    if fmt not in FORMATS:
        raise MedsynthError("--format", f"must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if scale not in SCALES:
        raise MedsynthError("--scale", f"must be one of {', '.join(SCALES)}, got {scale!r}")
    for option, n in (("--n-real", n_real), ("--n-synthetic", n_synthetic)):
        if int(n) < 1:
            raise MedsynthError(option, f"must be a number of images >= 1, got {n}")
    _check_folders(cases, key)
    check_output_folder(cases)
    check_output_folder(key)
    real, synthetic = Path(real), Path(synthetic)
    if not synthetic.exists():
        raise MedsynthError(synthetic, "not found")
    rng = np.random.default_rng(int(seed))

    if _is_run(synthetic):
        syn_set, gen = _synthetic_from_run(synthetic, int(n_synthetic), int(seed), modality)
        modality, ct_window = gen["modality"], gen["ct_window"]
        if size is not None and int(size) != gen["size"]:
            raise MedsynthError("--size", f"the run {synthetic.name} makes {gen['size']}px images; drop --size or "
                                          f"give --size {gen['size']}")
        size = gen["size"]
        syn_idx = np.arange(int(n_synthetic))
        generator = gen["run"]
    else:
        modality = modality or "xray"
        size = int(size or 64)
        _refuse_non_synthetic_rows(synthetic)
        syn_set = load_image_set(synthetic, modality=modality, size=size, spatial_dims=2, ct_window=ct_window)
        syn_idx = _draw(len(syn_set), int(n_synthetic), rng, "synthetic", synthetic)
        generator = _generator_of(synthetic) or f"synthetic:{_source_name(synthetic, syn_set.images)}"
        gen = {"run": _generator_of(synthetic), "source": generator, "sampled": False}
    real_set = load_image_set(real, modality=modality, size=size, spatial_dims=2, ct_window=ct_window)
    real_idx = _draw(len(real_set), int(n_real), rng, "real", real)

    # the same pixels on both sides would make the key contradict itself
    shared = set(_image_hashes(real_set.images[torch.as_tensor(real_idx)])) & set(
        _image_hashes(syn_set.images[torch.as_tensor(syn_idx)]))
    if shared:
        raise MedsynthError(synthetic, f"{len(shared)} drawn synthetic image(s) are pixel-identical to drawn real "
                                       "images: give a synthetic source that does not list real images")

    pseud = _pseudonyms(list(map(str, real_set.patient_ids)))
    rows = [("real", int(i)) for i in real_idx] + [("synthetic", int(i)) for i in syn_idx]
    order = rng.permutation(len(rows))
    n_cases = len(rows)
    width = max(4, len(str(n_cases)))
    root = _study_uid_root()
    t_common = time.time()
    key_rows, local_rows, files = [], [], []
    real_name = _source_name(real, real_set.images)
    with ExitStack() as stack:
        stack.enter_context(command_output(key, "reader-study build (answer key)", overwrite=overwrite,
                                           option="--key-out"))
        stack.enter_context(command_output(cases, "reader-study build", overwrite=overwrite))
        for k, j in enumerate(order, start=1):
            truth, i = rows[j]
            ims = real_set if truth == "real" else syn_set
            image = ims.images[i, 0].numpy()
            name = f"case_{k:0{width}d}"
            path = cases / f"{name}.{'png' if fmt == 'png' else 'dcm'}"
            if fmt == "png":
                _write_case_png(path, image, 16 if modality == "xray" else 8)
            else:
                _write_case_dicom(path, image, number=k, width=width, modality=modality, root=root,
                                  ct_window=ct_window)
            files.append(path)
            key_rows.append({"case": name, "truth": truth, "label": int(ims.labels[i]), "source_index": i,
                             "patient": pseud[i] if truth == "real" else "",
                             "generator": generator if truth == "synthetic" else ""})
            local_rows.append({"case": name, "truth": truth, "path": ims.paths[i]})
        first, last = key_rows[0]["case"], key_rows[-1]["case"]
        write_text(cases / README, _readme(n_cases=n_cases, fmt=fmt, scale=scale, first=first, last=last))
        write_csv(cases / TEMPLATE, pd.DataFrame({"case": [r["case"] for r in key_rows], "reader": "", "rating": ""}))
        for p in [*files, cases / README, cases / TEMPLATE]:
            os.utime(p, (t_common, t_common))  # no write order in the timestamps
        write_csv(key / KEY_FILE, pd.DataFrame(key_rows))
        write_csv(key / SOURCES_FILE, pd.DataFrame(local_rows))
        study = {"kind": "reader_study_key", "schema_version": SCHEMA_VERSION,
                 "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                 "n_cases": n_cases, "n_real": int(n_real), "n_synthetic": int(n_synthetic), "format": fmt,
                 "scale": scale, "ratings": list(SCALES[scale]), "seed": int(seed), "modality": modality,
                 "size": int(size), "real_source": real_name, "generator": {k: v for k, v in gen.items()
                                                                            if k not in ("ct_window",)},
                 "cases_folder": cases.name, "local": f"{SOURCES_FILE.as_posix()} names the input files: NEVER SHARE"}
        write_text(key / STUDY_FILE, json.dumps(jsonable(study), indent=1) + "\n")
    log.info("reader study: %d cases (%d real, %d synthetic) -> %s; key -> %s", n_cases, n_real, n_synthetic,
             cases, key)
    return BuiltStudy(cases=cases, key=key, case_files=tuple(files), n_real=int(n_real),
                      n_synthetic=int(n_synthetic), generator=generator)


def _study_uid_root() -> str:
    """A fresh UID root for one study, short enough for the case suffixes (<= 64 characters)."""
    from pydicom.uid import generate_uid

    root = generate_uid()
    return root[:54].rstrip(".")


# ============================================================================ score
def read_key(key: str | Path) -> tuple[pd.DataFrame, dict]:
    """The answer key: ``(key.csv as a DataFrame, study.json)``; ``key`` is the folder or its key.csv.

    Raises:
        MedsynthError: missing or malformed key files.
    """
    key = Path(key)
    folder = key.parent if key.is_file() else key
    csv, study_file = folder / KEY_FILE, folder / STUDY_FILE
    if not csv.is_file():
        raise MedsynthError(key, f"no {KEY_FILE} here: --key takes the answer-key folder `reader-study build` wrote")
    if not study_file.is_file():
        raise MedsynthError(folder, f"no {STUDY_FILE} beside {KEY_FILE}: not an answer-key folder of `reader-study build`")
    try:
        study = json.loads(study_file.read_text(encoding="utf-8"))
        df = pd.read_csv(csv, dtype=str, keep_default_na=False)
    except (json.JSONDecodeError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise MedsynthError(folder, f"unreadable answer key ({type(exc).__name__})") from None
    if not isinstance(study, dict) or study.get("scale") not in SCALES:
        raise MedsynthError(study_file, "names no known rating scale")
    missing = [c for c in ("case", "truth") if c not in df.columns]
    if missing or len(df) == 0 or not df["truth"].isin(["real", "synthetic"]).all():
        raise MedsynthError(csv, "malformed answer key (needs case and truth = real|synthetic on every row)")
    if df["case"].duplicated().any():
        raise MedsynthError(csv, f"malformed answer key: case {df['case'][df['case'].duplicated()].iloc[0]} twice")
    return df, study


def _case_name(value: str) -> str:
    """``case_0007`` from ``case_0007``, ``case_0007.png`` or ``case_0007.dcm`` (else as given)."""
    v = value.strip()
    for ext in (".png", ".dcm"):
        if v.lower().endswith(ext):
            v = v[: -len(ext)]
    return v


def read_answers(path: str | Path, cases: list[str], scale: str) -> dict[str, np.ndarray]:
    """One answer CSV: ``{reader: ratings (n_cases,) float, in the order of cases}``.

    Ratings are numbers: the confidence 1..5, or binary ``synthetic`` = 0, ``real`` = 1.

    Raises:
        MedsynthError: one line naming ``path`` and the problem (unreadable, columns, empty reader,
            unknown / missing / duplicate cases, a rating off the scale).
    """
    path = Path(path)
    if not path.is_file():
        raise MedsynthError(path, "answer file not found")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise MedsynthError(path, f"unreadable CSV ({type(exc).__name__})") from None
    df.columns = [str(c).strip().lstrip("\ufeff").lower() for c in df.columns]
    missing = [c for c in ("case", "reader", "rating") if c not in df.columns]
    if missing:
        raise MedsynthError(path, f"missing column(s) {', '.join(missing)}: an answer file has the columns case, "
                                  f"reader, rating (has {', '.join(df.columns) or 'none'})")
    if len(df) == 0:
        raise MedsynthError(path, "no answers (the file has a header only)")
    allowed = SCALES[scale]
    value = {r: float(v) for v, r in enumerate(allowed)} if scale == "binary" else {r: float(r) for r in allowed}
    index = {c: i for i, c in enumerate(cases)}
    out: dict[str, np.ndarray] = {}
    seen: dict[tuple[str, str], int] = {}
    for row_no, r in enumerate(df.to_dict("records"), start=2):  # row 1 is the header
        case, reader, rating = _case_name(str(r["case"])), str(r["reader"]).strip(), str(r["rating"]).strip()
        if not reader:
            raise MedsynthError(path, f"row {row_no} ({case}) names no reader")
        if case not in index:
            raise MedsynthError(path, f"row {row_no}: unknown case {case!r} (the study has {cases[0]} .. {cases[-1]})")
        if (reader, case) in seen:
            raise MedsynthError(path, f"duplicate answer: reader {reader!r} rated {case} twice (rows "
                                      f"{seen[reader, case]} and {row_no})")
        seen[reader, case] = row_no
        if not rating:
            raise MedsynthError(path, f"row {row_no}: no rating for {case} (reader {reader!r})")
        key = rating.lower() if scale == "binary" else _integer_text(rating)
        if key not in value:
            shown = "1-5 (confidence that the image is real)" if scale == "confidence" else "real or synthetic"
            raise MedsynthError(path, f"row {row_no}: rating {rating!r} for {case} (reader {reader!r}) is not on the "
                                      f"study's {scale} scale: {shown}")
        out.setdefault(reader, np.full(len(cases), np.nan))[index[case]] = value[key]
    for reader, ratings in out.items():
        gone = [cases[i] for i in np.flatnonzero(np.isnan(ratings))]
        if gone:
            raise MedsynthError(path, f"missing answers: reader {reader!r} did not rate {len(gone)} of {len(cases)} "
                                      f"case(s) (e.g. {', '.join(gone[:3])}); every case needs one rating")
    return out


def _integer_text(text: str) -> str:
    """``"4"`` for ``"4"``, ``"4.0"``; the text itself when it is no integer."""
    try:
        v = float(text)
    except ValueError:
        return text
    return str(int(v)) if np.isfinite(v) and v == int(v) else text


def delong(y_true, scores) -> dict:
    """AUC with DeLong's variance (structural components; exact for the empirical AUC, ties 1/2).

    Args:
        y_true: ``(N,)`` 1 = positive (real), 0 = negative (synthetic); both present.
        scores: ``(N,)`` ratings, higher = more likely positive.

    Returns:
        ``{"auc", "se", "lo", "hi"}``: the 95 % Wald interval ``auc +- 1.96 se`` clipped to [0, 1].
    """
    y = np.asarray(y_true).reshape(-1).astype(int)
    s = np.asarray(scores, np.float64).reshape(-1)
    pos, neg = s[y == 1], s[y == 0]
    m, n = len(pos), len(neg)
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])  # (m, n)
    auc = float(psi.mean())
    v10, v01 = psi.mean(1), psi.mean(0)
    var = (v10.var(ddof=1) / m if m > 1 else 0.0) + (v01.var(ddof=1) / n if n > 1 else 0.0)
    se = float(np.sqrt(var))
    return {"auc": auc, "se": se, "lo": max(0.0, auc - 1.96 * se), "hi": min(1.0, auc + 1.96 * se)}


def _mw_auc(y: np.ndarray, s: np.ndarray) -> float:
    """AUC by ranks (Mann-Whitney U / (m n), midranks for ties)."""
    from scipy.stats import rankdata

    r = rankdata(s)
    pos = y == 1
    m, n = int(pos.sum()), int((~pos).sum())
    return float((r[pos].sum() - m * (m + 1) / 2) / (m * n))


def _calls(ratings: np.ndarray, scale: str) -> tuple[np.ndarray, np.ndarray]:
    """``(judged real, called synthetic)`` indicators: above / below the scale's midpoint."""
    mid = 3.0 if scale == "confidence" else 0.5
    return (ratings > mid).astype(float), (ratings < mid).astype(float)


def _ci(point_ci) -> dict:
    return {"point": point_ci.point, "lo": point_ci.lo, "hi": point_ci.hi}


def _reader_figures(y_real: np.ndarray, ratings: np.ndarray, scale: str, n_boot: int, seed: int) -> dict:
    y_syn = 1 - y_real
    judged_real, called_syn = _calls(ratings, scale)
    auc = bootstrap_ci(y_real, ratings, "auroc", n_boot=n_boot, seed=seed)
    return {
        "auc": {**_ci(auc), "n_boot": auc.n_boot},
        "auc_delong": delong(y_real, ratings),
        # fraction of synthetic cases rated real = "sensitivity" of the judged-real call on synthetic cases
        "synthetic_judged_real": _ci(bootstrap_ci(y_syn, judged_real, "sensitivity", n_boot=n_boot, seed=seed)),
        "synthetic_undecided": float(((1 - judged_real - called_syn)[y_syn == 1]).mean()),
        "real_judged_real": float(judged_real[y_real == 1].mean()),
        "sensitivity": _ci(bootstrap_ci(y_syn, called_syn, "sensitivity", n_boot=n_boot, seed=seed)),
        "specificity": _ci(bootstrap_ci(y_syn, called_syn, "specificity", n_boot=n_boot, seed=seed)),
        "mean_rating": {"real": float(ratings[y_real == 1].mean()), "synthetic": float(ratings[y_real == 0].mean())},
    }


def _pooled(y_real: np.ndarray, ratings: np.ndarray, scale: str, n_boot: int, seed: int) -> dict:
    """Reader-averaged figures, CIs from one bootstrap over cases shared by all readers.

    ``ratings`` is ``(R, N)``. The bootstrap resamples case indices (the "score" handed to
    :func:`bootstrap_ci` is the case index), and each resample evaluates every reader on the same
    cases before averaging.
    """
    judged, called = zip(*(_calls(r, scale) for r in ratings))
    judged, called = np.stack(judged), np.stack(called)
    idx = np.arange(len(y_real), dtype=float)

    def mean_auc(y, case):
        c = case.astype(int)
        return float(np.mean([_mw_auc(y, r[c]) for r in ratings]))

    def frac(indicator, cls):
        def f(y, case):
            c = case.astype(int)
            return float(indicator[:, c][:, y == cls].mean())
        return f

    def boot(metric):
        return bootstrap_ci(y_real, idx, metric, n_boot=n_boot, seed=seed)

    auc = boot(mean_auc)
    return {
        "auc": {**_ci(auc), "n_boot": auc.n_boot},
        "synthetic_judged_real": _ci(boot(frac(judged, 0))),
        "sensitivity": _ci(boot(frac(called, 0))),
        "specificity": _ci(boot(frac(1 - called, 1))),
    }


def interpret(pooled_auc: dict, n_readers: int) -> str:
    """One line reading the pooled AUC and its CI (0.5 = readers cannot tell)."""
    p, lo, hi = pooled_auc["point"], pooled_auc["lo"], pooled_auc["hi"]
    who = "the reader" if n_readers == 1 else f"the {n_readers} readers"
    figure = f"pooled AUC {p:.2f} [95% CI {lo:.2f}, {hi:.2f}]"
    if lo <= 0.5 <= hi:
        return (f"{figure} covers 0.5: {who} could not tell real from synthetic images on these cases "
                "(not proof that they are indistinguishable: a wide CI means too few cases)")
    if lo > 0.5:
        return f"{figure} lies above 0.5: {who} told real from synthetic images better than chance"
    return f"{figure} lies below 0.5: {who} rated synthetic images as more real than the real ones"


def score(key: str | Path, answers: list[str | Path], *, n_boot: int = 1000, seed: int = 0) -> dict:
    """Score readers' answers against the key.

    Args:
        key: the answer-key folder (or its ``key.csv``).
        answers: one or more answer CSVs (``case, reader, rating``).
        n_boot: bootstrap resamples (>= 1).
        seed: seed of the bootstrap.

    Returns:
        The results dict written by :func:`write_results` (``kind`` ``reader_study``): ``study``,
        ``method``, ``readers`` (one dict per reader), ``pooled``, ``interpretation``.

    Raises:
        MedsynthError: a bad key or answer file (one line naming it), no answer file, a reader in
            two files.
    """
    if not answers:
        raise MedsynthError("--answers", "give at least one answer CSV")
    if int(n_boot) < 1:
        raise MedsynthError("--n-boot", f"must be >= 1, got {n_boot}")
    kdf, study = read_key(key)
    scale = study["scale"]
    cases = list(kdf["case"])
    y_real = (kdf["truth"] == "real").to_numpy().astype(int)
    if y_real.min() == y_real.max():
        raise MedsynthError(key, "the key holds one class only: nothing to score")
    readers: dict[str, np.ndarray] = {}
    files: dict[str, str] = {}
    for f in answers:
        for reader, ratings in read_answers(f, cases, scale).items():
            if reader in readers:
                raise MedsynthError(f, f"reader {reader!r} also answers in {files[reader]}: give each reader's "
                                       "answers in one file")
            readers[reader], files[reader] = ratings, Path(f).name
    names = sorted(readers)
    per_reader = []
    for name in names:
        fig = _reader_figures(y_real, readers[name], scale, int(n_boot), int(seed))
        per_reader.append({"reader": name, "file": files[name], "n_cases": len(cases), **fig})
    pooled = _pooled(y_real, np.stack([readers[n] for n in names]), scale, int(n_boot), int(seed))
    pooled["mean_reader_auc"] = float(np.mean([r["auc"]["point"] for r in per_reader]))
    mid = "3 (confidence 1-5)" if scale == "confidence" else "between synthetic and real"
    return {
        "kind": KIND, "schema_version": SCHEMA_VERSION,
        "study": {k: study.get(k) for k in ("n_cases", "n_real", "n_synthetic", "format", "scale", "modality",
                                            "size", "seed", "generator", "real_source", "created")},
        "method": {
            "auc": "Mann-Whitney AUC of the ratings for real (positive) vs synthetic; ties count 1/2; "
                   f"95% CI: percentile bootstrap over cases ({n_boot} resamples, seed {seed}; resamples lacking "
                   "a class redrawn); auc_delong: DeLong variance, Wald 95% CI",
            "synthetic_judged_real": f"fraction of synthetic cases rated above the midpoint {mid}",
            "sensitivity": "spotting synthetic (positive = synthetic): fraction of synthetic cases rated below "
                           "the midpoint",
            "specificity": "fraction of real cases not rated below the midpoint",
            "pooled": "mean over readers; 95% CI from one percentile bootstrap over cases, the same resampled "
                      "cases for every reader in each resample",
        },
        "readers": per_reader,
        "pooled": pooled,
        "interpretation": interpret(pooled["auc"], len(names)),
    }


def _f(v) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{v:.3f}"


def _with_ci(d: dict) -> str:
    return f"{_f(d['point'])} [{_f(d['lo'])}, {_f(d['hi'])}]"


def results_markdown(res: dict) -> str:
    """The Markdown table of :func:`score`'s results."""
    st = res["study"]
    gen = st.get("generator") or {}
    lines = [
        "# Reader study: real or synthetic?",
        "",
        f"{st.get('n_cases')} cases ({st.get('n_real')} real, {st.get('n_synthetic')} synthetic; "
        f"{st.get('modality')}, {st.get('size')} px, {st.get('format')}), {st.get('scale')} scale; "
        f"synthetic images from {gen.get('run') or gen.get('source')}; real images: {st.get('real_source')}.",
        "",
        f"**{res['interpretation']}**",
        "",
        "| reader | AUC [95% CI, bootstrap] | AUC DeLong CI | synthetic judged real | synthetic undecided | "
        "sensitivity (spot synthetic) | specificity |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in res["readers"]:
        dl = r["auc_delong"]
        lines.append(f"| {r['reader']} | {_with_ci(r['auc'])} | [{_f(dl['lo'])}, {_f(dl['hi'])}] | "
                     f"{_with_ci(r['synthetic_judged_real'])} | {_f(r['synthetic_undecided'])} | "
                     f"{_with_ci(r['sensitivity'])} | {_with_ci(r['specificity'])} |")
    p = res["pooled"]
    lines.append(f"| **pooled** (mean of readers) | {_with_ci(p['auc'])} | | {_with_ci(p['synthetic_judged_real'])} | "
                 f"| {_with_ci(p['sensitivity'])} | {_with_ci(p['specificity'])} |")
    lines += ["", "Method:", ""] + [f"* {k}: {v}" for k, v in res["method"].items()] + [""]
    return "\n".join(lines)


def write_results(res: dict, out: str | Path) -> tuple[Path, Path]:
    """Write ``reader_study.json`` and ``reader_study.md`` into ``out`` (atomic); returns both paths."""
    out = Path(out)
    j = write_text(out / RESULTS_JSON, json.dumps(jsonable(res), indent=1) + "\n")
    m = write_text(out / RESULTS_MD, results_markdown(res))
    return j, m
