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
    import medsynth.train.loop as loop
    from medsynth.models.registry import build_model
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
    real_save = loop.save_checkpoint
    loop.save_checkpoint = lambda path, payload: (writes.append(str(path)), real_save(path, payload))
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


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    ctx = mp.start_processes(_worker, args=(_free_port(), str(tmp)), nprocs=WORLD, join=False, start_method="spawn")
    deadline = time.monotonic() + 120
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.terminate()
            pytest.fail("DDP workers did not finish in 120 s (deadlock?)")
    return tmp, [torch.load(tmp / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


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
    from medsynth.train.loop import load_trained, train

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
