"""Two ``torchrun`` "nodes" against one process: per-rank throughput, and how far the two-node
result lies from the single-process one, as JSON (issue 18 point 6).

For each configuration the bench runs ``medsynth train`` on the embedded lung-spot radiographs
(``sample_data/manifest.csv``, train split) with ``data.stream=on``, one torch thread per process
and one reader process per rank:

* **one process**: ``medsynth train`` as is;
* **two nodes**: two ``torchrun --nnodes 2 --nproc-per-node 1 --rdzv-backend c10d
  --rdzv-endpoint 127.0.0.1:PORT --rdzv-id ID`` agents started at once, each in its own folder
  (``--out runs`` relative, so nothing is shared but the stream cache folder), the same global batch
  and seed.

Recorded per run: the img/s of the training loop (``done:`` line: steps x global batch / s of
the loop, without process start and data loading) and the seconds that implies, per rank the images it trained on per second (its share of the global batch),
its reader's batches and the seconds it waited for data (``stream: rank R of W served ...``).
Compared against one process: the same global batches (sampler state), the loss trajectory (the
largest absolute difference of ``loss/D``, ``loss/G`` at each of the first steps, and both runs'
mean losses over the last steps: the trajectories part after a few steps, since each rank draws
its own latents, so a single-step difference over 100 steps says little), per network the
distance between the final weights relative to the distance one process moved them from the
initial weights, and the schedule
(ProGAN ``stage``/``alpha``: grown by the images shown over all ranks).

The machine may be shared: every run is under ``nice -n 19`` (``--nice``) and the record carries
the load average before and after; throughput taken under contention is slower and noisier (and two
processes on two shared cores compete with each other and with everyone else).

Usage::

    nice -n 19 python -m pipelines.benches.multinode --out reports/multinode_cpu.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
#: name -> (preset, --set overrides, schedule buffers to compare)
CONFIGS: dict[str, tuple[str, list[str], tuple[str, ...]]] = {
    # the xray_dcgan preset at 32² (width 16, BatchNorm synced over ranks) without its
    # minibatch-stddev channel (which sees the per-rank batch): as tests/test_ddp.py, only the
    # latents differ from one process
    "dcgan": ("xray_dcgan", ["data.size=32", "model.params.mbstd=false"], ()),
    # the xray_progan preset at 32² (width 8) with stages of 1,000 images: 100 steps of 32 grow
    # 4² -> 32² and end 0.4 into the last fade-in; as the preset: DiffAugment, minibatch stddev
    "progan": ("xray_progan", ["data.size=32", "model.width=8", "model.params.kimg_per_stage=1.0"],
               ("stage", "alpha")),
}
#: steps whose loss difference is listed (the trajectories then part: each rank draws its own latents)
FIRST = 5
#: steps over which the mean losses are compared
TAIL = 20
DONE = re.compile(r"done: (\d+) steps, [\d.]+ min, (\d+) img/s")
SERVED = re.compile(r"stream: rank (\d+) of (\d+) served (\d+) batches, ([\d.]+) s waiting for data")
RANK = re.compile(r"distributed: rank (\d+) of (\d+)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun() -> str:
    local = Path(sys.executable).with_name("torchrun")
    return str(local) if local.exists() else str(shutil.which("torchrun"))


def _args(preset: str, sets: list[str], steps: int, batch: int, data: Path) -> list[str]:
    common = [f"train.steps={steps}", f"train.batch_size={batch}", "train.threads=1", "train.tick_every=1",
              f"train.sample_every={steps}", f"train.checkpoint_every={steps}", "train.seed=0", "data.stream=on",
              "data.workers=1", *sets]
    return ["train", "--model", preset.split("_")[1], "--preset", preset, "--data", str(data), "--out", "runs", "--no-progress", "--no-quick-check",
            *[a for s in common for a in ("--set", s)]]


def _env(cache: Path) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MEDSYNTH_VERBOSE": "1",
            "MEDSYNTH_CACHE_DIR": str(cache), "PYTHONPATH": str(ROOT)}


def _parse(stdout: str, stderr: str, world: int, batch: int) -> dict:
    done = DONE.search(stdout)
    if done is None:
        raise RuntimeError(f"no done: line\n{stdout[-2000:]}\n{stderr[-3000:]}")
    rank = RANK.search(stderr)
    served = SERVED.search(stderr)
    img_s, steps = int(done.group(2)), int(done.group(1))
    return {"rank": int(rank.group(1)) if rank else 0, "steps": steps, "loop_s": round(steps * batch / img_s, 1),
            "global_img_s": img_s,
            "rank_img_s": round(img_s / world, 1), "reader_batches": int(served.group(3)) if served else None,
            "data_wait_s": float(served.group(4)) if served else None}


def run_single(work: Path, args: list[str], cache: Path, nice: int, timeout: float, batch: int) -> dict:
    work.mkdir(parents=True)
    t0 = time.perf_counter()
    p = subprocess.run(["nice", "-n", str(nice), sys.executable, "-m", "medsynth.cli", *args], cwd=work,
                       env=_env(cache), capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"single process failed:\n{p.stderr[-3000:]}")
    rec = _parse(p.stdout, p.stderr, 1, batch)
    return {"wall_s_with_start": round(time.perf_counter() - t0, 1), "ranks": [rec],
            "run": str(next((work / "runs").iterdir()))}


def run_two_nodes(work: Path, args: list[str], cache: Path, nice: int, timeout: float, batch: int) -> dict:
    port = _free_port()
    procs = []
    t0 = time.perf_counter()
    for k in (0, 1):
        node = work / f"node{k}"
        node.mkdir(parents=True)
        cmd = ["nice", "-n", str(nice), _torchrun(), "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend",
               "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", f"bench-{port}", "--max-restarts", "0",
               "-m", "medsynth.cli", *args]
        procs.append(subprocess.Popen(cmd, cwd=node, env=_env(cache), stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    outs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=timeout)
            if p.returncode != 0:
                raise RuntimeError(f"a node failed:\n{err[-3000:]}")
            outs.append(_parse(out, err, 2, batch))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    runs = [d for d in work.glob("node*/runs/*") if d.is_dir()]
    if len(runs) != 1:
        raise RuntimeError(f"expected one run folder (rank 0's), found {runs}")
    return {"wall_s_with_start": round(time.perf_counter() - t0, 1), "ranks": sorted(outs, key=lambda r: r["rank"]),
            "run": str(runs[0]), "nodes_with_a_run_folder": len(runs)}


def compare(two: Path, one: Path, schedule: tuple[str, ...]) -> dict:
    """How far the two-node run ended from the single-process one."""
    from medsynth.config import load_config
    from medsynth.models.registry import build_model
    from medsynth.runs import CHECKPOINT, load_checkpoint

    a, b = load_checkpoint(two / CHECKPOINT), load_checkpoint(one / CHECKPOINT)
    cfg = load_config(two / "config.yaml")
    torch.manual_seed(int(cfg.train.seed))
    init = {k: v.detach() for k, v in build_model(cfg.model).named_parameters()}

    def norm(ts) -> float:
        return sum(float(t.double().norm() ** 2) for t in ts) ** 0.5

    nets = {}
    for net in sorted({k.split(".")[0] for k in init}):
        keys = [k for k in init if k.split(".")[0] == net]
        moved = norm(b["model"][k] - init[k] for k in keys)
        nets[net] = {"distance": round(norm(a["model"][k] - b["model"][k] for k in keys), 6),
                     "moved_by_one_process": round(moved, 6),
                     "relative": round(norm(a["model"][k] - b["model"][k] for k in keys) / max(moved, 1e-12), 4)}
    lines = [[json.loads(s) for s in (r / "stats.jsonl").read_text().splitlines()] for r in (two, one)]
    first = [round(max(abs(x[k] - y[k]) for k in ("loss/D", "loss/G")), 6) for x, y in zip(*lines)][:FIRST]
    tail = {name: {k: round(sum(ln[k] for ln in ls[-TAIL:]) / len(ls[-TAIL:]), 4) for k in ("loss/D", "loss/G")}
            for name, ls in zip(("two_nodes", "one_process"), lines)}
    same_batches = all(torch.equal(torch.as_tensor(a["sampler"][k]), torch.as_tensor(b["sampler"][k]))
                       for k in ("gen", "perm", "pos"))
    return {"same_global_batches": same_batches, "steps": [int(a["step"]), int(b["step"])],
            "loss_abs_diff_first_steps": first, f"loss_mean_last_{TAIL}_steps": tail, "weights": nets,
            "schedule": {k: {"two_nodes": float(a["model"][k]), "one_process": float(b["model"][k])} for k in schedule}}


def _machine() -> dict:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    import monai

    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "monai": monai.__version__, "platform": platform.platform()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "reports" / "multinode_cpu.json")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch", type=int, default=32, help="global batch (16 per rank on two nodes)")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--data", type=Path, default=ROOT / "sample_data" / "manifest.csv")
    ap.add_argument("--nice", type=int, default=19)
    ap.add_argument("--timeout", type=float, default=1200)
    a = ap.parse_args(argv)
    from medsynth.atomic import write_text

    load_before = os.getloadavg()
    results = {}
    with tempfile.TemporaryDirectory(prefix="medsynth-multinode-") as tmp:
        cache = Path(tmp) / "cache"  # one cache folder: built by the first run, reused by the others
        for name in a.configs.split(","):
            preset, sets, schedule = CONFIGS[name]
            args = _args(preset, sets, a.steps, a.batch, a.data)
            one = run_single(Path(tmp) / name / "one", args, cache, a.nice, a.timeout, a.batch)
            two = run_two_nodes(Path(tmp) / name / "two", args, cache, a.nice, a.timeout, a.batch)
            results[name] = {"preset": preset, "set": sets, "one_process": one, "two_nodes": two,
                             "two_vs_one": compare(Path(two["run"]), Path(one["run"]), schedule)}
            for rec in (one, two):
                rec.pop("run")
            print(json.dumps({name: results[name]["two_vs_one"]}, indent=1), flush=True)
    record = {
        "bench": "multinode", "date": datetime.date.today().isoformat(),
        "command": f"nice -n 19 python -m pipelines.benches.multinode --steps {a.steps} --batch {a.batch} "
                   f"--out {a.out}",
        "setup": {"steps": a.steps, "global_batch": a.batch, "threads_per_process": 1, "reader_processes_per_rank": 1,
                  "data": "sample_data/manifest.csv (train split), data.stream=on",
                  "two_nodes": "torchrun --nnodes 2 --nproc-per-node 1 --rdzv-backend c10d on 127.0.0.1, own "
                               "working folder per node"},
        "machine": _machine(), "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "contention": f"measured under contention: 2 cores shared with other jobs, every run under nice -n {a.nice}; "
                      "img/s are not comparable to an idle machine's",
        "results": results,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    write_text(a.out, json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
