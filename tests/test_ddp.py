"""The one loop under torch.distributed: 2 CPU processes on gloo, as torchrun would start them."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from medsynth.config import resolve

WORLD = 2
GLOBAL_BATCH = 16


def _cfg(steps: int, **train_kw):
    # mbstd off: the minibatch-stddev channel sees the per-rank batch (by design), BatchNorm is synced
    return resolve(base={"model": {"name": "dcgan", "width": 4, "latent_dim": 16, "num_classes": 2,
                                   "params": {"mbstd": False}},
                         "data": {"size": 16},
                         "train": {"steps": steps, "batch_size": GLOBAL_BATCH, "tick_every": 1, "sample_every": 100,
                                   "checkpoint_every": 2, "threads": 1, **train_kw}})


def _data(n=48):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, 16, 16, generator=g) * 2 - 1, torch.randint(0, 2, (n,), generator=g)


def _d_grads(model, x, y) -> dict[str, torch.Tensor]:
    """Gradients of D's BCE loss on ``x`` w.r.t. D's parameters (fp32, no noise involved)."""
    from medsynth import losses

    model.zero_grad(set_to_none=True)
    loss = losses.bce_d_loss(model.D(x, y), model.D(-x, y), 0.9)
    loss.backward()
    return {k: p.grad.detach().clone() for k, p in model.D.named_parameters()}


def _worker(rank: int, port: int, tmp: str) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "LOCAL_RANK": str(rank), "WORLD_SIZE": str(WORLD)})
    torch.set_num_threads(1)
    from medsynth.models.registry import build_model
    from medsynth.train import checkpointer, loop
    from medsynth.train import distributed as ddp

    tmp = Path(tmp)
    info = ddp.init_from_env()
    # 1) exact gradient equivalence: synced BN + contiguous shard + averaged gradients == full batch
    torch.manual_seed(0)
    model = build_model(_cfg(1).model)
    model, n_bn = ddp.convert_sync_batchnorm(model, torch.device("cpu"))
    x, y = _data()
    idx = ddp.shard(torch.arange(GLOBAL_BATCH), info)
    grads = _d_grads(model, x[idx], y[idx])
    for k, p in model.D.named_parameters():
        p.grad = grads[k]
    ddp.all_reduce_gradients(list(model.D.parameters()), info)
    grads = {k: p.grad for k, p in model.D.named_parameters()}
    # 2) training runs: 4 steps at once, and 2 steps + resume to 4; count checkpoint writes per rank
    writes = []
    real_save = checkpointer.save_checkpoint
    checkpointer.save_checkpoint = lambda path, payload: (writes.append(str(path)), real_save(path, payload))
    res = loop.train(_cfg(4), x, y, tmp / "full")
    loop.train(_cfg(2), x, y, tmp / "half")
    res2 = loop.train(_cfg(4), x, y, tmp / "half", resume=True)
    torch.save({"n_bn": n_bn, "grads": grads, "writes": writes,
                "full": {k: v.detach().clone() for k, v in res.model.state_dict().items()},
                "resumed": {k: v.detach().clone() for k, v in res2.model.state_dict().items()}},
               tmp / f"rank{rank}.pt")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(worker, tmp: Path, timeout: float = 120) -> list[dict]:
    """Run ``worker(rank, port, tmp)`` in ``WORLD`` spawned processes; each saves ``tmp/rank<r>.pt``."""
    ctx = mp.start_processes(worker, args=(_free_port(), str(tmp)), nprocs=WORLD, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.terminate()
            pytest.fail(f"DDP workers did not finish in {timeout:.0f} s (deadlock?)")
    return [torch.load(tmp / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    return tmp, _spawn(_worker, tmp)


def _losses(run: Path) -> list[tuple[float, float]]:
    lines = [json.loads(s) for s in (run / "stats.jsonl").read_text().splitlines()]
    return [(ln["loss/D"], ln["loss/G"]) for ln in lines]


def test_sharded_synced_gradients_equal_full_batch(ddp_run):
    from medsynth.models.registry import build_model

    _, outs = ddp_run
    torch.manual_seed(0)
    model = build_model(_cfg(1).model)
    x, y = _data()
    ref = _d_grads(model, x[:GLOBAL_BATCH], y[:GLOBAL_BATCH])
    assert outs[0]["n_bn"] > 0  # DCGAN has BatchNorm: it was synchronised
    for out in outs:
        for k, g in ref.items():
            torch.testing.assert_close(out["grads"][k], g, rtol=1e-4, atol=1e-6, msg=k)


def test_ranks_hold_identical_models_and_resume_is_exact(ddp_run):
    _, outs = ddp_run
    for k, v in outs[0]["full"].items():
        assert torch.equal(v, outs[1]["full"][k]), k  # averaged gradients + broadcast buffers
        assert torch.equal(v, outs[0]["resumed"][k]), k  # 2 steps + resume == 4 steps


def test_rank_zero_writes_once_and_loss_trajectory_matches_single_process(ddp_run, tmp_path):
    from medsynth.runs import load_trained
    from medsynth.train.loop import train

    tmp, outs = ddp_run
    assert outs[1]["writes"] == []
    assert len(outs[0]["writes"]) == 3 + 2 + 2  # full: steps 2, 4 + final; half: 2 + final; resumed: 4 + final
    assert not list(tmp.rglob("*.tmp"))
    _, _, ck = load_trained(tmp / "full")
    assert ck["step"] == 4 and len(ck["rng_ranks"]) == WORLD
    x, y = _data()
    train(_cfg(4), x, y, tmp_path / "single")
    single, dist = _losses(tmp_path / "single"), _losses(tmp / "full")
    assert len(single) == len(dist) == 4
    # same data, same initialisation, synced BN; only the latent noise differs between the runs
    diffs = [abs(a - b) for s, d in zip(single, dist) for a, b in zip(s, d)]
    assert max(diffs) < 2e-3, (single, dist)  # measured 3e-4; a different init gives 5e-3


# ---- schedules: several processes follow the schedule of one (the loop's global StepInfo) ----------
# ProGAN grows by the real images shown (kimg_per_stage 0.12 at batch 16: 7.5 steps per stage, 24
# steps end mid-fade of the last stage); ADA moves p by the images counted over all processes
# (target 0.3: r_t stays above it here, so p rises by 64 / 1000 every 4 steps).
SCHEDULES = {
    "progan": ({"name": "progan", "params": {"kimg_per_stage": 0.12}}, 32, ("stage", "alpha")),
    "stylegan2_ada": ({"name": "stylegan2", "params": {"augment": "ada", "ada_kimg": 1.0, "ada_target": 0.3}}, 16,
                      ("augment_pipe.p", "augment_pipe.rt")),
}


def _schedule_cfg(key: str):
    model, size, _ = SCHEDULES[key]
    return resolve(base={"model": {"width": 4, "latent_dim": 16, "num_classes": 0, **model}, "data": {"size": size},
                         "train": {"steps": 24, "batch_size": GLOBAL_BATCH, "tick_every": 4, "sample_every": 100,
                                   "checkpoint_every": 100, "threads": 1, "amp": "off"}})


def _schedule_train(key: str, run: Path) -> dict[str, float]:
    """Train the ``SCHEDULES[key]`` run; its schedule buffers at the end."""
    from medsynth.train.loop import train

    size = SCHEDULES[key][1]
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 1, size, size, generator=g) * 2 - 1
    sd = train(_schedule_cfg(key), x, None, run).model.state_dict()
    return {k: float(sd[k]) for k in SCHEDULES[key][2]}


def _schedule_worker(rank: int, port: int, tmp: str) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "LOCAL_RANK": str(rank), "WORLD_SIZE": str(WORLD)})
    torch.set_num_threads(1)
    from medsynth.train import distributed as ddp

    ddp.init_from_env()
    out = {key: _schedule_train(key, Path(tmp) / key) for key in SCHEDULES}
    torch.save(out, Path(tmp) / f"rank{rank}.pt")


@pytest.fixture(scope="module")
def schedule_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("schedules")
    two = _spawn(_schedule_worker, tmp, timeout=240)
    one = {key: _schedule_train(key, tmp / f"{key}-single") for key in SCHEDULES}
    return one, two


def test_progan_grows_on_the_same_schedule_in_two_processes(schedule_runs):
    one, two = schedule_runs
    assert one["progan"] == {"stage": 3.0, "alpha": pytest.approx(0.4)}  # 384 images: stage 3, 0.4 of its fade
    for out in two:
        assert out["progan"]["stage"] == one["progan"]["stage"]
        assert out["progan"]["alpha"] == pytest.approx(one["progan"]["alpha"], abs=1e-12)


def test_ada_p_follows_the_same_schedule_in_two_processes(schedule_runs):
    one, two = schedule_runs
    assert one["stylegan2_ada"]["augment_pipe.p"] == pytest.approx(0.384)  # six rises of 64 images / 1 kimg
    for out in two:
        assert out["stylegan2_ada"]["augment_pipe.p"] == pytest.approx(one["stylegan2_ada"]["augment_pipe.p"],
                                                                       abs=1e-9)
        # r_t: the sign of D(real) over the global batch (the two runs differ only in their latents)
        assert abs(out["stylegan2_ada"]["augment_pipe.rt"] - one["stylegan2_ada"]["augment_pipe.rt"]) <= 0.15
