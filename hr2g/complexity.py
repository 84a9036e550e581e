"""``python -m hr2g.complexity``: parameters, FLOPs, peak memory and latency of one episode (paper Table 11).

    python -m hr2g.complexity                                           # tiny preset, CPU
    python -m hr2g.complexity --preset hmdb51 --set model.pretrained=none --fused   # ViT-B/16, random weights
    python -m hr2g.complexity --checkpoint runs/tiny/best.pt --ways 5 --shots 5 --json cost.json

The episode is N-way K-shot with Q queries per class (default 5-way 1-shot, 1 query per class:
the paper's Table 11 setting -- 19.9M trainable parameters, 14.3 GB, 39.9 ms per episode on one
RTX 3090 for ViT-B/16), T frames at the encoder's image size, random pixels.

- **Parameters**: trainable / frozen / total, and per module (frozen CLIP, adapters, temporal, ISC,
  IKT, metric).
- **FLOPs**: ``torch.utils.flop_counter.FlopCounterMode`` on one episode forward from frames (and
  forward + backward of the loss), in total and, for the forward, per module (encoder, temporal,
  ISC, IKT, metric; the counter's attribution of backward kernels to modules is unreliable).  It
  counts matrix products, convolutions and attention (the CPU attention kernel with the CUDA
  kernels' formula), 2 FLOPs per multiply-add; elementwise work (softmax, LayerNorm, GELU, OTAM's
  alignment recursion, the bank's cosines) is not counted, nor are the extension's kernels.
  PyTorch's fused eval-mode attention (``torch._native_multi_head_attention``) is invisible to the
  counter, so it is switched off while counting (same math).  The class-name text features are
  computed beforehand: they are cached per class list, not part of an episode.  A fresh model's
  empty knowledge bank is filled with random slots first, so IKT retrieves as after training.
- **Peak memory**: ``torch.cuda.max_memory_allocated`` during an inference episode and during a
  training step (forward + backward), weights included; on the CPU "n/a (CPU)".
- **Latency**: median (and 10th / 90th percentiles) over ``--runs`` synchronised runs after
  ``--warmup`` runs: inference (``torch.no_grad``) and training step (forward + backward of the
  cross-entropy, no optimizer step).  bf16 autocast on CUDA when ``train.amp`` (as in training).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from hr2g.cli import add_device_arg
from hr2g.model.model import HR2G

log = logging.getLogger("hr2g.complexity")

MODULES = ("encoder", "temporal", "isc", "ikt", "metric")  # the FLOP breakdown's groups, attribute names of HR2G
PAPER_TABLE11 = {"trainable_params_M": 19.9, "memory_GB": 14.3, "latency_ms": 39.9, "device": "RTX 3090"}


@dataclass(frozen=True)
class EpisodeShape:
    n_way: int = 5
    k_shot: int = 1
    q_query: int = 1  # queries per class
    frames: int = 8

    @property
    def videos(self) -> int:
        return self.n_way * (self.k_shot + self.q_query)


def count_params(model: HR2G) -> dict:
    """Trainable / frozen / total, and per module (the modules sum to the total)."""
    def n(params, trainable=None):
        return sum(p.numel() for p in params if trainable is None or p.requires_grad == trainable)

    out = {"trainable": n(model.parameters(), True), "frozen": n(model.parameters(), False), "total": n(model.parameters())}
    out["modules"] = {
        # the parts add up to the total: frozen CLIP as its image tower and the rest (text tower,
        # projections, logit scale), not the whole beside one of its parts
        "clip_visual_frozen": n(model.encoder.clip.visual.parameters(), False),
        "clip_text_frozen": n(model.encoder.clip.parameters(), False) - n(model.encoder.clip.visual.parameters(), False),
        "adapters": n(model.encoder.adapters.parameters()),
        "temporal": n(model.temporal.parameters()),
        "isc": n(model.isc.parameters()) if model.isc is not None else 0,
        "ikt": n(model.ikt.parameters()) if model.ikt is not None else 0,
        "metric": n(model.metric.parameters()),
        "aux_logit_scale": 1 if model.aux_logit_scale is not None else 0,
    }
    return out


def episode_inputs(model: HR2G, shape: EpisodeShape, device: torch.device, seed: int = 0):
    """Random CLIP-normalised frames: (support [N*K, T, 3, H, W], query [N*Q, T, 3, H, W], labels [N*Q], names)."""
    h, w = model.encoder.image_size
    g = torch.Generator().manual_seed(seed)
    sup = torch.randn(shape.n_way * shape.k_shot, shape.frames, 3, h, w, generator=g).to(device)
    qry = torch.randn(shape.n_way * shape.q_query, shape.frames, 3, h, w, generator=g).to(device)
    labels = torch.arange(shape.n_way, device=device).repeat_interleave(shape.q_query)
    names = [f"action class {i}" for i in range(shape.n_way)]
    model.text_features(names)  # cached before anything is measured
    return sup, qry, labels, names


def fill_empty_bank(model: HR2G, seed: int = 0) -> str:
    """A fresh model's knowledge bank is empty and IKT then skips retrieval; a trained one is full.
    Measure the trained case: fill an empty bank with random slots.  Returns what the bank holds."""
    if model.ikt is None:
        return "no IKT"
    g = model.ikt.bank.shape[0]
    if int(model.ikt.bank_filled) > 0:
        return f"{int(model.ikt.bank_filled)}/{g} slots from the checkpoint"
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.ikt.bank.copy_(torch.randn(model.ikt.bank.shape, generator=gen))
        model.ikt.bank_filled.fill_(g)
    return f"{g}/{g} random slots (a fresh model's bank is empty; retrieval measured as after training)"


def _autocast(device: torch.device, amp: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda")


def inference_step(model: HR2G, inputs, k_shot: int, amp: bool):
    """One episode forward in eval mode, no autograd: what evaluation and prediction run."""
    sup, qry, _, names = inputs
    model.eval()
    with torch.no_grad(), _autocast(sup.device, amp):
        return model(sup, qry, names, k_shot).logits


def training_step(model: HR2G, inputs, k_shot: int, amp: bool):
    """Forward + backward of the episode's cross-entropy in train mode (no optimizer step)."""
    sup, qry, labels, names = inputs
    model.train()
    with _autocast(sup.device, amp):
        loss = F.cross_entropy(model(sup, qry, names, k_shot).logits[0], labels)
    loss.backward()
    for p in model.trainable_parameters():
        p.grad = None
    return loss.detach()


@contextlib.contextmanager
def _no_mha_fastpath():
    """FlopCounterMode cannot see torch's fused eval-mode attention kernels: count the unfused path."""
    before = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(before)


def _group(model: torch.nn.Module, counts: dict[str, int], name: str) -> int:
    """FLOPs of submodule ``name``: the outermost tracked paths below it, each module counted once.

    The counter names a module by every path it is called under, and an adapter has two (it lives
    in ``encoder.adapters`` and inside the CLIP block it wraps): a path whose module already sits
    inside another selected path's module is skipped."""
    prefix = f"{type(model).__name__}.{name}"
    keys = [k for k in counts if k == prefix or k.startswith(prefix + ".")]
    keys = [k for k in keys if not any(k != o and k.startswith(o + ".") for o in keys)]
    root = len(type(model).__name__) + 1
    mods = {k: model.get_submodule(k[root:]) for k in keys}
    total, seen = 0, set()
    for k in sorted(keys, key=lambda k: -sum(1 for _ in mods[k].modules())):  # largest subtrees first
        if id(mods[k]) in seen:
            continue
        seen.update(id(m) for m in mods[k].modules())
        total += counts[k]
    return total


def _cpu_attention_formulas() -> dict:
    """The counter knows the CUDA attention kernels but not the CPU one that nn.MultiheadAttention
    calls: count it with the same formula, so a CPU count equals a GPU count (ViT-B/16's attention
    is ~4% of an episode's FLOPs)."""
    from torch.utils import flop_counter

    def forward(q, k, v, *args, out_shape=None, **kwargs):  # shapes: FlopCounterMode passes shapes
        return flop_counter.sdpa_flop_count(q, k, v)

    def backward(grad, q, k, v, *args, out_shape=None, **kwargs):
        return flop_counter.sdpa_backward_flop_count(grad, q, k, v)

    aten = torch.ops.aten
    ops = {"_scaled_dot_product_flash_attention_for_cpu": forward,
           "_scaled_dot_product_flash_attention_for_cpu_backward": backward}
    return {getattr(aten, name): fn for name, fn in ops.items()
            if hasattr(aten, name) and getattr(aten, name) not in flop_counter.flop_registry}


def count_flops(model: HR2G, step, *step_args, per_module: bool = True) -> dict:
    """FLOPs of ``step(model, *step_args)``: total, and per group of :data:`MODULES` (+ "other").

    Use ``per_module`` for forward passes only: the counter's module tracker attributes backward
    kernels to whichever module its hooks last entered (parents end up with less than their
    children), so a backward's total is right but its breakdown is not."""
    with _no_mha_fastpath(), FlopCounterMode(display=False, custom_mapping=_cpu_attention_formulas()) as counter:
        step(model, *step_args)
    total = counter.get_total_flops()
    if not per_module:
        return {"total": total}
    counts = {k: sum(v.values()) for k, v in counter.get_flop_counts().items()}
    groups = {name: _group(model, counts, name) for name in MODULES}
    groups["other"] = total - sum(groups.values())
    return {"total": total, "modules": groups}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def latency_ms(fn, device: torch.device, runs: int, warmup: int) -> dict:
    """Median, p10, p90 of ``fn()`` in milliseconds, each run synchronised."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(1e3 * (time.perf_counter() - t0))
    q = np.percentile(times, [50, 10, 90])
    return {"median": float(q[0]), "p10": float(q[1]), "p90": float(q[2]), "runs": runs}


def peak_memory_bytes(fn, device: torch.device) -> int | None:
    """Peak allocated CUDA memory while ``fn()`` runs (weights included); None on the CPU."""
    if device.type != "cuda":
        return None
    _sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    _sync(device)
    return int(torch.cuda.max_memory_allocated(device))


def complexity_report(model: HR2G, shape: EpisodeShape, device: torch.device, amp: bool = True, flops: bool = True,
                      timing: bool = True, backward: bool = True, runs: int = 20, warmup: int = 3) -> dict:
    """Everything the command prints, as a dict (also its ``--json`` output)."""
    model.to(device)
    bank = fill_empty_bank(model)
    inputs = episode_inputs(model, shape, device)
    k = shape.k_shot
    amp = amp and device.type == "cuda"
    report = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "backbone": model.cfg.backbone, "backend": model.cfg.backend,
              "dtype": "bf16 autocast" if amp else "fp32", "n_way": shape.n_way, "k_shot": shape.k_shot,
              "q_query": shape.q_query, "frames": shape.frames, "image_size": list(model.encoder.image_size),
              "videos_per_episode": shape.videos, "bank": bank, "params": count_params(model)}
    steps = {"inference": inference_step} | ({"training": training_step} if backward else {})
    for name, step in steps.items():
        entry = {}
        if flops:
            entry["flops"] = count_flops(model, step, inputs, k, amp, per_module=name == "inference")
        if timing:
            mem = peak_memory_bytes(lambda: step(model, inputs, k, amp), device)
            entry["peak_memory_bytes"] = mem
            entry["peak_memory"] = f"{mem / 2**30:.2f} GiB" if mem is not None else "n/a (CPU)"
            entry["latency_ms"] = latency_ms(lambda: step(model, inputs, k, amp), device, runs, warmup)
        report[name] = entry
    model.eval()
    return report


def format_report(r: dict) -> str:
    p = r["params"]
    lines = [f"HR2G {r['backbone']} ({r['backend']} backend), {r['n_way']}-way {r['k_shot']}-shot, {r['q_query']} "
             f"query/class, T={r['frames']}, {r['image_size'][0]}x{r['image_size'][1]}: {r['videos_per_episode']} videos "
             f"per episode on {r['device']} ({r['dtype']}, torch {r['torch']}); knowledge bank: {r['bank']}",
             f"parameters: {p['trainable'] / 1e6:.3f}M trainable, {p['frozen'] / 1e6:.3f}M frozen, {p['total'] / 1e6:.3f}M total",
             "  " + ", ".join(f"{k} {v / 1e6:.3f}M" for k, v in p["modules"].items())]
    for step in ("inference", "training"):
        if not r.get(step):
            continue
        e = r[step]
        title = "inference (forward, no grad)" if step == "inference" else "training step (forward + backward)"
        lines.append(f"{title}:")
        if "flops" in e:
            tot = e["flops"]["total"]
            parts = ", ".join(f"{k} {v / 1e9:.3f} ({100 * v / max(tot, 1):.1f}%)" for k, v in e["flops"].get("modules", {}).items())
            lines.append(f"  GFLOPs {tot / 1e9:.3f}" + (f": {parts}" if parts else ""))
        if "latency_ms" in e:
            lat = e["latency_ms"]
            lines.append(f"  latency median {lat['median']:.2f} ms (p10 {lat['p10']:.2f}, p90 {lat['p90']:.2f}, "
                         f"{lat['runs']} runs); peak memory {e['peak_memory']}")
    if r["backbone"] == "ViT-B-16" and (r["n_way"], r["k_shot"], r["q_query"]) == (5, 1, 1):
        t = PAPER_TABLE11
        lines.append(f"paper (Table 11, {t['device']}): {t['trainable_params_M']}M trainable, {t['memory_GB']} GB, "
                     f"{t['latency_ms']} ms per episode")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    from hr2g.config import BACKEND_CHOICES
    from hr2g.configs import PRESETS

    p = argparse.ArgumentParser(prog="python -m hr2g.complexity", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny", choices=PRESETS, help="configuration to build with random weights (default: tiny)")
    p.add_argument("--checkpoint", default=None, help="measure a trained checkpoint instead of --preset")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override a config field of the preset, e.g. --set model.pretrained=none (repeatable)")
    p.add_argument("--ways", type=int, default=5, help="N, classes per episode (default: 5)")
    p.add_argument("--shots", type=int, default=1, help="K, supports per class (default: 1)")
    p.add_argument("--queries", type=int, default=1, help="queries per class (default: 1, as in the paper's Table 11)")
    p.add_argument("--frames", type=int, default=None, help="T, frames per video (default: the config's data.frames)")
    p.add_argument("--backend", default=None, choices=BACKEND_CHOICES, help="op backend (default: the config's)")
    p.add_argument("--fused", action="store_true", help="use the fused kernels where they apply (backend auto)")
    add_device_arg(p, "auto")
    p.add_argument("--runs", type=int, default=20, help="timed runs per measurement (median reported; default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs before timing (default 3)")
    p.add_argument("--no-flops", action="store_true", help="skip the FLOP count")
    p.add_argument("--no-timing", action="store_true", help="skip latency and peak memory")
    p.add_argument("--no-backward", action="store_true", help="measure inference only, not the training step")
    p.add_argument("--json", default=None, help="also write the report to this JSON file")
    args = p.parse_args(argv)
    # --ways >= 2, as data.n_way in every other command: one class is no classification
    for flag, value, low in (("--ways", args.ways, 2), ("--shots", args.shots, 1), ("--queries", args.queries, 1),
                             ("--runs", args.runs, 1), ("--warmup", args.warmup, 0)):
        if value < low:
            p.error(f"{flag} expects an integer >= {low}, got {value}")
    if args.frames is not None and not 1 <= args.frames <= 64:
        p.error(f"--frames expects an integer in [1, 64], got {args.frames}")
    return args


def build(args: argparse.Namespace, device: torch.device) -> tuple[HR2G, object]:
    """The model to measure and its config: a checkpoint, or the preset with ``--set`` and random init."""
    from hr2g.cli import apply_overrides
    from hr2g.config import check_frames
    from hr2g.configs import get_preset
    from hr2g.inference import apply_backend_flags

    if args.checkpoint:
        if args.overrides or args.frames:
            raise SystemExit("error: --set and --frames apply to --preset; a --checkpoint keeps its own configuration")
        from hr2g import checkpoint
        from hr2g.evaluation import load_model

        try:
            model, cfg = load_model(checkpoint.load(args.checkpoint), torch.device("cpu"), args.checkpoint)
        except (FileNotFoundError, ValueError) as exc:
            raise SystemExit(f"error: --checkpoint: {exc}") from None
    else:
        cfg = get_preset(args.preset)
        apply_overrides(cfg, args.overrides)
        if args.frames:
            cfg.data.frames = args.frames
        try:  # the model's fields (and T): no dataset is read, so data.data_root may stay unset
            cfg.model.validate()
            check_frames(cfg.data.frames)  # --set data.frames=-3 was a traceback, =100 ran past the limit
            cfg.model.validate_frames(cfg.data.frames)
        except ValueError as exc:
            raise SystemExit(f"error: invalid configuration: {exc}") from None
        torch.manual_seed(0)
        from hr2g.errors import SetupError

        try:
            model = HR2G(cfg.model, cfg.data.frames)
        except SetupError as exc:  # CLIP weights that cannot be loaded (a wrong path, offline)
            raise SystemExit(f"error: {exc}") from None
    apply_backend_flags(args, model, cfg, device)  # one line naming the flag, before anything is measured
    return model, cfg


def main(argv=None) -> dict:
    args = parse_args(argv)
    from hr2g.checkpoint import write_text_atomic
    from hr2g.cli import setup_logging, writable_file
    from hr2g.training import resolve_device

    setup_logging()
    if args.json:
        writable_file("--json", args.json, {"--checkpoint": args.checkpoint})  # before the measurement, not after it
    device = resolve_device(args.device)
    model, cfg = build(args, device)
    frames = args.frames or cfg.data.frames
    if cfg.model.metric == "trx" and frames != model.frames:
        raise SystemExit(f"error: --frames {frames}: the TRX metric was built for T={model.frames}")
    shape = EpisodeShape(args.ways, args.shots, args.queries, frames)
    report = complexity_report(model, shape, device, amp=cfg.train.amp, flops=not args.no_flops, timing=not args.no_timing,
                               backward=not args.no_backward, runs=args.runs, warmup=args.warmup)
    print(format_report(report))
    if args.json:
        write_text_atomic(args.json, json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
