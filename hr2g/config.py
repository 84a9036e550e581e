"""Typed configuration: one dataclass per concern, validated with messages that name the value
and the allowed range.  Named presets live in :mod:`hr2g.configs`; commands override fields with
flags or ``--set section.field=value``.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field

# The smallest OTAM lambda and bank temperature hr2g.ops takes: the kernels work in fp32 with
# 1 / lambda (OTAM's exp2 scale, 1 / (lambda ln 2)) and sim / temperature, which overflow below
# ~4e-39; long before that the soft minimum / softmax is a hard one (at 1e-6, distances 1e-4 apart
# are e^-100 apart in weight), so smaller values would buy nothing but NaNs.  Near it, fp32 OTAM
# gradients are only good to about 1e-7 / lambda, the kernel's and the fp32 reference's alike
# (vs fp64, on gradients of ~0.8: 1e-4 off at lambda 1e-3, 0.1 at 1e-6): ill-conditioned near-ties
# between alignment paths, not a kernel error.
MIN_SCALE = 1e-6
BACKBONES = ("ViT-B-16", "ViT-B-32", "RN50", "tiny")
# per backbone: C, the joint embedding width every head (ISC, IKT, temporal) splits into heads, and
# the square frame side its encoder takes (open_clip's model configs; the tiny one in model/encoder.py;
# tests/test_training.py checks both against the encoders)
BACKBONE_WIDTH = {"ViT-B-16": 512, "ViT-B-32": 512, "RN50": 1024, "tiny": 64}
BACKBONE_IMAGE_SIZE = {"ViT-B-16": 224, "ViT-B-32": 224, "RN50": 224, "tiny": 32}
SYNTHETIC_RENDERED_FRAMES = 16  # frames the embedded dataset renders per clip (TSN samples T of them)
TINY_HAS_NO_WEIGHTS = ("the tiny backbone is randomly initialised and has no weights to load: "
                       "--set model.pretrained=none, or another model.backbone")
ISC_MASKS = ("adaptive", "support-support", "query-support", "full", "global", "dense")
METRICS = ("otam", "trx", "bimhm")
ORDERS = ("isc-ikt", "ikt-isc")
AGGREGATIONS = ("per_video", "mean_before")
DATASETS = ("synthetic", "hmdb51", "ucf101", "kinetics100", "ssv2_small", "ssv2_full")
BACKEND_CHOICES = ("auto", "triton", "ext", "cuda", "torch")
DECODERS = ("auto", "dali", "pyav")


@dataclass
class ModelConfig:
    backbone: str = "ViT-B-16"  # open_clip visual encoder (ViT-B-16, ViT-B-32, RN50) or "tiny" (random init, CPU demo/tests)
    pretrained: str | None = "openai"  # open_clip pretrained tag, a local checkpoint path, or None for random init
    adapter_dim: int = 64  # bottleneck width of each adapter (after attention and after MLP in every block)
    temporal_layers: int = 1  # temporal Transformer layers
    temporal_heads: int = 8  # temporal Transformer heads
    temporal_pos_embed: bool = False  # learnable positional encoding over frames (paper default: none)
    text_token: bool = True  # append the class-name text feature to each support sequence as token T+1
    support_aggregation: str = "per_video"  # "per_video" (prototype by mean after the metric) or "mean_before" (average a class's K supports before the temporal layer)
    isc: bool = True  # Inter-video Semantic Correlation (Table 4 switch)
    isc_mask: str = "adaptive"  # adaptive | support-support | query-support | full, or the Table-5 variants global | dense
    isc_heads: int = 8  # heads of the sample-axis attention
    ikt: bool = True  # Inter-task Knowledge Transfer (Table 4 switch)
    ikt_prototypes: int = 3  # M, learnable prototypes
    ikt_bank_size: int = 50  # G, knowledge-bank slots
    ikt_kappa: float = 0.7  # fraction of the bank retrieved: O = round(kappa * G)
    ikt_momentum: float = 0.99  # mu of the bank's momentum update
    ikt_temperature: float = 1.0  # softmax temperature over retrieved similarities
    ikt_heads: int = 8  # heads of the feature-to-prototype cross-attention
    ikt_on_query: bool = False  # also refine query features with the prototypes (Algorithm S1: no)
    order: str = "isc-ikt"  # "isc-ikt" (paper default) or "ikt-isc" (Table 10)
    metric: str = "otam"  # otam | trx | bimhm (Table 12)
    otam_lambda: float = 0.5  # OTAM soft-min smoothing (0.1 also used in the literature)
    trx_cardinalities: tuple[int, ...] = (2, 3)  # TRX tuple sizes (public TRX's {2, 3}: pairs and triples)
    trx_dim: int = 0  # width of TRX's key/value projections; 0: the feature width C (public TRX: 1152 on ResNet-50)
    aux_text_weight: float = 0.0  # weight w of the video-text auxiliary loss (0 disables)
    backend: str = "torch"  # op backend: torch (reference), auto (fused where available: --fused), triton, ext

    def validate(self) -> None:
        _choice("model.backbone", self.backbone, BACKBONES)
        _choice("model.isc_mask", self.isc_mask, ISC_MASKS)
        _choice("model.metric", self.metric, METRICS)
        _choice("model.order", self.order, ORDERS)
        _choice("model.support_aggregation", self.support_aggregation, AGGREGATIONS)
        _choice("model.backend", self.backend, BACKEND_CHOICES)
        if self.backbone == "tiny" and self.pretrained not in (None, "", "none"):
            raise ValueError(f"model.pretrained={self.pretrained!r}: {TINY_HAS_NO_WEIGHTS}")
        _range("model.adapter_dim", self.adapter_dim, 1, None)
        _range("model.temporal_layers", self.temporal_layers, 0, None)
        _range("model.ikt_prototypes", self.ikt_prototypes, 1, None)
        _range("model.ikt_bank_size", self.ikt_bank_size, 1, None)
        _range("model.trx_dim", self.trx_dim, 0, None)
        width = BACKBONE_WIDTH[self.backbone]
        for name in ("temporal_heads", "isc_heads", "ikt_heads"):
            heads = getattr(self, name)
            _range(f"model.{name}", heads, 1, width)
            if width % heads:
                allowed = [h for h in range(1, 17) if width % h == 0]
                raise ValueError(f"model.{name}={heads} does not divide the {self.backbone} feature width {width} "
                                 f"(e.g. {', '.join(map(str, allowed))})")
        if not 0.0 < self.ikt_kappa <= 1.0:
            raise ValueError(f"model.ikt_kappa={self.ikt_kappa} is outside the allowed range (0, 1]")
        _range("model.ikt_momentum", self.ikt_momentum, 0.0, 1.0)
        for name, value in (("model.ikt_temperature", self.ikt_temperature), ("model.otam_lambda", self.otam_lambda)):
            if not (math.isfinite(value) and value >= MIN_SCALE):  # NaN fails too
                raise ValueError(f"{name}={value} must be finite and >= {MIN_SCALE:g} (hr2g.ops' fp32 kernels)")
        if not (math.isfinite(self.aux_text_weight) and self.aux_text_weight >= 0):
            raise ValueError(f"model.aux_text_weight={self.aux_text_weight} must be finite and >= 0")
        if not self.trx_cardinalities:
            raise ValueError("model.trx_cardinalities=() must name at least one tuple size (1 to 4)")
        if len(set(self.trx_cardinalities)) < len(self.trx_cardinalities):
            raise ValueError(f"model.trx_cardinalities={self.trx_cardinalities} names a tuple size twice")
        for c in self.trx_cardinalities:
            _range("model.trx_cardinalities[]", c, 1, 4)

    def validate_frames(self, frames: int) -> None:
        """The checks that need T (``data.frames``) too."""
        if self.metric == "trx" and max(self.trx_cardinalities) > frames:
            raise ValueError(f"model.trx_cardinalities={self.trx_cardinalities}: TRX tuples of a clip's frames "
                             f"cannot be longer than data.frames={frames}")

    @property
    def ikt_topk(self) -> int:
        """O = round(kappa * G), halves up, at least 1.  (Python's round() takes halves to even:
        kappa 0.7 at G 15 gave 10 slots, not 11; the 1e-9 keeps 0.7*15 = 10.499999... on the half.)"""
        return max(1, math.floor(self.ikt_kappa * self.ikt_bank_size + 0.5 + 1e-9))


@dataclass
class DataConfig:
    dataset: str = "synthetic"  # synthetic (embedded, generated) or one of the five benchmarks
    data_root: str | None = None  # benchmark root folder (videos or frame folders, as `hr2g.prepare` writes)
    split_dir: str | None = None  # folder with the split lists (train/val/test); defaults per dataset
    frames: int = 8  # T, frames per video (TSN segments)
    image_size: int = 224  # square crop side fed to the encoder
    n_way: int = 5  # N classes per episode
    k_shot: int = 1  # K support videos per class
    q_query: int = 1  # queries per class in training episodes
    test_q_query: int = 1  # queries per class in evaluation episodes
    flip: bool = True  # horizontal flip augmentation (off for direction-sensitive data: SSv2, synthetic)
    decoder: str = "auto"  # auto | dali | pyav
    synthetic_videos_per_class: int = 20  # clips per class of the embedded dataset
    num_workers: int = 0  # background processes decoding episodes ahead of the model

    def validate(self) -> None:
        _choice("data.dataset", self.dataset, DATASETS)
        _choice("data.decoder", self.decoder, DECODERS)
        check_frames(self.frames)
        _range("data.image_size", self.image_size, 8, 1024)
        _range("data.n_way", self.n_way, 2, None)
        _range("data.k_shot", self.k_shot, 1, None)
        _range("data.q_query", self.q_query, 1, None)
        _range("data.test_q_query", self.test_q_query, 1, None)
        _range("data.num_workers", self.num_workers, 0, 64)
        _range("data.synthetic_videos_per_class", self.synthetic_videos_per_class, 1, None)
        if self.dataset != "synthetic" and not self.data_root:
            raise ValueError(f"data.data_root is required for dataset {self.dataset!r} (pass --data-root DIR)")
        if self.dataset == "synthetic":
            for key in ("data_root", "split_dir"):  # else silently ignored: the dataset is generated, not read
                if getattr(self, key):
                    raise ValueError(f"data.{key}={getattr(self, key)!r}: the synthetic dataset is generated, not read "
                                     "(--dataset NAME for a benchmark)")
            if self.decoder != "auto":  # the clips are rendered in memory: no decoder would ever run
                raise ValueError(f"data.decoder={self.decoder!r}: the synthetic dataset is generated, not decoded "
                                 "(--dataset NAME for a benchmark)")
            if self.frames > SYNTHETIC_RENDERED_FRAMES:
                raise ValueError(f"data.frames={self.frames}: the synthetic dataset renders {SYNTHETIC_RENDERED_FRAMES} "
                                 f"frames per clip, so at most {SYNTHETIC_RENDERED_FRAMES}")


@dataclass
class TrainConfig:
    epochs: int = 10  # passes over `episodes_per_epoch` episodes
    episodes_per_epoch: int = 1000  # optimizer steps per epoch
    episodes_per_step: int = 1  # episodes whose mean loss makes one step, over all ranks (divisible by the world size)
    lr: float = 1e-4  # Adam learning rate
    weight_decay: float = 0.0  # Adam weight decay
    milestones: tuple[int, ...] = (6, 8)  # epochs at which the LR is multiplied by `gamma` (multi-step)
    gamma: float = 0.1  # multi-step LR factor
    grad_clip: float = 10.0  # max global grad norm (0 disables)
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    seed: int = 0  # seeds episode sampling, augmentation and init
    val_episodes: int = 200  # validation episodes after each epoch (0 disables)
    test_episodes: int = 0  # after training, evaluate the final model on this many novel-class (test) episodes (0: skip)
    out_dir: str = "runs/hr2g"  # checkpoints, CSV (and TensorBoard) log, resolved config
    log_every: int = 50  # steps between CSV log rows
    checkpoint_every: int = 500  # steps between mid-epoch last.pt checkpoints (0: only at epoch ends and on SIGINT/SIGTERM)
    tensorboard: bool = False  # also write the log's scalars to <out_dir>/tb (needs the tensorboard package)
    device: str = "auto"  # auto (cuda if available) | cpu | cuda | cuda:N
    dist_timeout_min: int = 120  # torchrun: minutes a rank may wait at a collective; rank 0 validates (and tests) alone while the others wait, and NCCL's default of 10 aborts a run whose validation decodes longer

    def validate(self) -> None:
        _range("train.epochs", self.epochs, 1, None)
        _range("train.episodes_per_epoch", self.episodes_per_epoch, 1, None)
        _range("train.episodes_per_step", self.episodes_per_step, 1, None)
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"train.lr={self.lr} must be finite and > 0")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"train.weight_decay={self.weight_decay} must be finite and >= 0")
        if not self.grad_clip >= 0:  # NaN fails too; 0 (or inf) turns clipping off
            raise ValueError(f"train.grad_clip={self.grad_clip} must be >= 0 (0: no clipping)")
        _range("train.seed", self.seed, 0, None)
        if not self.out_dir:
            raise ValueError("train.out_dir='': name the run's folder (a run in the current folder mixes its files with others)")
        _range("train.gamma", self.gamma, 0.0, 1.0)
        for m in self.milestones:  # MultiStepLR applies a milestone 0 at construction: the whole run at lr * gamma
            _range("train.milestones[]", m, 1, None)
        if len(set(self.milestones)) < len(self.milestones):  # MultiStepLR would apply gamma twice there
            raise ValueError(f"train.milestones={self.milestones} names an epoch twice")
        _range("train.val_episodes", self.val_episodes, 0, None)
        _range("train.test_episodes", self.test_episodes, 0, None)
        _range("train.log_every", self.log_every, 1, None)
        _range("train.checkpoint_every", self.checkpoint_every, 0, None)
        if not is_device(self.device):
            raise ValueError(f"train.device={self.device!r} is not a device; choose {DEVICE_HELP}")
        _range("train.dist_timeout_min", self.dist_timeout_min, 1, None)


@dataclass
class EvalConfig:
    episodes: int = 10000  # fixed, seeded test episodes
    seed: int = 1  # seed of the test episode list (distinct from training's)
    batch_episodes: int = 500  # episodes evaluated together through the batched head
    split: str = "test"  # split to evaluate

    def validate(self) -> None:
        _range("eval.episodes", self.episodes, 1, None)
        _range("eval.seed", self.seed, 0, None)
        _range("eval.batch_episodes", self.batch_episodes, 1, None)
        _choice("eval.split", self.split, ("train", "val", "test"))


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def validate(self) -> "Config":
        for part in (self.model, self.data, self.train, self.eval):
            part.validate()
        self.model.validate_frames(self.data.frames)
        side = BACKBONE_IMAGE_SIZE[self.model.backbone]
        if self.data.image_size != side:
            raise ValueError(f"data.image_size={self.data.image_size}: the {self.model.backbone} encoder takes {side}x{side} "
                             f"frames (--set data.image_size={side})")
        return self

    def unused_milestones(self) -> tuple[int, ...]:
        """Milestones at or after the last epoch: the LR never decays there (a shortened run, say)."""
        return tuple(m for m in self.train.milestones if m >= self.train.epochs)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        cfg = cls()
        for section, values in d.items():
            for k, v in values.items():
                set_field(cfg, f"{section}.{k}", v)
        return cfg

    def dumps(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def diff(self, other: "Config") -> list[str]:
        """``section.field: mine -> other's`` for every field whose value differs."""
        mine, theirs = self.to_dict(), other.to_dict()
        return [f"{sec}.{k}: {v!r} -> {theirs[sec][k]!r}" for sec, values in mine.items() for k, v in values.items()
                if theirs[sec][k] != v]


DEVICE_HELP = "auto (cuda if available) | cpu | cuda | cuda:N (GPU N)"


def is_device(value) -> bool:
    """``auto``, ``cpu``, ``cuda`` (the current GPU) or ``cuda:N``."""
    return value in ("auto", "cpu", "cuda") or (isinstance(value, str) and re.fullmatch(r"cuda:\d+", value) is not None)


def _choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not allowed; choose one of {list(allowed)}")


def check_frames(frames: int) -> None:
    """``data.frames`` (T) in [1, 64]; ValueError naming the field otherwise."""
    _range("data.frames", frames, 1, 64)


def _range(name: str, value, lo, hi) -> None:
    if value != value or (lo is not None and value < lo) or (hi is not None and value > hi):  # NaN != NaN
        lo_s = "-inf" if lo is None else lo
        hi_s = "inf" if hi is None else hi
        raise ValueError(f"{name}={value} is outside the allowed range [{lo_s}, {hi_s}]")


def _coerce(tp, raw):
    """Convert a value (string from the command line, or JSON) to the dataclass field's type."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if raw is None or (isinstance(raw, str) and raw.lower() in ("none", "null") and type(None) in args):
        return None
    if origin is typing.Union or origin is types.UnionType:  # Optional[X] and X | None
        inner = [a for a in args if a is not type(None)][0]
        return _coerce(inner, raw)
    if origin is tuple:
        if isinstance(raw, str) and not raw.strip():
            return ()
        items = raw.split(",") if isinstance(raw, str) else list(raw)
        if any(str(x).strip() == "" for x in items):  # "1,,2" was read as (1, 2)
            raise ValueError(f"expected comma-separated values, got an empty item in {raw!r}")
        return tuple(_coerce(args[0], x) for x in items)
    if tp is bool:
        if isinstance(raw, bool):
            return raw
        if str(raw).lower() in ("1", "true", "yes", "on"):
            return True
        if str(raw).lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected a boolean, got {raw!r}")
    if tp is int:  # JSON's 2.7 or true would become 2 or 1 through int()
        if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
            raise ValueError(f"expected an integer, got {raw!r}")
        return int(raw) if isinstance(raw, float) else int(str(raw).strip())
    return tp(raw)


def set_field(cfg: Config, dotted: str, raw) -> None:
    """``set_field(cfg, "model.ikt_kappa", "0.5")`` with type conversion and a clear error."""
    if "." not in dotted:
        raise ValueError(f"--set expects section.field=value (sections: model, data, train, eval), got {dotted!r}")
    section, name = dotted.split(".", 1)
    part = getattr(cfg, section, None)
    if part is None or not dataclasses.is_dataclass(part):
        raise ValueError(f"unknown config section {section!r}; expected one of model, data, train, eval")
    hints = typing.get_type_hints(type(part))
    if name not in hints:
        raise ValueError(f"unknown config field {dotted!r}; {section} has: {', '.join(hints)}")
    try:
        setattr(part, name, _coerce(hints[name], raw))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{dotted}={raw!r}: cannot convert to {hints[name]}: {exc}") from None


def absolute_data_paths(cfg: Config) -> Config:
    """``cfg.data``'s data_root and split_dir made absolute, in place: a run stores them so, since
    evaluate / --resume / ablate may run from another folder (and compare configurations)."""
    for key in ("data_root", "split_dir"):
        if getattr(cfg.data, key):
            setattr(cfg.data, key, os.path.abspath(getattr(cfg.data, key)))
    return cfg
