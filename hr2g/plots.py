"""``python -m hr2g.plots``: the paper's figures from a checkpoint, a training log or a sweep table.

    python -m hr2g.plots heatmap --checkpoint runs/tiny/best.pt          # Fig. 5: query-support similarity
    python -m hr2g.plots tsne --checkpoint runs/tiny/best.pt --classes 10  # Fig. 6: t-SNE of test videos
    python -m hr2g.plots curves --run runs/tiny                            # loss / accuracy / LR from log.csv
    python -m hr2g.plots sweep --table runs/tiny/sweep/sweep.json          # Fig. 8: N-way / K-shot curves

- **heatmap**: one seeded test episode.  Top: each query's class scores (softmax over the logits,
  the model's -distance), true class boxed.  Bottom: for one query, the cosine similarity of its
  frames with the frames of each class's first support (its averaged support under
  ``support_aggregation=mean_before``), in the refined features the metric compares, with the
  class's logit and, for OTAM models, the hard-min alignment path (each support frame matched to
  one query frame, monotone, moving by at most one frame).
- **tsne**: per-video features (mean over frames of the encoder output, or of the temporal
  Transformer output) of the test classes, embedded with an exact t-SNE (:func:`tsne`, numpy;
  at most 2,000 videos), coloured by class.
- **curves**: ``<out_dir>/log.csv`` of ``hr2g.train``: running loss and accuracy per logged step,
  validation accuracy per epoch, learning rate.
- **sweep**: accuracy ± 95% CI against K per N and against N per K from ``hr2g.sweep``'s JSON.

Needs matplotlib (``pip install matplotlib``, or the ``plots`` extra); everything but the drawing
(:func:`tsne`, :func:`otam_path`, :func:`read_log`, :func:`episode_view`) works without it.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hr2g.cli import seed_arg
from hr2g.runlog import complete_row, row_positions

log = logging.getLogger("hr2g.plots")

MAX_TSNE_POINTS = 2000  # exact t-SNE is O(n^2) memory and time per iteration


def require_matplotlib():
    """pyplot with the file-only Agg backend, or a SystemExit naming the package to install."""
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("error: hr2g.plots needs matplotlib, which is not installed: pip install matplotlib "
                         "(or pip install 'hr2g[plots]')") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# --------------------------------------------------------------------------- OTAM alignment path
def otam_path(dist: np.ndarray) -> tuple[np.ndarray, float]:
    """Hard-min OTAM alignment of a ``[La, Lb]`` frame distance matrix.

    The hard reading of the soft OTAM recursion (with its zero padding columns): every column j is
    matched to one row ``rows[j]``; rows never decrease and move by 0 or 1 per column; the path
    starts and ends at any row.  Returns (rows ``[Lb]``, summed distance along the path).
    """
    la, lb = dist.shape
    cost = np.full((la, lb), np.inf)
    back = np.zeros((la, lb), dtype=np.int64)  # row of the previous column on the best path
    cost[:, 0] = dist[:, 0]
    for j in range(1, lb):
        stay = cost[:, j - 1]
        step = np.concatenate([[np.inf], cost[:-1, j - 1]])  # from row i-1
        take_step = step < stay
        cost[:, j] = dist[:, j] + np.where(take_step, step, stay)
        back[:, j] = np.arange(la) - take_step
    rows = np.empty(lb, dtype=np.int64)
    rows[-1] = int(np.argmin(cost[:, -1]))
    for j in range(lb - 1, 0, -1):
        rows[j - 1] = back[rows[j], j]
    return rows, float(cost[rows[-1], -1])


# --------------------------------------------------------------------------- exact t-SNE
def _conditional_p(d2: np.ndarray, perplexity: float, tol: float = 1e-5, steps: int = 200) -> np.ndarray:
    """Row-stochastic P(j|i) with each row's entropy = log(perplexity): bisection on the precision,
    all rows at once.  ``d2``: squared distances, diagonal ignored."""
    n = len(d2)
    off = ~np.eye(n, dtype=bool)
    d = d2 - np.where(off, d2, np.inf).min(axis=1, keepdims=True)  # per-row shift: P(j|i) and its entropy
    # do not change, and exp() cannot underflow for the nearest neighbour
    target = math.log(perplexity)
    beta, lo, hi = np.ones(n), np.zeros(n), np.full(n, np.inf)
    for _ in range(steps):
        p = np.exp(-d * beta[:, None]) * off  # no self-affinity
        z = p.sum(axis=1)
        entropy = np.log(z) + beta * (d * p).sum(axis=1) / z
        diff = entropy - target
        if np.all(np.abs(diff) < tol):
            break
        up = diff > 0  # too flat: sharpen
        lo = np.where(up, beta, lo)
        hi = np.where(up, hi, beta)
        beta = np.where(np.isinf(hi), beta * 2, (lo + hi) / 2)
    return p / z[:, None]


def tsne(x: np.ndarray, perplexity: float = 30.0, iters: int = 1000, seed: int = 0, exaggeration: float = 12.0,
         exaggeration_iters: int = 250) -> tuple[np.ndarray, float]:
    """Exact t-SNE of ``x [n, d]`` to 2-D: (embedding ``[n, 2]``, final KL divergence).

    Gaussian input affinities calibrated to ``perplexity`` and symmetrised, Student-t output
    affinities, gradient descent with momentum (0.5, then 0.8), per-coordinate adaptive gains,
    early exaggeration for the first ``exaggeration_iters`` steps and learning rate max(n / 12 / 4, 50).
    """
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    if n < 4:
        raise ValueError(f"t-SNE needs at least 4 points, got {n}")
    if n > MAX_TSNE_POINTS:
        raise ValueError(f"exact t-SNE is limited to {MAX_TSNE_POINTS} points, got {n}")
    perplexity = min(perplexity, (n - 1) / 3)  # more neighbours than points makes the calibration impossible
    x = x - x.mean(axis=0)
    x = x / (np.abs(x).max() + 1e-12)
    sq = (x * x).sum(axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0.0)
    p_cond = _conditional_p(d2, perplexity)
    p = np.maximum((p_cond + p_cond.T) / (2 * n), 1e-12)
    rng = np.random.default_rng(seed)
    y = rng.normal(0.0, 1e-4, size=(n, 2))
    update, gains = np.zeros_like(y), np.ones_like(y)
    lr = max(n / exaggeration / 4, 50.0)
    for it in range(iters):
        exag = exaggeration if it < exaggeration_iters else 1.0
        sy = (y * y).sum(axis=1)
        num = 1.0 / (1.0 + np.maximum(sy[:, None] + sy[None, :] - 2 * y @ y.T, 0.0))  # Student-t kernel
        np.fill_diagonal(num, 0.0)
        q = np.maximum(num / num.sum(), 1e-12)
        w = (exag * p - q) * num  # [n, n]
        grad = 4.0 * (w.sum(axis=1)[:, None] * y - w @ y)
        same = np.sign(grad) == np.sign(update)
        gains = np.maximum(np.where(same, gains * 0.8, gains + 0.2), 0.01)
        momentum = 0.5 if it < exaggeration_iters else 0.8
        update = momentum * update - lr * gains * grad
        y = y + update
        y = y - y.mean(axis=0)
    np.fill_diagonal(p, 0.0)
    off = ~np.eye(n, dtype=bool)
    kl = float((p[off] * np.log(p[off] / q[off])).sum())
    return y, kl


# --------------------------------------------------------------------------- training log
def read_log(path: str | Path) -> dict[str, np.ndarray]:
    """``log.csv`` of ``hr2g.train`` as arrays: per-step rows and per-epoch rows on one global-step
    axis (the rows are described in :mod:`hr2g.runlog`)."""
    path = Path(path)
    if path.suffix != ".csv":  # the run's folder
        path = path / "log.csv"
    if not path.is_file():
        raise FileNotFoundError(f"no training log at {path} (hr2g.train writes <out_dir>/log.csv)")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    need = {"epoch", "step", "loss", "acc", "lr", "val_acc"}
    with open(path, newline="") as f:
        header = next(csv.reader(f), [])
    if need <= set(header) and not rows:
        raise ValueError(f"{path} has no rows yet: the run has not logged a step (train.log_every)")
    if not need <= set(header):
        raise ValueError(f"{path} is not an hr2g training log (columns {sorted(need)} expected)")
    whole = [r for r in rows if complete_row(r)]  # a crash (a full disk) can leave the last row cut short
    if len(whole) < len(rows):
        log.warning("%s: %d incomplete rows left out", path, len(rows) - len(whole))
    if not whole:
        raise ValueError(f"{path} has no complete row")
    rows = whole
    steps_per_epoch = _steps_per_epoch(path, rows)
    step_rows, epoch_rows = [], []
    for r, (x, is_end) in zip(rows, row_positions(rows, steps_per_epoch)):
        r["_x"] = x
        (epoch_rows if is_end else step_rows).append(r)
    def col(rs, key):
        return np.array([float(r[key]) if r[key] != "" else np.nan for r in rs], dtype=np.float64)

    return {"steps_per_epoch": steps_per_epoch,
            "step_x": np.array([r["_x"] for r in step_rows], dtype=np.int64),
            "step_loss": col(step_rows, "loss"), "step_acc": col(step_rows, "acc"), "step_lr": col(step_rows, "lr"),
            "epoch": np.array([int(r["epoch"]) for r in epoch_rows], dtype=np.int64),
            "epoch_x": np.array([r["_x"] for r in epoch_rows], dtype=np.int64),
            "epoch_loss": col(epoch_rows, "loss"), "epoch_acc": col(epoch_rows, "acc"),
            "epoch_lr": col(epoch_rows, "lr"), "val_acc": col(epoch_rows, "val_acc")}


def _steps_per_epoch(log_path: Path, rows: list[dict]) -> int:
    """``train.episodes_per_epoch`` from the run's ``config.json`` (hr2g.train writes it beside the
    log); without one, the largest step logged, which undercounts a run stopped in its first epoch."""
    try:
        return int(json.loads((log_path.parent / "config.json").read_text())["train"]["episodes_per_epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        log.warning("%s: no readable config.json beside it; steps per epoch taken as the largest step logged",
                    log_path)
        return max(int(r["step"]) for r in rows)


# --------------------------------------------------------------------------- one episode, seen by the model
@dataclass
class EpisodeView:
    class_names: list[str]  # [N] the episode's classes
    probs: np.ndarray  # [L, N] softmax over the logits
    logits: np.ndarray  # [L, N] -distance
    query_labels: np.ndarray  # [L] episode-local true class
    frame_sim: np.ndarray  # [L, S, T, T] cosine similarity, query frames x the S support sequences the metric sees
    k_shot: int
    support_stride: int  # rows of frame_sim per class: K, or 1 where the K supports were averaged first
    support_what: str  # what a class's panel shows: its first support, or the mean of its supports
    metric: str  # model.metric: the OTAM path is drawn only for OTAM


@torch.no_grad()
def episode_view(model, dataset, cfg, episode: int, seed: int, n_way: int, k_shot: int, q_query: int) -> EpisodeView:
    """Episode ``episode`` of the seeded evaluation list (the one ``hr2g.evaluate`` uses for ``seed``)."""
    from hr2g.data.episodes import EpisodeSampler
    from hr2g.evaluation import encode_dataset

    model.eval()
    device = next(model.parameters()).device
    amp = cfg.train.amp and device.type == "cuda"
    spec = EpisodeSampler.for_dataset(dataset, n_way, k_shot, q_query, split="evaluation").fixed_at(episode, seed)
    ids = [int(i) for i in np.concatenate([spec.support, spec.query])]
    rows, feats, failed = encode_dataset(model, dataset, sorted(set(ids)), device, amp)
    if failed:
        raise ValueError(f"episode {episode} contains unreadable videos: {failed}; pick another --episode")
    sup = feats[[rows[i] for i in spec.support.tolist()]][None]  # [1, N*K, T, C]
    qry = feats[[rows[i] for i in spec.query.tolist()]][None]  # [1, L, T, C]
    names = [dataset.class_names[int(c)] for c in spec.classes]
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        out = model.head(sup, qry, model.text_features(names)[None], k_shot)
    fs = torch.nn.functional.normalize(out.support[0].float(), dim=-1)  # [N*K, T, C]
    fq = torch.nn.functional.normalize(out.query[0].float(), dim=-1)  # [L, T, C]
    sim = torch.einsum("qtc,suc->qstu", fq, fs)  # [L, N*K, T, T]
    logits = out.logits[0].float()
    stride = fs.shape[0] // n_way  # K, or 1 for support_aggregation=mean_before (one averaged sequence per class)
    what = "support" if k_shot == 1 else ("first support" if stride > 1 else f"mean of the {k_shot} supports")
    return EpisodeView(names, logits.softmax(-1).cpu().numpy(), logits.cpu().numpy(),
                       np.repeat(np.arange(n_way), q_query), sim.cpu().numpy(), k_shot, stride, what, cfg.model.metric)


@torch.no_grad()
def video_features(model, dataset, cfg, classes: list[int], per_class: int, kind: str, seed: int):
    """(features ``[V, C]``, labels ``[V]``) of up to ``per_class`` seeded videos of each class."""
    from hr2g.evaluation import encode_dataset

    model.eval()
    device = next(model.parameters()).device
    amp = cfg.train.amp and device.type == "cuda"
    rng = np.random.default_rng(seed)
    ids = []
    for c in classes:
        vids = dataset.videos_of(c)
        ids += sorted(rng.choice(vids, size=min(per_class, len(vids)), replace=False).tolist())
    rows, feats, failed = encode_dataset(model, dataset, ids, device, amp)
    kept = [i for i in ids if i in rows]
    x = feats[[rows[i] for i in kept]]  # [V, T, C]
    if kind == "temporal":
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            x = model.temporal(x)  # as a query sees it: no text token
    return x.float().mean(dim=1).cpu().numpy(), np.asarray([int(dataset.labels[i]) for i in kept]), failed


# --------------------------------------------------------------------------- drawing
def _short(name: str, width: int = 18) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(name, width)[:3])


def plot_heatmap(view: EpisodeView, query: int, path: Path, title: str) -> None:
    plt = require_matplotlib()
    n = len(view.class_names)
    lq = len(view.query_labels)
    fig = plt.figure(figsize=(max(8.0, 2.3 * n), 5.0 + 0.35 * lq), constrained_layout=True)
    grid = fig.add_gridspec(2, n, height_ratios=[1.0 + 0.3 * lq, 2.4])
    ax = fig.add_subplot(grid[0, :])
    lo, hi = float(view.probs.min()), float(view.probs.max())  # colours span the scores shown
    im = ax.imshow(view.probs, cmap="viridis", vmin=lo, vmax=hi, aspect="auto")
    for i in range(lq):
        for j in range(n):
            ax.text(j, i, f"{view.probs[i, j]:.2f}", ha="center", va="center", fontsize=8,
                    color="black" if view.probs[i, j] > (lo + hi) / 2 else "white")
        t = view.query_labels[i]
        ax.add_patch(plt.Rectangle((t - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
    ax.set_xticks(range(n), [_short(c) for c in view.class_names], fontsize=8)
    ax.set_yticks(range(lq), [f"query {i}" for i in range(lq)], fontsize=8)
    path_note = ", cyan: the hard-min OTAM alignment path" if view.metric == "otam" else ""
    ax.set_title(f"{title}\nclass scores: softmax over -distance (red box: true class), metric {view.metric}\n"
                 f"below: frames of query {query} x frames of each class's {view.support_what}{path_note}", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.02, label="score")
    true = view.query_labels[query]
    sims = view.frame_sim[query, :: view.support_stride]  # [N, Tq, Ts]: query frames x each class's panel sequence
    lo, hi = float(sims.min()), float(sims.max())  # one colour scale for the N panels
    from matplotlib.ticker import MaxNLocator

    panels = []
    for c in range(n):
        sim = sims[c]
        a = fig.add_subplot(grid[1, c])
        panels.append(a)
        im = a.imshow(sim, cmap="magma", vmin=lo, vmax=hi)
        if view.metric == "otam":  # the alignment OTAM scores; Bi-MHM and TRX align nothing
            rows, _ = otam_path(1.0 - sim)
            a.plot(np.arange(sim.shape[1]), rows, color="cyan", marker="o", markersize=3, linewidth=1.2)
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
        a.yaxis.set_major_locator(MaxNLocator(integer=True))
        a.set_title(f"{'TRUE ' if c == true else ''}{_short(view.class_names[c], 22)}\nlogit {view.logits[query, c]:.3f}",
                    fontsize=7, color="red" if c == true else "black")
        a.set_xlabel(f"frame ({view.support_what})", fontsize=7)
        if c == 0:
            a.set_ylabel(f"query {query} frame", fontsize=7)
        a.tick_params(labelsize=6)
    fig.colorbar(im, ax=panels, fraction=0.02, label="cosine similarity")
    save_figure(fig, path)


def plot_tsne(y: np.ndarray, labels: np.ndarray, names: list[str], path: Path, title: str) -> None:
    plt = require_matplotlib()
    fig, ax = plt.subplots(figsize=(8.5, 6.5), constrained_layout=True)
    cmap = plt.get_cmap("tab20" if len(set(labels.tolist())) > 10 else "tab10")
    for k, c in enumerate(sorted(set(labels.tolist()))):
        m = labels == c
        ax.scatter(y[m, 0], y[m, 1], s=14, color=cmap(k % cmap.N), label=_short(names[c], 40).replace("\n", " "))
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    save_figure(fig, path)


def plot_curves(logd: dict, path: Path, title: str) -> None:
    plt = require_matplotlib()
    fig, axes = plt.subplots(1, 3, figsize=(14, 4), constrained_layout=True)
    spe = logd["steps_per_epoch"]
    ax = axes[0]
    ax.plot(logd["step_x"], logd["step_loss"], lw=1, label="running (log_every steps)")
    ax.plot(logd["epoch_x"], logd["epoch_loss"], "o-", label="epoch mean")
    ax.set_ylabel("cross-entropy loss")
    ax = axes[1]
    ax.plot(logd["step_x"], 100 * logd["step_acc"], lw=1, label="train, running")
    ax.plot(logd["epoch_x"], 100 * logd["epoch_acc"], "o-", label="train, epoch mean")
    if np.isfinite(logd["val_acc"]).any():
        ax.plot(logd["epoch_x"], 100 * logd["val_acc"], "s-", label="validation")
    ax.set_ylabel("accuracy (%)")
    ax = axes[2]
    lr_x = np.concatenate([logd["step_x"], logd["epoch_x"]])
    lr = np.concatenate([logd["step_lr"], logd["epoch_lr"]])
    order = np.argsort(lr_x, kind="stable")
    ax.step(lr_x[order], lr[order], where="post")
    ax.set_yscale("log")
    ax.set_ylabel("learning rate")
    for ax in axes:
        for e in logd["epoch_x"]:
            ax.axvline(e, color="grey", lw=0.5, alpha=0.4)
        ax.set_xlabel(f"step ({spe} per epoch)")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    save_figure(fig, path)


def sweep_rows(rows) -> list[dict]:
    """``hr2g.sweep``'s JSON rows, checked: ValueError unless each has integer ``n_way`` / ``k_shot``
    and a number (or None: no episode left) for ``accuracy`` and ``ci95``."""
    def number(v):
        return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))

    if not isinstance(rows, list) or not rows:
        raise ValueError("expected a non-empty list of grid points")
    for r in rows:
        if not (isinstance(r, dict) and isinstance(r.get("n_way"), int) and isinstance(r.get("k_shot"), int)
                and "accuracy" in r and "ci95" in r and number(r["accuracy"]) and number(r["ci95"])):
            raise ValueError(f"not a grid point: {r!r:.80}")
    return rows


def plot_sweep(rows: list[dict], path: Path, title: str) -> None:
    plt = require_matplotlib()
    ways = sorted({r["n_way"] for r in rows})
    shots = sorted({r["k_shot"] for r in rows})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    for ax, (series, xs, xkey, skey, label) in zip(axes, (
            (ways, shots, "k_shot", "n_way", "{}-way"), (shots, ways, "n_way", "k_shot", "{}-shot"))):
        for s in series:
            # a grid point with no episode left (accuracy None) has nothing to draw
            pts = sorted((r for r in rows if r[skey] == s and r["accuracy"] is not None), key=lambda r: r[xkey])
            if pts:
                ax.errorbar([r[xkey] for r in pts], [r["accuracy"] for r in pts], yerr=[r["ci95"] for r in pts],
                            marker="o", capsize=3, label=label.format(s))
        ax.set_xlabel("K (shots per class)" if xkey == "k_shot" else "N (classes per episode)")
        ax.set_xticks(xs)
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    save_figure(fig, path)


def save_figure(fig, path: Path) -> None:
    """``fig`` into ``path`` whole or not at all (a full disk leaves the previous file), then closed."""
    import os

    import matplotlib.pyplot as plt

    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")  # the suffix picks the format
    try:
        fig.savefig(tmp, dpi=120)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise SystemExit(f"error: --out: cannot write {str(path)!r} ({exc.strerror or exc})") from None
    finally:
        plt.close(fig)


def figure_path(flag: str, path: str | Path) -> Path:
    """``path`` if matplotlib can write its format (by suffix: .png, .pdf, .svg, ...), else exit naming ``flag``."""
    plt = require_matplotlib()
    path = Path(path)
    kinds = plt.figure().canvas.get_supported_filetypes()
    plt.close("all")
    if path.suffix.lower().lstrip(".") not in kinds:
        raise SystemExit(f"error: {flag}: {str(path)!r} needs a picture suffix matplotlib writes "
                         f"(.png, .pdf, .svg, ...; got {path.suffix or 'none'})")
    return path


# --------------------------------------------------------------------------- command
def parse_args(argv=None) -> argparse.Namespace:
    from hr2g.inference import add_checkpoint_args, add_data_args

    p = argparse.ArgumentParser(prog="python -m hr2g.plots", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="figure", required=True, metavar="{heatmap,tsne,curves,sweep}")
    h = sub.add_parser("heatmap", help="query-support similarity of one test episode (Fig. 5)")
    add_checkpoint_args(h)
    add_data_args(h)
    h.add_argument("--episode", type=int, default=0, help="index in the seeded evaluation episode list (default 0)")
    h.add_argument("--seed", type=seed_arg, default=None, help="seed of the episode list (default: eval.seed, as hr2g.evaluate)")
    h.add_argument("--ways", type=int, default=None, help="N (default: the checkpoint's data.n_way)")
    h.add_argument("--shots", type=int, default=1, help="K (default 1)")
    h.add_argument("--queries", type=int, default=1, help="queries per class (default 1)")
    h.add_argument("--query", type=int, default=0, help="query whose frame similarities are drawn (default 0)")
    h.add_argument("--out", default=None, help="PNG to write (default: <checkpoint folder>/plots/heatmap.png)")
    t = sub.add_parser("tsne", help="t-SNE of per-video features of the test classes (Fig. 6)")
    add_checkpoint_args(t)
    add_data_args(t)
    t.add_argument("--classes", type=int, default=None,
                   help="how many classes of the split to show (default: 10, or all of a split with fewer)")
    t.add_argument("--per-class", type=int, default=30, help="videos per class, at most (default 30)")
    t.add_argument("--features", default="temporal", choices=("encoder", "temporal"),
                   help="per-video feature: mean over frames of the encoder output or of the temporal Transformer output")
    t.add_argument("--perplexity", type=float, default=30.0, help="t-SNE perplexity (default 30; capped at (n-1)/3)")
    t.add_argument("--iters", type=int, default=1000, help="t-SNE gradient steps (default 1000)")
    t.add_argument("--seed", type=seed_arg, default=0, help="seeds the class and video choice and the t-SNE init")
    t.add_argument("--out", default=None, help="PNG to write (default: <checkpoint folder>/plots/tsne.png)")
    c = sub.add_parser("curves", help="training curves from <out_dir>/log.csv")
    c.add_argument("--run", required=True, help="training output folder (or its log.csv)")
    c.add_argument("--out", default=None, help="PNG to write (default: <run>/curves.png)")
    s = sub.add_parser("sweep", help="accuracy against K and N from hr2g.sweep's table (Fig. 8)")
    s.add_argument("--table", required=True, help="sweep.json written by python -m hr2g.sweep, or the folder holding it")
    s.add_argument("--out", default=None, help="PNG to write (default: next to the table, sweep.png)")
    args = p.parse_args(argv)
    checks = {"heatmap": (("--episode", "episode", 0), ("--shots", "shots", 1), ("--queries", "queries", 1), ("--query", "query", 0)),
              "tsne": (("--classes", "classes", 1), ("--per-class", "per_class", 1), ("--iters", "iters", 1))}
    for flag, attr, low in checks.get(args.figure, ()):
        if getattr(args, attr) is not None and getattr(args, attr) < low:
            p.error(f"{flag} expects an integer >= {low}, got {getattr(args, attr)}")
    if args.figure == "heatmap" and args.ways is not None and args.ways < 2:
        p.error(f"--ways expects an integer >= 2, got {args.ways}")
    if args.figure == "tsne" and not (math.isfinite(args.perplexity) and args.perplexity > 1):
        p.error(f"--perplexity expects a number > 1, got {args.perplexity}")
    return args


def _default_out(args, name: str) -> Path:
    out = Path(args.out) if args.out else Path(args.checkpoint).resolve().parent / "plots" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def main(argv=None) -> Path:
    args = parse_args(argv)
    from hr2g.cli import setup_logging, writable_file

    setup_logging()
    require_matplotlib()  # before any model is loaded: fail fast
    if args.out:
        writable_file("--out", figure_path("--out", args.out))
    if args.figure == "curves":
        try:
            logd = read_log(args.run)
        except (FileNotFoundError, ValueError) as exc:
            raise SystemExit(f"error: --run: {exc}") from None
        out = Path(args.out) if args.out else (Path(args.run) if Path(args.run).is_dir() else Path(args.run).parent) / "curves.png"
        plot_curves(logd, out, f"training curves: {args.run}")
    elif args.figure == "sweep":
        table = Path(args.table)
        if table.is_dir():  # sweep's --out folder, as --run takes a run folder ("does not exist" said otherwise)
            table = table / "sweep.json"
        if not table.is_file():
            raise SystemExit(f"error: --table: {table} does not exist (python -m hr2g.sweep writes <out>/sweep.json)")
        args.table = str(table)
        try:
            rows = sweep_rows(json.loads(table.read_text()))
        except (OSError, ValueError):
            raise SystemExit(f"error: --table: {args.table} is not a sweep.json written by python -m hr2g.sweep") from None
        if all(r["accuracy"] is None for r in rows):
            raise SystemExit(f"error: --table: no grid point of {args.table} has an accuracy (no episode was left at any)")
        out = Path(args.out) if args.out else Path(args.table).with_suffix(".png")
        plot_sweep(rows, out, f"N-way K-shot accuracy ± 95% CI ({rows[0].get('split', 'test')} split, "
                              f"{rows[0].get('episodes', '?')} episodes per point)")
    else:
        from hr2g.inference import dataset_from_args, load_trained

        model, cfg, device = load_trained(args)
        dataset = dataset_from_args(cfg, args, device)
        split = args.split or cfg.eval.split
        if args.figure == "heatmap":
            n_way = args.ways or cfg.data.n_way
            seed = cfg.eval.seed if args.seed is None else args.seed
            if args.query >= n_way * args.queries:
                raise SystemExit(f"error: --query {args.query}: the episode has {n_way * args.queries} queries (0..{n_way * args.queries - 1})")
            try:
                view = episode_view(model, dataset, cfg, args.episode, seed, n_way, args.shots, args.queries)
            except ValueError as exc:
                raise SystemExit(f"error: --ways / --shots / --queries / --episode: {exc}") from None
            out = _default_out(args, "heatmap.png")
            plot_heatmap(view, args.query, out, f"{cfg.data.dataset} {split}, {n_way}-way {args.shots}-shot, episode "
                                                f"{args.episode} (seed {seed}), {args.checkpoint}")
        else:
            n_cls = len(dataset.class_names)
            if args.classes is None:  # the default fits any split: a 5-class split shows its 5
                args.classes = min(10, n_cls)
            if args.classes > n_cls:
                raise SystemExit(f"error: --classes {args.classes}: the {split} split has {n_cls} classes")
            classes = sorted(np.random.default_rng(args.seed).choice(n_cls, size=args.classes, replace=False).tolist())
            n_pts = sum(min(args.per_class, len(dataset.videos_of(c))) for c in classes)
            if n_pts > MAX_TSNE_POINTS:
                raise SystemExit(f"error: --classes x --per-class gives {n_pts} videos; exact t-SNE takes at most "
                                 f"{MAX_TSNE_POINTS}: lower --per-class")
            x, labels, failed = video_features(model, dataset, cfg, classes, args.per_class, args.features, args.seed)
            if failed:
                log.warning("%d unreadable videos left out", len(failed))
            try:
                y, kl = tsne(x, args.perplexity, args.iters, args.seed)
            except ValueError as exc:
                raise SystemExit(f"error: --classes / --per-class: {exc}") from None
            out = _default_out(args, "tsne.png")
            plot_tsne(y, labels, dataset.class_names, out, f"t-SNE of {len(y)} {split} videos, {args.classes} classes, "
                                                           f"{args.features} features (KL {kl:.3f}), {args.checkpoint}")
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
