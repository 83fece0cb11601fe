"""The `resilient-perception` command: train, evaluate, benchmark and demo.

Every subcommand writes its raw results (JSON/CSV) next to what it prints, so any number in
the docs can be regenerated. Errors in options or inputs exit with status 2 and a message
that says what to fix. The subcommands live in :mod:`.commands`, one module per family;
this module is the entry point and the list of families. Building the parser imports no
heavy module (torch, onnx, onnxruntime, scipy, ortools, pymoo, rclpy): each command imports
what it needs when it runs, so ``--help`` and ``--version`` answer at interpreter speed.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
import time
from collections.abc import Iterator

from . import __version__
from .commands import (
    accuracy,
    bags,
    cost,
    distributed,
    fuzz,
    live,
    perception,
    placement,
    reproduction,
    resnet,
    soak,
)
from .commands.common import extra_of, missing_extra_message

EXIT_USAGE = 2

FAMILIES = (perception, live, fuzz, soak, resnet, bags, placement, distributed, reproduction,
            cost, accuracy)
"""Command families, in the order ``--help`` lists their subcommands."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand (also used to document the CLI)."""
    parser = argparse.ArgumentParser(
        prog="resilient-perception",
        description="Fault-tolerant multi-camera perception: train device CNNs with "
        "fail-simulation, evaluate them under every failure set with the Modifier.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for family in FAMILIES:
        family.add_parsers(sub)
    return parser


def _raise_exit(signum: int, frame: object) -> None:
    print("terminated", file=sys.stderr)
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """SIGTERM (``kill``, ``timeout``, a CI job cancelled) ends the command like Ctrl-C does.

    By default SIGTERM ends the interpreter on the spot, so the node processes a command
    started (demo, soak, benchmarks) outlived it; raised as ``SystemExit`` it unwinds the
    command's ``finally`` blocks, which stop them. Only the main thread can set a handler.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the process exit status."""
    args = build_parser().parse_args(argv)
    started = time.monotonic()
    try:
        with _sigterm_unwinds():
            status = args.func(args)
    except ValueError as exc:  # DatasetError, CheckpointError, BagError, ... are ValueErrors
        print(f"resilient-perception {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ModuleNotFoundError as exc:
        # A module of an extra that `pip install .` left out (ONNX, bags): how to get it,
        # not a traceback.
        if exc.name is None or extra_of(exc.name) is None:
            raise
        print(f"resilient-perception {args.command}: error: "
              f"{missing_extra_message(args.command, [exc.name])}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    print(f"done in {time.monotonic() - started:.1f} s")
    return status


if __name__ == "__main__":
    sys.exit(main())
