"""The ``reproduce`` subcommand: the Modifier paper's evaluation protocol, resumable.

It runs every (dataset, method, seed) of the protocol that has no finished result in the
run cache (``--runs``, default ``runs/paper``), then writes tables, raw CSV/JSON and figures
of all finished runs into ``--out``. Interrupt it at any time and run it again: finished
runs are skipped, an interrupted one starts over. ``--quick`` is the CI-sized profile (one
epoch on a few hundred samples, one seed) with its own cache and output folders.

:func:`evaluate_modifier_options` is ``evaluate --modifier-options``: the protocol's
Modifier options (:func:`..paper.reproduction.modifier_options`, the learned ones fitted on
the checkpoint's training split) scored on one checkpoint, a preview without the protocol.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from ..datasets import DATASET_NAMES, evaluation_data
from ..paper.methods import FULL_PLANS, METHODS
from ..perception.modes import PRECISIONS
from ..perception.views import ViewSpec
from .common import add_device_option, chosen_device, positive_int, recorded_path

# The protocol's modules (torch, scipy) are imported by each command when it runs.

QUICK_RUNS, QUICK_OUT = Path("runs/paper-quick"), Path("runs/paper-quick/report")
FULL_RUNS, FULL_OUT = Path("runs/paper"), Path("docs/results/paper")


def _names(valid: tuple[str, ...] | list[str]):
    def parse(text: str) -> tuple[str, ...]:
        names = tuple(n.strip() for n in text.split(",") if n.strip())
        unknown = [n for n in names if n not in valid]
        if not names or unknown:
            raise argparse.ArgumentTypeError(
                f"unknown {unknown or 'empty list'}; use a comma-separated list of "
                f"{', '.join(valid)}")
        return names
    return parse


def _epochs(text: str) -> dict[str, int]:
    """``mnist=4,cifar10=6`` -> {"mnist": 4, "cifar10": 6}."""
    out = {}
    for item in text.split(","):
        name, _, value = item.partition("=")
        if name not in DATASET_NAMES or not value.isdigit() or int(value) < 1:
            raise argparse.ArgumentTypeError(
                f"{item!r}: expected DATASET=EPOCHS with DATASET one of "
                f"{', '.join(DATASET_NAMES)} and EPOCHS >= 1")
        out[name] = int(value)
    return out


def evaluate_modifier_options(checkpoint: Path, split: str, data_root: Path | None,
                              limit: int | None, out: Path,
                              dataset: str | None = None) -> list[dict]:
    """Score every Modifier option (avg fusion) of a checkpoint; write options.json/.md.

    The learned options are fitted on the split and samples the checkpoint was trained on
    (its metadata; :func:`..paper.reproduction.fit_subset` of them, as in the protocol), then
    scored on ``split`` of ``dataset`` (default: the checkpoint's own dataset; see
    :func:`..datasets.evaluation_data`); the run is named after the checkpoint's folder.
    """
    from ..paper.reproduction import compare_options, fit_subset, score_modifier_options
    from ..perception.checkpoint import load_checkpoint
    from ..perception.experiment import load_device_views

    model, meta = load_checkpoint(checkpoint)
    spec = ViewSpec.from_dict(meta["view_spec"])
    dataset, described = evaluation_data(meta, dataset, split)
    train = load_device_views(meta["dataset"], meta["train_split"], spec, data_root,
                              meta["train_samples"])
    test = load_device_views(dataset, split, spec, data_root, limit)
    options = compare_options(score_modifier_options(model, train, test, ("avg",)),
                              checkpoint.parent.name)
    out.mkdir(parents=True, exist_ok=True)
    (out / "options.json").write_text(json.dumps({
        "checkpoint": recorded_path(checkpoint), "dataset": dataset,
        "train_dataset": meta["dataset"],
        "train_split": meta["train_split"], "fit_samples": int(len(fit_subset(train).labels)),
        "split": split, "samples": int(len(test.labels)), "train_seed": meta.get("seed"),
        "options": options}, indent=1) + "\n")
    lines = [f"{described} ({len(test.labels)} samples), avg fusion, learned "
             f"options fitted on {len(fit_subset(train).labels)} of the "
             f"{len(train.labels)} {meta['train_split']} samples; recovery ratio against the "
             "plain fusion without Modifier.", "",
             "| option | no failure % | mean single failure % | recovery ratio % |",
             "|---|---|---|---|"]
    lines += [f"| {o['label']} | {100 * o['no_failure']:.2f} "
              f"| {100 * o['single_failure_mean']:.2f} | {100 * o['recovery_ratio']:.1f} |"
              for o in options]
    (out / "options.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out / 'options.json'} and {out / 'options.md'}")
    return options


def evaluate_gated(checkpoint: Path, split: str, data_root: Path | None, limit: int | None,
                   out: Path, dataset: str | None = None,
                   modes: tuple[str, ...] = ("avg",)) -> dict[str, dict]:
    """Gate the Modifier options on the checkpoint's validation split, for each fusion mode.

    See :mod:`..paper.gated_modifier`: the gate is fitted on the held-out validation split,
    the learned options on the training samples, and none / plain Modifier / gated are
    scored on ``split`` of ``dataset`` (the checkpoint's own by default). Writes
    :func:`gated_stem` ``.json`` and ``.md`` per mode (``gated.json`` for avg).
    """
    from ..paper.gated_modifier import gated_evaluation, gated_stem, training_splits
    from ..perception.checkpoint import load_checkpoint
    from ..perception.experiment import load_device_views

    model, meta = load_checkpoint(checkpoint)
    fit, validation = training_splits(meta, data_root)
    dataset, described = evaluation_data(meta, dataset, split)
    test = load_device_views(dataset, split, ViewSpec.from_dict(meta["view_spec"]), data_root,
                             limit)
    results = gated_evaluation(model, fit, validation, test, modes=modes)
    out.mkdir(parents=True, exist_ok=True)
    for mode, result in results.items():
        result.update({"checkpoint": recorded_path(checkpoint), "dataset": dataset,
                       "train_dataset": meta["dataset"], "train_seed": meta.get("seed")})
        stem = out / gated_stem(mode)
        stem.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
        text = _gated_markdown(result, f"{described} ({len(test.labels)} samples), {mode} "
                               f"fusion; gate fitted on {len(validation.labels)} held-out "
                               f"validation samples (alpha {result['alpha']}), learned options "
                               f"fitted on {result['fit_samples']} of the {len(fit.labels)} "
                               "training samples.")
        stem.with_suffix(".md").write_text(text)
        print(text, end="")
        print(f"wrote {stem}.json and {stem}.md")
    return results


def _gated_markdown(result: dict, heading: str) -> str:
    """``gated.md``: one mode's strategies, options alone, paired tests and the gate's use."""
    lines = [heading, "", "| strategy | no failure % | mean single failure % |", "|---|---|---|"]

    def rows(summaries: dict) -> list[str]:
        return [f"| {name} | {100 * s['no_failure']:.2f} | {100 * s['single_failure_mean']:.2f} |"
                for name, s in summaries.items()]

    lines += rows(result["summary"])
    lines += ["", "Each option alone on every failed set (the gate averages up to "
              f"{result['average']} of these):", "",
              "| option | no failure % | mean single failure % |", "|---|---|---|"]
    lines += rows(result["options"])
    lines += ["", "| paired test (single failures, McNemar) | gain (points) | p better | "
              "p worse |", "|---|---|---|---|"]
    lines += [f"| {name} | {100 * t['gain']:+.2f} | {t['p_better']:.3g} | {t['p_worse']:.3g} |"
              for name, t in result["tests"].items()]
    used = ", ".join(f"{name} {count}" for name, count in result["options_used"].items()
                     if count)
    lines += ["", f"Options used over the {len(result['gate'])} failed sets (each averages "
              f"up to {result['average']}; none: no option passed): {used}."]
    folds = result["cross_fitted"]
    lines += ["", f"Judged on the validation split alone ({folds['halves']} random halves: "
              "the gate fitted on one, scored on the other), mean single failure %: plain "
              f"fusion {100 * folds['single_failure_none']:.2f}; "
              + ", ".join(f"{count} averaged {100 * value:.2f}"
                          for count, value in folds["single_failure"].items()) + "."]
    return "\n".join(lines) + "\n"


def cmd_reproduce(args: argparse.Namespace) -> int:
    """Run the Modifier paper's protocol (missing runs only) and write its report."""
    from ..paper.reproduction import full_protocol, pending_runs, quick_protocol, run_protocol
    from ..paper.reproduction_report import write_report

    options = {"methods": args.methods or tuple(METHODS), "threads": args.threads,
               "precision": args.precision, "baseline_seeds": args.baseline_seeds,
               "device": str(chosen_device(args))}
    if args.seeds:
        options["seeds"] = tuple(range(args.seeds))
    protocol = (quick_protocol if args.quick else full_protocol)(args.datasets, **options)
    for dataset, epochs in (args.epochs or {}).items():
        if dataset not in protocol.datasets:
            raise ValueError(f"--epochs names {dataset}, which is not in --datasets")
        plan = dataclasses.replace(protocol.datasets[dataset], epochs=epochs)
        protocol = dataclasses.replace(protocol, datasets={**protocol.datasets, dataset: plan})
    runs = args.runs or (QUICK_RUNS if args.quick else FULL_RUNS)
    out = args.out or (QUICK_OUT if args.quick else FULL_OUT)
    todo = pending_runs(protocol, runs)
    epochs = ", ".join(f"{d} {p.epochs}" for d, p in protocol.datasets.items())
    print(f"{len(protocol.runs())} runs in the protocol (epochs: {epochs}), "
          f"{len(todo)} to do, cache {runs}")
    if todo and not args.report_only:
        run_protocol(protocol, runs, args.data_root)
    command = " ".join(filter(None, [
        "resilient-perception reproduce", f"--datasets {','.join(args.datasets)}",
        f"--methods {','.join(args.methods)}" if args.methods else "",
        f"--seeds {len(protocol.seeds)}", "--quick" if args.quick else "",
        f"--baseline-seeds {args.baseline_seeds}" if args.baseline_seeds else "",
        f"--precision {args.precision}",
        f"--epochs {','.join(f'{d}={p.epochs}' for d, p in protocol.datasets.items())}",
    ]))
    summary = write_report(protocol, runs, out, command)
    print(f"wrote {out / 'tables.md'} ({summary['runs_done']} of {summary['runs']} runs)")
    return 0


def cmd_blank_views(args: argparse.Namespace) -> int:
    """Score the reproduction's runs with black views abstaining, against the protocol."""
    from ..paper.blank_view_study import blank_view_study, write_blank_view_report
    from ..perception.experiment import load_device_views

    test = load_device_views(args.dataset, "test", root=args.data_root)
    seeds = tuple(range(args.seeds))
    rows = blank_view_study(args.runs, args.dataset, args.methods, seeds, test,
                            progress=lambda m, s: print(f"scored {m} seed {s}", flush=True))
    if not rows:
        raise ValueError(f"no finished runs of {','.join(args.methods)} under "
                         f"{args.runs / args.dataset}; run `resilient-perception reproduce` "
                         "first")
    command = (f"resilient-perception blank-views --dataset {args.dataset} --methods "
               f"{','.join(args.methods)} --seeds {args.seeds} --runs {args.runs}")
    write_blank_view_report(rows, args.out, command, test, args.dataset)
    print(f"wrote {args.out / 'tables.md'} ({len(rows) // 8} runs)")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``reproduce`` and ``blank-views`` on the main parser's subcommands."""
    p = sub.add_parser("reproduce", help=cmd_reproduce.__doc__, description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", type=_names(DATASET_NAMES), default=DATASET_NAMES,
                   help="comma-separated datasets (default: mnist,cifar10,mvmc)")
    p.add_argument("--seeds", type=positive_int, default=None,
                   help="seeds 0..N-1 (default 10; 1 with --quick)")
    p.add_argument("--baseline-seeds", type=positive_int, default=None,
                   help="seeds for the baselines (dropout, failout, ours-k2); default: all")
    p.add_argument("--methods", type=_names(tuple(METHODS)), default=None,
                   help=f"comma-separated training methods (default: {','.join(METHODS)})")
    p.add_argument("--epochs", type=_epochs, default=None, metavar="DATASET=E,...",
                   help="override epochs per dataset (full protocol: "
                   + ", ".join(f"{d}={p.epochs}" for d, p in FULL_PLANS.items()) + ")")
    p.add_argument("--quick", action="store_true",
                   help="CI profile: 1 epoch, 128 training / 256 test samples, 1 seed")
    p.add_argument("--report-only", action="store_true",
                   help="write the report of the finished runs without running missing ones")
    p.add_argument("--threads", type=positive_int, default=1,
                   help="torch CPU threads per run (default 1)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="training precision (default fp32)")
    add_device_option(p)
    p.add_argument("--data-root", type=Path, default=None, help="folder holding the datasets")
    p.add_argument("--runs", type=Path, default=None,
                   help=f"run cache (default {FULL_RUNS}; {QUICK_RUNS} with --quick)")
    p.add_argument("--out", type=Path, default=None,
                   help=f"report folder (default {FULL_OUT}; {QUICK_OUT} with --quick)")
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("blank-views", help=cmd_blank_views.__doc__,
                       description=cmd_blank_views.__doc__ + " See "
                       "resilient_perception/paper/blank_view_study.py.")
    p.add_argument("--dataset", choices=DATASET_NAMES, default="mvmc",
                   help="dataset of the runs (default mvmc, the one with black views)")
    p.add_argument("--methods", type=_names(tuple(METHODS)), default=("paper", "ours"),
                   help="comma-separated methods (default paper,ours)")
    p.add_argument("--seeds", type=positive_int, default=10, help="seeds 0..N-1 (default 10)")
    p.add_argument("--runs", type=Path, default=FULL_RUNS,
                   help=f"run cache of the reproduction (default {FULL_RUNS})")
    p.add_argument("--data-root", type=Path, default=None, help="folder holding the datasets")
    p.add_argument("--out", type=Path, default=FULL_OUT / "blank-views",
                   help=f"report folder (default {FULL_OUT / 'blank-views'})")
    p.set_defaults(func=cmd_blank_views)
