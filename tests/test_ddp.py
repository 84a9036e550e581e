"""2-process DDP on CPU (gloo): banks identical on every rank, and the run equals a single process
fed the same episodes (episodes_per_step = world size)."""
import datetime
import os
import signal
import socket

import pytest
import torch
import torch.multiprocessing as mp

from hr2g import checkpoint, training
from hr2g.stopping import TrainingStopped
from hr2g.training import train
from tests.helpers import tiny_config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, cfg, results, resume=None):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    results[rank] = train(cfg, resume=resume, progress=False)


def _stopping_worker(rank: int, world: int, port: int, cfg, results):
    """Rank 1 alone gets a SIGTERM after its second step; both ranks must stop there."""
    if rank == 1:
        real, calls = training.train_step, []

        def step(*args, **kwargs):
            out = real(*args, **kwargs)
            calls.append(1)
            if len(calls) == 2:
                os.kill(os.getpid(), signal.SIGTERM)
            return out

        training.train_step = step
    try:
        _worker(rank, world, port, cfg, results)
    except TrainingStopped as stop:
        results[rank] = (stop.epoch, stop.step, stop.signal_name)


def _nan_worker(rank: int, world: int, port: int, cfg, results):
    """Rank 1's loss turns NaN at its second step; every rank must stop there, none may step."""
    if rank == 1:
        real, calls = training.F.cross_entropy, []

        def cross_entropy(*args, **kwargs):
            calls.append(1)
            out = real(*args, **kwargs)
            return out * float("nan") if len(calls) == 2 else out

        training.F.cross_entropy = cross_entropy
    try:
        _worker(rank, world, port, cfg, results)
    except FloatingPointError as exc:
        results[rank] = str(exc)


def _cfg(path):
    cfg = tiny_config(path, ikt_bank_size=8)  # fills after 2 steps of 2x3 prototypes: momentum updates run too
    cfg.train.device = "cpu"
    cfg.train.episodes_per_step = 2
    cfg.train.val_episodes = 0
    return cfg


@pytest.mark.slow
def test_two_process_ddp_matches_single_process_and_keeps_banks_identical(tmp_path):
    ddp_cfg = _cfg(tmp_path / "ddp")
    results = mp.Manager().dict()
    mp.spawn(_worker, args=(2, _free_port(), ddp_cfg, results), nprocs=2, join=True)
    assert results[0]["world_size"] == 2
    assert results[0]["bank_digest"] == results[1]["bank_digest"], "knowledge banks differ between ranks"

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the workers: the same CPU kernels, the same float sums
    try:
        single = train(_cfg(tmp_path / "single"), progress=False)
    finally:
        torch.set_num_threads(threads)
    assert single["bank_digest"] == results[0]["bank_digest"]
    a = checkpoint.load(results[0]["last"])["model"]
    b = checkpoint.load(single["last"])["model"]
    for k in a:
        # DDP averages g0/2 + g1/2 exactly as the single process accumulates them; gloo's sum
        # of two addends is order-free, so the runs agree to the bit in practice -- a tolerance
        # of a few ulps allows a different reduction order on other builds
        torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-7, msg=lambda m: f"{k}: {m}")


@pytest.mark.slow
def test_a_signal_on_one_rank_stops_every_rank_at_the_same_step(tmp_path):
    cfg = _cfg(tmp_path / "ddp")
    results = mp.Manager().dict()
    mp.spawn(_stopping_worker, args=(2, _free_port(), cfg, results), nprocs=2, join=True)
    assert results[1] == (0, 2, "SIGTERM") and results[0] == (0, 2, "signal on another rank")
    ckpt = checkpoint.load(f"{cfg.train.out_dir}/last.pt")
    assert (ckpt["epoch"], ckpt["step"]) == (0, 2)
    resumed = mp.Manager().dict()
    mp.spawn(_worker, args=(2, _free_port(), cfg, resumed, "auto"), nprocs=2, join=True)
    assert resumed[0]["bank_digest"] == resumed[1]["bank_digest"]

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = train(_cfg(tmp_path / "single"), progress=False)
    finally:
        torch.set_num_threads(threads)
    assert single["bank_digest"] == resumed[0]["bank_digest"]


@pytest.mark.slow
def test_a_nan_loss_on_one_rank_stops_every_rank_before_the_step(tmp_path):
    """Rank 1 checked its own loss before backward, raised, and left rank 0 waiting in the
    all-reduce for train.dist_timeout_min.  Now both finish the backward (its all-reduce spreads the
    NaN) and refuse the step on the gradient norm; the checkpoint written before is kept."""
    cfg = _cfg(tmp_path / "ddp")
    cfg.train.dist_timeout_min = 1  # a rank left waiting fails the test in a minute, not two hours
    cfg.train.checkpoint_every = 1
    results = mp.Manager().dict()
    mp.spawn(_nan_worker, args=(2, _free_port(), cfg, results), nprocs=2, join=True)
    assert results[1].startswith("non-finite loss [") and "nan" in results[1]
    assert results[0].startswith("non-finite gradient norm nan") and "another rank" in results[0]
    ckpt = checkpoint.load(f"{cfg.train.out_dir}/last.pt")
    assert (ckpt["epoch"], ckpt["step"]) == (0, 1)


def test_episodes_per_step_out_of_range_is_refused(tmp_path):
    cfg = _cfg(tmp_path)
    cfg.train.episodes_per_step = 0
    with pytest.raises(ValueError, match=r"train.episodes_per_step=0 is outside the allowed range"):
        cfg.validate()


def test_collectives_wait_as_long_as_the_config_allows(monkeypatch):
    """Rank 0 validates alone while the other ranks wait at the next barrier: the process group
    gets train.dist_timeout_min (NCCL's default of 10 minutes would abort a longer validation)."""
    from hr2g import distributed

    seen = {}
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda backend, **kw: seen.update(backend=backend, **kw))
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    info = distributed.init_from_env("cpu", tiny_config().train.dist_timeout_min)
    assert (info.rank, info.world, info.local_rank) == (3, 4, 1)
    assert seen == dict(backend="gloo", rank=3, world_size=4, timeout=datetime.timedelta(minutes=120))


def _locked_out_worker(rank: int, world: int, port: int, cfg, results):
    from hr2g.errors import SetupError

    try:
        _worker(rank, world, port, cfg, results)
    except SetupError as exc:
        results[rank] = str(exc)


def test_a_run_folder_in_use_stops_every_rank(tmp_path):
    """Rank 0 alone takes the run folder's lock; when it was refused, the other ranks went on to
    wait at the first collective for train.dist_timeout_min."""
    from hr2g.checkpoint import RunLock

    cfg = _cfg(tmp_path / "ddp")
    cfg.train.dist_timeout_min = 1
    results = mp.Manager().dict()
    with RunLock(cfg.train.out_dir):
        mp.spawn(_locked_out_worker, args=(2, _free_port(), cfg, results), nprocs=2, join=True)
    assert "is in use by another training run (PID" in results[0]
    assert results[1].endswith("is in use by another training run (rank 0 could not lock it)")
