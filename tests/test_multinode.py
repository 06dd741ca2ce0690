"""Beyond one machine (issue 18 point 6): two real ``torchrun`` agents as two "nodes" on 127.0.0.1,
joined by a c10d rendezvous endpoint, each running ``medsynth train`` with ``data.stream=on``.

The two nodes share no folder: each runs in its own working directory (``--out runs`` is relative)
with its own ``$MEDSYNTH_CACHE_DIR``, as two machines with their own disks. So each node builds its
own stream cache, and anything rank 1 wrote into the run would land in its own folder.

Checked:

* both agents exit 0; the run is written by rank 0 alone (the other node's folder holds no run);
* each rank's reader fetched from the cache only its slice of every global batch (the DEBUG line
  ``stream: rank R of 2 read images [...]`` of ``MEDSYNTH_VERBOSE=2``, in the order read): the
  slices are disjoint and together are the global batch the single-process run's sampler draws;
* the result matches one process with the same global batch and seed, run in this process on
  the two-node run's own config: the same batches (sampler state) and step count, the same ADA
  schedule (``p`` moved by the real images of both ranks together, as in the schedule tests of
  ``tests/test_ddp.py``), losses within the bound of ``tests/test_ddp.py``, D's weights close.
  Not bit for bit, nor to a rounding tolerance: each rank draws its own latent noise
  (``medsynth/train/loop.py``), so two ranks train on other fakes than one process does
  (``tests/test_ddp.py`` shows the gradients of the same inputs are the full batch's); G's update
  comes from the latents alone and differs as much as it moved;
* a rank whose images differ from rank 0's (nodes load their own copies) stops every rank with one
  line (:func:`medsynth.train.distributed.check_same`);
* nodes sharing the cache folder build it once (file lock), the others reuse it.

~35 s on two shared cores, nearly all of it starting the five Python processes of the two nodes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import fuzz_files as F
from medsynth.config import load_config
from medsynth.runs import CHECKPOINT, load_checkpoint
from medsynth.train.batches import BatchSampler

needs_torchrun = pytest.mark.skipif(
    shutil.which("torchrun") is None and not Path(sys.executable).with_name("torchrun").exists(),
    reason="torchrun (installed with torch) not found")

STEPS = 6
BATCH = 8  # global: 4 images per rank
# DCGAN 16², no minibatch stddev (it sees the per-rank batch; BatchNorm is synced): as test_ddp.py.
# ADA's schedule, made to move exactly once, at the last step (interval = steps) and upwards
# whatever D says (target -2 < any r_t): p = images counted / (ada_kimg * 1000); the augmentation
# itself stays off during the run (p = 0 until then), so it adds no per-rank randomness.
TRAIN = ["train", "--model", "dcgan", "--size", "16", "--steps", str(STEPS), "--batch-size", str(BATCH),
         "--seed", "2", "--set", "model.width=4", "--set", "model.latent_dim=16", "--set", "model.params.mbstd=false",
         "--set", "model.params.augment=ada", "--set", "model.params.ada_target=-2", "--set", "model.params.ada_kimg=0.1",
         "--set", f"model.params.ada_interval={STEPS}",
         "--set", "train.tick_every=1", "--set", "train.sample_every=1000", "--set", "train.checkpoint_every=1000",
         "--set", "train.threads=1", "--set", "data.stream=on", "--set", "data.workers=1", "--no-progress",
         "--no-quick-check", "--out", "runs"]
READ = re.compile(r"stream: rank (\d+) of 2 read images \[([\d, ]*)\]")


def _torchrun() -> str:
    local = Path(sys.executable).with_name("torchrun")
    return str(local) if local.exists() else str(shutil.which("torchrun"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _npz(path: Path, n: int = 48, size: int = 24, seed: int = 0) -> Path:
    """``n`` distinct radiographs (two thirds in the train split) with labels and patients."""
    images = np.stack([F.radiograph(i + seed, lesion=i % 2 == 1, size=size) for i in range(n)])
    np.savez(path, images=images, labels=np.arange(n) % 2, patient_ids=[f"p{i}" for i in range(n)],
             splits=["train"] * (n * 2 // 3) + ["val"] * (n - n * 2 // 3))
    return path


def _two_nodes(tmp: Path, data: Path, timeout: float = 150) -> list[subprocess.CompletedProcess]:
    """``torchrun --nnodes 2`` on node 0 and node 1 (folders ``tmp/node<k>``, own cache each), both
    started at once and joined at one c10d endpoint (which node becomes rank 0 is the rendezvous's choice)."""
    port, procs = _free_port(), []
    for k in (0, 1):
        node = tmp / f"node{k}"
        node.mkdir()
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MEDSYNTH_VERBOSE": "2",
               "MEDSYNTH_CACHE_DIR": str(node / "cache"), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        cmd = [_torchrun(), "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
               "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", f"medsynth-test-{port}", "--max-restarts", "0",
               "-m", "medsynth.cli", *TRAIN, "--data", str(data)]
        procs.append(subprocess.Popen(cmd, cwd=node, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    out = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=timeout)
            out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    return out


def _rank(stderr: str) -> int:
    ranks = {int(m) for m in re.findall(r"distributed: rank (\d+) of 2", stderr)}
    assert len(ranks) == 1, stderr[-3000:]
    return ranks.pop()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The two-node run (both nodes' output, by rank) and the single-process run of the same config."""
    from medsynth.data.stream import load_training_data
    from medsynth.train.loop import train

    tmp = tmp_path_factory.mktemp("multinode")
    data = _npz(tmp / "x.npz")
    nodes = _two_nodes(tmp, data)
    for res in nodes:
        assert res.returncode == 0, res.stderr[-4000:]
    by_rank = {_rank(res.stderr): (tmp / f"node{k}", res) for k, res in enumerate(nodes)}
    assert sorted(by_rank) == [0, 1]
    run = by_rank[0][0] / "runs" / "00000-xray-dcgan"
    cfg = load_config(run / "config.yaml")  # the two-node run's resolved config, run by one process
    ds, _ = load_training_data(data, size=16, split="train", stream="on", cache_dir=tmp / "single-cache")
    train(cfg, ds.images, ds.labels if cfg.model.num_classes > 0 else None, tmp / "single")
    return by_rank, run, tmp / "single", len(ds)


@needs_torchrun
def test_both_nodes_finish_and_rank_zero_alone_writes_the_run(runs):
    by_rank, run, _, _ = runs
    assert load_checkpoint(run / CHECKPOINT)["step"] == STEPS
    assert (run / "config.yaml").is_file() and (run / "data_report.json").is_file()
    other = by_rank[1][0]
    assert not (other / "runs").exists(), sorted(p.relative_to(other) for p in (other / "runs").rglob("*"))
    for rank, (node, res) in by_rank.items():  # each node built its own cache (no shared disk)
        assert len(list((node / "cache" / "stream").glob("*.rows"))) == 1
        assert "stream cache: 32 xray images at 16 px written" in res.stderr, (rank, res.stderr[-2000:])
        assert not list(node.rglob("*.tmp"))


@needs_torchrun
def test_each_rank_streams_only_its_slice_of_every_global_batch(runs):
    by_rank, run, _, n = runs
    reads = {}
    for rank, (_, res) in by_rank.items():
        found = [(int(r), [int(i) for i in ix.split(",") if i.strip()]) for r, ix in READ.findall(res.stderr)]
        assert found and {r for r, _ in found} == {rank}, res.stderr[-2000:]
        reads[rank] = [ix for _, ix in found]
    cfg = load_config(run / "config.yaml")
    sampler = BatchSampler(n, BATCH, int(cfg.train.seed) + 1)  # the loop's sampler: train.seed + 1
    served = 2 * STEPS  # one real batch per D and per G update
    for rank, batches in reads.items():
        # the reader reads ahead of training (prefetch), never behind: at least every batch trained on
        assert served <= len(batches) <= served + 4, (rank, len(batches))
    for k in range(min(len(reads[0]), len(reads[1]))):
        glob = sampler.next().tolist()
        a, b = reads[0][k], reads[1][k]
        assert len(a) == len(b) == BATCH // 2
        assert not set(a) & set(b)  # disjoint
        assert a + b == glob  # rank 0 the first half, rank 1 the second: together the global batch


@needs_torchrun
def test_two_nodes_match_one_process(runs):
    _, run, single, _ = runs
    a, b = load_checkpoint(run / CHECKPOINT), load_checkpoint(single / CHECKPOINT)
    assert a["step"] == b["step"] == STEPS and a["speed"]["world_size"] == 2 and b["speed"]["world_size"] == 1
    for key in ("gen", "perm", "pos"):  # the same global batches, in the same order
        assert torch.equal(torch.as_tensor(a["sampler"][key]), torch.as_tensor(b["sampler"][key])), key
    # the schedule follows the global batch: ADA's p rose once, by the 6 x 8 real images both ranks
    # counted together (one rank's count would give 0.24); r_t is the sign of D(real) over both
    p, q = a["model"], b["model"]
    assert float(p["augment_pipe.p"]) == float(q["augment_pipe.p"]) == pytest.approx(STEPS * BATCH / 100)
    assert abs(float(p["augment_pipe.rt"]) - float(q["augment_pipe.rt"])) <= 0.15
    lines = [[json.loads(s) for s in (r / "stats.jsonl").read_text().splitlines()] for r in (run, single)]
    assert [ln["step"] for ln in lines[0]] == [ln["step"] for ln in lines[1]] == list(range(1, STEPS + 1))
    # same data, init and synced BatchNorm; only the latents differ (per rank): the bound of test_ddp.py
    diffs = [abs(x[k] - y[k]) for x, y in zip(*lines) for k in ("loss/D", "loss/G")]
    assert max(diffs) < 2e-3, diffs  # measured 4.9e-4
    # D, whose update is mostly the real images' (the same ones), moved where one process moved it
    # (measured: difference 11 % of the distance moved; G's, all from the latents, differ ~100 %)
    init = _initial_weights(load_config(run / "config.yaml"))
    d_keys = [k for k in init if k.startswith("D.")]
    moved = _norm({k: q[k] - init[k] for k in d_keys})
    assert _norm({k: p[k] - q[k] for k in d_keys}) < 0.3 * moved


def _initial_weights(cfg) -> dict[str, torch.Tensor]:
    """The variant's parameters as the loop builds them (``torch.manual_seed(train.seed)``)."""
    from medsynth.models.registry import build_model

    torch.manual_seed(int(cfg.train.seed))
    return {k: v.detach().clone() for k, v in build_model(cfg.model).named_parameters()}


def _norm(tensors: dict[str, torch.Tensor]) -> float:
    return sum(float(t.double().norm() ** 2) for t in tensors.values()) ** 0.5


def test_ranks_holding_other_images_stop_together(monkeypatch):
    """Nodes load their own copies of the data: a rank whose images differ from rank 0's (by content
    fingerprint) stops every rank with one line, on each rank."""
    from medsynth.errors import MedsynthError
    from medsynth.train import distributed as ddp

    monkeypatch.setattr(ddp, "gather_objects", lambda value, info: ["sha256:aaaa", value])
    for rank in (0, 1):
        ddp.check_same("sha256:aaaa", ddp.DistInfo(rank=rank, world=2), path="x.npz", what="training images")
        with pytest.raises(MedsynthError, match=r"training images differ .* rank 1 sha256:bbbb"):
            ddp.check_same("sha256:bbbb", ddp.DistInfo(rank=rank, world=2), path="x.npz", what="training images")
    ddp.check_same("anything", ddp.DistInfo(), path="x.npz", what="training images")  # one process: no check


def test_a_shared_cache_folder_is_built_once(tmp_path, monkeypatch):
    """Nodes sharing the cache folder (a shared filesystem): one builds under the file lock, the
    others wait and reuse it (two loaders started at once, one per thread: separate lock handles)."""
    from medsynth.data import stream as S

    data = _npz(tmp_path / "x.npz", n=12)
    builds, real_build = [], S._build_cache

    def slow_build(*args, **kw):
        builds.append(1)
        time.sleep(0.3)  # the other loader arrives while this one builds
        return real_build(*args, **kw)

    monkeypatch.setattr(S, "_build_cache", slow_build)
    out: list = [None, None]

    def load(k: int) -> None:
        out[k] = S.load_training_data(data, size=16, split="train", stream="on", cache_dir=tmp_path / "cache")[0]

    threads = [threading.Thread(target=load, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(builds) == 1 and all(isinstance(ds, S.StreamSet) for ds in out)
    assert out[0].fingerprint() == out[1].fingerprint()
    assert torch.equal(out[0].images.read(range(8)), out[1].images.read(range(8)))


def test_a_cache_folder_without_locks_is_named_in_one_line(tmp_path, monkeypatch):
    """A filesystem that refuses ``flock`` (some network mounts) stops the build with one line naming
    the folder and the way out, not a traceback."""
    import errno

    from medsynth.data import stream as S
    from medsynth.errors import MedsynthError

    def refuse(fd, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(S.fcntl, "flock", refuse)
    with pytest.raises(MedsynthError, match=r"cannot lock the stream cache here .*MEDSYNTH_CACHE_DIR"):
        S.load_training_data(_npz(tmp_path / "x.npz", n=6), size=16, split="train", stream="on",
                             cache_dir=tmp_path / "cache")
    assert not list((tmp_path / "cache" / "stream").glob("*.rows"))
