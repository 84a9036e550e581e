"""2-process DDP on CPU (gloo): banks identical on every rank, and the run equals a single process
fed the same episodes (episodes_per_step = world size)."""
import socket

import pytest
import torch
import torch.multiprocessing as mp

from hr2g import checkpoint
from hr2g.training import train
from tests.helpers import tiny_config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, cfg, results):
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    results[rank] = train(cfg, progress=False)


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


def test_episodes_per_step_out_of_range_is_refused(tmp_path):
    cfg = _cfg(tmp_path)
    cfg.train.episodes_per_step = 0
    with pytest.raises(ValueError, match=r"train.episodes_per_step=0 is outside the allowed range"):
        cfg.validate()
