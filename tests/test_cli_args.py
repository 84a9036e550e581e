"""The flags every command shares (hr2g.cli, hr2g.inference): each one reaches the config or the model."""
import argparse

import pytest
import torch

from hr2g import cli, inference
from hr2g.configs import get_preset
from tests.helpers import tiny_config


def _cfg(*argv):
    p = argparse.ArgumentParser()
    cli.add_config_args(p)
    return cli.config_from_args(p.parse_args(list(argv)))


def test_shared_flags_reach_the_config(tmp_path):
    cfg = _cfg("--shots", "3", "--ways", "4", "--device", "cpu")
    assert (cfg.data.k_shot, cfg.data.n_way, cfg.train.device) == (3, 4, "cpu")
    assert _cfg("--fused").model.backend == "auto"
    assert _cfg("--fused", "--backend", "torch").model.backend == "torch"  # the explicit backend wins
    # a benchmark's name alone picks its preset, not tiny's model
    assert _cfg("--dataset", "hmdb51", "--data-root", str(tmp_path)).model == get_preset("hmdb51").model != get_preset("tiny").model
    with pytest.raises(SystemExit, match="invalid configuration"):
        _cfg("--shots", "0")  # 0 is given, not absent: validated and refused


def test_set_items_are_split_at_the_first_equals_sign_and_stripped():
    cfg = tiny_config()
    cli.apply_overrides(cfg, [" data.data_root = /data/a=b ", "train.lr=0.5"])
    assert (cfg.data.data_root, cfg.train.lr) == ("/data/a=b", 0.5)
    with pytest.raises(SystemExit, match=r"--set expects SECTION.FIELD=VALUE, got 'train.lr'"):
        cli.apply_overrides(cfg, ["train.lr"])


def test_writable_file_refuses_a_folder_and_leaves_nothing_behind(tmp_path):
    with pytest.raises(SystemExit, match=r"^error: --json: .* is a folder, expected a file path"):
        cli.writable_file("--json", tmp_path)
    out = cli.writable_file("--json", tmp_path / "sub" / "r.json")
    assert out.parent.is_dir() and not out.exists()  # checked by opening it, then removed again
    (tmp_path / "kept.json").write_text("old")
    assert cli.writable_file("--json", tmp_path / "kept.json").read_text() == "old"


@pytest.mark.parametrize("fused, backend, want", [(True, None, "auto"), (False, "torch", "torch"), (True, "torch", "torch")])
def test_backend_flags_switch_every_op_of_a_loaded_model(fused, backend, want):
    from hr2g.model.model import HR2G

    cfg = tiny_config()
    cfg.model.backend = "ext"  # as a checkpoint could carry; the flags replace it
    model = HR2G(cfg.model, cfg.data.frames)
    inference.apply_backend_flags(argparse.Namespace(fused=fused, backend=backend), model, cfg, torch.device("cpu"))
    ops = [m.backend for m in model.modules() if hasattr(m, "backend")]
    assert cfg.model.backend == want and len(ops) >= 3 and set(ops) == {want}
