"""Subcommands of the adaptive-ResNet study: ``train-resnet``, ``drop-study``, ``drop-report``.

Registered on the main parser by :func:`add_parsers` (see :mod:`..cli`); errors are raised as
``ValueError``/``DatasetError``/``CheckpointError`` and turned into exit status 2 there.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..perception.modes import EVAL_BATCH
from .common import (
    add_device_option,
    chosen_device,
    fraction,
    named_path,
    positive_int,
    recorded_path,
    set_threads,
    write_csv,
    write_json,
)

# torch and the modules below are imported by each command when it runs, never when the
# parser is built.


def cmd_train_resnet(args: argparse.Namespace) -> int:
    """Train the block-addressable ResNet on CIFAR-10, resumable after every epoch."""
    import torch

    from ..datasets import load_cifar10
    from ..placement.drop_study import spread_subset
    from ..placement.resnet import ResNet
    from ..placement.resnet_training import CHECKPOINT_NAME, ResNetTrainConfig, train_resnet
    from ..throughput import achieved, format_speed, forward_macs

    set_threads(args.threads)
    device = chosen_device(args)
    config = ResNetTrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, base_width=args.base_width,
        stochastic_depth=args.stochastic_depth, seed=args.seed, train_limit=args.limit,
        test_limit=args.test_limit,
    )
    config.validate()
    train = load_cifar10(args.data_root, "train")
    test = load_cifar10(args.data_root, "test")
    resuming = args.resume and (args.out / CHECKPOINT_NAME).exists()
    print(f"{'resuming' if resuming else 'training'} ResNet (base width {config.base_width}, "
          f"stochastic depth {config.stochastic_depth}) for {config.epochs} epochs on "
          f"CIFAR-10, {torch.get_num_threads()} torch thread(s), seed {config.seed}")
    history = train_resnet(args.out, config, train, test, resume=args.resume, chunk=args.chunk,
                           device=device)
    last = history[-1]
    print(f"epoch {last['epoch']}/{config.epochs}: test accuracy {100 * last['test_acc']:.2f}%; "
          f"wrote {args.out / CHECKPOINT_NAME} and history.csv")
    images = len(spread_subset(train.images, train.labels, config.train_limit)[1])
    model = ResNet(base_width=config.base_width, num_classes=len(train.classes))
    speed = achieved(6 * forward_macs(model, train.images.shape[1:]), images, last["seconds"],
                     device=device)
    print(f"last epoch: {format_speed(speed)}")
    return 0


def cmd_drop_study(args: argparse.Namespace) -> int:
    """Tables I and II (blocks DC/SC dropped) and profile.json of a trained ResNet."""
    import torch

    from ..datasets import load_cifar10
    from ..paper.drop_report import drop_study_markdown
    from ..placement.block_profile import save_profile
    from ..placement.drop_study import (
        build_profile,
        run_drop_study,
        spread_subset,
        table_one,
        table_two,
    )
    from ..placement.resnet import ResNet, load_resnet_checkpoint
    from ..placement.resnet_training import CHECKPOINT_NAME

    set_threads(args.threads)
    device = chosen_device(args)
    if (args.checkpoint is None) == (args.untrained_width is None):
        raise ValueError("give a CHECKPOINT written by train-resnet, or --untrained-width W "
                         "for a freshly initialised model (layer numbers only)")
    if args.checkpoint is not None:
        checkpoint = args.checkpoint
        if checkpoint.is_dir():
            checkpoint = checkpoint / CHECKPOINT_NAME
        model, meta, _ = load_resnet_checkpoint(checkpoint)
        name = args.name or checkpoint.parent.name
    else:
        torch.manual_seed(args.seed)
        model, meta = ResNet(base_width=args.untrained_width).eval(), {"seed": args.seed}
        checkpoint, name = None, args.name or f"untrained-w{args.untrained_width}"
    test = load_cifar10(args.data_root, "test")
    images, labels = spread_subset(test.images, test.labels, args.limit)
    print(f"drop study of {name}: {model.n_blocks} blocks, {len(labels)} CIFAR-10 test images")
    study = run_drop_study(model.to(device), images, labels, batch_size=args.batch_size)
    model.cpu()  # the profile's costs are the robots' CPU's
    profile = build_profile(model, study, name, seed=int(meta.get("seed", 0)),
                            input_shape=tuple(images.shape[1:]))
    rows_one, rows_two = table_one(model, study), table_two(model, study, profile)
    out = args.out
    save_profile(out / "profile.json", profile)
    write_csv(out / "table1.csv", rows_one)
    write_csv(out / "table2.csv", rows_two)
    result = {
        "name": name, "checkpoint": None if checkpoint is None else recorded_path(checkpoint),
        "dataset": "cifar10", "split": "test", "samples": study.samples,
        "seed": meta.get("seed"), "model": model.kwargs(),
        "train_config": meta.get("train_config"), "history": meta.get("history", []),
        "torch_threads": meta.get("torch_threads"), "clean_accuracy": study.clean,
        "table1": rows_one, "table2": rows_two,
    }
    write_json(out / "drop_study.json", result)
    (out / "tables.md").write_text(drop_study_markdown({**result, "profile": profile}))
    print(f"clean accuracy {100 * study.clean:.2f}%; mean with one block DC dropped "
          f"{100 * sum(study.dc) / len(study.dc):.2f}%, SC dropped "
          f"{100 * sum(study.sc) / len(study.sc):.2f}%")
    print(f"wrote {out}/profile.json, table1.csv, table2.csv, drop_study.json, tables.md")
    return 0


def cmd_drop_report(args: argparse.Namespace) -> int:
    """Compare drop studies (e.g. plain vs stochastic depth) with the paper, as Markdown."""
    from ..paper.drop_report import plot_dc_accuracy, read_study, report_markdown

    studies = {name: read_study(folder) for name, folder in args.studies}
    figure = args.out.parent / args.figure
    plot_dc_accuracy(studies, figure)
    text = report_markdown(studies, figure.name)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text, end="")
    print(f"wrote {args.out} and {figure}")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register the ResNet subcommands on the main parser's subparsers."""
    p = sub.add_parser("train-resnet", help=cmd_train_resnet.__doc__,
                       description=cmd_train_resnet.__doc__)
    p.add_argument("--epochs", type=positive_int, default=15,
                   help="total epochs of the cosine schedule (default 15)")
    p.add_argument("--stochastic-depth", type=fraction, default=0.0, metavar="P",
                   help="drop probability of the last block's branch, rising linearly from "
                   "the first (Huang et al. 2016 use 0.5; default 0 = off)")
    p.add_argument("--base-width", type=positive_int, default=8,
                   help="channels of the stem and of stage 1's bottleneck (default 8)")
    p.add_argument("--batch-size", type=positive_int, default=128, help="default 128")
    p.add_argument("--lr", type=float, default=0.1,
                   help="peak SGD learning rate (Nesterov momentum 0.9, cosine; default 0.1)")
    p.add_argument("--seed", type=int, default=0, help="seed of weights, order, augmentation")
    p.add_argument("--limit", type=positive_int, default=None,
                   help="train on N evenly spaced training images only (quick runs)")
    p.add_argument("--test-limit", type=positive_int, default=None,
                   help="score each epoch on N evenly spaced test images only")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    add_device_option(p)
    p.add_argument("--data-root", type=Path, default=None, help="folder holding the datasets")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out after its last finished epoch (starts "
                   "fresh when there is none)")
    p.add_argument("--chunk", type=positive_int, default=None, metavar="N",
                   help="train at most N epochs now, then stop (continue with --resume)")
    p.add_argument("--out", type=Path, default=Path("runs/resnet/plain"),
                   help="run folder: checkpoint.safetensors, history.csv "
                   "(default runs/resnet/plain)")
    p.set_defaults(func=cmd_train_resnet)

    p = sub.add_parser("drop-study", help=cmd_drop_study.__doc__,
                       description=cmd_drop_study.__doc__)
    p.add_argument("checkpoint", type=Path, nargs="?", default=None,
                   help="checkpoint.safetensors (or its run folder) written by train-resnet")
    p.add_argument("--untrained-width", type=positive_int, default=None, metavar="W",
                   help="study a freshly initialised model of base width W instead")
    p.add_argument("--out", type=Path, required=True,
                   help="output folder: profile.json, table1/2.csv, drop_study.json, tables.md")
    p.add_argument("--name", default=None,
                   help="model name in profile.json (default: the run folder's name)")
    p.add_argument("--limit", type=positive_int, default=None,
                   help="N evenly spaced test images (default: all 10,000)")
    p.add_argument("--batch-size", type=positive_int, default=EVAL_BATCH,
                   help=f"images per chunk of cached activations (default {EVAL_BATCH}: small "
                   "chunks stay in the CPU's caches)")
    p.add_argument("--seed", type=int, default=0, help="seed of an untrained model")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    add_device_option(p)
    p.add_argument("--data-root", type=Path, default=None, help="folder holding the datasets")
    p.set_defaults(func=cmd_drop_study)

    p = sub.add_parser("drop-report", help=cmd_drop_report.__doc__,
                       description=cmd_drop_report.__doc__)
    p.add_argument("studies", nargs="+", metavar="NAME=FOLDER",
                   type=named_path("plain=docs/results/resnet/recipe-w16"),
                   help="drop-study output folders, e.g. plain=docs/results/resnet/recipe-w16")
    p.add_argument("--out", type=Path, default=Path("docs/results/resnet/tables.md"),
                   help="Markdown report (default docs/results/resnet/tables.md)")
    p.add_argument("--figure", default="dc_drop_accuracy.png",
                   help="figure file name, written next to --out (default dc_drop_accuracy.png)")
    p.set_defaults(func=cmd_drop_report)
