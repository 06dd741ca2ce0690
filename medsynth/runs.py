"""Run directories and their checkpoints: one module that training, metrics, the report and the CLI
all use to write, find and read what ``medsynth train`` leaves behind.

A run directory holds ``config.yaml``, ``stats.jsonl``, ``samples/`` and ``checkpoints/last.pt``,
``data_report.json`` (images loaded, skipped input files with reasons), ``resumes.jsonl`` (each
``--resume`` and the settings it changed) and ``.lock`` (:func:`run_lock`: one writer at a time).
Checkpoints are state_dicts + the resolved config + versions, written atomically and loaded with
``torch.load(weights_only=True)``; whole modules are never pickled. A start that fails before its
first checkpoint leaves no run directory (:func:`discard_on_failure`). Folders that commands write
files into (``generate``, ``augment``) go through :func:`command_output`: never mixed with earlier
output, which only ``--overwrite`` replaces, and only the files recorded in ``medsynth-outputs.json``.

Privacy: nothing a run may share (``config.yaml``, checkpoints, ``evaluate/``, reports, synthetic
files) holds the path of its input data, which hospitals often name by patient or accession
number. The run records its data source as :func:`shareable_source` (``default``, a path relative
to a declared data root, or a content fingerprint of the images, :func:`images_fingerprint`); the
real path, needed to reload the data (``evaluate``/``report`` default, ``train --resume``), lives
only in ``RUN/local/data_source.json`` (:data:`DATA_SOURCE_FILE`): a local file, never to be shared.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from medsynth.atomic import atomic_path, write_text
from medsynth.errors import MedsynthError

log = logging.getLogger(__name__)

#: The checkpoint of a run, relative to its directory.
CHECKPOINT = "checkpoints/last.pt"
#: The writer lock of a run (:func:`run_lock`), relative to its directory.
LOCK_FILE = ".lock"
#: The allowed changes each ``train --resume`` applied (JSON lines: time, step, changes).
RESUMES_FILE = "resumes.jsonl"
#: What ``medsynth train`` loaded: image count and every skipped input file with its reason.
DATA_REPORT_FILE = "data_report.json"
#: The record of the files a command (``generate``, ``augment``) wrote into its output folder,
#: relative to that folder: what ``--overwrite`` may remove there, and nothing else.
OUTPUTS_FILE = "medsynth-outputs.json"
#: Locks this process holds: lock file's real path -> [file descriptor, depth].
_HELD: dict[str, list[int]] = {}
#: The run's local folder: what must never leave this machine (the input paths). Nothing outside it
#: in the run directory holds what it holds.
LOCAL_DIR = "local"
#: The real path(s) of a run's training data (written by ``medsynth train``), relative to the run.
DATA_SOURCE_FILE = Path(LOCAL_DIR) / "data_source.json"
#: The names of the files a start skipped (local: names may carry patient or accession numbers).
SKIPPED_FILES_FILE = Path(LOCAL_DIR) / "skipped_files.json"
#: The environment variable that declares the data root (``--data-root`` on the command line).
DATA_ROOT_ENV = "MEDSYNTH_DATA_ROOT"
_LOCAL_WARNING = ("do not share: this file holds your input path(s), which may name patients or accession "
                  "numbers; nothing else in the run directory holds them")


def versions() -> dict[str, str]:
    """Versions of medsynth, torch, MONAI (``"not installed"`` where training runs without it,
    e.g. a GPU box with torch alone: the loop does not need MONAI) and Python."""
    from importlib import metadata

    import medsynth

    try:  # the installed distribution's version: no import of MONAI (seconds) just to read it
        monai_version = metadata.version("monai")
    except metadata.PackageNotFoundError:
        monai_version = "not installed"
    return {"medsynth": str(medsynth.__version__), "torch": str(torch.__version__), "monai": monai_version,
            "python": platform.python_version()}


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` (tensors, numbers, strings, nested dicts/lists) atomically."""
    with atomic_path(path) as tmp:
        torch.save({**payload, "versions": versions()}, tmp)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``); one-line error if unreadable."""
    path = Path(path)
    if not path.exists():
        raise MedsynthError(path, "checkpoint not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt, truncated, or not a medsynth checkpoint
        detail = (str(exc).strip().splitlines() or ["no detail"])[0][:120]  # EOFError of an empty file: no text
        raise MedsynthError(path, f"not a readable medsynth checkpoint ({type(exc).__name__}: {detail})") from None


def checkpoint_path(run: str | Path) -> Path:
    """``run/checkpoints/last.pt`` for a run directory; a checkpoint file is returned as it is."""
    run = Path(run)
    return run / CHECKPOINT if run.is_dir() else run


def load_trained(run: str | Path) -> tuple[Any, Any, dict]:
    """Rebuild a trained variant from a run directory (or a checkpoint file).

    Returns:
        ``(config, model, checkpoint)``: the run's :class:`~medsynth.config.RunConfig`, the
        variant in eval mode on the CPU, and the checkpoint dict.
    """
    from medsynth.config import from_dict
    from medsynth.models.registry import build_model

    ckpt = checkpoint_path(run)
    ck = load_checkpoint(ckpt)
    cfg = from_dict(ck["config"], str(ckpt))
    model = build_model(cfg.model)
    model.load_state_dict(ck["model"])
    model.eval()
    return cfg, model, ck


def find_run(parent: str | Path) -> Path | None:
    """The newest run directory (one holding a ``config.yaml``) under ``parent``, or None."""
    parent = Path(parent)
    runs = sorted(p for p in parent.glob("*") if (p / "config.yaml").is_file()) if parent.is_dir() else []
    return runs[-1] if runs else None


def checkpoint_progress(run: str | Path) -> dict | None:
    """``{"step", "seconds", "cpu_seconds"}`` of a run's last checkpoint, or None if it has none."""
    ck = checkpoint_path(run)
    if not ck.is_file():
        return None
    d = load_checkpoint(ck)
    return {"step": int(d["step"]), "seconds": float(d["seconds"]), "cpu_seconds": float(d.get("cpu_seconds", 0.0))}


def describe_dp(summary: dict | None) -> str:
    """The one-line differential-privacy statement of a run (``summary`` from a checkpoint's ``dp``)."""
    if not summary:
        return "not used (the run was trained without differential privacy; no epsilon to report)"
    eps = summary.get("epsilon")
    eps_s = "infinite (no noise)" if eps is None else f"{eps:.3g}"
    return (f"{summary['mechanism']}: epsilon = {eps_s} at delta = {summary['delta']:.3g} after "
            f"{summary['private_updates']} updates (noise multiplier {summary['noise_multiplier']:.3g}, "
            f"clipping norm {summary['max_grad_norm']:.3g}, sample rate {summary['sample_rate']:.3g}, "
            f"{summary['accountant']} accountant); covers {summary['scope']}")


# --------------------------------------------------------------------------------------------
# one writer per run: the run lock; no half-made run folders


def _lock_holder(fd: int) -> str:
    """What the lock file says of its holder (``pid 123 on host``), or a generic phrase."""
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 256).decode("utf-8", "replace").strip()
    return text or "another process (its PID not yet written)"


@contextmanager
def run_lock(run_dir: str | Path) -> Iterator[Path]:
    """Hold the run's writer lock (``RUN/.lock``) for the block; re-entrant within one process.

    The lock is an ``fcntl.flock`` on ``RUN/.lock`` (created if missing), which holds
    ``pid <PID> on <host>`` while it is held and is emptied on release. The kernel drops the lock
    when its process dies, so a lock file left by a killed process does not block; the file itself
    stays (removing it could let two writers lock two different files). A run on a shared file
    system across machines is protected only where that file system supports ``flock``.

    Args:
        run_dir: an existing run directory.

    Yields:
        The lock file.

    Raises:
        MedsynthError: another process holds the lock (one line naming its PID and host), or the
            run folder cannot be written.
    """
    run_dir = Path(run_dir)
    path = run_dir / LOCK_FILE
    key = os.path.realpath(path)
    if key in _HELD:  # this process already holds it (the CLI locks before loading data, then train() again)
        _HELD[key][1] += 1
        try:
            yield path
        finally:
            _HELD[key][1] -= 1
        return
    import fcntl

    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise MedsynthError(run_dir, f"cannot write the run folder ({exc.strerror})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _lock_holder(fd)
        os.close(fd)
        raise MedsynthError(run_dir, f"the run is being written by {holder} (another `medsynth train`); "
                                     "wait for it to finish or stop it, then retry") from None
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        _HELD[key] = [fd, 1]
        yield path
    finally:
        _HELD.pop(key, None)
        os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def check_output_folder(folder: str | Path) -> None:
    """Check up front that ``folder`` is, or can be made, a folder this process can write into.

    Creates what is missing and a probe file in it, then removes both: nothing is left behind.

    Raises:
        MedsynthError: one line naming the path: it (or a parent) is a file, or it cannot be
            created or written (permissions, a read-only or virtual file system such as ``/proc``).
    """
    folder = Path(folder)
    missing, p = [], folder
    while not p.is_dir() and not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    if p.exists() and not p.is_dir():
        raise MedsynthError(p, "is a file, not a folder" if p == folder else
                               f"is a file, so the output folder {folder} cannot be made under it")
    made: list[Path] = []
    try:
        for m in reversed(missing):
            m.mkdir()
            made.append(m)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".medsynth-write-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise MedsynthError(folder, f"cannot write this output folder ({exc.strerror or exc})") from None
    finally:
        for m in reversed(made):
            m.rmdir()


def _files_under(folder: Path) -> set[str]:
    """Every file (and symbolic link) under ``folder``, as posix paths relative to it."""
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() or p.is_symlink()}


def _remove_files(folder: Path, files: list[str] | set[str]) -> int:
    """Remove ``files`` (paths relative to ``folder``; none outside it) and the sub-folders that
    leaves empty. Returns how many files were removed."""
    root, removed = folder.resolve(), 0
    for rel in files:
        target = folder / rel
        if root not in target.resolve().parents or not (target.is_file() or target.is_symlink()):
            continue  # never outside the folder; a listed file already gone is fine
        target.unlink()
        removed += 1
    for sub in sorted({(folder / rel).parent for rel in files}, key=lambda p: len(p.parts), reverse=True):
        while sub != folder and sub.is_dir() and root in sub.resolve().parents and not any(sub.iterdir()):
            sub.rmdir()
            sub = sub.parent
    return removed


def _prepare_output_folder(folder: Path, *, overwrite: bool, option: str) -> set[str]:
    """Check ``folder`` and clear medsynth's earlier output from it (see :func:`command_output`).
    Returns the files it holds afterwards (the user's own, kept by ``overwrite``)."""
    check_output_folder(folder)
    folder.mkdir(parents=True, exist_ok=True)
    present = _files_under(folder)
    if not present:
        return set()
    if not overwrite:
        example = min(present)
        raise MedsynthError(folder, f"already holds {len(present)} file(s) (e.g. {example}); outputs are not mixed: "
                                    f"give an empty or new {option}, or pass --overwrite to replace medsynth's "
                                    f"earlier output there (only the files listed in its {OUTPUTS_FILE})")
    record = folder / OUTPUTS_FILE
    if not record.is_file():
        raise MedsynthError(folder, f"holds {len(present)} file(s) but no {OUTPUTS_FILE}, so --overwrite cannot tell "
                                    f"medsynth's files from others: give an empty or new {option}")
    try:
        listed = [str(f) for f in json.loads(record.read_text(encoding="utf-8"))["files"]]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise MedsynthError(record, f"unreadable ({type(exc).__name__}): cannot tell which files medsynth wrote; "
                                    f"give an empty or new {option}") from None
    removed = _remove_files(folder, listed)
    record.unlink()
    kept = _files_under(folder)
    log.warning("--overwrite: removed %d file(s) of medsynth's earlier output in %s%s", removed, folder,
                f"; kept {len(kept)} file(s) it did not write" if kept else "")
    return kept


@contextmanager
def command_output(folder: str | Path, command: str, *, overwrite: bool = False,
                   option: str = "--out") -> Iterator[Path]:
    """The output folder of a command that writes files into it (``generate``, ``augment``), for the block.

    Before the block: the folder is checked writable (:func:`check_output_folder`) and created.
    A folder that already holds files is refused without ``overwrite`` (outputs are never mixed:
    an old file the new manifest does not list would pass for part of the new set). With
    ``overwrite`` exactly the files medsynth recorded in the folder's :data:`OUTPUTS_FILE` (the
    earlier output of a command, its manifest included) are removed, with the record and the
    sub-folders that leaves empty; other files are never touched (kept, with a warning), and a
    folder with files but no record is refused. After the block: the files it wrote are recorded
    in :data:`OUTPUTS_FILE`; if the block fails (Ctrl-C included) they are removed instead (and the
    folder, when this call made it).

    Args:
        folder: the output folder.
        command: the command's name (written in the record).
        overwrite: replace medsynth's earlier output recorded in the folder.
        option: the option naming the folder, for messages.

    Yields:
        ``folder`` as a Path.

    Raises:
        MedsynthError: one line naming the folder: not writable, or not empty (and what to do).
    """
    folder = Path(folder)
    made = not folder.exists()
    before = _prepare_output_folder(folder, overwrite=overwrite, option=option)
    try:
        yield folder
    except BaseException:
        _remove_files(folder, _files_under(folder) - before)
        if made and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
        raise
    files = sorted(_files_under(folder) - before - {OUTPUTS_FILE})
    write_text(folder / OUTPUTS_FILE, json.dumps({"command": f"medsynth {command}", "files": files}, indent=1) + "\n")


def _read_outputs_record(folder: Path) -> dict | None:
    """``folder``'s :data:`OUTPUTS_FILE` as a dict, ``None`` when there is none or it is unreadable
    (an unreadable record is never resumed; :func:`_prepare_output_folder` refuses it)."""
    try:
        rec = json.loads((folder / OUTPUTS_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return rec if isinstance(rec, dict) else None


def _differences(recorded: dict, given: dict) -> list[str]:
    """``key recorded -> given`` for every argument that differs (paths appear as digests)."""
    return [f"{k} {recorded.get(k)!r} -> {given.get(k)!r}" for k in sorted(set(recorded) | set(given))
            if recorded.get(k) != given.get(k)]


class ResumableOutput:
    """The output folder of a command that writes it in steps and can be continued
    (:func:`resumable_output`).

    Attributes:
        folder: the output folder.
        progress: what the command saved with :meth:`save` before it was interrupted (``{}`` on a
            fresh start): where to continue.
        complete: the folder already holds this command's finished output with the same arguments
            (``--continue`` of a finished command: nothing to do).
    """

    def __init__(self, folder: Path, command: str, arguments: dict, kept: set[str], progress: dict,
                 listed: set[str], complete: bool = False):
        self.folder, self.command, self.arguments = folder, command, arguments
        self.kept, self.progress, self.complete = kept, progress, complete
        self._listed = set(listed)

    def _record(self, state: str, files: set[str], progress: dict | None) -> None:
        rec = {"command": f"medsynth {self.command}", "state": state, "arguments": self.arguments,
               "files": sorted(files)}
        if progress is not None:
            rec["progress"] = progress
            rec["kept"] = sorted(self.kept)
        write_text(self.folder / OUTPUTS_FILE, json.dumps(rec, indent=1) + "\n")

    def save(self, progress: dict, planned=()) -> None:
        """Record ``progress`` (JSON-ready: where to continue) and the files written so far, plus
        ``planned`` (paths relative to the folder) about to be written: listed before they exist, so
        that ``--overwrite`` removes them even after a SIGKILL in the middle of writing them."""
        self._listed |= (_files_under(self.folder) - self.kept - {OUTPUTS_FILE}) | {str(p) for p in planned}
        self.progress = progress
        self._record("unfinished", self._listed, progress)

    def _interrupted(self) -> None:
        self._listed |= _files_under(self.folder) - self.kept - {OUTPUTS_FILE}
        self._record("unfinished", self._listed, self.progress)

    def _finish(self) -> None:
        files = _files_under(self.folder) - self.kept - {OUTPUTS_FILE}
        self._record("complete", files, None)


def _remove_temporary_leftovers(folder: Path, files) -> int:
    """Remove the temporary files :func:`medsynth.atomic.atomic_path` left beside ``files`` when a
    process was killed while writing them (``.<name>.<random><suffix>``); nothing else."""
    removed = 0
    for rel in files:
        target = folder / rel
        if target.parent.is_dir():
            for tmp in target.parent.glob(f".{target.name}.*"):
                if tmp.is_file():
                    tmp.unlink()
                    removed += 1
    return removed


@contextmanager
def resumable_output(folder: str | Path, command: str, arguments: dict, *, overwrite: bool = False,
                     resume: bool = False, option: str = "--out") -> Iterator[ResumableOutput]:
    """The output folder of a command that writes it in steps (``generate``): like
    :func:`command_output`, except that an interrupted command can be continued.

    The record (:data:`OUTPUTS_FILE`) is written as soon as the block starts, marked
    ``"state": "unfinished"`` with ``arguments`` and the caller's progress (:meth:`ResumableOutput.save`),
    and marked ``complete`` (files listed, progress dropped) when the block ends. If the block fails,
    Ctrl-C included, the files written so far are KEPT and listed (a SIGKILL leaves the record of
    the last save): the same command with ``resume`` continues from the saved progress, and
    ``overwrite`` removes them all as usual.

    Args:
        folder: the output folder.
        command: the command's name (in the record).
        arguments: JSON-ready values of every argument the output depends on; a resume with other
            values is refused. Input paths are given as digests (the record lies in a shared folder).
        overwrite: replace medsynth's earlier output recorded in the folder (finished or not).
        resume: continue an unfinished output of ``command`` with the same ``arguments``; on a new or
            empty folder it starts afresh; on the finished output of the same arguments the block gets
            ``complete`` True.
        option: the option naming the folder, for messages.

    Yields:
        A :class:`ResumableOutput`.

    Raises:
        MedsynthError: one line: the folder is not writable; holds files (without ``overwrite``, with
            what to do); ``resume`` with other arguments than the unfinished output was started with.
    """
    folder = Path(folder)
    made = not folder.exists()
    rec = _read_outputs_record(folder) if folder.is_dir() else None
    mine = rec is not None and rec.get("command") == f"medsynth {command}" and isinstance(rec.get("arguments"), dict)
    unfinished = mine and rec.get("state") == "unfinished" and isinstance(rec.get("progress"), dict)
    if resume and not overwrite and mine and (unfinished or rec.get("state") == "complete"):
        diff = _differences(rec["arguments"], arguments)
        if diff:
            what = "an unfinished" if unfinished else "the finished output of an earlier"
            raise MedsynthError(folder, f"holds {what} `medsynth {command}` with other arguments ({'; '.join(diff)}): "
                                        "run it with the same arguments to continue, or pass --overwrite")
        check_output_folder(folder)
        if not unfinished:
            yield ResumableOutput(folder, command, arguments, set(), {}, set(rec.get("files", [])), complete=True)
            return
        kept = {str(f) for f in rec.get("kept", [])}
        listed = {str(f) for f in rec.get("files", [])}
        n = _remove_temporary_leftovers(folder, listed)
        if n:
            log.info("removed %d temporary file(s) an interrupted write left in %s", n, folder)
        out = ResumableOutput(folder, command, arguments, kept, dict(rec["progress"]), listed)
        log.info("resuming the unfinished `medsynth %s` in %s", command, folder)
    else:
        if unfinished and not overwrite:
            raise MedsynthError(folder, f"holds an unfinished `medsynth {command}` (interrupted): continue it with "
                                        "--continue and the same arguments, or pass --overwrite to start afresh")
        if resume and not (folder.is_dir() and _files_under(folder)):
            log.info("--continue: %s holds nothing to continue; starting", folder)
        kept = _prepare_output_folder(folder, overwrite=overwrite, option=option)
        out = ResumableOutput(folder, command, arguments, kept, {}, set())
        out.save({})
    try:
        yield out
    except BaseException:
        if not out._listed and not (_files_under(folder) - out.kept - {OUTPUTS_FILE}):
            (folder / OUTPUTS_FILE).unlink(missing_ok=True)  # failed before writing anything: leave nothing
            if made and folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
            raise
        out._interrupted()
        log.warning("`medsynth %s` stopped: the files written so far stay in %s; run the same command with "
                    "--continue to continue it, or --overwrite to start afresh", command, folder)
        raise
    out._finish()


@contextmanager
def discard_on_failure(run_dir: str | Path, *, enabled: bool = True) -> Iterator[Path]:
    """Remove ``run_dir`` (a new run folder this start made) if the block fails, Ctrl-C included,
    before the run's first checkpoint: a failed start leaves no half-made run folder behind.

    A run with a checkpoint is kept (``train --resume`` continues it).

    Args:
        run_dir: the run folder the caller created empty for this start.
        enabled: ``False`` turns removal off (every torchrun rank but 0, which alone writes).
    """
    run_dir = Path(run_dir)
    try:
        yield run_dir
    except BaseException:
        if enabled and run_dir.is_dir() and not (run_dir / CHECKPOINT).is_file():
            shutil.rmtree(run_dir, ignore_errors=True)
            log.warning("removed %s: the start failed before its first checkpoint, nothing to resume", run_dir)
        raise


def write_data_report(run_dir: str | Path, n_images: int, skipped: list[tuple[str, str]],
                      loading: dict | None = None, geometry: dict | None = None) -> Path:
    """Record what a start of ``medsynth train`` loaded (atomic, rewritten by each start or resume).

    ``RUN/data_report.json`` (shareable) holds counts only; the skipped files' names, which may carry
    patient or accession numbers (folders are often named so), go to ``RUN/local/skipped_files.json``
    beside the local record of the input path (:data:`SKIPPED_FILES_FILE`).

    Args:
        run_dir: the run directory.
        n_images: images trained on.
        skipped: ``(path relative to the data source, reason)`` of every file of the source left
            out (``ImageSet.skipped``).
        loading: how the images were held (:meth:`medsynth.data.stream.LoadDecision.record`: in
            memory or streamed, and why; counts and settings only), recorded as ``"loading"``.
        geometry: the images' field of view (:func:`medsynth.data.geometry.training_geometry`),
            recorded as ``"geometry"``: what ``generate`` derives the written pixel spacing from.

    Returns:
        The shareable file written: ``{"images", "skipped", "skipped_by_reason": {reason: count},
        "skipped_files_record"}`` (and ``"loading"`` when given).
    """
    by_reason: dict[str, int] = {}
    for _, reason in skipped:
        by_reason[reason] = by_reason.get(reason, 0) + 1
    run_dir = Path(run_dir)
    write_text(run_dir / SKIPPED_FILES_FILE, json.dumps(
        {"warning": _LOCAL_WARNING,
         "skipped_files": [{"path": str(path), "reason": str(reason)} for path, reason in skipped]}, indent=1) + "\n")
    body = {"images": int(n_images), "skipped": len(skipped),
            "skipped_by_reason": dict(sorted(by_reason.items(), key=lambda kv: (-kv[1], kv[0]))),
            "skipped_files_record": str(SKIPPED_FILES_FILE)}
    if loading is not None:
        body["loading"] = loading
    if geometry is not None:
        body["geometry"] = geometry
    return write_text(run_dir / DATA_REPORT_FILE, json.dumps(body, indent=1) + "\n")


# --------------------------------------------------------------------------------------------
# the data source of a run: shareable name, content fingerprint, local record of the real path


def images_fingerprint(images: torch.Tensor, labels: torch.Tensor | None = None) -> str:
    """A content fingerprint of an image set as loaded: ``"sha256:"`` + 16 hex digits.

    The hash covers the shape and float32 bytes of ``images`` and, when given, the int64 labels,
    so it names exactly what a run trained on, wherever the files lie and whatever they are called.

    Args:
        images: ``(N, C, *S)`` images (any float dtype; hashed as contiguous float32 on the CPU).
        labels: ``(N,)`` class labels, or ``None``.
    """
    h = hashlib.sha256()
    x = images.detach().to("cpu", torch.float32).contiguous()
    h.update(repr(tuple(x.shape)).encode())
    h.update(x.numpy().tobytes())
    if labels is not None:
        h.update(labels.detach().to("cpu", torch.int64).contiguous().numpy().tobytes())
    return "sha256:" + h.hexdigest()[:16]


def data_root(declared: str | Path | None = None) -> Path | None:
    """The declared data root: ``declared`` (``--data-root``), else ``$MEDSYNTH_DATA_ROOT``, else ``None``.

    Raises:
        MedsynthError: the declared root is not a folder.
    """
    root = declared if declared not in (None, "") else os.environ.get(DATA_ROOT_ENV) or None
    if root is None:
        return None
    root = Path(root)
    if not root.is_dir():
        where = "--data-root" if declared not in (None, "") else DATA_ROOT_ENV
        raise MedsynthError(where, f"data root {root} is not a folder")
    return root.resolve()


def shareable_source(source: str | Path | None, *, fingerprint: str, root: Path | None = None) -> str:
    """The name of a data source fit for shared outputs (config, checkpoints, evaluation, report).

    Args:
        source: the source as the user gave it; ``None``, ``""`` or ``"default"`` is the embedded
            phantom set.
        fingerprint: the source's :func:`images_fingerprint`.
        root: the declared data root (:func:`data_root`), or ``None``.

    Returns:
        ``"default"`` for the embedded set; ``"data-root:<relative path>"`` for a source under the
        declared data root (the root itself never appears); otherwise ``fingerprint``. Never an
        absolute path or a path outside the data root.
    """
    if source in (None, "", "default"):
        return "default"
    if root is not None:
        try:
            rel = Path(source).resolve().relative_to(root)
        except ValueError:
            return fingerprint
        return f"data-root:{rel.as_posix()}"
    return fingerprint


def write_data_source(run_dir: str | Path, source: str | Path, domain_b: str | Path | None = None) -> Path:
    """Record the real path(s) of a run's training data in ``RUN/local/data_source.json`` (atomic).

    The only place a run keeps them: ``evaluate``/``report`` (without ``--data``) and ``train --resume``
    read them back with :func:`read_data_source`. Paths are stored absolute (the file is local).

    Args:
        run_dir: the run directory.
        source: the training data (domain A of a two-domain run).
        domain_b: domain B's source, or ``None``.

    Returns:
        The file written.
    """
    path = Path(run_dir) / DATA_SOURCE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"warning": _LOCAL_WARNING, "source": str(Path(source).resolve()),
            "domain_b": None if domain_b is None else str(Path(domain_b).resolve())}
    return write_text(path, json.dumps(body, indent=1) + "\n")


def read_data_geometry(run_dir: str | Path) -> dict | None:
    """The training images' field of view a run recorded (``data_report.json``'s ``"geometry"``,
    :func:`medsynth.data.geometry.training_geometry`); ``None`` for runs made before it was recorded."""
    try:
        return json.loads((Path(run_dir) / DATA_REPORT_FILE).read_text()).get("geometry")
    except (OSError, ValueError):
        return None


def read_data_source(run_dir: str | Path) -> tuple[str, str | None]:
    """The real paths ``(source, domain_b)`` of a run's training data, from ``RUN/local/data_source.json``.

    Raises:
        MedsynthError: one line naming the file when it is missing or unreadable (a run copied
            without its local folder): give the data with ``--data``.
    """
    path = Path(run_dir) / DATA_SOURCE_FILE
    if not path.is_file():
        raise MedsynthError(path, "missing: the run's local record of its training data is not here (a run "
                                  "copied without its local/ folder?); give the data with --data")
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
        return str(body["source"]), None if body.get("domain_b") is None else str(body["domain_b"])
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise MedsynthError(path, f"unreadable ({exc.__class__.__name__}); give the data with --data") from None
