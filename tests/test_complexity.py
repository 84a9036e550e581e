"""The complexity report (``python -m hr2g.complexity``): parameter counts against open_clip and
closed forms, FLOPs against explicit per-module counts, CPU memory honestly unavailable."""
import json

import open_clip
import pytest
import torch

from hr2g import complexity


def adapters(width: int, layers: int, bottleneck: int) -> int:
    return layers * 2 * (2 * width * bottleneck + bottleneck + width)  # two adapters (down + up Linear) per block


def heads_params(c: int, m: int = 3) -> dict:
    """Trainable blocks after the encoder at joint width C: 1 temporal layer, ISC, IKT with M prototypes."""
    linear = lambda i, o: i * o + o  # noqa: E731
    temporal = linear(c, 3 * c) + linear(c, c) + linear(c, 4 * c) + linear(4 * c, c) + 2 * 2 * c
    isc = 2 * c + linear(c, 3 * c) + linear(c, c)
    ikt = m * c + 2 * linear(c, c) + 2 * c + linear(c, 3 * c) + linear(c, c)
    return {"temporal": temporal, "isc": isc, "ikt": ikt}


def vit_frame_flops(width: int, layers: int, patch: int, image: int, embed: int, bottleneck: int) -> int:
    """Matmul FLOPs of one frame through a CLIP ViT with two adapters per block (2 per multiply-add)."""
    tokens = (image // patch) ** 2 + 1
    embed_conv = 2 * 3 * patch * patch * width * (tokens - 1)
    block = 2 * tokens * width * (3 * width + width + 4 * width + 4 * width)  # qkv, out, MLP up, MLP down
    block += 2 * 2 * tokens * tokens * width  # q k^T and p v
    block += 2 * 2 * tokens * 2 * width * bottleneck  # two adapters, down + up
    return embed_conv + layers * block + 2 * width * embed  # + the output projection of the class token


def test_tiny_report_parameters_flops_and_cpu_memory(tmp_path, capsys):
    path = tmp_path / "cost.json"
    r = complexity.main(["--preset", "tiny", "--device", "cpu", "--runs", "2", "--warmup", "0", "--json", str(path)])
    assert json.loads(path.read_text()) == json.loads(json.dumps(r))
    p = r["params"]
    c, t, n, l = 64, 8, 5, 5  # tiny: joint width 64, T=8, 5-way 1-shot, 1 query per class
    assert r["videos_per_episode"] == n + l  # N * (K + Q)
    want = heads_params(c) | {"adapters": adapters(64, 2, 16), "metric": 0, "aux_logit_scale": 0}
    assert {k: p["modules"][k] for k in want} == want
    assert p["trainable"] == sum(want.values()) and p["trainable"] + p["frozen"] == p["total"]
    assert p["frozen"] == p["modules"]["clip_visual_frozen"] + p["modules"]["clip_text_frozen"]
    assert sum(p["modules"].values()) == p["total"]

    f = r["inference"]["flops"]["modules"]
    nst = n * t  # support frame tokens
    assert f["encoder"] == (n + l) * t * vit_frame_flops(64, 2, 8, 32, 64, 16)
    assert f["temporal"] == (2 * c * 12 * c * (n * (t + 1) + l * t)  # q, k, v, out, MLP on every token (+ text tokens)
                             + 4 * c * (n * (t + 1) ** 2 + l * t * t))  # attention within each sequence
    assert f["isc"] == 2 * (n + l) * t * c * 4 * c + 4 * t * (n + l) * n * c  # adaptive: every row attends to N*K supports
    assert r["bank"].startswith("50/50 random slots")  # retrieval measured as after training
    assert f["ikt"] == (2 * nst * c * 2 * c + 4 * 3 * nst * c  # K, V maps of the support tokens; M=3 prototype attention
                        + 2 * 3 * 35 * c  # weighted sum of the top O = round(0.7 * 50) = 35 bank slots
                        + 2 * nst * c * 2 * c + 2 * 3 * c * 2 * c + 4 * nst * 3 * c)  # cross-attention to the prototypes
    assert f["metric"] == 2 * l * n * t * t * c  # OTAM's cosine frame distances
    assert f["other"] == 0 and r["inference"]["flops"]["total"] == sum(f.values())
    # a training step adds the backward: more than the forward, less than three forwards
    fwd, train = r["inference"]["flops"]["total"], r["training"]["flops"]["total"]
    assert fwd < train < 3 * fwd
    for step in ("inference", "training"):
        assert r[step]["peak_memory"] == "n/a (CPU)" and r[step]["peak_memory_bytes"] is None
        lat = r[step]["latency_ms"]
        assert lat["runs"] == 2 and 0 < lat["p10"] <= lat["median"] <= lat["p90"]
    out = capsys.readouterr().out
    assert "peak memory n/a (CPU)" in out and "0.101M trainable" in out


def test_flops_outside_the_modules_are_other_and_still_in_the_total(monkeypatch):
    """FLOPs no module group claims (here a 3x5 @ 5x7 product after the forward) are reported as
    "other", so the breakdown always sums to the total."""
    real = complexity.inference_step

    def with_a_loose_matmul(*args):
        out = real(*args)
        torch.ones(3, 5) @ torch.ones(5, 7)
        return out

    monkeypatch.setattr(complexity, "inference_step", with_a_loose_matmul)
    r = complexity.main(["--preset", "tiny", "--device", "cpu", "--no-timing", "--no-backward"])
    f = r["inference"]["flops"]
    assert f["modules"]["other"] == 2 * 3 * 5 * 7 and f["total"] == sum(f["modules"].values())


def test_vit_b16_parameters_match_open_clip():
    r = complexity.main(["--preset", "hmdb51", "--set", "model.pretrained=none", "--device", "cpu", "--no-flops",
                         "--no-timing"])
    clip = open_clip.create_model("ViT-B-16", pretrained=None)
    p = r["params"]
    assert p["modules"]["clip_visual_frozen"] == sum(x.numel() for x in clip.visual.parameters())
    assert p["modules"]["clip_visual_frozen"] + p["modules"]["clip_text_frozen"] == sum(x.numel() for x in clip.parameters())
    assert p["modules"]["adapters"] == adapters(768, 12, 64)  # ViT-B/16: 12 blocks of width 768
    want = heads_params(512) | {"adapters": adapters(768, 12, 64), "metric": 0, "aux_logit_scale": 1}  # hmdb51: aux loss on
    assert {k: p["modules"][k] for k in want} == want
    assert p["trainable"] == sum(want.values())  # 8.16M (the paper reports 19.9M: adapter width not given)
    assert p["total"] == sum(p["modules"].values())
    assert r["backbone"] == "ViT-B-16" and r["image_size"] == [224, 224]
    assert r["inference"] == {} and r["training"] == {}  # --no-flops --no-timing: nothing measured, nothing made up


def test_data_frames_set_by_hand_is_checked_as_frames_is(capsys):
    """--set data.frames=-3 was a RuntimeError traceback, and =100 ran where --frames 100 is refused."""
    for value in ("-3", "100"):
        with pytest.raises(SystemExit, match=rf"^error: invalid configuration: data.frames={value} is outside the "
                                             r"allowed range \[1, 64\]$"):
            complexity.main(["--no-timing", "--set", f"data.frames={value}", "--device", "cpu"])


@pytest.mark.parametrize("argv, message", [
    (["--ways", "1"], "--ways expects an integer >= 2"),
    (["--frames", "100"], r"--frames expects an integer in \[1, 64\]"),
])
def test_bad_arguments_name_the_flag(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        complexity.main(argv)
    assert exc.value.code == 2 and pytest.importorskip("re").search(message, capsys.readouterr().err)


def test_bad_override_and_checkpoint_errors_name_the_flag(tmp_path):
    with pytest.raises(SystemExit, match=r"--set: unknown config field 'model.nope'"):
        complexity.main(["--set", "model.nope=1", "--no-timing", "--no-flops"])
    with pytest.raises(SystemExit, match=r"--checkpoint: checkpoint .* does not exist"):
        complexity.main(["--checkpoint", str(tmp_path / "x.pt")])
    with pytest.raises(SystemExit, match=r"model.pretrained='openai': the tiny backbone .* --set model.pretrained=none"):
        complexity.main(["--set", "model.pretrained=openai", "--no-timing", "--no-flops"])
    with pytest.raises(SystemExit, match=r"^error: model.pretrained='.*x.pt': checkpoint file not found"):
        complexity.main(["--preset", "hmdb51", "--set", f"model.pretrained={tmp_path / 'x.pt'}", "--no-timing", "--no-flops"])


def test_mistakes_found_before_measuring_are_one_line_naming_the_flag(tmp_path, monkeypatch):
    monkeypatch.setattr(complexity, "complexity_report", lambda *a, **k: pytest.fail("measured before the check"))
    with pytest.raises(SystemExit, match=r"^error: --json: .* is a folder, expected a file path"):
        complexity.main(["--json", str(tmp_path), "--device", "cpu"])
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(SystemExit, match=r"^error: --json: cannot write"):
        complexity.main(["--json", str(blocker / "cost.json"), "--device", "cpu"])
    # the TRX tuples vs T check that hr2g.train makes (it was an IndexError deep in the metric)
    with pytest.raises(SystemExit, match=r"^error: invalid configuration: model.trx_cardinalities=\(2, 3\): .*data.frames=2"):
        complexity.main(["--frames", "2", "--set", "model.metric=trx", "--device", "cpu"])
    if not torch.cuda.is_available():  # Triton needs CUDA tensors outside the tests' interpreter mode
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
        with pytest.raises(SystemExit, match=r"^error: --backend triton: model.backend=triton cannot run"):
            complexity.main(["--backend", "triton", "--device", "cpu"])
