"""What every command family shares: argparse types and the writers of raw results.

An argparse type raises ``argparse.ArgumentTypeError`` (argparse turns it into a usage error
naming the option); a writer creates the parent folder first, so ``--out`` may name a folder
that does not exist yet.
"""

from __future__ import annotations

import argparse
import csv
import json
from collections.abc import Callable
from pathlib import Path

__all__ = ["fraction", "grid", "onnx_models", "pair", "positive_float", "positive_int",
           "schedule", "set_threads", "size", "write_csv", "write_json"]


def write_json(path: Path, payload: object) -> None:
    """Write ``payload`` as indented JSON (plus a newline) to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")


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


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a number > 0."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
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


def set_threads(threads: int | None) -> None:
    """Set torch's CPU threads when ``--threads`` was given (torch imported only then)."""
    if threads:
        import torch

        torch.set_num_threads(threads)


def onnx_models(checkpoint: Path, onnx_dir: Path) -> str:
    """Export ``checkpoint`` to ``onnx_dir`` unless up to date; the cameras' model pattern."""
    from ..perception.export import export_checkpoint

    first = onnx_dir / "device_0.onnx"
    if not first.exists() or first.stat().st_mtime < checkpoint.stat().st_mtime:
        export_checkpoint(checkpoint, onnx_dir)
    return str(onnx_dir.resolve() / "device_{}.onnx")
