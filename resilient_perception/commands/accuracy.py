"""The long accuracy runs: ``train-budget-devices``, ``train-resnet-recipe``, ``accuracy-report``.

Both train one resumable run into a folder (re-running the same command continues it from
its last finished epoch) and print per-epoch accuracy and achieved FLOP/s against the matmul
peak. ``scripts/accuracy_lanes.sh`` queues them in background lanes.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from ..perception.modes import PRECISIONS
from .common import (
    add_device_option,
    chosen_device,
    fraction,
    non_negative_int,
    positive_float,
    positive_int,
)

if TYPE_CHECKING:
    import torch

# The methods of paper.paper_budget.DEVICE_METHODS, named here so --help imports no torch.
DEVICE_METHOD_NAMES = ("paper", "ours", "ours-geo")


def cmd_train_budget_devices(args: argparse.Namespace) -> int:
    """Train the six CIFAR-10 device CNNs at the paper's budget (40 epochs), resumable."""
    import torch

    from ..datasets import load_cifar10
    from ..paper.paper_budget import DeviceRecipe, train_device_run
    from ..throughput import format_speed

    torch.set_num_threads(args.threads)
    device = chosen_device(args)
    precision = _precision(args.precision, device)
    recipe = DeviceRecipe(method=args.method, epochs=args.epochs, lr=args.lr,
                          schedule=args.schedule, overlap=args.overlap, pad=args.pad,
                          flip=not args.no_flip, val_size=args.val_size,
                          precision=precision, seed=args.seed,
                          train_limit=args.limit, test_limit=args.test_limit)
    recipe.validate()
    train, test = load_cifar10(args.data_root, "train"), load_cifar10(args.data_root, "test")
    result = train_device_run(args.out, recipe, train, test, max_epochs=args.chunk,
                              device=device)
    last = result["log"][-1]
    print(f"{args.method} seed {args.seed}: epoch {last['epoch']}/{recipe.epochs}, "
          f"test {100 * last['test_no_failure']:.2f}% no failure, "
          f"{100 * last['test_single_failure_modifier']:.2f}% one failure + Modifier; "
          f"last epoch: {format_speed(last)}")
    return 0


def cmd_train_resnet_recipe(args: argparse.Namespace) -> int:
    """Train the block-addressable ResNet with the fast recipe, resumable per epoch."""
    import torch

    from ..datasets import load_cifar10
    from ..placement.resnet_recipe import ResNetRecipe, train_resnet_recipe
    from ..throughput import format_speed

    torch.set_num_threads(args.threads)
    device = chosen_device(args)
    precision = _precision(args.precision, device)
    recipe = ResNetRecipe(base_width=args.base_width, stochastic_depth=args.stochastic_depth,
                          epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                          precision=precision, compile=not args.no_compile,
                          seed=args.seed, train_limit=args.limit, test_limit=args.test_limit)
    recipe.validate()
    train, test = load_cifar10(args.data_root, "train"), load_cifar10(args.data_root, "test")
    log = train_resnet_recipe(args.out, recipe, train, test, max_epochs=args.chunk,
                              device=device)
    last = log[-1]
    print(f"ResNet width {recipe.base_width}: epoch {last['epoch']}/{recipe.epochs}, test "
          f"{100 * last['test_acc']:.2f}% (flip TTA {100 * last['test_acc_tta']:.2f}%); "
          f"last epoch: {format_speed(last)}")
    return 0


def cmd_accuracy_report(args: argparse.Namespace) -> int:
    """Tables, per-epoch CSV and learning curves of the long runs (finished or not)."""
    from ..paper.accuracy_report import write_accuracy_report

    print(write_accuracy_report(args.runs, args.out, args.protocol_seeds))
    print(f"wrote {args.out}/tables.md, epochs.csv and curves.png")
    return 0


def cmd_gated_report(args: argparse.Namespace) -> int:
    """Gated vs plain vs no Modifier over seeds, from `evaluate --gated` results."""
    from ..paper.accuracy_report import gated_report

    text = gated_report(args.runs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text + f"wrote {args.out}")
    return 0


def _precision(requested: str, device: torch.device) -> str:
    """The training precision for ``--precision`` (``auto``: measured on ``device``), said aloud."""
    from ..throughput import fastest_precision, matmul_peak

    precision = fastest_precision(requested, device)
    if requested == "auto":
        fp32, bf16 = (matmul_peak(p, device=device) / 1e9 for p in ("fp32", "bf16"))
        print(f"precision auto: {precision} (matmul peak here: fp32 {fp32:.1f}, "
              f"bf16 {bf16:.1f} GFLOP/s)")
    return precision


def _common(p: argparse.ArgumentParser, epochs: int) -> None:
    p.add_argument("--out", type=Path, required=True,
                   help="run folder (state.safetensors, metrics.json); rerun to resume")
    p.add_argument("--epochs", type=positive_int, default=epochs,
                   help=f"epochs of the whole run (default {epochs}); part of its settings, "
                   "so a resume must give the same")
    p.add_argument("--seed", type=int, default=0, help="seed of weights, order and augmentation")
    p.add_argument("--precision", choices=("auto", *PRECISIONS), default="auto",
                   help="autocast precision; auto (default): bf16 where its matmuls run faster "
                   "than fp32's on this machine (CPUs with AMX or AVX512-BF16), else fp32")
    p.add_argument("--threads", type=positive_int, default=1, help="torch threads")
    add_device_option(p)
    p.add_argument("--chunk", type=positive_int, default=None, metavar="N",
                   help="stop after N epochs of this call (resume later)")
    p.add_argument("--limit", type=positive_int, default=None, help="training images")
    p.add_argument("--test-limit", type=positive_int, default=None, help="test images")
    p.add_argument("--data-root", type=Path, default=None,
                   help="folder holding cifar10/ (default: $RESILIENT_PERCEPTION_DATA or "
                   "../shared/datasets)")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register the commands on the main parser's subparsers."""
    p = sub.add_parser("train-budget-devices", help=cmd_train_budget_devices.__doc__,
                       description=cmd_train_budget_devices.__doc__)
    _common(p, 40)
    p.add_argument("--method", choices=DEVICE_METHOD_NAMES, default="ours",
                   help="fail-simulation loss: the paper's Algorithm 2, ours (plus the "
                   "fused output's loss), or ours-geo (that output pooled by geometric mean)")
    p.add_argument("--lr", type=positive_float, default=0.01,
                   help="initial (peak) learning rate")
    p.add_argument("--schedule", choices=("cosine", "constant"), default="cosine",
                   help="cosine decay to 0 after a 2%% warm-up, or the initial rate throughout")
    p.add_argument("--overlap", type=fraction, default=0.5,
                   help="grid views enlarged by this fraction of a cell (0: no overlap)")
    p.add_argument("--pad", type=non_negative_int, default=4,
                   help="translation range in pixels (0: none)")
    p.add_argument("--no-flip", action="store_true", help="no horizontal flips")
    p.add_argument("--val-size", type=non_negative_int, default=5000,
                   help="training images held out for the gated Modifier (default 5000)")
    p.set_defaults(func=cmd_train_budget_devices)

    p = sub.add_parser("train-resnet-recipe", help=cmd_train_resnet_recipe.__doc__,
                       description=cmd_train_resnet_recipe.__doc__)
    _common(p, 24)
    p.add_argument("--base-width", type=positive_int, default=16,
                   help="channels inside the first stage's blocks (x4 out; doubles per stage)")
    p.add_argument("--stochastic-depth", type=fraction, default=0.0, metavar="P",
                   help="drop probability of the last block (linear decay)")
    p.add_argument("--batch-size", type=positive_int, default=256)
    p.add_argument("--lr", type=positive_float, default=0.2, help="peak learning rate")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    p.set_defaults(func=cmd_train_resnet_recipe)

    p = sub.add_parser("accuracy-report", help=cmd_accuracy_report.__doc__,
                       description=cmd_accuracy_report.__doc__)
    p.add_argument("--runs", type=Path, default=Path("../runs/accuracy"),
                   help="the lanes' output folder (default ../runs/accuracy)")
    p.add_argument("--protocol-seeds", type=Path,
                   default=Path("docs/results/paper/seeds.csv"),
                   help="the 4-epoch protocol's per-seed results to compare with")
    p.add_argument("--out", type=Path, default=Path("docs/results/accuracy"))
    p.set_defaults(func=cmd_accuracy_report)

    p = sub.add_parser("gated-report", help=cmd_gated_report.__doc__,
                       description=cmd_gated_report.__doc__)
    p.add_argument("--runs", type=Path, default=Path("../runs/gated"),
                   help="folder of <dataset>/<method>/seed<k>/eval-*/gated.json")
    p.add_argument("--out", type=Path, default=Path("docs/results/gated/tables.md"))
    p.set_defaults(func=cmd_gated_report)
