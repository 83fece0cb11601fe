"""What every command family shares: argparse types and the writers of raw results.

An argparse type raises ``argparse.ArgumentTypeError`` (argparse turns it into a usage error
naming the option); a writer creates the parent folder first, so ``--out`` may name a folder
that does not exist yet.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..datasets import DatasetError, check_dataset_name

if TYPE_CHECKING:  # the parser imports no torch; a command that trains imports it itself
    import torch

__all__ = ["EXTRAS", "add_device_option", "chosen_device", "dataset_name", "extra_of", "fraction",
           "grid", "missing_extra_message", "named_path", "onnx_models", "pair", "positive_float",
           "positive_int", "require_onnx", "schedule", "set_threads", "size", "write_csv",
           "write_json"]

EXTRAS = {"onnx": ("onnx", "onnxruntime"), "bags": ("rosbags",)}
"""setup.py's extras: the modules each brings, which `pip install .` leaves out."""


def write_json(path: Path, payload: object) -> None:
    """Write ``payload`` as indented JSON (plus a newline) to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")


def recorded_path(path: Path) -> str:
    """``path`` relative to the working folder, as results files record it.

    Results kept in the repository then name no machine's absolute path.
    """
    return os.path.relpath(path)


def write_csv(path: Path, rows: list[dict]) -> None:
    """Write ``rows`` (the first row's keys are the header) as CSV; tuples space-separated."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: " ".join(map(str, v)) if isinstance(v, tuple) else v
                             for k, v in row.items()})


def pair(what: str, example: str) -> Callable[[str], tuple[int, int]]:
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


grid = pair("ROWSxCOLS", "3x2")
size = pair("HxW", "28x28")


def named_path(example: str) -> Callable[[str], tuple[str, Path]]:
    """An argparse type for ``NAME=PATH`` (a labelled input of a report), e.g. ``example``."""

    def parse(text: str) -> tuple[str, Path]:
        name, _, path = text.partition("=")
        if not name or not path:
            raise argparse.ArgumentTypeError(f"expected NAME=PATH such as {example}, got {text!r}")
        return name, Path(path)

    return parse


def dataset_name(text: str) -> str:
    """A dataset's name or ``idx:IMAGES:LABELS``, checked before any data or torch loads."""
    try:
        return check_dataset_name(text)
    except DatasetError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def checkpoint_file(text: str) -> Path:
    """An argparse type: a checkpoint that exists, checked before torch or ROS loads."""
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text}: no such checkpoint (train one with "
                                         "`resilient-perception train`)")
    return path


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """An argparse type: an integer >= 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def port(text: str) -> int:
    """An argparse type: a TCP port, 0..65535 (0: a free one)."""
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port 0..65535, got {value}")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a number > 0."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    """An argparse type: a number >= 0."""
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def fraction(text: str) -> float:
    """An argparse type: a number in [0, 1) (an overlap, a drop probability)."""
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value}")
    return value


def schedule(actions: tuple[str, ...] | None = None) -> Callable[[str], tuple]:
    """An argparse type for a failure schedule ``SECONDS:ACTION:NODE,...`` (the demo's).

    ``actions`` defaults to the demo's (kill, restart). The parser (in ``bench``, which
    imports rclpy) is imported only when the option is given.
    """

    def parse(text: str) -> tuple:
        from ..bench.live_demo import ACTIONS, parse_schedule

        try:
            return parse_schedule(text, actions or ACTIONS)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def add_device_option(p: argparse.ArgumentParser) -> None:
    """``--device``: where a training command computes (:mod:`..compute`)."""
    p.add_argument("--device", default="auto", metavar="DEVICE",
                   help="where to compute: auto (default: a CUDA GPU when torch sees one, else "
                   "the CPU), cpu, cuda or cuda:N")


def chosen_device(args: argparse.Namespace) -> torch.device:
    """The device ``--device`` names, announced; ``ValueError`` (exit 2) if it is missing."""
    from ..compute import compute_device, describe

    device = compute_device(args.device)
    print(f"device: {describe(device)}")
    return device


def set_threads(threads: int | None) -> None:
    """Set torch's CPU threads when ``--threads`` was given (torch imported only then)."""
    if threads:
        import torch

        torch.set_num_threads(threads)


def extra_of(module: str) -> str | None:
    """The extra that brings ``module`` (or one of its submodules); None for any other."""
    top = module.partition(".")[0]
    return next((extra for extra, modules in EXTRAS.items() if top in modules), None)


def missing_extra_message(command: str, missing: Sequence[str]) -> str:
    """The error of a command whose extra's ``missing`` modules are not installed."""
    extras = ",".join(sorted({extra_of(name) or "?" for name in missing}))
    return (f"{command} needs {' and '.join(missing)}, which `pip install .` leaves out; "
            f"install them with: pip install '.[{extras}]' (in the source folder)")


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a broken install, or an import blocked in sys.modules
        return False


def require_onnx(command: str) -> None:
    """Raise ``ValueError`` (exit status 2) before ``command`` starts if onnx is missing."""
    missing = [name for name in EXTRAS["onnx"] if not _importable(name)]
    if missing:
        raise ValueError(missing_extra_message(command, missing))


def onnx_models(checkpoint: Path, onnx_dir: Path) -> str:
    """Export ``checkpoint`` to ``onnx_dir`` unless up to date; the cameras' model pattern."""
    require_onnx("exporting the camera models")
    from ..perception.export import export_checkpoint

    first = onnx_dir / "device_0.onnx"
    if not first.exists() or first.stat().st_mtime < checkpoint.stat().st_mtime:
        export_checkpoint(checkpoint, onnx_dir)
    else:
        _check_onnx(sorted(onnx_dir.glob("device_*.onnx")))
    return str(onnx_dir.resolve() / "device_{}.onnx")


def _check_onnx(paths: list[Path]) -> None:
    """Raise ``ValueError`` naming the first of ``paths`` that is not a valid ONNX model.

    Reused exports are read by node processes and benchmarks far from the command line: a
    damaged one must be reported here, with its name, not as a camera that fails to start.
    """
    import onnx

    for path in paths:
        try:
            onnx.checker.check_model(onnx.load(str(path)))
        except Exception as exc:  # protobuf and the checker raise several types
            raise ValueError(f"{path}: not a valid ONNX model ({type(exc).__name__}: "
                             f"{str(exc)[:200]}); delete it to export it again") from None
