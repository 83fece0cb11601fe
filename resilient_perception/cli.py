"""The `resilient-perception` command: train, evaluate, benchmark and demo.

Every subcommand writes its raw results (JSON/CSV) next to what it prints, so any number in
the docs can be regenerated. Errors in options or inputs exit with status 2 and a message
that says what to fix.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

from .checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from .datasets import DATASET_NAMES, DatasetError
from .perception.experiment import (
    TRAINING_STATE,
    DeviceViews,
    default_view_spec,
    evaluate_devices,
    format_failure_table,
    load_device_views,
    markdown_report,
    train_devices,
)
from .perception.export import export_checkpoint
from .perception.training import PRECISIONS, TrainConfig, measure_training_throughput
from .perception.views import ViewSpec, parse_noise

EXIT_USAGE = 2


def _write_json(path: Path, payload: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")


def _write_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: " ".join(map(str, v)) if isinstance(v, tuple) else v
                             for k, v in row.items()})


def _pair(what: str, example: str):
    """An argparse type for ``AxB`` with two positive integers (a grid, an image size)."""

    def parse(text: str) -> tuple[int, int]:
        try:
            first, second = (int(x) for x in text.lower().split("x"))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {what} such as {example}, got {text!r}") from None
        if first < 1 or second < 1:
            raise argparse.ArgumentTypeError(f"{what} needs at least 1x1, got {text!r}")
        return first, second

    return parse


_grid = _pair("ROWSxCOLS", "3x2")
_size = _pair("HxW", "28x28")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value}")
    return value


def _schedule(text: str) -> tuple:
    from .bench.live_demo import parse_schedule  # imports rclpy: only when the option is given

    try:
        return parse_schedule(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_data_options(p: argparse.ArgumentParser, split: str) -> None:
    p.add_argument(
        "--dataset", default="mnist",
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
        "--limit", type=_positive_int, default=None,
        help="use only the first N samples (quick runs)",
    )


def _view_spec(args: argparse.Namespace) -> ViewSpec:
    if args.dataset == "mvmc" and args.grid is None:
        return default_view_spec("mvmc")
    rows, cols = args.grid or (3, 2)
    return ViewSpec(kind="grid", rows=rows, cols=cols, overlap=args.overlap)


def _load(args: argparse.Namespace, spec: ViewSpec) -> DeviceViews:
    return load_device_views(args.dataset, args.split, spec, args.data_root, args.limit)


def _train_config(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        lambda_kl=args.lambda_kl, fail_simulation=args.fail_sim, drop_k=args.drop_k,
        fused_weight=args.fused_weight, seed=args.seed, num_threads=args.threads,
        precision=args.precision,
    )


def _add_train_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--grid", type=_grid, default=None,
        help="cut each image into ROWSxCOLS device views, row-major (default 3x2, the "
        "paper's 6 patches; MVMC uses its 6 real cameras unless --grid is given)",
    )
    p.add_argument("--overlap", type=_fraction, default=0.0,
                   help="grid views overlap by this fraction of a cell (default 0)")
    p.add_argument("--epochs", type=_positive_int, default=4, help="training epochs (default 4)")
    p.add_argument("--batch-size", type=_positive_int, default=128, help="default 128")
    p.add_argument("--lr", type=float, default=0.1,
                   help="peak SGD learning rate (momentum 0.9, warm-up + cosine; default 0.1)")
    p.add_argument("--lambda-kl", type=float, default=1.0,
                   help="weight of the fail-simulation KL term (default 1.0, the paper's)")
    p.add_argument("--fused-weight", type=float, default=1.0,
                   help="weight of the cross-entropy of the fused output, with all devices and "
                   "with the dropped ones replaced by their surrogate (default 1.0; 0 = the "
                   "paper's loss: per-device cross-entropy + KL only)")
    p.add_argument("--no-fail-sim", dest="fail_sim", action="store_false",
                   help="train without fail-simulation (the paper's baseline)")
    p.add_argument("--drop-k", type=_positive_int, default=1,
                   help="devices dropped per step in fail-simulation (default 1)")
    p.add_argument("--non-iid", type=_positive_int, default=None, metavar="K",
                   help="class-specialised devices: each learns only K classes' samples")
    p.add_argument("--seed", type=int, default=0, help="seed of weights and batch order")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="torch CPU threads (default: torch's choice)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="fp32 (default), or bf16: forward pass under bfloat16 autocast, "
                   "~1.6x faster on CPUs with AVX512-BF16")


def cmd_train(args: argparse.Namespace) -> int:
    """Train the N device CNNs jointly and save a checkpoint plus the training history."""
    data = _load(args, _view_spec(args))
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
    model, history, metadata = train_devices(data, config, args.non_iid, state_path=state)
    path = save_checkpoint(args.out / "model.safetensors", model, metadata)
    state.unlink()
    _write_json(args.out / "history.json", history)
    _write_csv(args.out / "history.csv", [
        {k: v for k, v in h.items() if not isinstance(v, list)} for h in history
    ])
    last = history[-1]
    print(f"saved {path} (train accuracy {100 * last['train_acc']:.2f}%, "
          f"{last['images_per_s']:.0f} images/s)")
    return 0


def _evaluate(checkpoint: Path, args: argparse.Namespace, out: Path) -> dict:
    model, meta = load_checkpoint(checkpoint)
    spec = ViewSpec.from_dict(meta["view_spec"])
    data = load_device_views(meta["dataset"], args.split, spec, args.data_root, args.limit)
    noise = parse_noise(args.noise) if args.noise else None
    rows, summary = evaluate_devices(model, data, noise, args.seed, tuple(args.modes))
    _write_csv(out / "failures.csv", rows)
    _write_json(out / "summary.json", {
        "checkpoint": str(checkpoint), "dataset": meta["dataset"], "split": args.split,
        "samples": int(len(data.labels)), "noise": args.noise, "seed": args.seed,
        "train_seed": meta.get("seed"), "summary": summary,
    })
    print(f"{meta['dataset']} {args.split} ({len(data.labels)} samples), accuracy %:")
    print(format_failure_table(summary))
    for mode in summary:
        by_n = summary[mode]["modifier"]["by_n_failed"]
        print(f"{mode} with Modifier by number of failed devices: "
              + ", ".join(f"{i}: {100 * a:.1f}" for i, a in enumerate(by_n)))
    print(f"wrote {out / 'failures.csv'} and {out / 'summary.json'}")
    return summary


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Score every failure subset of a checkpoint, with and without the Modifier."""
    out = args.out or args.checkpoint.parent / f"eval-{args.split}"
    _evaluate(args.checkpoint, args, out)
    if args.modifier_options:
        from .commands.reproduction import evaluate_modifier_options

        evaluate_modifier_options(args.checkpoint, args.split, args.data_root, args.limit, out)
    return 0


def cmd_bench_train(args: argparse.Namespace) -> int:
    """Time one epoch of vectorised joint training against a naive loop over devices."""
    data = _load(args, _view_spec(args))
    config = TrainConfig(batch_size=args.batch_size, seed=args.seed, num_threads=args.threads,
                         precision=args.precision)
    print(f"timing one epoch of {len(data.labels)} images, {data.n_devices} devices ...")
    result = measure_training_throughput(
        data.views, data.labels, config, naive_batches=args.naive_batches, progress=True
    )
    result.update({"dataset": args.dataset, "view_spec": data.spec.to_dict(),
                   "seed": args.seed, "torch_threads": result["threads"]})
    _write_json(args.out, result)
    print(f"vectorised {result['vectorised_s_per_epoch']:.1f} s/epoch, naive loop "
          f"{result['naive_s_per_epoch']:.1f} s/epoch, speed-up {result['speedup']:.2f}x; "
          f"wrote {args.out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Train (or reuse) an MNIST model, print its offline failure table, then run it live.

    Live: player + 6 camera processes + fusion with and without the Modifier over DDS;
    cameras are killed and restarted on a schedule; a live table is printed every second
    and a report is written to OUT/live/.
    """
    checkpoint = args.out / "model.safetensors"
    if checkpoint.exists():
        print(f"reusing {checkpoint} (delete it to retrain)")
    else:
        # The same defaults as `resilient-perception train`, from the one parser.
        train_args = ["train", "--epochs", str(args.epochs), "--out", str(args.out)]
        if args.data_root:
            train_args += ["--data-root", str(args.data_root)]
        cmd_train(build_parser().parse_args(train_args))
    eval_args = ["evaluate", str(checkpoint)]
    if args.data_root:
        eval_args += ["--data-root", str(args.data_root)]
    _evaluate(checkpoint, build_parser().parse_args(eval_args), args.out / "eval-test")
    if args.no_live:
        return 0
    live_demo, pipeline, _ = _live_imports()
    if args.duration <= 0 or args.rate <= 0:
        raise ValueError("--duration and --rate must be > 0")
    schedule = args.schedule or live_demo.DEFAULT_SCHEDULE
    models = _onnx_models(checkpoint, args.out / "onnx")
    config = _installed_config(args, pipeline)
    print(f"\nlive pipeline: {args.duration:g} s at {args.rate:g} Hz, failures: "
          + ", ".join(f"{e.action} {e.node} at {e.at:g} s" for e in schedule))
    if args.bag is not None and not args.bag.exists():
        raise ValueError(f"{args.bag}: no such bag (record one with `resilient-perception "
                         "record-dataset`)")
    report = live_demo.run_live_demo(config, models, args.out / "live", args.duration,
                                     args.rate, schedule, bag=args.bag)
    print()
    print((args.out / "live" / "report.md").read_text(), end="")
    lost = report["streams"]["modifier"]["missing"]
    return 0 if lost == 0 else 1


def _live_imports():
    """The ROS modules of the live commands, or a clear error without ROS (pip install .)."""
    try:
        from .ros import live_demo, pipeline, pipeline_benchmark
    except ImportError as exc:
        raise ValueError(f"this command needs ROS 2 and the built package ({exc}); run "
                         "scripts/setup.sh") from exc
    return live_demo, pipeline, pipeline_benchmark


def _onnx_models(checkpoint: Path, onnx_dir: Path) -> str:
    """Export ``checkpoint`` to ``onnx_dir`` unless up to date; the cameras' model pattern."""
    first = onnx_dir / "device_0.onnx"
    if not first.exists() or first.stat().st_mtime < checkpoint.stat().st_mtime:
        export_checkpoint(checkpoint, onnx_dir)
    return str(onnx_dir.resolve() / "device_{}.onnx")


def _installed_config(args: argparse.Namespace, pipeline) -> Path:
    config = args.config or (pipeline.package_prefix()
                             / "share/resilient_perception/config/mnist_6cam.yaml")
    if not config.is_file():
        raise ValueError(f"{config}: config file not found")
    return config


def cmd_bench_pipeline(args: argparse.Namespace) -> int:
    """Benchmark the live pipeline (6 camera processes + fusion at 30 Hz over DDS).

    Measures end-to-end and fusion-only latency, failure reaction time, max sustained
    frame rate, CPU and memory per process, and the Modifier's cost vs a device forward.
    Writes benchmark.json and benchmark.md to --out.
    """
    _, pipeline, pipeline_benchmark = _live_imports()
    if not args.checkpoint.is_file():
        raise ValueError(f"{args.checkpoint}: no such checkpoint (train one with "
                         "`resilient-perception train`)")
    models = _onnx_models(args.checkpoint, args.checkpoint.parent / "onnx")
    result = pipeline_benchmark.run_pipeline_benchmark(
        _installed_config(args, pipeline), models, args.out, args.rate, args.steady,
        args.kills, log_dir=args.log_dir)
    print((args.out / "benchmark.md").read_text(), end="")
    return 0 if pipeline_benchmark.frames_lost(result) == 0 else 1


def cmd_export(args: argparse.Namespace) -> int:
    """Export device CNNs of a checkpoint to ONNX (device_<i>.onnx) for the camera nodes."""
    paths = export_checkpoint(args.checkpoint, args.out, args.devices, args.image_size,
                              args.opset)
    for path in paths:
        print(path)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Render evaluation summaries (and a training benchmark) as Markdown tables."""
    summaries = {}
    for path in args.summaries:
        name, _, file = path.partition("=")
        if not file:
            raise ValueError(f"expected NAME=PATH/summary.json, got {path!r}")
        try:
            summaries[name] = json.loads(Path(file).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{file}: cannot read an evaluate summary.json ({exc})") from exc
    throughputs = [json.loads(path.read_text()) for path in args.throughput or []]
    text = markdown_report(summaries, throughputs)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(text, end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand (also used to document the CLI)."""
    parser = argparse.ArgumentParser(
        prog="resilient-perception",
        description="Fault-tolerant multi-camera perception: train device CNNs with "
        "fail-simulation, evaluate them under every failure set with the Modifier.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help=cmd_train.__doc__, description=cmd_train.__doc__)
    _add_data_options(p, "train")
    _add_train_options(p)
    p.add_argument("--resume", action="store_true",
                   help="continue the unfinished run in --out from its last finished epoch "
                   "(the state is saved after every epoch; same options required)")
    p.add_argument("--out", type=Path, default=Path("runs/train"),
                   help="output folder: model.safetensors, history.json/csv "
                   "(default runs/train)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help=cmd_evaluate.__doc__, description=cmd_evaluate.__doc__)
    p.add_argument("checkpoint", type=Path, help="model.safetensors written by `train`")
    p.add_argument("--split", default="test", help="dataset split to score (default test)")
    p.add_argument("--data-root", type=Path, default=None, help="folder holding the datasets")
    p.add_argument("--limit", type=_positive_int, default=None, help="first N samples only")
    p.add_argument("--noise", default=None, metavar="SPEC",
                   help="per-device input noise, e.g. 0:gaussian:0.2,1:salt_pepper:0.05 "
                   "(device:kind:level; gaussian level = std / 255, salt_pepper = pixel "
                   "fraction)")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise (default 0)")
    p.add_argument("--modes", nargs="+", choices=["avg", "max"], default=["avg", "max"],
                   help="fusion modes to score (default both)")
    p.add_argument("--modifier-options", action="store_true",
                   help="also score the reproduction's Modifier options (confidence-weighted, "
                   "affine, calibrated fusion; the learned ones fitted on the checkpoint's "
                   "training split) with avg fusion: options.json and options.md")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder for failures.csv and summary.json "
                   "(default: next to the checkpoint, eval-<split>)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("bench-train", help=cmd_bench_train.__doc__,
                       description=cmd_bench_train.__doc__)
    _add_data_options(p, "train")
    p.add_argument("--grid", type=_grid, default=None, help="ROWSxCOLS views (default 3x2)")
    p.add_argument("--overlap", type=_fraction, default=0.0, help="grid overlap fraction")
    p.add_argument("--batch-size", type=_positive_int, default=128, help="default 128")
    p.add_argument("--naive-batches", type=_positive_int, default=None,
                   help="time only this many batches of the naive loop and extrapolate")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="fp32 (default) or bf16 autocast of the forward pass")
    p.add_argument("--out", type=Path, default=Path("docs/results/training_throughput.json"),
                   help="JSON result (default docs/results/training_throughput.json)")
    p.set_defaults(func=cmd_bench_train)

    p = sub.add_parser("report", help=cmd_report.__doc__, description=cmd_report.__doc__)
    p.add_argument("summaries", nargs="+", metavar="NAME=SUMMARY_JSON",
                   help="runs to tabulate, e.g. fail-sim=runs/a/eval-test/summary.json")
    p.add_argument("--throughput", type=Path, nargs="+", default=None,
                   help="training_throughput JSONs written by bench-train")
    p.add_argument("--out", type=Path, default=None, help="also write the Markdown here")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("demo", help=cmd_demo.__doc__, description=cmd_demo.__doc__)
    p.add_argument("--epochs", type=_positive_int, default=2,
                   help="epochs when a model must be trained (default 2)")
    p.add_argument("--data-root", type=Path, default=None, help="folder holding the datasets")
    p.add_argument("--out", type=Path, default=Path("runs/demo"),
                   help="output folder (default runs/demo)")
    p.add_argument("--duration", type=float, default=24.0,
                   help="seconds of live streaming (default 24)")
    p.add_argument("--rate", type=float, default=30.0, help="frames per second (default 30)")
    p.add_argument("--schedule", type=_schedule, default=None,
                   help="failures as SECONDS:kill|restart:NODE,... (default "
                   "6:kill:camera_1,12:kill:camera_4,18:restart:camera_1)")
    p.add_argument("--config", type=Path, default=None,
                   help="params file (default the installed config/mnist_6cam.yaml)")
    p.add_argument("--no-live", action="store_true",
                   help="only train/reuse and print the offline failure table")
    p.add_argument("--bag", type=Path, default=None,
                   help="replay this camera bag (from `record-dataset`, same cameras) instead "
                   "of the dataset player; looped, at its recorded timing")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("bench-pipeline", help="benchmark the live pipeline (latency, failure "
                       "reaction, max rate, CPU/memory, Modifier cost)",
                       description=cmd_bench_pipeline.__doc__)
    p.add_argument("checkpoint", type=Path, help="model.safetensors written by `train` "
                   "(exported to ONNX beside it)")
    p.add_argument("--out", type=Path, default=Path("docs/results/pipeline"),
                   help="output folder (default docs/results/pipeline)")
    p.add_argument("--rate", type=float, default=30.0, help="frame rate (default 30)")
    p.add_argument("--steady", type=float, default=20.0,
                   help="seconds of steady-state streaming (default 20)")
    p.add_argument("--kills", type=_positive_int, default=3,
                   help="cameras killed one at a time for the reaction time (default 3)")
    p.add_argument("--log-dir", type=Path, default=Path("runs/bench-pipeline/logs"),
                   help="node logs (default runs/bench-pipeline/logs)")
    p.add_argument("--config", type=Path, default=None,
                   help="params file (default the installed config/mnist_6cam.yaml)")
    p.set_defaults(func=cmd_bench_pipeline)

    p = sub.add_parser("export", help=cmd_export.__doc__, description=cmd_export.__doc__)
    p.add_argument("checkpoint", type=Path, help="model.safetensors written by `train`")
    p.add_argument("--out", type=Path, required=True, help="output folder for device_<i>.onnx")
    p.add_argument("--devices", type=int, nargs="+", default=None, metavar="I",
                   help="device ids to export (default: all)")
    p.add_argument("--image-size", type=_size, default=None, metavar="HxW",
                   help="full image size the views are cut from (default: from the "
                   "checkpoint's dataset; needed for idx: datasets)")
    p.add_argument("--opset", type=_positive_int, default=17, help="ONNX opset (default 17)")
    p.set_defaults(func=cmd_export)

    from .commands.resnet import add_parsers as add_resnet_commands  # needs this module's helpers

    add_resnet_commands(sub)

    from .commands.bags import add_bag_commands  # imports no ROS until a command runs

    add_bag_commands(sub)

    from .commands.placement import add_parsers as add_placement_commands

    add_placement_commands(sub)

    from .bench.distributed_benchmark import add_parser as add_distributed_benchmark

    add_distributed_benchmark(sub)

    from .commands.reproduction import add_parsers as add_reproduction_commands

    add_reproduction_commands(sub)

    from .commands.cost import add_parser as add_cost_command

    add_cost_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the process exit status."""
    args = build_parser().parse_args(argv)
    started = time.monotonic()
    try:
        status = args.func(args)
    except (DatasetError, CheckpointError, ValueError) as exc:
        print(f"resilient-perception {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    print(f"done in {time.monotonic() - started:.1f} s")
    return status


if __name__ == "__main__":
    sys.exit(main())
