"""Episodic training: the library behind ``python -m hr2g.train``.

One step = one episode: encode support+query frames once, head, cross-entropy on the query logits
(+ optional video-text loss), Adam step, then the knowledge-bank momentum update with the step's
prototypes.  Checkpoints (atomic) hold model incl. the bank, optimizer, scheduler, position and
config; a resumed run continues with exactly the episodes it would have seen.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from hr2g import _dispatch
from hr2g.checkpoint import load, save_atomic
from hr2g.config import Config
from hr2g.data.build import build_dataset
from hr2g.data.episodes import Episode, EpisodeSampler
from hr2g.data.loader import EpisodeStream, episode_loader
from hr2g.model.model import HR2G

log = logging.getLogger("hr2g.train")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda requested but torch.cuda.is_available() is False")
    return torch.device(name)


def backend_report(backend: str, device: torch.device) -> list[str]:
    """One line per op: which backend runs it here and, if not the fused one, why."""
    if backend == "torch":
        return ["all ops: torch reference backend (pass --fused to use the fused kernels)"]
    x = torch.randn(1, 2, 8, 64, device=device)
    examples = {
        "otam_distance": (torch.randn(2, 8, 64, device=device), torch.randn(3, 8, 64, device=device), 0.5),
        "sample_attention": (x, x, x, 1),
        "bank_retrieve": (torch.randn(3, 64, device=device), torch.randn(50, 64, device=device), 50, 35, 1.0),
        "bank_update_": (torch.randn(50, 64, device=device), 50, torch.randn(3, 64, device=device), 0.99),
    }
    lines = []
    for op, args in examples.items():
        verdicts = _dispatch.reasons(op, *args) if backend == "auto" else {backend: _dispatch.refusal(op, backend, args)}
        chosen = next((b for b, why in verdicts.items() if why is None), None)
        refused = "; ".join(f"{b} refused: {why}" for b, why in verdicts.items() if why is not None)
        lines.append(f"{op}: {chosen or 'NONE'}" + (f" ({refused})" if refused else ""))
    return lines


def episode_to(ep: Episode, device: torch.device) -> Episode:
    nb = device.type == "cuda"
    return Episode(ep.support.to(device, non_blocking=nb), ep.query.to(device, non_blocking=nb),
                   ep.support_labels.to(device), ep.query_labels.to(device), ep.classes.to(device), ep.class_names)


@dataclass
class StepResult:
    loss: float
    acc: float


def train_step(model: HR2G, ep: Episode, k_shot: int, optimizer: torch.optim.Optimizer, cfg: Config,
               base_class_names: list[str], device: torch.device) -> StepResult:
    """One episode: forward, loss, backward, clip, step, then bank update (after the forward)."""
    amp = cfg.train.amp and device.type == "cuda"
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        feats = model.encode_videos(torch.cat([ep.support, ep.query]))  # [NK+L, T, C]
        ns = ep.support.shape[0]
        text = model.text_features(ep.class_names)[None]  # [1, N, C]
        out = model.head(feats[None, :ns], feats[None, ns:], text, k_shot)
        loss = F.cross_entropy(out.logits[0], ep.query_labels)
        if cfg.model.aux_text_weight > 0:
            labels = torch.cat([ep.classes[ep.support_labels], ep.classes[ep.query_labels]])  # dataset labels
            loss = loss + cfg.model.aux_text_weight * model.aux_text_loss(feats, labels, base_class_names)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"non-finite loss {loss.item()} at this step; lower train.lr or disable amp")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.train.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.trainable_parameters(), cfg.train.grad_clip)
    optimizer.step()
    model.update_bank(out.prototypes)
    acc = (out.logits[0].argmax(-1) == ep.query_labels).float().mean().item()
    return StepResult(loss.item(), acc)


def build_optim(model: HR2G, cfg: Config):
    opt = torch.optim.Adam(model.trainable_parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(cfg.train.milestones), gamma=cfg.train.gamma)
    return opt, sched


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def save_checkpoint(path: Path, model: HR2G, opt, sched, cfg: Config, epoch: int, step: int, best: float, read_failures: dict) -> None:
    save_atomic({"config": cfg.to_dict(), "model": model.state_dict(), "optimizer": opt.state_dict(),
                 "scheduler": sched.state_dict(), "epoch": epoch, "step": step, "best_val": best,
                 "read_failures": read_failures, "rng": _rng_state(), "version": 1}, path)


def train(cfg: Config, resume: str | None = None, progress: bool = True) -> dict:
    """Train per ``cfg``; returns a summary dict (final val accuracy, paths, counts)."""
    from hr2g.evaluation import evaluate_model  # local: evaluation imports training helpers

    cfg.validate()
    device = resolve_device(cfg.train.device)
    out = Path(cfg.train.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = None
    if resume:
        path = out / "last.pt" if resume == "auto" else Path(resume)
        if resume == "auto" and not path.exists():
            log.info("--resume auto: no %s yet, starting fresh", path)
        else:
            ckpt = load(path)
            cfg = Config.from_dict(ckpt["config"]) if resume != "auto" else cfg
            log.info("resuming from %s (epoch %d, step %d)", path, ckpt["epoch"], ckpt["step"])
    (out / "config.json").write_text(cfg.dumps())
    log.info("resolved config:\n%s", cfg.dumps())
    log.info("device: %s", torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu")
    for line in backend_report(cfg.model.backend, device):
        log.info("backend: %s", line)

    torch.manual_seed(cfg.train.seed)
    train_set = build_dataset(cfg.data, "train")
    val_set = build_dataset(cfg.data, "val") if cfg.train.val_episodes > 0 else None
    sampler = EpisodeSampler(train_set.labels, cfg.data.n_way, cfg.data.k_shot, cfg.data.q_query, split="train")
    model = HR2G(cfg.model, cfg.data.frames).to(device)
    # text features of every class up front, in one batch: the cached values then do not depend
    # on which episode first met a class (batch composition changes the last float bits, and
    # Adam's sign-like first steps amplify that -- a resumed run would drift from the original)
    model.text_features(train_set.class_names)
    if val_set is not None:
        model.text_features(val_set.class_names)
    opt, sched = build_optim(model, cfg)
    start_epoch, start_step, best, failures = 0, 0, -1.0, {}
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        start_epoch, start_step, best = ckpt["epoch"], ckpt["step"], ckpt["best_val"]
        failures = dict(ckpt.get("read_failures", {}))
    n_train = sum(p.numel() for p in model.trainable_parameters())
    log.info("parameters: %.2fM trainable / %.2fM total", n_train / 1e6, sum(p.numel() for p in model.parameters()) / 1e6)

    log_path = out / "log.csv"
    new_log = not log_path.exists() or ckpt is None
    log_file = open(log_path, "w" if new_log else "a", newline="")
    writer = csv.writer(log_file)
    if new_log:
        writer.writerow(["epoch", "step", "loss", "acc", "lr", "bank_filled", "skipped_videos", "elapsed_s", "val_acc"])
    base_names = train_set.class_names
    t0 = time.time()
    val_acc = float("nan")
    steps = cfg.train.episodes_per_epoch
    try:
        for epoch in range(start_epoch, cfg.train.epochs):
            model.train()
            stream = EpisodeStream(train_set, sampler, cfg.train.seed, epoch, steps, train=True)
            first = start_step if epoch == start_epoch else 0
            bar = tqdm(episode_loader(stream, first, cfg.data.num_workers), total=steps, initial=first,
                       desc=f"epoch {epoch + 1}/{cfg.train.epochs}", disable=not progress, dynamic_ncols=True)
            run_loss, run_acc = [], []
            for step, (ep, new_failures) in enumerate(bar, start=first):
                failures.update(new_failures)
                r = train_step(model, episode_to(ep, device), cfg.data.k_shot, opt, cfg, base_names, device)
                run_loss.append(r.loss)
                run_acc.append(r.acc)
                bar.set_postfix(loss=f"{np.mean(run_loss[-50:]):.3f}", acc=f"{np.mean(run_acc[-50:]):.3f}")
                if (step + 1) % cfg.train.log_every == 0:
                    writer.writerow([epoch, step + 1, f"{np.mean(run_loss[-cfg.train.log_every:]):.5f}",
                                     f"{np.mean(run_acc[-cfg.train.log_every:]):.4f}", f"{sched.get_last_lr()[0]:.3g}",
                                     int(model.ikt.bank_filled) if model.ikt is not None else 0, len(failures),
                                     f"{time.time() - t0:.1f}", ""])
                    log_file.flush()
                if (step + 1) % 500 == 0 and step + 1 < steps:  # mid-epoch safety net
                    save_checkpoint(out / "last.pt", model, opt, sched, cfg, epoch, step + 1, best, failures)
            sched.step()
            if val_set is not None:
                res = evaluate_model(model, val_set, cfg, episodes=cfg.train.val_episodes, seed=cfg.eval.seed,
                                     k_shot=cfg.data.k_shot, progress=False)
                val_acc = res.accuracy
                log.info("epoch %d: train loss %.4f acc %.3f | val %d-way %d-shot acc %.2f ± %.2f%%", epoch + 1,
                         np.mean(run_loss), np.mean(run_acc), cfg.data.n_way, cfg.data.k_shot, 100 * res.accuracy, 100 * res.ci95)
                if res.accuracy > best:
                    best = res.accuracy
                    save_checkpoint(out / "best.pt", model, opt, sched, cfg, epoch + 1, 0, best, failures)
            writer.writerow([epoch + 1, steps, f"{np.mean(run_loss):.5f}", f"{np.mean(run_acc):.4f}",
                             f"{sched.get_last_lr()[0]:.3g}", int(model.ikt.bank_filled) if model.ikt is not None else 0,
                             len(failures), f"{time.time() - t0:.1f}", "" if math.isnan(val_acc) else f"{val_acc:.4f}"])
            log_file.flush()
            save_checkpoint(out / "last.pt", model, opt, sched, cfg, epoch + 1, 0, best, failures)
    finally:
        log_file.close()
    if failures:
        log.warning("%d unreadable videos were skipped during training: %s", len(failures), ", ".join(list(failures)[:5]))
        (out / "unreadable_videos.json").write_text(json.dumps(failures, indent=2))
    summary = {"val_accuracy": val_acc, "best_val": best, "last": str(out / "last.pt"), "best": str(out / "best.pt"),
               "skipped_videos": len(failures), "seconds": time.time() - t0}
    if cfg.train.test_episodes > 0:
        test_set = build_dataset(cfg.data, "test")
        res = evaluate_model(model, test_set, cfg, episodes=cfg.train.test_episodes, seed=cfg.eval.seed,
                             k_shot=cfg.data.k_shot, progress=False)
        log.info("novel classes (test split): %d-way %d-shot accuracy %.2f ± %.2f %% over %d episodes (chance %.1f %%)",
                 cfg.data.n_way, cfg.data.k_shot, 100 * res.accuracy, 100 * res.ci95, res.episodes, 100 / cfg.data.n_way)
        summary.update(test_accuracy=res.accuracy, test_ci95=res.ci95, test_episodes=res.episodes)
    log.info("done in %.0f s: %s", summary["seconds"], json.dumps(summary))
    return summary
