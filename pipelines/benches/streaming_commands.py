"""Issue 18 point 3: peak memory of ``generate``, ``augment`` and ``evaluate`` at 1k vs 10k images.

A tiny DCGAN run (64², width 8, 4 steps on the embedded phantom radiographs: quality does not
matter for memory) is trained ONCE into ``--cache`` (default ``~/.cache/medsynth-bench/
streaming_commands``, outside the repository) and reused. Then, for each size N (default 1,000 and
10,000), each command runs in a FRESH subprocess through the real command line (``medsynth.cli``
in-process in that subprocess, default options: release gate on, PNG), and the subprocess reports
its peak resident set size (``VmHWM`` of ``/proc/self/status``, the figure
``pipelines/benches/streaming_memory.py`` takes as ``ru_maxrss``) when the command is done:

* ``generate RUN --count N --out CACHE/sets/syn_N`` (the set is kept: augment reads it);
* ``augment --synthetic CACHE/runs/RUN/syn_N/manifest.csv --out TMP`` (inside the run's folder, so the
  release gate screens the N synthetic images against the run's training images);
* ``evaluate RUN --count N --n-boot 200`` (the N synthetic images are sampled by evaluate itself).

The record gives, per command, the peak RSS at each size and the 10k/1k ratio; goal: flat (ratio
within 0.9-1.1). The machine may be shared: every subprocess runs under ``nice -n 19``; seconds are
recorded but measured under contention (memory is the figure to read).

Usage::

    python -m pipelines.benches.streaming_commands --out reports/streaming_commands_cpu.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from medsynth.atomic import write_text
from pipelines.benches.streaming_memory import _machine, _rusage

SIZES = (1000, 10000)
COMMANDS = ("generate", "augment", "evaluate")
DEFAULT_CACHE = Path.home() / ".cache" / "medsynth-bench" / "streaming_commands"
TRAIN = ["--modality", "xray", "--size", "64", "--steps", "4", "--set", "model.width=8", "--no-quick-check",
         "--no-progress"]


def _vmhwm_mib() -> float:
    """Peak resident set size of this process (``VmHWM``), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError("no VmHWM in /proc/self/status")


def _cli(args: list[str]) -> None:
    """Run ``medsynth ARGS`` in this process (exceptions propagate)."""
    from medsynth.cli import app

    app([str(a) for a in args], standalone_mode=False)


def child(command: str, run: Path, n: int, cache: Path) -> dict:
    """One measurement: ``command`` at ``n`` images, in this (fresh) process."""
    import logging

    logging.basicConfig(level=logging.WARNING)
    t0 = time.perf_counter()
    syn = run / f"syn_{n}"
    if command == "generate":
        if syn.exists():
            shutil.rmtree(syn)
        _cli(["generate", run, "--count", n, "--out", syn])
    elif command == "augment":
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            _cli(["augment", "--synthetic", syn / "manifest.csv", "--out", Path(tmp) / "aug"])
    elif command == "evaluate":
        _cli(["evaluate", run, "--count", n, "--n-boot", "200"])
    else:
        raise ValueError(command)
    return {"command": command, "n": n, "peak_rss_mib": _vmhwm_mib(), "ru_maxrss": _rusage(),
            "seconds_under_contention": round(time.perf_counter() - t0, 1)}


def ensure_run(cache: Path, nice: int) -> Path:
    """The tiny trained run (trained once, reused)."""
    runs = cache / "runs"
    found = sorted(runs.glob("*-xray-dcgan")) if runs.is_dir() else []
    if found and (found[0] / "checkpoints" / "last.pt").is_file():
        run = found[0]
    else:
        shutil.rmtree(runs, ignore_errors=True)
        cmd = (["nice", "-n", str(nice)] if nice else []) + [sys.executable, "-m", "medsynth.cli", "train", *TRAIN,
                                                             "--out", str(runs)]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        run = sorted(runs.glob("*-xray-dcgan"))[0]
    if (run / "local" / "gate_encoder.pt").is_file():
        return run
    # the release gate trains the run's gate encoder once (RUN/local/gate_encoder.pt) at the first generate:
    # do that here, so no measured command pays for it
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        warm = (["nice", "-n", str(nice)] if nice else []) + [sys.executable, "-m", "medsynth.cli", "generate",
                                                             str(run), "--count", "1", "--out", str(Path(tmp) / "w")]
        subprocess.run(warm, check=True, stdout=subprocess.DEVNULL)
    return run


def run_child(command: str, run: Path, n: int, cache: Path, nice: int) -> dict:
    cmd = (["nice", "-n", str(nice)] if nice else []) + [
        sys.executable, "-m", "pipelines.benches.streaming_commands", "--child", command, "--run", str(run),
        "--n", str(n), "--cache", str(cache)]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if p.returncode != 0:
        raise RuntimeError(f"{command} {n} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("reports/streaming_commands_cpu.json"))
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)))
    ap.add_argument("--commands", default=",".join(COMMANDS))
    ap.add_argument("--nice", type=int, default=19)
    ap.add_argument("--child", choices=COMMANDS, help=argparse.SUPPRESS)
    ap.add_argument("--run", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        print(json.dumps(child(a.child, a.run, a.n, a.cache)), flush=True)
        return 0
    a.cache.mkdir(parents=True, exist_ok=True)
    load0 = os.getloadavg()
    run = ensure_run(a.cache, a.nice)
    sizes = [int(s) for s in a.sizes.split(",")]
    rows = []
    for command in a.commands.split(","):  # generate first: augment reads its sets
        for n in sizes:
            r = run_child(command, run, n, a.cache, a.nice)
            rows.append(r)
            print(f"{command:9s} {n:>6d} images: peak RSS {r['peak_rss_mib']:7.1f} MiB "
                  f"({r['seconds_under_contention']:.0f} s under contention)", flush=True)
    ratios = {}
    for command in a.commands.split(","):
        peaks = {r["n"]: r["peak_rss_mib"] for r in rows if r["command"] == command}
        if len(sizes) >= 2:
            ratios[command] = round(peaks[max(sizes)] / peaks[min(sizes)], 3)
            print(f"{command:9s} {max(sizes)}/{min(sizes)} peak RSS ratio {ratios[command]:.3f} "
                  f"({'flat' if 0.9 <= ratios[command] <= 1.1 else 'NOT flat'}: goal 0.9-1.1)")
    record = {"bench": "streaming_commands", "date": datetime.date.today().isoformat(),
              "command": "python -m pipelines.benches.streaming_commands " + " ".join(argv or sys.argv[1:]),
              "run": {"train": TRAIN, "note": "tiny DCGAN 64² width 8, 4 steps, embedded phantom radiographs"},
              "measure": "VmHWM of a fresh subprocess per command and size, under nice -n 19",
              "goal": "peak RSS ratio 10k/1k within 0.9-1.1",
              "machine": _machine(), "load_before": [round(v, 2) for v in load0],
              "load_after": [round(v, 2) for v in os.getloadavg()], "results": rows, "ratio_max_over_min": ratios}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    write_text(a.out, json.dumps(record, indent=1) + "\n")
    print(f"-> {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
