"""Episodic training: the library behind ``python -m hr2g.train``.

One step = one episode: encode support+query frames once, head, cross-entropy on the query logits
(+ optional video-text loss), Adam step, then the knowledge-bank momentum update with the step's
prototypes.  Checkpoints (atomic) hold model incl. the bank, optimizer, scheduler, position and
config; a resumed run continues with exactly the episodes it would have seen.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from hr2g import _dispatch
from hr2g.checkpoint import RunLock, config_of, load, load_weights, remove_stale_temporaries, save_atomic, write_text_atomic
from hr2g.config import Config, absolute_data_paths  # noqa: F401 (ablate takes it from here)
from hr2g.data.build import build_dataset
from hr2g.data.episodes import Episode, EpisodeSampler
from hr2g.data.loader import EpisodeStream, episode_loader
from hr2g.distributed import (DistInfo, any_rank, barrier, episodes_per_rank, gather_in_rank_order, init_from_env,
                              shutdown)
from hr2g.model.model import HR2G
from hr2g.errors import SetupError
from hr2g.runlog import RunLog, require_tensorboard
from hr2g.stopping import FinalTestSkipped, InterruptOnSignal, SignalInterrupt, StopSignals, TrainingStopped, position

log = logging.getLogger("hr2g.train")


# what a run writes into its folder (besides config.json, rewritten at the start, and tb/ events)
RUN_FILES = ("last.pt", "best.pt", "log.csv", "unreadable_videos.json")


def resolve_device(name: str) -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` -> a device that exists here (a one-line error otherwise)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit(f"error: --device {name} requested but torch.cuda.is_available() is False")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise SystemExit(f"error: --device {name}: only {torch.cuda.device_count()} CUDA devices are visible "
                             "(CUDA_VISIBLE_DEVICES numbers them from 0)")
    return device


def backend_report(backend: str, device: torch.device, cfg: Config | None = None) -> list[str]:
    """One line per op: which backend runs it here and, if not the fused one, why.  With ``cfg``,
    the ops are asked at its shapes (T frames, the feature width, the ISC head width), so a
    kernel's size limit (Triton's T <= 32, head dim <= 128) refuses now, not at the first step.

    Raises :class:`~hr2g.errors.SetupError` (a ``ValueError``) if an explicitly requested backend cannot run an op here: before
    training, not at the first step."""
    if backend == "torch":
        return ["all ops: torch reference backend (pass --fused to use the fused kernels)"]
    t, c, d = 8, 64, 64
    if cfg is not None:
        from hr2g.config import BACKBONE_WIDTH

        t, c = cfg.data.frames, BACKBONE_WIDTH[cfg.model.backbone]
        d = c // cfg.model.isc_heads if cfg.model.isc else d  # without ISC no sample attention runs
    x = torch.randn(1, 2, 8, d, device=device)
    examples = {
        "otam_distance": (torch.randn(2, t, c, device=device), torch.randn(3, t, c, device=device), 0.5),
        "sample_attention": (x, x, x, 1),
        "bank_retrieve": (torch.randn(3, c, device=device), torch.randn(50, c, device=device), 50, 35, 1.0),
        "bank_update_": (torch.randn(50, c, device=device), 50, torch.randn(3, c, device=device), 0.99),
    }
    lines = []
    for op, args in examples.items():
        b = _dispatch.model_backend(op, backend)
        verdicts = _dispatch.reasons(op, *args) if b == "auto" else {b: _dispatch.refusal(op, b, args)}
        chosen = next((b for b, why in verdicts.items() if why is None), None)
        refused = "; ".join(f"{b} refused: {why}" for b, why in verdicts.items() if why is not None)
        if chosen is None:
            raise SetupError(f"model.backend={backend} cannot run {op} on {device.type}: {refused}")
        lines.append(f"{op}: {chosen}" + (f" ({refused})" if refused else ""))
    return lines


def episode_to(ep: Episode, device: torch.device) -> Episode:
    nb = device.type == "cuda"
    return Episode(ep.support.to(device, non_blocking=nb), ep.query.to(device, non_blocking=nb),
                   ep.support_labels.to(device), ep.query_labels.to(device), ep.classes.to(device), ep.class_names)


@dataclass
class StepResult:
    loss: float
    acc: float


def train_step(model: torch.nn.Module, raw: HR2G, episodes: list[Episode], k_shot: int, optimizer: torch.optim.Optimizer,
               cfg: Config, base_class_names: list[str], device: torch.device, dist_info: DistInfo = DistInfo()) -> StepResult:
    """One optimizer step over this rank's ``episodes`` (mean loss), then the bank update.

    ``model`` is ``raw`` or its DDP wrapper.  Each episode is backpropagated on its own (gradient
    accumulation, so memory is one episode's); DDP synchronises on the last one only.  The bank
    update uses the prototypes of every episode of every rank, in (rank, episode) order.

    The host reads the device once per step, after the backward passes and before the optimizer
    step: the losses, accuracies and the global gradient norm in one copy (it read three scalars
    per episode before, the first between forward and backward, so on a GPU the backward could
    not be queued while the forward ran).  A non-finite loss or gradient norm raises there, before
    the weights or the bank change; the norm is taken after DDP's all-reduce, so a NaN on one rank
    stops every rank at the same step instead of leaving the others waiting at the next collective.
    """
    amp = cfg.train.amp and device.type == "cuda"
    scale = 1.0 / len(episodes)  # DDP additionally averages over ranks
    losses, accs, protos = [], [], []
    optimizer.zero_grad(set_to_none=True)
    for i, ep in enumerate(episodes):
        sync = i == len(episodes) - 1 or not dist_info.enabled
        with (contextlib.nullcontext() if sync else model.no_sync()):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                out = model(ep.support, ep.query, ep.class_names, k_shot)
                loss = F.cross_entropy(out.logits[0], ep.query_labels)
                if cfg.model.aux_text_weight > 0:
                    labels = torch.cat([ep.classes[ep.support_labels], ep.classes[ep.query_labels]])  # dataset labels
                    loss = loss + cfg.model.aux_text_weight * raw.aux_text_loss(out.video_feats, labels, base_class_names)
            (loss * scale).backward()
        losses.append(loss.detach().float())
        accs.append((out.logits[0].detach().argmax(-1) == ep.query_labels).float().mean())
        if out.prototypes is not None:
            protos.append(out.prototypes.detach().float())
    # max_norm=inf measures without clipping (the scale clamps to 1.0: the gradients are unchanged)
    norm = torch.nn.utils.clip_grad_norm_(raw.trainable_parameters(),
                                          cfg.train.grad_clip if cfg.train.grad_clip > 0 else math.inf)
    stats = torch.stack(losses + accs + [norm.float().to(losses[0].device)]).tolist()  # the step's one host sync
    step_losses, step_accs, grad_norm = stats[:len(episodes)], stats[len(episodes):-1], stats[-1]
    if not all(map(math.isfinite, step_losses)):
        raise FloatingPointError(f"non-finite loss {step_losses} in this step's episodes; lower train.lr or disable "
                                 "train.amp")
    if not math.isfinite(grad_norm):
        where = " (DDP averages every rank's gradients: a non-finite loss on another rank shows here)" \
            if dist_info.enabled else ""
        raise FloatingPointError(f"non-finite gradient norm {grad_norm}{where}; lower train.lr or disable train.amp")
    optimizer.step()
    if protos:  # after the step, outside autograd: every rank applies the same ordered update
        raw.update_bank(gather_in_rank_order(torch.cat(protos), dist_info))
    return StepResult(float(np.mean(step_losses)), float(np.mean(step_accs)))


def build_optim(model: HR2G, cfg: Config):
    opt = torch.optim.Adam(model.trainable_parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(cfg.train.milestones), gamma=cfg.train.gamma)
    return opt, sched


def apply_optim_changes(opt, sched, saved: Config, cfg: Config) -> list[str]:
    """On resume, the optimizer and scheduler states loaded from the checkpoint carry its lr,
    weight decay, milestones and gamma: ``--resume ... --set train.lr=0.05`` was logged as a
    change and written to config.json, and the run went on at the old lr.  Puts ``cfg``'s values
    into them where they differ (the lr where the schedule is now: lr x gamma^milestones passed)
    and names what changed; untouched otherwise, so a plain resume stays bit for bit."""
    new, old = cfg.train, saved.train
    changed = [f"train.{k}" for k in ("lr", "weight_decay", "milestones", "gamma") if getattr(new, k) != getattr(old, k)]
    if not changed:
        return []
    sched.milestones = collections.Counter(new.milestones)
    sched.gamma = new.gamma
    sched.base_lrs = [new.lr for _ in opt.param_groups]
    lr = new.lr * new.gamma ** sum(m <= sched.last_epoch for m in new.milestones)  # last_epoch: epochs done
    for group in opt.param_groups:
        group.update(lr=lr, initial_lr=new.lr, weight_decay=new.weight_decay)
    sched._last_lr = [lr for _ in opt.param_groups]
    return changed


def _rng_state() -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    # plain values, not an ndarray: the checkpoint loads with torch.load(weights_only=True)
    state = {"torch": torch.get_rng_state(), "numpy": [kind, keys.tolist(), pos, has_gauss, gauss]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


@dataclass
class EpochTally:
    """What a checkpoint taken mid-epoch needs besides the weights: the epoch's per-step losses and
    accuracies so far (the log's running and epoch means) and the wall time spent."""
    loss: list[float]
    acc: list[float]
    elapsed: float


def save_checkpoint(path: Path, model: HR2G, opt, sched, cfg: Config, epoch: int, step: int, best: float, read_failures: dict,
                    tally: EpochTally, train_videos: str = "") -> None:
    save_atomic({"config": cfg.to_dict(), "model": model.state_dict(), "optimizer": opt.state_dict(),
                 "scheduler": sched.state_dict(), "epoch": epoch, "step": step, "best_val": best,
                 "read_failures": read_failures, "rng": _rng_state(), "version": 1,
                 "epoch_tally": dataclasses.asdict(tally), "train_videos": train_videos}, path)


def videos_digest(dataset) -> str:
    """SHA-256 of a split's videos (key and label of each, in order, and which are missing): the
    episodes a run draws follow from it, so a resume compares it with its checkpoint's."""
    h = hashlib.sha256()
    for i in range(len(dataset)):
        h.update(f"{dataset.key(i)}\t{int(dataset.labels[i])}\n".encode())
    h.update(repr(sorted(dataset.unavailable)).encode())
    return h.hexdigest()


def bank_digest(model: HR2G) -> str:
    """SHA-256 of the knowledge bank and its fill count: equal on every DDP rank, or something is wrong."""
    if model.ikt is None:
        return ""
    h = hashlib.sha256(model.ikt.bank.detach().cpu().numpy().tobytes())
    h.update(str(int(model.ikt.bank_filled)).encode())
    return h.hexdigest()


def _stop(checkpoint, epoch: int, step: int, stop: StopSignals, out: Path, dist_info: DistInfo, saved: bool = False):
    if not saved:
        checkpoint("last.pt", epoch, step)
    shutdown(dist_info)
    raise TrainingStopped(stop.received or "signal on another rank", str(out / "last.pt"), epoch, step)


def train(cfg: Config, resume: str | None = None, progress: bool = True, overwrite: bool = False) -> dict:
    """Train per ``cfg`` (under ``torchrun``: one rank of a DDP job); returns a summary dict.

    ``resume``: a checkpoint path, or ``"auto"`` for ``<out_dir>/last.pt`` if there is one; the
    run continues with ``cfg`` (settings that differ from the checkpoint's are logged).  Without
    it, an ``out_dir`` that already holds a run is refused unless ``overwrite``.
    On SIGINT/SIGTERM: finishes the step, saves ``last.pt`` and raises :class:`TrainingStopped`.
    """

    cfg.validate()
    absolute_data_paths(cfg)
    device = resolve_device(cfg.train.device)
    dist_info = init_from_env(device.type, cfg.train.dist_timeout_min)
    if dist_info.enabled and device.type == "cuda":
        device = torch.device("cuda", dist_info.local_rank)
    per_rank = episodes_per_rank(cfg.train.episodes_per_step, dist_info.world)
    main = dist_info.main
    out = Path(cfg.train.out_dir)
    backends = backend_report(cfg.model.backend, device, cfg)  # an impossible explicit backend fails here
    with contextlib.ExitStack() as held:  # rank 0 holds the run folder: a second run into it is refused
        refused = None
        if main:
            try:
                held.enter_context(RunLock(out))
            except SetupError as exc:
                refused = exc
        if any_rank(refused is not None, dist_info, device):  # every rank stops, none waits at a collective
            shutdown(dist_info)
            raise refused or SetupError(f"{out} is in use by another training run (rank 0 could not lock it)")
        return _train(cfg, resume, progress, overwrite, device, dist_info, per_rank, out, backends)


def _train(cfg: Config, resume: str | None, progress: bool, overwrite: bool, device: torch.device, dist_info: DistInfo,
           per_rank: int, out: Path, backends: list[str]) -> dict:
    """:func:`train` once the run folder is this process's."""
    from hr2g.evaluation import NoEpisodesLeft, evaluate_model, write_unreadable  # local: evaluation imports training helpers

    main = dist_info.main
    if main:
        remove_stale_temporaries(out)
    ckpt = path = None
    if resume:
        path = out / "last.pt" if resume == "auto" else Path(resume)
        if resume == "auto" and not path.exists():
            log.info("--resume auto: no %s yet, starting fresh", path)
        else:
            try:  # a damaged file (its CRCs, checked by the full load only) is one error line
                ckpt = load(path)
            except ValueError as exc:
                raise SetupError(f"--resume: {exc}") from None
            need = [k for k in ("epoch", "step", "best_val", "optimizer", "scheduler") if k not in ckpt]
            if need:
                raise SetupError(f"checkpoint {str(path)!r} has no {', '.join(need)}: not a training checkpoint "
                                 "(--resume takes the last.pt or best.pt that hr2g.train writes)")
            try:
                saved = config_of(ckpt, path)
                changed = [d for d in saved.diff(cfg) if not d.startswith("train.out_dir:")]
            except ValueError as exc:
                raise SetupError(str(exc)) from None
            if saved.train.episodes_per_epoch != cfg.train.episodes_per_epoch:
                # the checkpoint's position, the episode stream and log.csv's rows all count steps of
                # the saved epoch length: another one resumed mid-epoch at the wrong step and had the
                # log purge drop rows written before the checkpoint
                raise SetupError(f"--resume {path}: train.episodes_per_epoch={cfg.train.episodes_per_epoch} differs from the "
                                 f"checkpoint's {saved.train.episodes_per_epoch}, which its position (epoch, step) and "
                                 "log.csv count in; resume without changing it, or start a new run (another --out)")
            if changed and main:
                log.warning("resuming %s with settings that differ from its checkpoint's: %s", path, "; ".join(changed))
            log.info("resuming from %s (%s)", path, position(ckpt["epoch"], ckpt["step"]))
    elsewhere = ckpt is not None and out.resolve() != path.parent.resolve()  # --resume A/last.pt --out B
    if elsewhere and (theirs := next((out / f for f in ("last.pt", "best.pt") if (out / f).exists()), None)):
        # B's checkpoints were replaced and its log.csv got A's rows after its own
        raise FileExistsError(f"--resume {path} --out {out}: {out} already holds another run ({theirs}): continue "
                              f"that one with --resume {theirs}, or give an --out that holds no run")
    stale = []  # a new run: what an earlier run left in the folder (none when resuming)
    if ckpt is None:
        stale = [out / f for f in RUN_FILES if (out / f).exists()] + sorted((out / "tb").glob("events.out.tfevents.*"))
    held = next((f for f in stale if f.name in ("last.pt", "best.pt")), None)  # last.pt first (RUN_FILES order)
    if held is not None and not overwrite:
        hint = "--resume auto" if held.name == "last.pt" else f"--resume {held}"
        raise FileExistsError(f"{out} already holds a run ({held}): continue it with {hint}, start a "
                              "new one with another --out, or replace it with --overwrite")
    if main:
        out.mkdir(parents=True, exist_ok=True)
        log.info("resolved config:\n%s", cfg.dumps())
        if unused := cfg.unused_milestones():
            log.warning("train.milestones %s: %s at or after the last epoch (train.epochs=%d), so the LR never decays there",
                        tuple(cfg.train.milestones), unused, cfg.train.epochs)
        log.info("device: %s, world size %d", torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", dist_info.world)
        for line in backends:
            log.info("backend: %s", line)
        if cfg.train.tensorboard:
            log.info("tensorboard: tensorboard --logdir %s", out / "tb")

    torch.manual_seed(cfg.train.seed)  # same initial weights on every rank
    try:  # a split list that breaks its format (named with its line), an unreadable annotation file
        train_set = build_dataset(cfg.data, "train", device)
        val_set = build_dataset(cfg.data, "val", device) if cfg.train.val_episodes > 0 and main else None
        test_set = build_dataset(cfg.data, "test", device) if cfg.train.test_episodes > 0 and main else None
    except SetupError:  # DALI asked for and missing: the data paths are not the cause
        raise
    except ValueError as exc:
        hint = "" if cfg.data.dataset == "synthetic" else " (check --data-root / --split-dir)"  # generated, not read
        raise SetupError(f"{exc}{hint}") from exc
    train_digest = videos_digest(train_set)
    if ckpt is not None and main and ckpt.get("train_videos") not in (None, "", train_digest):
        log.warning("resuming %s on a train split whose videos differ from the checkpoint's (%d now; its split "
                    "list, data root or the videos found on disk changed): from here on the run draws other "
                    "episodes than the interrupted one would have", path, len(train_set))
    try:  # an impossible episode shape fails now, not after an epoch
        for name, split_set in (("val", val_set), ("test", test_set)):
            if split_set is not None:
                EpisodeSampler.for_dataset(split_set, cfg.data.n_way, cfg.data.k_shot, cfg.data.test_q_query, split=name)
        sampler = EpisodeSampler.for_dataset(train_set, cfg.data.n_way, cfg.data.k_shot, cfg.data.q_query, split="train")
    except ValueError as exc:
        raise SetupError(str(exc)) from None
    model = HR2G(cfg.model, cfg.data.frames).to(device)
    # text features of every class up front, in one batch: the cached values then do not depend
    # on which episode first met a class (batch composition changes the last float bits, and
    # Adam's sign-like first steps amplify that -- a resumed run would drift from the original)
    model.text_features(train_set.class_names)
    if val_set is not None:
        model.text_features(val_set.class_names)
    opt, sched = build_optim(model, cfg)
    start_epoch, start_step, best, failures = 0, 0, -1.0, {}
    tally = EpochTally([], [], 0.0)
    if ckpt is not None:
        try:  # a --set that changes the model (model.ikt=false, adapter_dim) cannot continue this run
            load_weights(model, ckpt["model"], path, "these settings build")
        except ValueError as exc:
            raise SetupError(f"{exc}; start a new run (another --out) for settings that change the model") from None
        try:
            opt.load_state_dict(ckpt["optimizer"])
            sched.load_state_dict(ckpt["scheduler"])
        except (ValueError, RuntimeError, KeyError) as exc:
            raise SetupError(f"checkpoint {str(path)!r}: its optimizer state does not fit this model ({exc})") from None
        if applied := apply_optim_changes(opt, sched, saved, cfg):
            log.info("resuming with %s as given (lr %.3g from here)", ", ".join(applied), opt.param_groups[0]["lr"])
        start_epoch, start_step, best = ckpt["epoch"], ckpt["step"], ckpt["best_val"]
        failures = dict(ckpt.get("read_failures", {}))
        tally = EpochTally(**ckpt.get("epoch_tally", dataclasses.asdict(tally)))
    if main and cfg.train.tensorboard:
        require_tensorboard()  # before the old run's files go
    if main and stale:  # a new run: the old run's checkpoints, lists and event files would pass for its own
        # only now, once every check passed: --overwrite --ways 20 (a split with 16 classes) deleted
        # the old run's checkpoints and log, then was refused
        log.info("starting a new run in %s: removing the previous run's %s", out, ", ".join(f.name for f in stale))
        for f in stale:
            f.unlink()
    if main:  # after the checkpoint fits: a refused --resume leaves the run's config.json as it was
        write_text_atomic(out / "config.json", cfg.dumps())  # whole or as it was, as every result file
    ddp = model
    if dist_info.enabled:
        ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if main:
        n_train = sum(p.numel() for p in model.trainable_parameters())
        log.info("parameters: %.2fM trainable / %.2fM total", n_train / 1e6, sum(p.numel() for p in model.parameters()) / 1e6)

    steps = cfg.train.episodes_per_epoch
    runlog = None
    if main and elsewhere and not (out / "log.csv").exists() and (path.parent / "log.csv").exists():
        shutil.copyfile(path.parent / "log.csv", out / "log.csv")  # the run's history so far (cut at the checkpoint below)
    if main:
        runlog = RunLog(out, steps, None if ckpt is None else start_epoch * steps + start_step, cfg.train.tensorboard,
                        mid_epoch=start_step > 0)

    def checkpoint(name: str, epoch: int, step: int) -> None:
        if main:
            tally.elapsed = time.time() - t0
            runlog.sync()  # the log up to this checkpoint is on disk before the checkpoint is
            save_checkpoint(out / name, model, opt, sched, cfg, epoch, step, best, failures, tally, train_digest)
        barrier(dist_info)

    def bank_filled() -> int:
        return model.ikt.filled() if model.ikt is not None else 0

    base_names = train_set.class_names
    slots = range(dist_info.rank * per_rank, (dist_info.rank + 1) * per_rank)
    t0 = time.time() - tally.elapsed
    val_acc = float("nan")
    eval_skipped: dict[str, str] = {}  # unreadable val / test videos (this process), listed with the training ones
    n_log, n_ckpt = cfg.train.log_every, cfg.train.checkpoint_every
    if main and start_step > 0 and start_step % n_log == 0:  # the checkpoint's step row, hidden by the purge
        runlog.restore_step_row(start_epoch, start_step, np.mean(tally.loss[-n_log:]), np.mean(tally.acc[-n_log:]),
                                sched.get_last_lr()[0], bank_filled(), len(failures))
    warned_exhausted: set[str] = set()
    stopped = None  # the signal received in the last epoch's validation, if one was
    try:
        with StopSignals() as stop:
            for epoch in range(start_epoch, cfg.train.epochs):
                model.train()
                # known bad: not decoded again; an "unexpected" decoder error may be the install's, tried again
                known = {k: v for k, v in failures.items() if not v.startswith("unexpected ")}
                stream = EpisodeStream(train_set, sampler, cfg.train.seed, epoch, steps, slots=slots, train=True,
                                       known=known)
                first = start_step if epoch == start_epoch else 0
                if first == 0:
                    tally.loss, tally.acc = [], []
                bar = tqdm(episode_loader(stream, first, cfg.data.num_workers), total=steps, initial=first,
                           desc=f"epoch {epoch + 1}/{cfg.train.epochs}", disable=not (progress and main), dynamic_ncols=True)
                for step, (episodes, news) in enumerate(bar, start=first):
                    for key, why in news.failed.items():  # workers report a video each: warn once
                        if key not in failures:
                            failures[key] = why
                            log.warning("skipping unreadable video %s (%s); %d skipped so far", key, why, len(failures))
                    for name in news.exhausted - warned_exhausted:
                        warned_exhausted.add(name)
                        log.warning("train: class %r has too few readable videos left; episodes with it are drawn "
                                    "again", name)
                    r = train_step(ddp, model, [episode_to(ep, device) for ep in episodes], cfg.data.k_shot, opt, cfg,
                                   base_names, device, dist_info)
                    tally.loss.append(r.loss)
                    tally.acc.append(r.acc)
                    bar.set_postfix(loss=f"{np.mean(tally.loss[-50:]):.3f}", acc=f"{np.mean(tally.acc[-50:]):.3f}")
                    if main and (step + 1) % n_log == 0:
                        runlog.step_row(epoch, step + 1, np.mean(tally.loss[-n_log:]), np.mean(tally.acc[-n_log:]),
                                        sched.get_last_lr()[0], bank_filled(), len(failures), time.time() - t0)
                    if any_rank(stop.received is not None, dist_info, device):
                        _stop(checkpoint, epoch, step + 1, stop, out, dist_info)
                    if n_ckpt and (step + 1) % n_ckpt == 0 and step + 1 < steps:  # mid-epoch safety net
                        checkpoint("last.pt", epoch, step + 1)
                bar.close()
                epoch_lr = sched.get_last_lr()[0]  # the LR this epoch trained at (the epoch row's; step() moves on)
                with warnings.catch_warnings():
                    # resumed after the epoch's last step: this process has not stepped the optimizer,
                    # which torch takes for a wrong call order; the schedule is right (its state was loaded)
                    warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)` before")
                    sched.step()
                res = None
                if val_set is not None:
                    try:
                        res = evaluate_model(model, val_set, cfg, episodes=cfg.train.val_episodes, seed=cfg.eval.seed,
                                             k_shot=cfg.data.k_shot, progress=False, split="val")
                    except NoEpisodesLeft as exc:  # the epoch's training still counts; next epoch tries again
                        eval_skipped.update(exc.skipped_videos)
                        val_acc = float("nan")
                        log.warning("epoch %d: no validation: %s", epoch + 1, exc)
                if res is not None:
                    val_acc = res.accuracy
                    eval_skipped.update(res.skipped_videos)
                    log.info("epoch %d: train loss %.4f acc %.3f | val %d-way %d-shot acc %.2f ± %.2f%%", epoch + 1,
                             np.mean(tally.loss), np.mean(tally.acc), cfg.data.n_way, cfg.data.k_shot,
                             100 * res.accuracy, 100 * res.ci95)
                    if res.accuracy > best:
                        best = res.accuracy
                        end = EpochTally([], [], time.time() - t0)
                        runlog.sync()
                        save_checkpoint(out / "best.pt", model, opt, sched, cfg, epoch + 1, 0, best, failures, end,
                                        train_digest)
                if main:
                    runlog.epoch_row(epoch + 1, np.mean(tally.loss), np.mean(tally.acc), epoch_lr,
                                     bank_filled(), len(failures), time.time() - t0, val_acc)
                tally.loss, tally.acc = [], []
                checkpoint("last.pt", epoch + 1, 0)
                if any_rank(stop.received is not None, dist_info, device):
                    if epoch + 1 < cfg.train.epochs:
                        _stop(checkpoint, epoch + 1, 0, stop, out, dist_info, saved=True)
                    stopped = stop.received or "signal on another rank"  # in the last validation: no final test
    finally:
        if runlog is not None:
            runlog.close()
    if start_epoch >= cfg.train.epochs and main:
        log.warning("%s is at the end of epoch %d of %d: nothing to train (pass --epochs N to train longer)", path,
                    start_epoch, cfg.train.epochs)
    summary = {"val_accuracy": None if math.isnan(val_acc) else val_acc, "best_val": best,
               "last": str(out / "last.pt"), "best": str(out / "best.pt") if (out / "best.pt").exists() else None,
               "seconds": time.time() - t0, "world_size": dist_info.world, "bank_digest": bank_digest(model)}
    if main and failures:
        log.warning("%d unreadable videos were skipped during training: %s", len(failures), ", ".join(list(failures)[:5]))
    res, cut = None, None
    if stopped is not None and test_set is not None:
        summary["test_accuracy"] = None
        log.warning("no final test: %s received during the last validation", stopped)
    elif test_set is not None:
        try:
            with InterruptOnSignal():  # nothing to save midway: the first signal ends it
                res = evaluate_model(model, test_set, cfg, episodes=cfg.train.test_episodes, seed=cfg.eval.seed,
                                     k_shot=cfg.data.k_shot, progress=False, split="test")
        except SignalInterrupt as exc:
            cut = exc.signal_name
            summary["test_accuracy"] = None
            log.warning("final test cut short by %s", cut)
        except NoEpisodesLeft as exc:  # the trained model is saved; say why there is no test figure
            eval_skipped.update(exc.skipped_videos)
            summary["test_accuracy"] = None
            log.warning("no final test: %s", exc)
    if res is not None:
        eval_skipped.update(res.skipped_videos)
        log.info("novel classes (test split): %d-way %d-shot accuracy %.2f ± %.2f %% over %d episodes (chance %.1f %%)",
                 cfg.data.n_way, cfg.data.k_shot, 100 * res.accuracy, 100 * res.ci95, res.episodes, 100 / cfg.data.n_way)
        summary.update(test_accuracy=res.accuracy, test_ci95=res.ci95, test_episodes=res.episodes)
    listed = {**failures, **eval_skipped}  # keys are paths under the data root: one entry per video
    summary["skipped_videos"] = len(listed)
    if main and listed:
        write_unreadable(out / "unreadable_videos.json", listed)
    if main:
        log.info("done in %.0f s: %s", summary["seconds"], json.dumps(summary))
    barrier(dist_info)
    shutdown(dist_info)
    if test_set is not None and (stopped or cut):  # a test was due: the exit status says a signal ended the run
        raise FinalTestSkipped(cut or stopped, summary["best"] or summary["last"], during_test=cut is not None)
    return summary
