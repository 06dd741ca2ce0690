"""Streaming training data (issue 18): peak memory and training speed against the data set's size.

For each size (default 1,000, 10,000 and 50,000 images) the bench trains the packaged
``xray_dcgan`` preset (DCGAN 64², width 16, batch 64, class-conditional) with ``data.stream=on``
for ``--warmup`` + ``--steps`` steps on ``--threads`` torch threads, each size in a fresh
subprocess, and records:

* **peak RSS** of the training process (``resource.getrusage(RUSAGE_SELF).ru_maxrss`` in the
  subprocess at its end; its ``DataLoader`` reader is a separate process, reported apart as
  ``RUSAGE_CHILDREN``), and the peak of the summed proportional set size (PSS: shared pages split
  between the processes sharing them) over the whole process tree, sampled every 0.1 s from
  ``/proc/<pid>/smaps_rollup``;
* **throughput**: images per second over the timed steps (steps x 64 / wall seconds; the
  ``--warmup`` steps are not timed);
* **data wait**: the share of the timed wall time spent inside ``next()`` of the run's batches
  (:class:`medsynth.train.batches.StreamBatches`: waiting for the reader, the copy, the labels).

Goals (the issue's): peak RSS within ±10 % across the sizes; data wait under 5 % of step time.

The data: ``--pool`` phantom radiographs simulated once at 128² (:mod:`medsynth.phantom`, about a
second each on this CPU), written as DICOM DX files (uint16, 12 bits), each file one of the
pool's images with its own seeded detector noise and gain, so that every file's pixels differ (no
duplicate is dropped) while 50,000 files take about a minute to write. They are written ONCE into
``--data-dir`` (default ``~/.cache/medsynth-bench/streaming``, outside the repository), with one
manifest per size (the first N files, all ``train``); a later run reuses them. The stream cache
lives under ``--data-dir``/cache; a size whose cache exists is not rebuilt (``--rebuild`` forces
it). The build runs in its own subprocess before the training one; the record gives its time and
peak RSS (``build``), and for a reused cache those of the run that built it (``when_built``, kept
in ``--data-dir``/build_<N>.json).

For comparison the bench also trains ``--memory-sizes`` (default 1,000 and 10,000) with
``data.stream=off`` (the whole set decoded into one tensor, as before issue 18), and compares the
cache with MONAI's ``PersistentDataset`` on ``--compare`` images (default 2,000): the cold pass
that builds each cache, random batches of 64 read warm from each, files written and bytes on disk.

The machine may be shared: every subprocess runs under ``nice -n 19`` (``--nice``), and the record
carries the load average before and after; figures taken under contention are slower and noisier.

Usage::

    python -m pipelines.benches.streaming_memory --out reports/streaming_memory_cpu.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from medsynth.atomic import atomic_path, write_text

IMAGE = 128
SIZES = (1000, 10000, 50000)
MEMORY_SIZES = (1000, 10000)
DEFAULT_DIR = Path.home() / ".cache" / "medsynth-bench" / "streaming"


# ----------------------------------------------------------------------------- data (written once)
def _write_dx(path: Path, pixels: np.ndarray, patient: str) -> None:
    """A minimal DICOM DX file (uint16, 12 bits stored, MONOCHROME2)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "DX", patient
    ds.StudyInstanceUID = ds.SeriesInstanceUID = generate_uid()
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint16).tobytes()
    with atomic_path(path, ".dcm") as tmp:
        ds.save_as(tmp, enforce_file_format=True)


def ensure_data(root: Path, n: int, pool: int) -> dict:
    """``n`` DICOM radiographs under ``root/dx`` and a manifest per size (kept between runs)."""
    done = root / f"complete_{n}_{pool}.json"
    if done.is_file():
        return json.loads(done.read_text())
    from medsynth.phantom.sample import simulate_xray_arrays

    t0 = time.perf_counter()
    pix, labels, _ = simulate_xray_arrays(pool, seed=0, size=IMAGE)
    t_pool = time.perf_counter() - t0
    t0 = time.perf_counter()
    for k in range(n):
        f = root / "dx" / f"{k // 1000:03d}" / f"{k:06d}.dcm"
        if f.exists():
            continue
        f.parent.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(k)
        img = pix[k % pool].astype(np.float32) * rng.uniform(0.9, 1.1) + rng.normal(0, 12, (IMAGE, IMAGE))
        _write_dx(f, np.clip(np.rint(img), 0, 4095), f"BENCH{k:06d}")
    rec = {"files": n, "pool": pool, "pool_seconds": round(t_pool, 1), "write_seconds": round(time.perf_counter() - t0, 1),
           "labels": [int(v) for v in labels]}
    write_text(done, json.dumps(rec))
    return rec


def manifest(root: Path, n: int, labels: list[int]) -> Path:
    """``root/manifest_<n>.csv``: the first ``n`` files, split ``train``."""
    path = root / f"manifest_{n}.csv"
    if not path.is_file():
        lines = ["path,label,patient_id,split"] + [
            f"dx/{k // 1000:03d}/{k:06d}.dcm,{labels[k % len(labels)]},BENCH{k:06d},train" for k in range(n)]
        write_text(path, "\n".join(lines) + "\n")
    return path


# ----------------------------------------------------------------------------- children (one per measurement)
def _rusage() -> dict:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"peak_rss_mib": round(own.ru_maxrss / 1024, 1), "children_peak_rss_mib": round(kids.ru_maxrss / 1024, 1)}


def child_build(man: Path, cache: Path) -> dict:
    """Build (or reuse) the stream cache of ``man``."""
    import logging

    from medsynth.data.stream import cache_key, load_training_data

    logging.basicConfig(level=logging.WARNING)
    key = cache_key(man, modality="xray", size=64, spatial_dims=2, split="train", ct_window="lung")
    existed = (cache / "stream" / f"{key}.npz").is_file()
    t0 = time.perf_counter()
    ds, decision = load_training_data(man, modality="xray", size=64, split="train", stream="on", cache_dir=cache)
    rows = ds.images.files[0]
    return {"built_now": not existed, "seconds": round(time.perf_counter() - t0, 2), "images": len(ds),
            "cache_bytes": rows.path.stat().st_size, **_rusage()}


def child_train(man: Path, cache: Path, mode: str, steps: int, warmup: int, threads: int, tick: int,
                workers: int | None = None) -> dict:
    """Train the xray_dcgan preset on ``man`` (streamed or in memory) and time it."""
    import torch

    from medsynth.config import resolve
    from medsynth.data.stream import load_training_data
    from medsynth.train import batches as B
    from medsynth.train.loop import train

    torch.set_num_threads(threads)
    waited = [0.0]

    def timed(fn):
        def next_(self):
            t = time.perf_counter()
            try:
                return fn(self)
            finally:
                waited[0] += time.perf_counter() - t
        return next_

    B.Batches.next = timed(B.Batches.next)
    B.StreamBatches.next = timed(B.StreamBatches.next)
    t0 = time.perf_counter()
    ds, decision = load_training_data(man, modality="xray", size=64, split="train", stream=mode, cache_dir=cache)
    load_s = time.perf_counter() - t0
    cfg = resolve(preset="xray_dcgan", base={
        "data": {"stream": mode, "workers": workers},
        "train": {"steps": warmup + steps, "tick_every": tick, "sample_every": 10**6, "checkpoint_every": 10**6,
                  "threads": threads, "seed": 0}})
    marks: list[tuple[int, float, float]] = []

    def on_tick(line: dict) -> None:
        marks.append((int(line["step"]), time.perf_counter(), waited[0]))

    with tempfile.TemporaryDirectory() as tmp:
        train(cfg, ds.images, ds.labels, Path(tmp) / "run", on_tick=on_tick)
    (s0, t_a, w_a), (s1, t_b, w_b) = next(m for m in marks if m[0] >= warmup), marks[-1]
    wall = t_b - t_a
    return {"mode": mode, "workers": workers, "decision": decision.record(), "load_seconds": round(load_s, 2), "timed_steps": s1 - s0,
            "img_per_s": round((s1 - s0) * cfg.train.batch_size / wall, 1), "step_ms": round(1000 * wall / (s1 - s0), 1),
            "data_wait_fraction": round((w_b - w_a) / wall, 4), "data_wait_ms_per_step": round(1000 * (w_b - w_a) / (s1 - s0), 2),
            **_rusage()}


def child_compare(man: Path, cache: Path, batches: int) -> dict:
    """MONAI's PersistentDataset against the row cache on the images of ``man``: cold pass (build),
    warm random batches of 64, files and bytes."""
    import torch
    from monai.data import PersistentDataset
    from monai.transforms import Compose, Lambda

    from medsynth.data.dataset import _collect_items, _Item, _prepare
    from medsynth.data.stream import load_training_data
    from medsynth.data.transforms import pipeline_for

    torch.set_num_threads(1)
    items = _collect_items(man, modality="xray", spatial_dims=2, split="train")[0]

    def decode(d: dict) -> dict:
        return {"image": _prepare(_Item(d["path"], -1, "", "train"), "xray", 2, "lung")}

    monai_dir = cache / "monai"
    shutil.rmtree(monai_dir, ignore_errors=True)
    ds = PersistentDataset([{"path": it.path} for it in items], Compose([Lambda(decode), pipeline_for("xray", 64)]),
                           cache_dir=monai_dir)
    rng = np.random.default_rng(0)
    out = {"images": len(items)}
    t0 = time.perf_counter()
    for i in range(len(ds)):
        ds[i]
    out["monai_build_seconds"] = round(time.perf_counter() - t0, 2)
    files = list(monai_dir.iterdir())
    out["monai_files"], out["monai_bytes"] = len(files), sum(f.stat().st_size for f in files)
    t0 = time.perf_counter()
    for _ in range(batches):
        torch.stack([ds[int(i)]["image"] for i in rng.integers(0, len(ds), 64)])
    out["monai_warm_img_per_s"] = round(batches * 64 / (time.perf_counter() - t0), 1)

    rows_cache = cache / "rows-compare"
    shutil.rmtree(rows_cache, ignore_errors=True)
    t0 = time.perf_counter()
    st, _ = load_training_data(man, modality="xray", size=64, split="train", stream="on", cache_dir=rows_cache)
    out["rows_build_seconds"] = round(time.perf_counter() - t0, 2)
    out["rows_files"], out["rows_bytes"] = 2, sum(f.stat().st_size for f in (rows_cache / "stream").iterdir()
                                                  if f.suffix in (".rows", ".npz"))
    t0 = time.perf_counter()
    for _ in range(batches):
        st.images.read(torch.as_tensor(rng.integers(0, len(st), 64)))
    out["rows_warm_img_per_s"] = round(batches * 64 / (time.perf_counter() - t0), 1)
    shutil.rmtree(monai_dir, ignore_errors=True)
    shutil.rmtree(rows_cache, ignore_errors=True)
    return {**out, **_rusage()}


# ----------------------------------------------------------------------------- the parent
def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                todo.extend(int(c) for c in Path(f"/proc/{p}/task/{task}/children").read_text().split())
        except OSError:
            pass
    return out


def _pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_child(args: list[str], nice: int) -> dict:
    """Run this module with ``args`` in a fresh subprocess; its JSON result, plus the process
    tree's peak summed PSS."""
    cmd = (["nice", "-n", str(nice)] if nice else []) + [sys.executable, "-m", "pipelines.benches.streaming_memory",
                                                         *args]
    proc, out, err, peak_kib = communicate_with_peak_pss(cmd)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{err[-3000:]}")
    return {**json.loads(out.strip().splitlines()[-1]), "tree_peak_pss_mib": round(peak_kib / 1024, 1)}


def communicate_with_peak_pss(cmd: list[str], *, timeout: float | None = None, **popen_kw):
    """Run ``cmd`` to the end, sampling its process tree's summed PSS every 0.1 s.

    Returns:
        ``(proc, stdout, stderr, peak_pss_kib)``.

    Raises:
        subprocess.TimeoutExpired: after ``timeout`` seconds (the process is killed first).
    """
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen_kw)
    peak = [0]

    def sample():
        while proc.poll() is None:
            peak[0] = max(peak[0], sum(_pss_kib(p) for p in _tree(proc.pid)))
            time.sleep(0.1)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    finally:
        th.join()
    return proc, out, err, peak[0]


def _machine() -> dict:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    mem = next((int(ln.split()[1]) for ln in Path("/proc/meminfo").read_text().splitlines()
                if ln.startswith("MemTotal")), 0)
    import monai
    import torch

    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem / 2**20, 1), "python": platform.python_version(),
            "torch": torch.__version__, "monai": monai.__version__, "platform": platform.platform()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--child", choices=("build", "train", "compare"), help=argparse.SUPPRESS)
    ap.add_argument("--manifest", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="on", help=argparse.SUPPRESS)
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DIR, help="where the DICOM files and caches live")
    ap.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    ap.add_argument("--memory-sizes", type=int, nargs="*", default=list(MEMORY_SIZES))
    ap.add_argument("--compare", type=int, default=2000, help="images of the PersistentDataset comparison (0: none)")
    ap.add_argument("--pool", type=int, default=24, help="distinct phantoms the files are made from")
    ap.add_argument("--steps", type=int, default=80, help="timed steps per size")
    ap.add_argument("--warmup", type=int, default=20, help="untimed steps first")
    ap.add_argument("--tick", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=None, help="data.workers (default: the product's default)")
    ap.add_argument("--nice", type=int, default=19)
    ap.add_argument("--rebuild", action="store_true", help="delete each size's stream cache first")
    ap.add_argument("--out", type=Path, default=Path("reports/streaming_memory_cpu.json"))
    a = ap.parse_args(argv)
    cache = a.data_dir / "cache"
    if a.child == "build":
        print(json.dumps(child_build(a.manifest, cache)))
        return 0
    if a.child == "train":
        print(json.dumps(child_train(a.manifest, cache, a.mode, a.steps, a.warmup, a.threads, a.tick, a.workers)))
        return 0
    if a.child == "compare":
        print(json.dumps(child_compare(a.manifest, cache, batches=50)))
        return 0

    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    load_before = os.getloadavg()
    a.data_dir.mkdir(parents=True, exist_ok=True)
    n_max = max(a.sizes + a.memory_sizes + [a.compare])
    data = ensure_data(a.data_dir, n_max, a.pool)
    common = ["--data-dir", str(a.data_dir), "--steps", str(a.steps), "--warmup", str(a.warmup), "--tick", str(a.tick),
              "--threads", str(a.threads), *([] if a.workers is None else ["--workers", str(a.workers)])]
    sizes = []
    for n in a.sizes:
        man = manifest(a.data_dir, n, data["labels"])
        if a.rebuild:
            from medsynth.data.stream import cache_key

            key = cache_key(man, modality="xray", size=64, spatial_dims=2, split="train", ct_window="lung")
            for f in (cache / "stream").glob(f"{key}.*"):
                f.unlink()
        build = run_child(["--child", "build", "--manifest", str(man), *common], a.nice)
        first = a.data_dir / f"build_{n}.json"  # the figures of the run that built this cache
        if build["built_now"]:
            write_text(first, json.dumps(build))
        elif first.is_file():
            build["when_built"] = json.loads(first.read_text())
        print(f"{n}: cache {build['seconds']} s, peak RSS {build['peak_rss_mib']} MiB", flush=True)
        row = {"images": n, "build": build,
               "stream": run_child(["--child", "train", "--manifest", str(man), "--mode", "on", *common], a.nice)}
        print(f"{n}: stream {row['stream']}", flush=True)
        if n in a.memory_sizes:
            row["memory"] = run_child(["--child", "train", "--manifest", str(man), "--mode", "off", *common], a.nice)
            print(f"{n}: memory {row['memory']}", flush=True)
        sizes.append(row)
    compare = None
    if a.compare:
        man = manifest(a.data_dir, a.compare, data["labels"])
        compare = run_child(["--child", "compare", "--manifest", str(man), *common], a.nice)
        print(f"compare: {compare}", flush=True)

    rss = [r["stream"]["peak_rss_mib"] for r in sizes]
    waits = [r["stream"]["data_wait_fraction"] for r in sizes]
    record = {
        "bench": "streaming_memory", "started": started,
        "command": "python -m pipelines.benches.streaming_memory " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": _machine(), "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "contention": "machine shared with other jobs; every subprocess under nice -n %d" % a.nice,
        "settings": {"preset": "xray_dcgan", "size": 64, "source_px": IMAGE, "batch": 64, "threads": a.threads, "workers": a.workers,
                     "warmup_steps": a.warmup, "timed_steps": a.steps, "data": data | {"labels": len(data["labels"])}},
        "sizes": sizes,
        "summary": {"stream_peak_rss_mib": dict(zip(map(str, a.sizes), rss)),
                    "rss_spread_vs_smallest": round(max(rss) / min(rss) - 1, 4),
                    "rss_within_10_percent": max(rss) <= 1.1 * min(rss),
                    "data_wait_fraction": dict(zip(map(str, a.sizes), waits)),
                    "data_wait_under_5_percent": max(waits) < 0.05},
        "persistent_dataset_comparison": compare,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    write_text(a.out, json.dumps(record, indent=1) + "\n")
    print(json.dumps(record["summary"], indent=1))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
