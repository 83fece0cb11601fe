"""The device CNNs of the Modifier paper: train, evaluate, bench-train, report, export.

Every subcommand writes its raw results (JSON/CSV) next to what it prints, so any number in
the docs can be regenerated. Errors in options or inputs are raised as ``ValueError`` (or
``DatasetError``/``CheckpointError``), which the CLI turns into exit status 2 with a message
that says what to fix.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from ..datasets import DATASET_NAMES, IDX_PREFIX, evaluation_data
from ..perception.modes import (
    FUSED_LOSS_MODES,
    FUSION_MODES,
    PAPER_MODES,
    PRECISIONS,
    REDUCED_PRECISIONS,
)
from ..perception.views import ViewSpec, parse_noise
from .common import (
    add_device_option,
    checkpoint_file,
    chosen_device,
    dataset_name,
    fraction,
    grid,
    named_path,
    positive_int,
    recorded_path,
    require_onnx,
    size,
    write_csv,
    write_json,
)

# The commands import torch (and onnx) through these modules when they run, never when the
# parser is built: `--help` answers at interpreter speed.
if TYPE_CHECKING:
    from ..perception.experiment import DeviceViews
    from ..perception.training import TrainConfig


def _add_data_options(p: argparse.ArgumentParser, split: str) -> None:
    p.add_argument(
        "--dataset", type=dataset_name, default="mnist",
        help=f"one of {', '.join(DATASET_NAMES)}, or idx:IMAGES:LABELS for any IDX pair "
        "(default: mnist)",
    )
    p.add_argument("--split", default=split, help=f"dataset split (default: {split})")
    p.add_argument(
        "--data-root", type=Path, default=None,
        help="folder holding the datasets (default: $RESILIENT_PERCEPTION_DATA or "
        "../shared/datasets)",
    )
    p.add_argument(
        "--limit", type=positive_int, default=None,
        help="use only the first N samples (quick runs)",
    )


def _view_spec(args: argparse.Namespace) -> ViewSpec:
    from ..perception.experiment import default_view_spec

    if args.dataset == "mvmc" and args.grid is None:
        return default_view_spec("mvmc")
    rows, cols = args.grid or (3, 2)
    return ViewSpec(kind="grid", rows=rows, cols=cols, overlap=args.overlap)


def _load(args: argparse.Namespace, spec: ViewSpec) -> DeviceViews:
    from ..perception.experiment import load_device_views

    return load_device_views(args.dataset, args.split, spec, args.data_root, args.limit)


def _train_config(args: argparse.Namespace) -> TrainConfig:
    from ..perception.training import TrainConfig

    return TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        lambda_kl=args.lambda_kl, fail_simulation=args.fail_sim, drop_k=args.drop_k,
        fused_weight=args.fused_weight, fused_mode=args.fused_mode, seed=args.seed,
        num_threads=args.threads, precision=args.precision,
    )


def _add_train_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--grid", type=grid, default=None,
        help="cut each image into ROWSxCOLS device views, row-major (default 3x2, the "
        "paper's 6 patches; MVMC uses its 6 real cameras unless --grid is given)",
    )
    p.add_argument("--overlap", type=fraction, default=0.0,
                   help="grid views overlap by this fraction of a cell (default 0)")
    p.add_argument("--epochs", type=positive_int, default=4, help="training epochs (default 4)")
    p.add_argument("--batch-size", type=positive_int, default=128, help="default 128")
    p.add_argument("--lr", type=float, default=0.1,
                   help="peak SGD learning rate (momentum 0.9, warm-up + cosine; default 0.1)")
    p.add_argument("--lambda-kl", type=float, default=1.0,
                   help="weight of the fail-simulation KL term (default 1.0, the paper's)")
    p.add_argument("--fused-weight", type=float, default=1.0,
                   help="weight of the cross-entropy of the fused output, with all devices and "
                   "with the dropped ones replaced by their surrogate (default 1.0; 0 = the "
                   "paper's loss: per-device cross-entropy + KL only)")
    p.add_argument("--fused-mode", choices=FUSED_LOSS_MODES, default="avg",
                   help="the pooling the fused output's cross-entropy is scored in: avg "
                   "(default) or geo, the renormalised geometric mean (for fusion_mode geo)")
    p.add_argument("--no-fail-sim", dest="fail_sim", action="store_false",
                   help="train without fail-simulation (the paper's baseline)")
    p.add_argument("--drop-k", type=positive_int, default=1,
                   help="devices dropped per step in fail-simulation (default 1)")
    p.add_argument("--non-iid", type=positive_int, default=None, metavar="K",
                   help="class-specialised devices: each learns only K classes' samples")
    p.add_argument("--seed", type=int, default=0, help="seed of weights and batch order")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="torch CPU threads (default: torch's choice)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="fp32 (default), or bf16: forward pass under bfloat16 autocast, "
                   "~1.6x faster on CPUs with AVX512-BF16")


def cmd_train(args: argparse.Namespace) -> int:
    """Train the N device CNNs jointly and save a checkpoint plus the training history."""
    from ..perception.checkpoint import save_checkpoint
    from ..perception.experiment import TRAINING_STATE, train_devices
    from ..perception.validation import VALIDATION_SEED, holdout_split
    from ..throughput import achieved, format_speed, forward_macs

    device = chosen_device(args)
    data = _load(args, _view_spec(args))
    validation = None
    if args.holdout:
        # Held out of training for the gated Modifier (evaluate --gated).
        fit, _ = holdout_split(len(data.labels), args.holdout)
        validation = {"seed": VALIDATION_SEED, "size": args.holdout, "of": len(data.labels),
                      "limit": args.limit, "limit_rule": "first"}
        data = data.subset(fit)
    config = _train_config(args)
    print(f"training {data.n_devices} devices on {len(data.labels)} {args.dataset} "
          f"{args.split} samples, views {tuple(data.views.shape[2:])}, "
          f"fail-simulation {'on' if config.fail_simulation else 'off'}, seed {config.seed}")
    state = args.out / TRAINING_STATE
    if state.exists() and not args.resume:
        raise ValueError(f"{state} holds an unfinished run: pass --resume to continue it, "
                         "or choose another --out")
    if state.exists():
        print(f"continuing the unfinished run in {state}")
    model, history, metadata = train_devices(data, config, args.non_iid, state_path=state,
                                             device=device)
    path = save_checkpoint(args.out / "model.safetensors", model,
                           {**metadata, "validation": validation})
    state.unlink()
    write_json(args.out / "history.json", history)
    write_csv(args.out / "history.csv", [
        {k: v for k, v in h.items() if not isinstance(v, list)} for h in history
    ])
    last = history[-1]
    print(f"saved {path} (train accuracy {100 * last['train_acc']:.2f}%, "
          f"{last['images_per_s']:.0f} images/s)")
    speed = achieved(6 * forward_macs(model, data.views.shape[1:]), last["images"],
                     last["seconds"], last["cpu_seconds"], config.precision, device)
    print(f"last epoch: {format_speed(speed)}")
    write_json(args.out / "speed.json", speed)
    if args.eval_dataset:
        eval_args = ["evaluate", str(path), "--dataset", args.eval_dataset]
        if args.data_root:
            eval_args += ["--data-root", str(args.data_root)]
        evaluate_checkpoint(path, parse(eval_args), _eval_folder(path, args.eval_dataset, "test"))
    elif args.dataset.startswith(IDX_PREFIX):
        print("note: an IDX pair has no test split; score the held-out pair with "
              f"`resilient-perception evaluate {path} --dataset idx:IMAGES:LABELS` "
              "(or pass --eval-dataset here)")
    return 0


def _eval_folder(checkpoint: Path, dataset: str | None, split: str) -> Path:
    """Default output folder: ``eval-<split>``, or ``eval-<images file stem>`` for IDX."""
    if dataset and dataset.startswith(IDX_PREFIX):
        stem = Path(dataset.removeprefix(IDX_PREFIX).split(":")[0]).name.split(".")[0]
        return checkpoint.parent / f"eval-{stem}"
    return checkpoint.parent / f"eval-{split}"


def evaluate_checkpoint(checkpoint: Path, args: argparse.Namespace, out: Path) -> dict:
    """Score ``checkpoint`` as ``evaluate`` does (options from ``args``) into ``out``."""
    from ..perception.checkpoint import load_checkpoint
    from ..perception.experiment import evaluate_devices, format_failure_table, load_device_views

    model, meta = load_checkpoint(checkpoint)
    spec = ViewSpec.from_dict(meta["view_spec"])
    dataset, described = evaluation_data(meta, getattr(args, "dataset", None), args.split)
    data = load_device_views(dataset, args.split, spec, args.data_root, args.limit)
    noise = parse_noise(args.noise) if args.noise else None
    rows, summary = evaluate_devices(model, data, noise, args.seed, tuple(args.modes))
    write_csv(out / "failures.csv", rows)
    write_json(out / "summary.json", {
        "checkpoint": recorded_path(checkpoint), "dataset": dataset, "split": args.split,
        "train_dataset": meta["dataset"],
        "samples": int(len(data.labels)), "noise": args.noise, "seed": args.seed,
        "train_seed": meta.get("seed"), "summary": summary,
    })
    print(f"{described} ({len(data.labels)} samples), accuracy %:")
    print(format_failure_table(summary))
    for mode in summary:
        by_n = summary[mode]["modifier"]["by_n_failed"]
        print(f"{mode} with Modifier by number of failed devices: "
              + ", ".join(f"{i}: {100 * a:.1f}" for i, a in enumerate(by_n)))
    print(f"wrote {out / 'failures.csv'} and {out / 'summary.json'}")
    return summary


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Score every failure subset of a checkpoint, with and without the Modifier."""
    out = args.out or _eval_folder(args.checkpoint, args.dataset, args.split)
    evaluate_checkpoint(args.checkpoint, args, out)
    if args.modifier_options:
        from .reproduction import evaluate_modifier_options

        evaluate_modifier_options(args.checkpoint, args.split, args.data_root, args.limit, out,
                                  args.dataset)
    if args.gated is not None:
        from .reproduction import evaluate_gated

        evaluate_gated(args.checkpoint, args.split, args.data_root, args.limit, out,
                       args.dataset, tuple(args.gated or ("avg",)))
    return 0


def cmd_bench_train(args: argparse.Namespace) -> int:
    """Time one epoch of vectorised joint training against a naive loop over devices."""
    from ..perception.model import MultiDeviceCNN
    from ..perception.training import TrainConfig, measure_training_throughput
    from ..throughput import achieved, format_speed, forward_macs

    data = _load(args, _view_spec(args))
    config = TrainConfig(batch_size=args.batch_size, seed=args.seed, num_threads=args.threads,
                         precision=args.precision)
    print(f"timing one epoch of {len(data.labels)} images, {data.n_devices} devices ...")
    result = measure_training_throughput(
        data.views, data.labels, config, naive_batches=args.naive_batches, progress=True
    )
    result.update({"dataset": args.dataset, "view_spec": data.spec.to_dict(),
                   "seed": args.seed, "torch_threads": result["threads"]})
    model = MultiDeviceCNN(data.n_devices, data.views.shape[2], len(data.classes))
    result["vectorised_speed"] = achieved(
        6 * forward_macs(model, data.views.shape[1:]), result["images"],
        result["vectorised_s_per_epoch"], result["vectorised_cpu_s_per_epoch"], args.precision)
    write_json(args.out, result)
    print(f"vectorised {result['vectorised_s_per_epoch']:.1f} s/epoch, naive loop "
          f"{result['naive_s_per_epoch']:.1f} s/epoch, speed-up {result['speedup']:.2f}x; "
          f"wrote {args.out}")
    print(f"vectorised: {format_speed(result['vectorised_speed'])}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Export device CNNs of a checkpoint to ONNX (device_<i>.onnx) for the camera nodes."""
    require_onnx("export")
    from ..perception.checkpoint import load_checkpoint
    from ..perception.export import export_checkpoint

    precisions = [p for p in REDUCED_PRECISIONS if getattr(args, p)]
    if precisions:
        if args.devices is not None:
            raise ValueError("--int8/--fp16 score the fused accuracy of every device: "
                             "leave out --devices")
        test_dataset, described = evaluation_data(load_checkpoint(args.checkpoint)[1],
                                                  args.dataset, "test")
    paths = export_checkpoint(args.checkpoint, args.out, args.devices, args.image_size,
                              args.opset)
    for path in paths:
        print(path)
    if not precisions:
        return 0
    from tqdm import tqdm

    from ..perception.reduced_precision import export_reduced_precisions, precision_table

    with tqdm(desc="scoring exports", unit="sample") as bar:
        result = export_reduced_precisions(
            args.checkpoint, paths, precisions, test_dataset, args.data_root,
            args.calibration_samples, args.seed, args.limit, bar.update)
    for name in precisions:
        for path in result["files"][name]:
            print(path)
    write_json(args.out / "precision.json", result)
    report = (f"Accuracy (%) on {described} ({result['test_samples']} samples), avg fusion "
              "with the Modifier, mean over every failed set of each size; written by "
              f"`resilient-perception export {args.checkpoint} --out {args.out} "
              f"{' '.join('--' + p for p in precisions)} --seed {args.seed}` (raw: "
              f"precision.json).\n\n{precision_table(result)}\n")
    (args.out / "precision.md").write_text(report)
    print(f"\n{report}\nwrote {args.out / 'precision.json'} and precision.md")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Render evaluation summaries (and a training benchmark) as Markdown tables."""
    from ..perception.experiment import markdown_report

    summaries = {}
    for name, file in args.summaries:
        try:
            summaries[name] = json.loads(file.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{file}: cannot read an evaluate summary.json ({exc})") from exc
    throughputs = [json.loads(path.read_text()) for path in args.throughput or []]
    text = markdown_report(summaries, throughputs)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(text, end="")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register the device-CNN subcommands on the main parser's subparsers."""
    p = sub.add_parser("train", help=cmd_train.__doc__, description=cmd_train.__doc__)
    _add_data_options(p, "train")
    _add_train_options(p)
    add_device_option(p)
    p.add_argument("--resume", action="store_true",
                   help="continue the unfinished run in --out from its last finished epoch "
                   "(the state is saved after every epoch; same options required)")
    p.add_argument("--holdout", type=positive_int, default=None, metavar="N",
                   help="hold N training samples out of training (a fixed draw) as the "
                   "validation split that `evaluate --gated` fits the Modifier's gate on")
    p.add_argument("--eval-dataset", type=dataset_name, default=None, metavar="NAME",
                   help="score the trained model on this held-out dataset afterwards, e.g. "
                   "cifar10 (its test split) or idx:IMAGES:LABELS (written to eval-*/)")
    p.add_argument("--out", type=Path, default=Path("runs/train"),
                   help="output folder: model.safetensors, history.json/csv "
                   "(default runs/train)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help=cmd_evaluate.__doc__, description=cmd_evaluate.__doc__)
    p.add_argument("checkpoint", type=checkpoint_file, help="model.safetensors written by `train`")
    p.add_argument("--split", default="test", help="dataset split to score (default test)")
    p.add_argument("--dataset", type=dataset_name, default=None, metavar="NAME",
                   help="dataset to score (default: the checkpoint's own, at --split); for "
                   "a checkpoint trained on an IDX pair the held-out pair is required: "
                   "idx:IMAGES:LABELS")
    p.add_argument("--data-root", type=Path, default=None, help="folder holding the datasets")
    p.add_argument("--limit", type=positive_int, default=None, help="first N samples only")
    p.add_argument("--noise", default=None, metavar="SPEC",
                   help="per-device input noise, e.g. 0:gaussian:0.2,1:salt_pepper:0.05 "
                   "(device:kind:level; gaussian level = std / 255, salt_pepper = pixel "
                   "fraction)")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise (default 0)")
    p.add_argument("--modes", nargs="+", choices=FUSION_MODES, default=list(PAPER_MODES),
                   help="fusion modes to score: the paper's avg and max (default), and geo, "
                   "the renormalised geometric mean")
    p.add_argument("--modifier-options", action="store_true",
                   help="also score the reproduction's Modifier options (confidence-weighted, "
                   "affine, calibrated fusion; the learned ones fitted on the checkpoint's "
                   "training split) with avg fusion: options.json and options.md")
    p.add_argument("--gated", nargs="*", choices=FUSION_MODES, default=None, metavar="MODE",
                   help="gate the Modifier options per failed set on the checkpoint's "
                   "held-out validation split (train --holdout) and score none / plain / "
                   "gated with paired tests, for each fusion MODE given (default avg): "
                   "gated.json and gated.md for avg, gated-MODE.json/.md for the others")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder for failures.csv and summary.json "
                   "(default: next to the checkpoint, eval-<split>)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("bench-train", help=cmd_bench_train.__doc__,
                       description=cmd_bench_train.__doc__)
    _add_data_options(p, "train")
    p.add_argument("--grid", type=grid, default=None, help="ROWSxCOLS views (default 3x2)")
    p.add_argument("--overlap", type=fraction, default=0.0, help="grid overlap fraction")
    p.add_argument("--batch-size", type=positive_int, default=128, help="default 128")
    p.add_argument("--naive-batches", type=positive_int, default=None,
                   help="time only this many batches of the naive loop and extrapolate")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="fp32 (default) or bf16 autocast of the forward pass")
    p.add_argument("--out", type=Path, default=Path("docs/results/training_throughput.json"),
                   help="JSON result (default docs/results/training_throughput.json)")
    p.set_defaults(func=cmd_bench_train)

    p = sub.add_parser("report", help=cmd_report.__doc__, description=cmd_report.__doc__)
    p.add_argument("summaries", nargs="+", metavar="NAME=SUMMARY_JSON",
                   type=named_path("fail-sim=runs/a/eval-test/summary.json"),
                   help="runs to tabulate, e.g. fail-sim=runs/a/eval-test/summary.json")
    p.add_argument("--throughput", type=Path, nargs="+", default=None,
                   help="training_throughput JSONs written by bench-train")
    p.add_argument("--out", type=Path, default=None, help="also write the Markdown here")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("export", help=cmd_export.__doc__, description=cmd_export.__doc__)
    p.add_argument("checkpoint", type=checkpoint_file, help="model.safetensors written by `train`")
    p.add_argument("--out", type=Path, required=True, help="output folder for device_<i>.onnx")
    p.add_argument("--devices", type=int, nargs="+", default=None, metavar="I",
                   help="device ids to export (default: all)")
    p.add_argument("--image-size", type=size, default=None, metavar="HxW",
                   help="full image size the views are cut from (default: from the "
                   "checkpoint's dataset; needed for idx: datasets)")
    p.add_argument("--opset", type=positive_int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--int8", action="store_true",
                   help="also write device_<i>.int8.onnx (static QDQ quantisation calibrated "
                   "on training views) and print its accuracy beside fp32")
    p.add_argument("--fp16", action="store_true",
                   help="also write device_<i>.fp16.onnx (half-precision weights, float32 "
                   "input/outputs; for GPU providers) and print its accuracy beside fp32")
    p.add_argument("--calibration-samples", type=positive_int, default=1000,
                   help="training views per device that calibrate int8 (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="draw of the calibration views")
    p.add_argument("--dataset", type=dataset_name, default=None,
                   help="test data for the accuracy of --int8/--fp16 (default: the "
                   "checkpoint's dataset, test split; idx:IMAGES:LABELS for a held-out pair)")
    p.add_argument("--data-root", type=Path, default=None,
                   help="folder holding the datasets (default: $RESILIENT_PERCEPTION_DATA or "
                   "../shared/datasets)")
    p.add_argument("--limit", type=positive_int, default=None,
                   help="score only the first N test samples (quick runs)")
    p.set_defaults(func=cmd_export)


def parse(argv: list[str]) -> argparse.Namespace:
    """Parse one of this family's command lines, with the defaults of its own parser."""
    parser = argparse.ArgumentParser(prog="resilient-perception")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)
