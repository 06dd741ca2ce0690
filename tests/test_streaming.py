"""Training data streamed from the disk cache (issue 18): medsynth/data/stream.py and
StreamBatches in medsynth/train/batches.py.

* the streamed images are the in-memory ones bit for bit (2D radiograph folder with a skipped file
  and a repeat, 3D CT volumes), with the same skipped-files record and content fingerprint, and the
  same sampler gives the same batches (in-process reads and DataLoader workers);
* training on the stream resumes exactly (in-process and after ``kill -9`` of ``medsynth train``),
  and ends where the in-memory run ends, also when a resume switches between the two;
* under torchrun a rank reads only its slice of each global batch;
* ``data.stream: auto`` logs its decision in one line and records it in ``data_report.json``;
* the cache is reused (not rebuilt) and replaced when the files or the settings change; a refused
  set leaves no cache.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import fuzz_files as F
from conftest import kill_at_first_checkpoint, write_dx
from medsynth.config import resolve
from medsynth.data import stream as S
from medsynth.data.dataset import load_image_set
from medsynth.errors import MedsynthError
from medsynth.runs import CHECKPOINT, images_fingerprint, load_checkpoint, load_trained
from medsynth.train.batches import Batches, BatchSampler, StreamBatches
from medsynth.train.distributed import DistInfo, shard
from medsynth.train.loop import train


# ----------------------------------------------------------------------------- data
def _xray_folder(root: Path, n: int = 20) -> Path:
    """``n`` DX radiographs of 24 px (distinct pixels), one exact repeat of the first, one MR file
    (skipped), labels.csv with labels and patients."""
    rows = ["path,label,patient_id"]
    for i in range(n):
        write_dx(root / f"p{i // 2:02d}" / f"im{i:02d}.dcm", F.radiograph(i, lesion=i % 3 == 0, size=24),
                 patient_id=f"P{i // 2:02d}")
        rows.append(f"p{i // 2:02d}/im{i:02d}.dcm,{int(i % 3 == 0)},P{i // 2:02d}")
    write_dx(root / "p00" / "copy.dcm", F.radiograph(0, lesion=True, size=24), patient_id="P00")
    rows.append("p00/copy.dcm,1,P00")
    write_dx(root / "mr.dcm", F.radiograph(99, size=24), modality="MR")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def _ct_npz(path: Path, n: int = 12) -> Path:
    vols = np.stack([F.ct_volume(i, depth=10, size=12) for i in range(n)]).astype(np.float32)
    np.savez(path, images=vols, labels=np.arange(n) % 2, patient_ids=[f"c{i}" for i in range(n)])
    return path


def _xray_npz(path: Path, n: int = 48, size: int = 24) -> Path:
    images = np.stack([F.radiograph(i, lesion=i % 2 == 1, size=size) for i in range(n)])
    np.savez(path, images=images, labels=np.arange(n) % 2, patient_ids=[f"p{i}" for i in range(n)],
             splits=["train"] * (n * 2 // 3) + ["val"] * (n - n * 2 // 3))
    return path


def _streamed(source, cache, **kw) -> S.StreamSet:
    ds, decision = S.load_training_data(source, stream="on", cache_dir=cache, **kw)
    assert isinstance(ds, S.StreamSet) and decision.stream
    return ds


def _batches(cls, images, labels, *, batch=8, info=DistInfo(), **kw):
    return cls(images, labels, BatchSampler(len(images), batch, seed=5), info, **kw)


# ----------------------------------------------------------------------------- same images, same batches
@pytest.mark.parametrize("workers", [0, 1])
def test_streamed_2d_folder_gives_the_in_memory_images_and_batches(tmp_path, workers):
    folder = _xray_folder(tmp_path / "xray")
    kw = dict(modality="xray", size=16, spatial_dims=2, split=None)
    mem = load_image_set(folder, **kw)
    ds = _streamed(folder, tmp_path / "cache", **kw)
    assert len(ds) == len(mem) == 20  # the MR file skipped, the repeat kept once
    assert torch.equal(ds.images[:], mem.images)
    assert torch.equal(ds.labels, mem.labels)
    assert ds.skipped == mem.skipped == [("mr.dcm", "DICOM modality MR, not an X-ray radiograph"),
                                         ("p00/im00.dcm", "same pixels as p00/copy.dcm (duplicate kept once)")]
    assert ds.fingerprint() == images_fingerprint(mem.images, mem.labels)
    a = _batches(Batches, mem.images, mem.labels)
    b = _batches(StreamBatches, ds.images, ds.labels, workers=workers)
    for _ in range(7):  # beyond two epochs of 20 images in batches of 8
        x, y = a.next(), b.next()
        assert torch.equal(x.images, y.images) and torch.equal(x.labels, y.labels)
    idx = torch.tensor([19, 0, 7, 7])
    assert torch.equal(a.take(idx).images, b.take(idx).images)
    assert b.served == 8 and b.wait_seconds > 0
    b.close()


def test_streamed_3d_volumes_give_the_in_memory_batches(tmp_path):
    data = _ct_npz(tmp_path / "ct.npz")
    kw = dict(modality="ct", size=8, spatial_dims=3, split=None, ct_window="lung")
    mem = load_image_set(data, **kw)
    ds = _streamed(data, tmp_path / "cache", **kw)
    assert ds.images.shape == mem.images.shape == (12, 1, 8, 8, 8)
    assert torch.equal(ds.images[:], mem.images)
    assert ds.fingerprint() == images_fingerprint(mem.images, mem.labels)
    a = _batches(Batches, mem.images, mem.labels, batch=4)
    b = _batches(StreamBatches, ds.images, ds.labels, batch=4, workers=1)
    for _ in range(5):
        x, y = a.next(), b.next()
        assert torch.equal(x.images, y.images) and torch.equal(x.labels, y.labels)
    b.close()


def test_two_domains_stream_as_they_load(tmp_path):
    from medsynth.data.dataset import load_two_domains

    a, b = _xray_npz(tmp_path / "a.npz", n=12), _xray_npz(tmp_path / "b.npz", n=18)
    b_img = np.load(b)["images"]
    np.savez(b, images=(4095 - b_img).astype(np.uint16), patient_ids=[f"q{i}" for i in range(18)])
    kw = dict(modality="xray", size=16, spatial_dims=2, split="train")
    mem = load_two_domains(a, b, **kw)
    ds, _ = S.load_training_data(a, domain_b=b, stream="on", cache_dir=tmp_path / "cache", **kw)
    assert torch.equal(ds.images[:], mem.images) and torch.equal(ds.labels, mem.labels)
    assert ds.fingerprint() == images_fingerprint(mem.images, mem.labels)
    assert ds.fingerprint(ds.labels == 1, with_labels=False) == images_fingerprint(mem.images[mem.labels == 1])


# ----------------------------------------------------------------------------- exact resume
def _cfg(steps, **data):
    return resolve(base={"model": {"name": "dcgan", "width": 4, "latent_dim": 16, "num_classes": 2},
                         "data": {"size": 16, **data},
                         "train": {"steps": steps, "batch_size": 8, "tick_every": 2, "sample_every": 100,
                                   "checkpoint_every": 3}})


def _same_weights(a: Path, b: Path) -> None:
    _, ma, cka = load_trained(a)
    _, mb, ckb = load_trained(b)
    assert cka["step"] == ckb["step"]
    sa, sb = ma.state_dict(), mb.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert torch.equal(cka["sampler"]["perm"], ckb["sampler"]["perm"]) and cka["sampler"]["pos"] == ckb["sampler"]["pos"]


def test_streamed_training_resumes_exactly_and_matches_memory(tmp_path):
    data = _xray_npz(tmp_path / "x.npz")
    mem = load_image_set(data, size=16, split="train")
    ds = _streamed(data, tmp_path / "cache", size=16, split="train")
    x, y = ds.images, ds.labels
    train(_cfg(7, workers=1), x, y, tmp_path / "full")  # 32 images, batch 8: the sampler crosses epochs
    train(_cfg(3, workers=1), x, y, tmp_path / "half")
    train(_cfg(7, workers=1), x, y, tmp_path / "half", resume=True)
    _same_weights(tmp_path / "full", tmp_path / "half")
    train(_cfg(7), mem.images, mem.labels, tmp_path / "memory")  # the in-memory run ends in the same place
    _same_weights(tmp_path / "full", tmp_path / "memory")
    train(_cfg(3), mem.images, mem.labels, tmp_path / "switch")  # a resume may switch memory -> stream
    train(_cfg(7, workers=0), x, y, tmp_path / "switch", resume=True)
    _same_weights(tmp_path / "full", tmp_path / "switch")


def test_streamed_3d_training_resumes_exactly_and_matches_memory(tmp_path):
    """The 3D counterpart: CT volumes streamed, a run stopped at step 3 and resumed to 6 ends with the
    weights and sampler state of the uninterrupted streamed run and of the in-memory run."""
    data = _ct_npz(tmp_path / "ct.npz")
    kw = dict(modality="ct", size=8, spatial_dims=3, split=None, ct_window="lung")
    mem = load_image_set(data, **kw)
    ds = _streamed(data, tmp_path / "cache", **kw)

    def cfg(steps, **d):
        return resolve(base={"model": {"name": "dcgan", "width": 4, "latent_dim": 8, "num_classes": 2},
                             "data": {"size": 8, "spatial_dims": 3, "modality": "ct", **d},
                             "train": {"steps": steps, "batch_size": 4, "tick_every": 2, "sample_every": 100,
                                       "checkpoint_every": 3}})

    train(cfg(6, workers=1), ds.images, ds.labels, tmp_path / "full")  # 12 volumes, batch 4: crosses epochs
    train(cfg(3, workers=0), ds.images, ds.labels, tmp_path / "half")
    train(cfg(6, workers=0), ds.images, ds.labels, tmp_path / "half", resume=True)
    _same_weights(tmp_path / "full", tmp_path / "half")
    train(cfg(6), mem.images, mem.labels, tmp_path / "memory")
    _same_weights(tmp_path / "full", tmp_path / "memory")


def _env(cache: Path) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MEDSYNTH_VERBOSE": "0",
            "MEDSYNTH_CACHE_DIR": str(cache)}


@pytest.mark.slow
def test_killed_streaming_run_resumes_to_the_uninterrupted_weights(tmp_path):
    """``medsynth train`` streaming with a reader process, killed with SIGKILL right after its first
    checkpoint (the workers had read ahead of it), resumed: the same weights, optimisers, sampler
    and RNG as the run left alone."""
    data = _xray_npz(tmp_path / "x.npz")
    steps = 16
    args = ["train", "--model", "dcgan", "--size", "16", "--steps", str(steps), "--batch-size", "8", "--seed", "2",
            "--set", "model.width=4", "--set", "train.checkpoint_every=2", "--set", "train.tick_every=2",
            "--set", "train.sample_every=1000", "--set", "data.stream=on", "--set", "data.workers=1",
            "--no-progress", "--no-quick-check", "--data", str(data)]
    env = _env(tmp_path / "cache")
    full = subprocess.run([sys.executable, "-m", "medsynth.cli", *args, "--out", str(tmp_path / "full")], env=env,
                          capture_output=True, text=True, timeout=120)
    assert full.returncode == 0, full.stderr
    assert "data: streamed from disk: 32 images" in full.stderr
    half_run = tmp_path / "half" / "00000-xray-dcgan"
    kill_at_first_checkpoint([sys.executable, "-m", "medsynth.cli", *args, "--out", tmp_path / "half"], half_run,
                             env, 120)
    killed_at = int(load_checkpoint(half_run / CHECKPOINT)["step"])
    assert 0 < killed_at < steps
    resumed = subprocess.run([sys.executable, "-m", "medsynth.cli", "train", "--resume", str(half_run),
                              "--no-progress", "--no-quick-check"], env=env, capture_output=True, text=True,
                             timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    a = load_checkpoint(tmp_path / "full" / "00000-xray-dcgan" / CHECKPOINT)
    b = load_checkpoint(half_run / CHECKPOINT)
    assert a["step"] == b["step"] == steps
    diff = [d for part in ("model", "optimizers", "sampler", "rng") for d in _differ(a[part], b[part], part)]
    assert not diff, f"killed at step {killed_at} and resumed, differs from the uninterrupted run at {diff[:5]}"
    assert all(opt["state"] for opt in a["optimizers"].values())  # the optimisers really stepped


def _differ(a, b, where: str) -> list[str]:
    """Where two nested checkpoint parts differ (tensors bit for bit)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        same = isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype \
            and a.shape == b.shape and torch.equal(a, b)
        return [] if same else [where]
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{where}: keys"]
        return [d for k in a for d in _differ(a[k], b[k], f"{where}.{k}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{where}: lengths"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _differ(x, y, f"{where}[{i}]")]
    return [] if a == b else [where]


@pytest.mark.skipif(not Path("/proc/self/fdinfo").is_dir(), reason="reads /proc")
def test_the_reader_process_does_not_hold_the_runs_lock(tmp_path):
    """A reader forked while the run's writer lock is held drops its copy of the lock's descriptor:
    when the training process is killed the lock dies with it (the reader lingers for seconds)."""
    from medsynth.runs import run_lock

    data = _xray_npz(tmp_path / "x.npz")
    ds = _streamed(data, tmp_path / "cache", size=16, split="train")
    (tmp_path / "run").mkdir()
    with run_lock(tmp_path / "run") as lock:
        b = _batches(StreamBatches, ds.images, ds.labels, workers=1)
        b.next()
        me = os.getpid()
        kids = [int(c) for t in os.listdir(f"/proc/{me}/task") for c in Path(f"/proc/{me}/task/{t}/children").read_text().split()]
        assert kids
        mine = {os.readlink(f"/proc/{me}/fd/{fd}") for fd in os.listdir(f"/proc/{me}/fd")
                if Path(f"/proc/{me}/fd/{fd}").exists()}
        assert str(lock.resolve()) in mine  # the training process holds it
        for pid in kids:
            held = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
            assert str(lock.resolve()) not in held
        b.close()


# ----------------------------------------------------------------------------- rank shards
def test_each_rank_reads_only_its_slice_of_the_global_batch(tmp_path, monkeypatch):
    data = _xray_npz(tmp_path / "x.npz")
    mem = load_image_set(data, size=16, split="train")
    ds = _streamed(data, tmp_path / "cache", size=16, split="train")
    read: list[int] = []
    real_read = S.RowFile.read_rows

    def recording(self, rows, out):
        read.extend(int(r) for r in rows)
        return real_read(self, rows, out)

    monkeypatch.setattr(S.RowFile, "read_rows", recording)
    for rank in (0, 1):
        info = DistInfo(rank=rank, world=2)
        read.clear()
        ref = BatchSampler(len(ds), 8, seed=5)
        want = [shard(ref.next(), info) for _ in range(5)]
        a = _batches(Batches, mem.images, mem.labels, info=info)
        b = _batches(StreamBatches, ds.images, ds.labels, info=info, workers=0)
        for w in want:
            x, y = a.next(), b.next()
            assert x.images.shape[0] == y.images.shape[0] == 4 and torch.equal(x.images, y.images)
        assert read == [int(i) for w in want for i in w]  # no duplicates in this set: row = index
    with pytest.raises(MedsynthError, match="not divisible"):
        _batches(StreamBatches, ds.images, ds.labels, batch=9, info=DistInfo(rank=0, world=2))


# ----------------------------------------------------------------------------- auto decision
def test_auto_streams_above_the_budget_and_says_so_once(tmp_path, caplog):
    data = _xray_npz(tmp_path / "x.npz")
    kw = dict(size=16, split="train", cache_dir=tmp_path / "cache")
    with caplog.at_level(logging.INFO, logger="medsynth.data.stream"):
        small, d1 = S.load_training_data(data, stream="auto", memory_budget_mb=1, **kw)  # 32 x 1 KiB
        big, d2 = S.load_training_data(data, stream="auto", memory_budget_mb=0.01, **kw)
    assert not d1.stream and isinstance(small, type(load_image_set(data, size=16, split="train")))
    assert d2.stream and isinstance(big, S.StreamSet)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("data: ")]
    assert lines == ["data: held in memory: 32 images, 32.0 KiB decoded <= budget 1.0 MiB (data.stream=auto, "
                     "data.memory_budget_mb)",
                     "data: streamed from disk: 32 images, 32.0 KiB decoded > budget 10.2 KiB (data.stream=auto, "
                     "data.memory_budget_mb)"]
    assert d2.record() == {"mode": "stream", "setting": "auto", "images": 32, "decoded_bytes": 32768,
                           "budget_bytes": 10485, "reason": d2.reason}
    again, d3 = S.load_training_data(data, stream="auto", memory_budget_mb=1, **kw)  # a cache exists: still memory
    assert not d3.stream and torch.equal(again.images, small.images) and torch.equal(big.images[:], small.images)
    # the default budget: 1 GiB at most, 10 % of the machine's memory at most
    assert S.memory_budget_bytes(None) == min(2**30, int(S.physical_memory_bytes() * 0.1))
    assert S.decide("auto", 100_000, 4 * 256 * 256, S.memory_budget_bytes(None)).stream  # the 26 GB
    assert S.stream_setting(False) == "off" and S.stream_setting(True) == "on"  # YAML's bare off / on
    with pytest.raises(MedsynthError, match="data.stream"):
        S.stream_setting("sometimes")


def test_cli_records_the_decision_in_the_data_report(tmp_path):
    data = _xray_npz(tmp_path / "x.npz")
    out = tmp_path / "runs"
    res = subprocess.run([sys.executable, "-m", "medsynth.cli", "train", "--model", "dcgan", "--size", "16",
                          "--steps", "2", "--batch-size", "8", "--set", "model.width=4", "--set",
                          "data.memory_budget_mb=0.01", "--data", str(data), "--out", str(out), "--no-progress",
                          "--no-quick-check"], env=_env(tmp_path / "cache"), capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert [ln for ln in res.stderr.splitlines() if "streamed from disk" in ln] == [
        f"data: streamed from disk: 32 images, 32.0 KiB decoded > budget 10.2 KiB (data.stream=auto, "
        f"data.memory_budget_mb); cache {tmp_path / 'cache' / 'stream'}"]
    run = out / "00000-xray-dcgan"
    report = json.loads((run / "data_report.json").read_text())
    assert report["loading"]["mode"] == "stream" and report["loading"]["setting"] == "auto"
    shared = (run / "data_report.json").read_text() + (run / "config.yaml").read_text()
    assert str(data) not in shared and "x.npz" not in shared and str(tmp_path / "cache") not in shared
    mem = load_image_set(data, size=16, split="train")  # the run's fingerprint is the in-memory set's
    assert f"fingerprint: {images_fingerprint(mem.images, mem.labels)}" in (run / "config.yaml").read_text()


# ----------------------------------------------------------------------------- the cache
def _cache_files(cache: Path) -> list[Path]:
    return sorted((cache / "stream").glob("*.npz"))


def test_cache_is_reused_and_replaced_when_files_or_settings_change(tmp_path, monkeypatch):
    folder = _xray_folder(tmp_path / "xray", n=8)
    cache = tmp_path / "cache"
    builds = []
    real_build = S._build_cache
    monkeypatch.setattr(S, "_build_cache", lambda *a, **k: builds.append(1) or real_build(*a, **k))
    kw = dict(modality="xray", size=16, split=None)
    first = _streamed(folder, cache, **kw)
    rows = first.images.files[0].path
    stamp = (rows.stat().st_ino, rows.stat().st_mtime_ns)
    again = _streamed(folder, cache, **kw)
    assert len(builds) == 1 and (rows.stat().st_ino, rows.stat().st_mtime_ns) == stamp  # reused, not rebuilt
    assert again.fingerprint() == first.fingerprint() and again.skipped == first.skipped
    assert torch.equal(again.images[:], first.images[:])

    time.sleep(0.01)  # the data change: one file holds other pixels (another mtime and content)
    write_dx(folder / "p01" / "im03.dcm", F.radiograph(1234, size=24), patient_id="P01")
    changed = _streamed(folder, cache, **kw)
    assert len(builds) == 2 and changed.fingerprint() != first.fingerprint()
    assert torch.equal(changed.images[:], load_image_set(folder, **kw).images)

    resized = _streamed(folder, cache, **{**kw, "size": 8})  # a setting change: another cache
    assert len(builds) == 3 and resized.images.shape[-1] == 8
    assert len(_cache_files(cache)) == 3
    assert all(str(tmp_path) not in p.name and "xray" not in p.name for p in (cache / "stream").iterdir())

    index = changed.images.files[0].path.with_suffix(".npz")  # a damaged cache is rebuilt, with a warning
    index.write_bytes(b"not an npz")
    rebuilt = _streamed(folder, cache, **kw)
    assert len(builds) == 4 and rebuilt.fingerprint() == changed.fingerprint()


def test_a_refused_set_leaves_no_cache(tmp_path):
    images = np.stack([F.radiograph(i, size=24) for i in range(10)])
    images[9] = images[0]  # the same pixels in train and val
    data = tmp_path / "leak.npz"
    np.savez(data, images=images, patient_ids=[f"p{i}" for i in range(10)], splits=["train"] * 8 + ["val"] * 2)
    with pytest.raises(MedsynthError, match="two sides of the split"):
        S.load_training_data(data, size=16, split=None, stream="on", cache_dir=tmp_path / "cache")
    assert _cache_files(tmp_path / "cache") == [] and not list((tmp_path / "cache" / "stream").glob("*.rows"))
