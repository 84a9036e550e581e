"""``python -m hr2g.ablate``: the paper's ablation studies (Tables 4-10 and 12) as commands.

    python -m hr2g.ablate --study table4                       # tiny preset, synthetic data
    python -m hr2g.ablate --study table4 table7 --preset hmdb51 --data-root DATA/hmdb51 --fused
    python -m hr2g.ablate --study all --set train.epochs=3 --episodes 2000 --out results/ablations

A study is a list of variants; a variant is a list of ``section.field=value`` overrides applied on
top of the preset and of every ``--set`` (the variant wins where both set a field).  Each variant is
trained in ``<out>/<study>/<variant>/run`` (``hr2g.training.train``, resumed if interrupted), then its
best-validation checkpoint (the last one when validation is off) is evaluated on the test split over
fixed, seeded episodes; ``result.json`` records the outcome and the resolved configuration.

Re-running is free: a variant whose ``result.json`` exists with the same configuration is not
trained again (one whose evaluation alone differs, ``--episodes`` or ``eval.*``, is evaluated again
from its checkpoint), and a variant whose resolved configuration equals one already evaluated in
another study (the full model appears in Tables 4, 5, 6, 7, 8, 9, 10 and 12) reuses that result.
A variant whose stored training configuration differs from the requested one stops the command:
pass ``--rerun`` to retrain, or choose another ``--out``.  Ctrl-C (or SIGTERM) stops as
``hr2g.train`` does, with the variant's checkpoint saved: the same command continues.

``<out>/results.csv`` and ``<out>/results.md`` hold one row per evaluated variant of every study
found under ``--out``: overrides, accuracy ± 95% CI and trainable parameters.

The variants' values for kappa, M, mu and G are this project's grids around the paper's defaults
(kappa 0.7, M 3, mu 0.99, G 50), one factor at a time.
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from hr2g.config import Config, set_field

log = logging.getLogger("hr2g.ablate")


@dataclass(frozen=True)
class Variant:
    name: str  # row label, also the folder name under <out>/<study>/
    overrides: tuple[str, ...]  # "section.field=value", applied after the preset and --set


@dataclass(frozen=True)
class Study:
    name: str
    title: str
    variants: tuple[Variant, ...]
    # the modules the study varies, switched on before each variant: a --set model.ikt=false given
    # for the whole run must not turn Table 7's six kappa values into one model trained six times
    needs: tuple[str, ...] = ()


def _sweep(name: str, field: str, values, fmt=str) -> tuple[Variant, ...]:
    return tuple(Variant(f"{name}={fmt(v)}", (f"{field}={v}",)) for v in values)


STUDIES: dict[str, Study] = {s.name: s for s in (
    Study("table4", "Table 4: components (ISC, IKT)", (
        Variant("baseline", ("model.isc=false", "model.ikt=false")),
        Variant("isc", ("model.isc=true", "model.ikt=false")),
        Variant("ikt", ("model.isc=false", "model.ikt=true")),
        Variant("isc+ikt", ("model.isc=true", "model.ikt=true")),
    )),
    Study("table5", "Table 5: inter-video interaction manner", (
        Variant("global", ("model.isc_mask=global",)),  # video level: attention over mean-pooled videos
        Variant("dense", ("model.isc_mask=dense",)),  # frame level: attention over all S*T frame tokens
        Variant("isc", ("model.isc_mask=adaptive",)),  # ISC: along the sample axis at each frame position
    ), needs=("model.isc=true",)),
    Study("table6", "Table 6: ISC mask strategy", tuple(
        Variant(m, (f"model.isc_mask={m}",)) for m in ("adaptive", "support-support", "query-support", "full")),
        needs=("model.isc=true",)),
    Study("table7", "Table 7: retrieval fraction kappa (O = round(kappa G))",
          _sweep("kappa", "model.ikt_kappa", (0.1, 0.3, 0.5, 0.7, 0.9, 1.0)), needs=("model.ikt=true",)),
    Study("table8", "Table 8: number of prototypes M", _sweep("M", "model.ikt_prototypes", (1, 2, 3, 4, 5)),
          needs=("model.ikt=true",)),
    Study("table9", "Table 9: bank momentum mu and bank size G", (
        *(Variant(f"mu={mu}", (f"model.ikt_momentum={mu}", "model.ikt_bank_size=50")) for mu in (0.9, 0.95, 0.99, 0.999)),
        *(Variant(f"G={g}", ("model.ikt_momentum=0.99", f"model.ikt_bank_size={g}")) for g in (10, 30, 70, 100)),
    ), needs=("model.ikt=true",)),
    Study("table10", "Table 10: order of ISC and IKT", tuple(Variant(o, (f"model.order={o}",)) for o in ("isc-ikt", "ikt-isc")),
          needs=("model.isc=true", "model.ikt=true")),
    Study("table12", "Table 12: metric", tuple(Variant(m, (f"model.metric={m}",)) for m in ("otam", "trx", "bimhm"))),
)}

CSV_FIELDS = ("study", "variant", "overrides", "dataset", "backbone", "n_way", "k_shot", "episodes", "accuracy", "ci95",
              "trainable_params", "total_params", "best_val", "checkpoint", "train_seconds", "reused_from")


def variant_config(base: Config, variant: Variant, needs: tuple[str, ...] = ()) -> Config:
    cfg = copy.deepcopy(base)
    for item in needs + variant.overrides:
        key, value = item.split("=", 1)
        set_field(cfg, key, value)
    return cfg.validate()


# Settings that change how a run goes, not what it gives: decoding workers (a run is bit-identical
# at any count: tests/test_training.py), log and checkpoint cadence, TensorBoard, the NCCL timeout.
# In the fingerprint, --set data.num_workers=4 on a finished study stopped it ("a different
# configuration") and --rerun then retrained every variant to the same numbers.
NOT_IN_RESULT = (("data", "num_workers"), ("train", "log_every"), ("train", "checkpoint_every"),
                 ("train", "tensorboard"), ("train", "dist_timeout_min"), ("train", "out_dir"))


def _result_fields(d: dict) -> dict:
    """``d`` (a fingerprint or a config, also one an older version wrote) less NOT_IN_RESULT."""
    d = {section: dict(part) for section, part in d.items()}
    for section, key in NOT_IN_RESULT:
        d.get(section, {}).pop(key, None)
    return d


def _fingerprint(cfg: Config, episodes: int) -> dict:
    """What makes two results interchangeable: the config less NOT_IN_RESULT, at ``episodes``."""
    d = json.loads(cfg.dumps())
    d["eval"]["episodes"] = episodes
    return _result_fields(d)


def _diff(old: dict, new: dict) -> str:
    changes = [f"{s}.{k}: {old.get(s, {}).get(k)!r} -> {v!r}" for s, part in new.items() for k, v in part.items()
               if old.get(s, {}).get(k) != v]
    return "; ".join(changes[:6]) or "(no field differs)"


def _trained(fp: dict) -> dict:
    """The part of a fingerprint that the training depends on (everything but the evaluation)."""
    return {k: v for k, v in fp.items() if k != "eval"}


def _write_json(path: Path, obj) -> None:
    from hr2g.checkpoint import write_text_atomic

    # atomic: an interrupted write never leaves a half result that counts as done
    write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


def _equal_result(out: Path, fp: dict, exclude: Path, only: set[Path] | None) -> dict | None:
    """The row of an original (not itself reused) result under ``out`` with fingerprint ``fp``."""
    for path in sorted(out.glob("*/*/result.json")):
        if path == exclude or (only is not None and path not in only):
            continue
        old = json.loads(path.read_text())
        if _result_fields(old["config"]) == fp and not old["row"]["reused_from"]:
            return old["row"]
    return None


def _evaluate(cfg: Config, out: Path, path: Path, episodes: int, progress: bool) -> dict:
    """The test-split evaluation of checkpoint ``path``: the result row's evaluation fields."""
    import torch

    from hr2g import checkpoint
    from hr2g.data.build import build_dataset
    from hr2g.evaluation import evaluate_model, load_model
    from hr2g.training import resolve_device

    device = resolve_device(cfg.train.device)
    model, _ = load_model(checkpoint.load(path), device, path)
    res = evaluate_model(model, build_dataset(cfg.data, "test", device), cfg, episodes=episodes, seed=cfg.eval.seed,
                         k_shot=cfg.data.k_shot, progress=progress, split="test")
    fields = {"episodes": res.episodes, "accuracy": round(100 * res.accuracy, 2), "ci95": round(100 * res.ci95, 2),
              "trainable_params": sum(p.numel() for p in model.trainable_parameters()),
              "total_params": sum(p.numel() for p in model.parameters()), "checkpoint": str(path.relative_to(out))}
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return fields


def run_variant(base: Config, study: Study, variant: Variant, out: Path, episodes: int, rerun: bool,
                fresh: set[Path], progress: bool) -> dict:
    """Train (or resume) and evaluate one variant; returns its result row (also in result.json)."""
    from hr2g.training import absolute_data_paths, train

    # data paths absolute, as train() stores them: a relative --data-root used to make every
    # interrupted variant "a different configuration" (its config.json holds the absolute path)
    cfg = absolute_data_paths(variant_config(base, variant, study.needs))
    vdir = out / study.name / variant.name
    result_path = vdir / "result.json"
    cfg.train.out_dir = str(vdir / "run")
    cfg.train.test_episodes = 0  # evaluated here, on the chosen checkpoint
    fp = _fingerprint(cfg, episodes)
    label = f"{study.name}/{variant.name}"
    if result_path.exists() and (not rerun or result_path in fresh):
        old = json.loads(result_path.read_text())
        old["config"] = _result_fields(old["config"])
        if old["config"] == fp:
            log.info("%s: result exists (%s), skipped", label, result_path)
            return old["row"]
        ckpt = out / old["row"]["checkpoint"]
        if _trained(old["config"]) == _trained(fp) and ckpt.exists():
            # only the evaluation differs (--episodes, eval.*): evaluate the trained checkpoint again
            log.info("%s: trained already; evaluating %s again (%s)", label, ckpt, _diff(old["config"], fp))
            row = dict(old["row"], **_evaluate(cfg, out, ckpt, episodes, progress))
            _write_json(result_path, {"config": fp, "row": row})
            fresh.add(result_path)
            return row
        raise SystemExit(f"error: {result_path} was produced with a different configuration ({_diff(old['config'], fp)}); "
                         "pass --rerun to retrain it, or use another --out")
    source = _equal_result(out, fp, exclude=result_path, only=fresh if rerun else None)
    if source is not None:
        row = dict(source, study=study.name, variant=variant.name, overrides=" ".join(variant.overrides),
                   reused_from=f"{source['study']}/{source['variant']}")
        vdir.mkdir(parents=True, exist_ok=True)
        _write_json(result_path, {"config": fp, "row": row})
        fresh.add(result_path)
        log.info("%s: same configuration as %s, result reused", label, row["reused_from"])
        return row
    run_dir = Path(cfg.train.out_dir)
    if rerun and vdir.exists():
        shutil.rmtree(vdir)
    stored = run_dir / "config.json"
    if stored.exists() and json.loads(stored.read_text()) != json.loads(cfg.dumps()):
        raise SystemExit(f"error: {run_dir} holds an unfinished run with a different configuration "
                         f"({_diff(json.loads(stored.read_text()), json.loads(cfg.dumps()))}); pass --rerun to discard it")
    log.info("%s: training with %s", label, " ".join(variant.overrides) or "the preset")
    summary = train(cfg, resume="auto", progress=progress)
    best = run_dir / "best.pt"
    path = best if cfg.train.val_episodes > 0 and best.exists() else run_dir / "last.pt"
    row = {"study": study.name, "variant": variant.name, "overrides": " ".join(variant.overrides),
           "dataset": cfg.data.dataset, "backbone": cfg.model.backbone, "n_way": cfg.data.n_way, "k_shot": cfg.data.k_shot,
           **_evaluate(cfg, out, path, episodes, progress),
           "best_val": round(100 * summary["best_val"], 2) if summary["best_val"] >= 0 else None,
           "train_seconds": round(summary["seconds"], 1), "reused_from": ""}
    _write_json(result_path, {"config": fp, "row": row})
    fresh.add(result_path)
    log.info("%s: %.2f ± %.2f %% (%d episodes), %d trainable parameters", label, row["accuracy"], row["ci95"],
             row["episodes"], row["trainable_params"])
    return row


def collect(out: Path) -> list[dict]:
    """Every result under ``out``, in study and variant order."""
    rows = []
    for study in STUDIES.values():
        for variant in study.variants:
            path = out / study.name / variant.name / "result.json"
            if path.exists():
                rows.append(json.loads(path.read_text())["row"])
    return rows


def markdown(rows: list[dict]) -> str:
    parts = []
    for study in STUDIES.values():
        mine = [r for r in rows if r["study"] == study.name]
        if not mine:
            continue
        r0 = mine[0]
        parts.append(f"### {study.title}\n\n{r0['dataset']}, {r0['backbone']}, {r0['n_way']}-way {r0['k_shot']}-shot, "
                     f"{r0['episodes']} test episodes\n")
        parts.append("| variant | overrides | accuracy (%) | trainable params |\n|---|---|---|---|")
        for r in mine:
            note = f" (= {r['reused_from']})" if r["reused_from"] else ""
            parts.append(f"| {r['variant']}{note} | `{r['overrides']}` | {r['accuracy']:.2f} ± {r['ci95']:.2f} | "
                         f"{r['trainable_params'] / 1e6:.3f}M |")
        parts.append("")
    return "\n".join(parts)


def write_tables(out: Path) -> tuple[Path, Path, list[dict]]:
    from hr2g.checkpoint import write_csv_atomic, write_text_atomic

    rows = collect(out)
    csv_path, md_path = out / "results.csv", out / "results.md"
    # written whole or not at all, as result.json
    write_csv_atomic(csv_path, CSV_FIELDS, [{k: r.get(k) for k in CSV_FIELDS} for r in rows])
    write_text_atomic(md_path, "# Ablations\n\n" + markdown(rows))
    return csv_path, md_path, rows


def parse_args(argv=None) -> argparse.Namespace:
    from hr2g.cli import add_config_args

    p = argparse.ArgumentParser(prog="python -m hr2g.ablate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--study", nargs="+", required=True, metavar="NAME",
                   help=f"studies to run: {', '.join(STUDIES)}, or all")
    add_config_args(p)
    p.add_argument("--episodes", type=int, default=None, help="test episodes per variant (default: eval.episodes of the preset)")
    p.add_argument("--out", default="runs/ablations", help="study folder: one sub-folder per study and variant, results.csv/.md")
    p.add_argument("--rerun", action="store_true", help="retrain the requested variants even when results exist")
    p.add_argument("--list", action="store_true", help="print the studies' variants and overrides, run nothing")
    p.add_argument("--no-progress", action="store_true", help="disable progress bars")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = p.parse_args(argv)
    names = list(STUDIES) if "all" in args.study else args.study
    unknown = [s for s in names if s not in STUDIES]
    if unknown:
        p.error(f"--study: unknown {unknown}; choose from {', '.join(STUDIES)}, or all")
    args.study = list(dict.fromkeys(names))
    if args.episodes is not None and args.episodes < 1:
        p.error(f"--episodes expects an integer >= 1, got {args.episodes}")
    return args


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    from hr2g.cli import config_from_args, setup_logging

    setup_logging(args.verbose)
    if args.list:
        for name in args.study:
            print(STUDIES[name].title)
            for v in STUDIES[name].variants:
                print(f"  {v.name:<24} {' '.join(v.overrides)}")
        return []
    base = config_from_args(args)
    user_keys = {item.split("=", 1)[0].strip() for item in args.overrides}
    for name in args.study:
        for v in STUDIES[name].variants:
            clash = user_keys & {o.split("=", 1)[0] for o in v.overrides}
            if clash:
                log.warning("%s/%s sets %s itself: the study's value wins over --set", name, v.name, ", ".join(sorted(clash)))
    episodes = args.episodes or base.eval.episodes
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fresh: set[Path] = set()
    from hr2g.checkpoint import CheckpointWriteError
    from hr2g.errors import SetupError
    from hr2g.stopping import TrainingStopped

    for name in args.study:
        for variant in STUDIES[name].variants:
            try:
                run_variant(base, STUDIES[name], variant, out, episodes, args.rerun, fresh, not args.no_progress)
            except (ValueError, FileExistsError, FileNotFoundError, NotADirectoryError, SetupError,
                    CheckpointWriteError) as exc:
                # what hr2g.train reports in one line (a data root not there, a full disk): it came out
                # of ablate as a traceback
                if args.verbose:
                    raise
                raise SystemExit(f"error: {name}/{variant.name}: {exc}") from None
            except TrainingStopped as stop:  # as hr2g.train: one line, the shell's code for the signal
                write_tables(out)
                print(f"hr2g.ablate: {name}/{variant.name}: {stop}; the same command continues it (finished "
                      "variants are kept)", file=sys.stderr)
                raise SystemExit(143 if stop.signal_name == "SIGTERM" else 130) from None
            except KeyboardInterrupt:  # a second Ctrl-C in training, or one while evaluating: stopped at once
                if args.verbose:
                    raise
                print(f"hr2g.ablate: {name}/{variant.name}: interrupted; the same command continues it (training "
                      "from the variant's last checkpoint; finished variants are kept)", file=sys.stderr)
                raise SystemExit(130) from None
            write_tables(out)  # after every variant: a long study shows its progress in the table
    csv_path, md_path, rows = write_tables(out)
    print(markdown([r for r in rows if r["study"] in args.study]))
    print(f"wrote {csv_path} and {md_path}")
    return [r for r in rows if r["study"] in args.study]


if __name__ == "__main__":
    main()
