"""``python -m hr2g.predict``: few-shot classify your own clips with a trained checkpoint.

    python -m hr2g.predict --checkpoint runs/tiny/best.pt --support my_support/ --query clip1.mp4 clip2.mp4
    python -m hr2g.predict --checkpoint C --support DIR --query frames_dir/ --json > predictions.json

``--support`` holds one sub-folder per class; the folder name is the class name the CLIP text
encoder reads ("brush_hair" -> "brush hair", "PlayGuitar" -> "play guitar", as the benchmark loaders
name classes).  Each class folder holds video files (.mp4 .webm .mkv .avi .mov .m4v) and/or frame
folders (a sub-folder of .jpg/.png frames in name order).  Every clip is decoded with the project's
decoder (PyAV / PIL, or DALI on a GPU) at test-time sampling: T TSN segments, the centre frame of
each, short side to the model's image size, centre crop, CLIP normalisation.

The episode is N-way K-shot with N = the class folders and K = clips per class.  The model's
head needs the same K for every class; with unequal counts the command stops, or with
``--unequal subsample`` it runs ``--draws`` seeded episodes, each with K = the smallest count
(a random subset of every larger class), and averages the class scores.  Each query is
classified in its own episode (same supports), so a query's scores never depend on the other
queries passed along.  Scores are the softmax over the logits (the negative metric distances).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hr2g.cli import seed_arg
from hr2g.evaluation import require_finite_logits
from hr2g.model.model import HR2G

log = logging.getLogger("hr2g.predict")


@dataclass
class SupportSet:
    class_names: list[str]  # [N] prompt names, in folder-name order
    folders: list[str]  # [N] the class folders as spelled on disk
    clips: list[list[Path]]  # [N][K_n] video files or frame folders
    ignored: list[Path]  # files that are neither a video nor a frame folder


def scan_support(root: str | Path) -> SupportSet:
    """Class folders of ``root`` and their clips, both in case-insensitive name order; hidden entries skipped."""
    from hr2g.data.presets import VIDEO_EXTENSIONS
    from hr2g.data.splits import prompt_name

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder (expected one sub-folder per class)")
    names, folders, clips, ignored = [], [], [], []
    for cls in sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name.casefold()):
        mine = []
        for entry in sorted((p for p in cls.iterdir() if not p.name.startswith(".")), key=lambda p: (p.name.casefold(), p.name)):
            if entry.is_dir() or entry.suffix.lower() in VIDEO_EXTENSIONS:
                mine.append(entry)
            else:
                ignored.append(entry)
        if not mine:
            raise FileNotFoundError(f"class folder {cls} holds no video file ({' '.join(VIDEO_EXTENSIONS)}) and no frame folder")
        names.append(prompt_name(cls.name))
        folders.append(cls.name)
        clips.append(mine)
    if len(names) < 2:
        raise FileNotFoundError(f"{root} has {len(names)} class folder(s); few-shot classification needs at least 2")
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise FileNotFoundError(f"{root}: class folders with the same name once read as words: {dup}")
    return SupportSet(names, folders, clips, ignored)


def load_clips(paths: list[Path], frames: int, image_size: int, decoder: str,
               device: torch.device | None = None) -> list[torch.Tensor]:
    """Test-time clips ``[T, 3, S, S]`` of video files / frame folders, through the benchmark loader's
    decoding (TSN centre frames, resize, centre crop, normalise); an unreadable clip is an error."""
    return _checked(paths, _decode(paths, frames, image_size, decoder, device))


def _decode(paths: list[Path], frames: int, image_size: int, decoder: str, device: torch.device | None) -> list:
    """A clip or a VideoReadError per path, in one loader (one decoder choice, logged once)."""
    from hr2g.data.benchmarks import BenchmarkDataset
    from hr2g.data.splits import Split

    paths = [Path(p).resolve() for p in paths]
    root = Path(os.path.commonpath([str(p.parent) for p in paths]))
    split = Split(name="predict", format="indexed_path", videos=[p.relative_to(root).as_posix() for p in paths],
                  labels=np.zeros(len(paths), dtype=np.int64), class_names=["clip"], folders=[""])
    dataset = BenchmarkDataset(root, split, preset=None, frames=frames, image_size=image_size, flip=False, decoder=decoder,
                               located=list(paths), device=device)
    return dataset.clips(list(range(len(paths))), False, np.random.default_rng(0))


def _checked(paths: list[Path], out: list) -> list[torch.Tensor]:
    from hr2g.data.base import VideoReadError

    bad = [f"{Path(p).resolve()}: {r.why}" for p, r in zip(paths, out) if isinstance(r, VideoReadError)]
    if bad:
        raise ValueError("unreadable clip(s): " + "; ".join(bad))
    return [c.float() for c in out]


@torch.no_grad()
def encode(model: HR2G, clips: list[torch.Tensor], amp: bool, batch: int = 16) -> torch.Tensor:
    """Encoder features ``[V, T, C]`` of test-time clips."""
    device = next(model.parameters()).device
    feats = []
    for i in range(0, len(clips), batch):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            feats.append(model.encode_videos(torch.stack(clips[i : i + batch]).to(device)).float())
    return torch.cat(feats)


@torch.no_grad()
def classify(model: HR2G, support: list[torch.Tensor], query: torch.Tensor, class_names: list[str], amp: bool,
             draws: int = 1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Class scores of each query: (softmax ``[L, N]``, logits ``[L, N]``), averaged over ``draws``.

    ``support[n]``: class n's encoder features ``[K_n, T, C]``; ``query``: ``[L, T, C]``.  Every draw is
    one K-shot episode per query (K = min K_n; a seeded subset of a larger class), batched.
    """
    model.eval()
    device = query.device
    l = len(query)
    k = min(len(s) for s in support)
    if all(len(s) == k for s in support):
        draws = 1  # nothing to sample: every clip is used
    text = model.text_features(class_names)[None].expand(l, -1, -1)  # [L, N, C]
    rng = np.random.default_rng(seed)
    probs, logits = 0.0, 0.0
    for _ in range(draws):
        pick = [s if len(s) == k else s[torch.as_tensor(np.sort(rng.choice(len(s), k, replace=False)), device=device)]
                for s in support]
        sup = torch.cat(pick)[None].expand(l, -1, -1, -1)  # [L, N*K, T, C], class-major
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out = model.head(sup, query[:, None], text, k)  # one episode per query: logits [L, 1, N]
        require_finite_logits(out.logits, "--checkpoint")
        lg = out.logits[:, 0].float()
        probs = probs + lg.softmax(-1) / draws
        logits = logits + lg / draws
    return probs.cpu().numpy(), logits.cpu().numpy()


def parse_args(argv=None) -> argparse.Namespace:
    from hr2g.inference import add_checkpoint_args

    p = argparse.ArgumentParser(prog="python -m hr2g.predict", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkpoint_args(p)
    p.add_argument("--support", required=True, help="folder with one sub-folder of clips per class (folder name = class name)")
    p.add_argument("--query", required=True, nargs="+", help="clips to classify: video files or frame folders")
    p.add_argument("--unequal", default="error", choices=("error", "subsample"),
                   help="classes with different clip counts: stop (default), or average --draws episodes with K = the smallest count")
    p.add_argument("--draws", type=int, default=10, help="episodes averaged with --unequal subsample (default 10)")
    p.add_argument("--seed", type=seed_arg, default=0, help="seed of the --unequal subsample draws")
    p.add_argument("--decoder", default=None, choices=("auto", "dali", "pyav"), help="video decoder (default: the checkpoint's data.decoder)")
    p.add_argument("--top", type=int, default=5, help="classes listed per query in the text output (default 5)")
    p.add_argument("--json", action="store_true", help="print the predictions as JSON instead of text")
    args = p.parse_args(argv)
    if args.draws < 1:
        p.error(f"--draws expects an integer >= 1, got {args.draws}")
    if args.top < 1:
        p.error(f"--top expects an integer >= 1, got {args.top}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    from hr2g.cli import setup_logging
    from hr2g.inference import load_trained

    setup_logging()
    try:
        support = scan_support(args.support)
    except FileNotFoundError as exc:
        raise SystemExit(f"error: --support: {exc}") from None
    missing = [q for q in args.query if not Path(q).exists()]
    if missing:
        raise SystemExit(f"error: --query: not found: {', '.join(missing)}")
    for path in support.ignored:
        log.warning("ignoring %s: not a video file (%s) or a frame folder", path, path.suffix or "no extension")
    counts = {f: len(c) for f, c in zip(support.folders, support.clips)}
    if len(set(counts.values())) > 1 and args.unequal == "error":
        raise SystemExit(f"error: --support: classes have different numbers of clips {counts}; the model needs the same K "
                         "for every class: balance the folders, or pass --unequal subsample")
    model, cfg, device = load_trained(args)
    amp = cfg.train.amp and device.type == "cuda"
    size = model.encoder.image_size[0]
    decoder = args.decoder or cfg.data.decoder
    flat = [p for clips in support.clips for p in clips]
    queries = [Path(q) for q in args.query]
    decoded = _decode(flat + queries, cfg.data.frames, size, decoder, device)  # one loader for both
    try:
        sup_clips = _checked(flat, decoded[: len(flat)])
    except ValueError as exc:
        raise SystemExit(f"error: --support: {exc}") from None
    try:
        qry_clips = _checked(queries, decoded[len(flat) :])
    except ValueError as exc:
        raise SystemExit(f"error: --query: {exc}") from None
    feats = encode(model, sup_clips, amp)
    bounds = np.cumsum([0] + [len(c) for c in support.clips])
    per_class = [feats[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    try:
        probs, logits = classify(model, per_class, encode(model, qry_clips, amp), support.class_names, amp, args.draws,
                                 args.seed)
    except FloatingPointError as exc:
        raise SystemExit(f"error: {exc}") from None
    k = min(counts.values())
    result = {"checkpoint": args.checkpoint, "classes": support.class_names, "class_folders": support.folders,
              "clips_per_class": counts, "k_shot": k, "draws": 1 if len(set(counts.values())) == 1 else args.draws,
              "frames": cfg.data.frames, "image_size": size, "queries": []}
    for q, pr, lg in zip(args.query, probs, logits):
        best = int(pr.argmax())
        result["queries"].append({"query": q, "prediction": support.class_names[best], "score": round(float(pr[best]), 4),
                                  "scores": {c: round(float(v), 4) for c, v in zip(support.class_names, pr)},
                                  "logits": [float(v) for v in lg]})
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
    else:
        print(f"{len(support.class_names)}-way {k}-shot, {result['draws']} episode(s) per query, checkpoint {args.checkpoint}")
        for entry in result["queries"]:
            print(f"{entry['query']}: {entry['prediction']} ({entry['score']:.2f})")
            for c, v in sorted(entry["scores"].items(), key=lambda kv: -kv[1])[: args.top]:
                print(f"    {v:.3f}  {c}")
    return result


if __name__ == "__main__":
    main()
