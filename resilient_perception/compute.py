"""Where training and scoring run: the CPU or a CUDA GPU, chosen by one option.

Every training command takes ``--device`` (default ``auto``: a CUDA GPU when torch sees one,
else the CPU). The model moves to that device; datasets stay uint8 arrays in host memory and
each batch moves as uint8 (a quarter of a float batch's bytes) and is converted there. Files
(checkpoints, resume states) always hold host tensors (:func:`.checkpoints.write_safetensors`),
so a run trained on a GPU resumes, evaluates and exports on a CPU, and the other way round.
"""

from __future__ import annotations

import contextlib

import torch

__all__ = ["CPU", "autocast", "compute_device", "describe", "model_device", "synchronize"]

CPU = torch.device("cpu")  # where a function computes unless told otherwise


def compute_device(name: str = "auto") -> torch.device:
    """The ``torch.device`` for ``name`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``).

    Raises ``ValueError`` with what to do instead for a device this machine does not have.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {name}: torch sees no CUDA GPU here (torch {torch.__version__}, CUDA "
                f"build {torch.version.cuda or 'none'}); use --device cpu, or install a CUDA "
                "build of torch (https://pytorch.org/get-started/locally/)")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(f"device {name}: this machine has {count} CUDA device(s), "
                             f"cuda:0..cuda:{count - 1}")
    return device


def model_device(model: torch.nn.Module) -> torch.device:
    """Where ``model``'s parameters are: where its forward runs and its inputs must go."""
    return next(model.parameters()).device


def describe(device: torch.device) -> str:
    """The device's name for a log line: ``cpu``, or ``cuda:0 (<GPU name>)``."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return "cpu"


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bfloat16 autocast of a forward pass on ``device`` when ``precision`` is ``bf16``.

    In fp32 nothing is entered, so the loops also run on devices autocast does not know
    (the tests' meta device).
    """
    if precision != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a GPU runs asynchronously), so a clock can stop."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
