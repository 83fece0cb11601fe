"""Training speed as a ratio: achieved FLOP/s beside the machine's matmul peak.

An epoch's seconds say little across machines; its share of what the machine can do says
how far from the limit it runs. :class:`EpochMeter` times an epoch (wall and CPU seconds) and
converts it to achieved FLOP/s with the model's nominal training cost per image: ``6 x``
its forward multiply-accumulates (2 FLOPs per MAC; the backward pass costs about twice the
forward). :func:`matmul_peak` measures, in the same process, with the same torch thread
count and precision, the FLOP/s of a large square matmul: the best case the BLAS/oneDNN
kernels reach on this CPU. The ratio of the two is the utilisation; small convolutions,
batch norm and element-wise work keep it well below 1 on CPUs. On a CUDA GPU
(:mod:`.compute`) the peak is the GPU's matmul and the utilisation is over wall time, the
GPU's time; the CPU seconds are still reported, as the host's share.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence

import torch
from torch import nn

from .compute import CPU, model_device, synchronize
from .perception.modes import PRECISIONS

__all__ = ["AMX_BF16_FLOPS", "EpochMeter", "achieved", "fastest_precision", "format_speed",
           "forward_macs", "has_amx_class_bf16", "matmul_peak"]

AMX_BF16_FLOPS = 1e12
"""One-thread bf16 matmul FLOP/s that AMX cores reach (about 1.4e12 measured) and AVX-512
BF16 ones do not (about 2.2e11)."""


def forward_macs(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-accumulates of one forward pass of one input of ``input_shape`` (no batch).

    Counted from the operators a forward on a zero input in eval mode runs (torch's
    ``FlopCounterMode``: convolutions, grouped or called functionally, matmuls, einsums), so
    it does not depend on which modules the forward calls.
    """
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    device = model_device(model)
    try:
        with FlopCounterMode(display=False) as counter, torch.inference_mode():
            model(torch.zeros(1, *input_shape, device=device))
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2  # 2 FLOPs per multiply-accumulate


@functools.cache
def _peak(threads: int, precision: str, size: int, seconds: float, device: torch.device
          ) -> float:
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a, b = (torch.randn(size, size, dtype=dtype, device=device) for _ in range(2))
    torch.mm(a, b)  # warm-up: kernel selection, page faults
    synchronize(device)
    best, deadline = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        torch.mm(a, b)
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def matmul_peak(precision: str = "fp32", size: int = 1024, seconds: float = 0.5,
                device: torch.device = CPU) -> float:
    """FLOP/s of the fastest of repeated ``size x size`` matmuls in ``seconds`` (cached).

    Uses the current ``torch.get_num_threads()``, the dtype of ``precision`` (``"bf16"``
    or ``"fp32"``) and ``device`` (default the CPU), so it is the peak of the setting a
    training run uses.
    """
    return _peak(torch.get_num_threads(), precision, size, seconds, device)


def has_amx_class_bf16() -> bool:
    """Whether one CPU thread runs bf16 matmuls at AMX speed (:data:`AMX_BF16_FLOPS`).

    The accuracy lanes give a run that must finish within a session (the width-16 ResNet)
    only to such a CPU or a CUDA GPU.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return matmul_peak("bf16") >= AMX_BF16_FLOPS
    finally:
        torch.set_num_threads(threads)


def fastest_precision(precision: str = "auto", device: torch.device = CPU) -> str:
    """``precision`` itself, or for ``auto`` the faster of bf16 and fp32 matmuls here.

    The choice is measured (:func:`matmul_peak` at the current thread count), not guessed from
    CPU flags: CPUs with AMX or AVX512-BF16 run bf16 several times faster than fp32, and
    without them torch emulates bf16 about 90x slower (1.0 against 92 GFLOP/s on one AVX2
    core), which made a bf16 training epoch there about 9x slower than fp32.
    """
    if precision not in ("auto", *PRECISIONS):
        raise ValueError(f"precision must be auto or one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision
    faster = matmul_peak("bf16", device=device) > matmul_peak("fp32", device=device)
    return "bf16" if faster else "fp32"


def achieved(flops_per_image: float, images: int, seconds: float,
             cpu_seconds: float | None = None, precision: str = "fp32",
             device: torch.device = CPU) -> dict:
    """Achieved training FLOP/s of ``images`` in ``seconds`` beside :func:`matmul_peak`.

    ``gflops`` is over wall time, ``cpu_gflops`` over the process's CPU seconds (what a
    shared machine leaves the run does not lower it; wall time if not given);
    ``peak_gflops`` is the matmul peak of ``device`` (default the CPU) at the current thread
    count and ``precision``, and ``utilisation`` is ``cpu_gflops / peak_gflops`` on the CPU,
    ``gflops / peak_gflops`` on a GPU; ``precision`` is the one trained in.
    """
    cpu = seconds if cpu_seconds is None else cpu_seconds
    flops, peak = flops_per_image * images, matmul_peak(precision, device=device)
    busy = cpu if device.type == "cpu" else seconds
    return {"precision": precision, "seconds": seconds, "cpu_seconds": cpu,
            "images_per_s": images / seconds if seconds > 0 else float("nan"),
            "gflops": flops / seconds / 1e9 if seconds > 0 else float("nan"),
            "cpu_gflops": flops / cpu / 1e9 if cpu > 0 else float("nan"),
            "peak_gflops": peak / 1e9,
            "utilisation": flops / busy / peak if busy > 0 else float("nan")}


def format_speed(speed: dict) -> str:
    """One line: achieved GFLOP/s, the matmul peak and the ratio (per CPU second)."""
    return (f"{speed['gflops']:.2f} GFLOP/s achieved ({speed['cpu_gflops']:.2f} per CPU "
            f"second), matmul peak {speed['peak_gflops']:.1f} GFLOP/s measured in this run: "
            f"{100 * speed['utilisation']:.1f}% of peak")


class EpochMeter:
    """Times an epoch and reports achieved training FLOP/s and its ratio to the matmul peak."""

    def __init__(self, model: nn.Module, input_shape: Sequence[int], precision: str = "fp32"):
        """Count ``model``'s forward MACs per input of ``input_shape`` once, up front.

        The epoch runs where ``model``'s parameters are (:mod:`.compute`).
        """
        self.flops_per_image = 6 * forward_macs(model, input_shape)
        self.precision = precision
        self.device = model_device(model)
        self._wall = self._cpu = 0.0

    def start(self) -> None:
        """Mark the start of an epoch."""
        self._wall, self._cpu = time.perf_counter(), time.process_time()

    def stop(self, images: int) -> dict:
        """:func:`achieved` for the epoch since :meth:`start` over ``images`` images."""
        synchronize(self.device)
        return achieved(self.flops_per_image, images, time.perf_counter() - self._wall,
                        time.process_time() - self._cpu, self.precision, self.device)
