#!/usr/bin/env python3
"""How fast one training step of the six device CNNs is, per device or as grouped convolutions.

``MultiDeviceCNN`` keeps the six devices' parameters in one grouped layout. Its forward can
run them as one grouped convolution per layer over all devices (how it did), or each
device's slices on that device's own input, one device after another (how it does). Both
give the same outputs, gradients and BN statistics. This times an SGD step (forward,
cross-entropy, backward, update) on a batch of 128 CIFAR-sized 3x2 views with 50% overlap,
as a long device run trains, with one torch thread; each layout is timed REPEATS times
after warm-up steps and the fastest is kept.

Usage: scripts/device_layout_speed.py [--steps 10] [--repeats 3] [--out CSV]
Run it on an otherwise idle machine (pause the accuracy lanes).
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
import torch.nn.functional as F

from resilient_perception.paper.device_cost import machine_info, write_speed_csv
from resilient_perception.perception.model import MultiDeviceCNN
from resilient_perception.perception.views import ViewSpec

BATCH = 128
SEED = 0


def grouped_forward(model: MultiDeviceCNN, views: torch.Tensor) -> torch.Tensor:
    """The logits by one grouped convolution per layer over all devices (NHWC)."""
    b, n, c, h, w = views.shape
    x = views.reshape(b, n * c, h, w).contiguous(memory_format=torch.channels_last)
    for block in model.trunk.blocks:
        y = F.relu(block.bn1(block.conv1(x)))
        y = block.bn2(block.conv2(y))
        shortcut = x
        if block.c_in != block.c_out:  # zero channels per device
            shortcut = F.pad(x.reshape(b, n, block.c_in, *x.shape[2:]),
                             (0, 0, 0, 0, 0, block.c_out - block.c_in))
            shortcut = shortcut.reshape(b, n * block.c_out, *x.shape[2:])
        x = F.relu(y + shortcut)
    features = x.mean(dim=(2, 3)).reshape(b, n, model.feature_dim)
    return torch.einsum("bnd,nkd->bnk", features, model.head_weight) + model.head_bias


def seconds_per_step(model: MultiDeviceCNN, forward, views: torch.Tensor,
                     labels: torch.Tensor, steps: int, repeats: int) -> float:
    """The fastest of ``repeats`` timings of ``steps`` SGD steps, after 3 warm-up steps."""
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step() -> None:
        logits = forward(model, views)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                               labels.repeat_interleave(views.shape[1]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for _ in range(3):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        times.append((time.perf_counter() - start) / steps)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None, help="CSV of the measurements")
    args = parser.parse_args()
    torch.set_num_threads(1)
    info = machine_info()
    torch.manual_seed(SEED)
    box = ViewSpec(kind="grid", rows=3, cols=2, overlap=0.5).boxes(32, 32)[0]
    views = torch.rand(BATCH, 6, 3, box.height, box.width)
    labels = torch.randint(0, 10, (BATCH,))
    grouped = MultiDeviceCNN(6, 3, 10)
    per_device = copy.deepcopy(grouped)

    rows = []
    for layout, model, forward in (
            ("grouped convolutions", grouped, grouped_forward),
            ("per device", per_device, lambda m, v: m(v)[0])):
        seconds = seconds_per_step(model, forward, views, labels, args.steps, args.repeats)
        rows.append({"layout": layout, "batch": BATCH, "seconds_per_step": round(seconds, 4)})
        print(f"{layout}: {seconds:.3f} s per step of {BATCH}", flush=True)
    print(f"per device: {rows[0]['seconds_per_step'] / rows[1]['seconds_per_step']:.2f}x the "
          "speed of grouped convolutions")
    if args.out:
        write_speed_csv(args.out, f"scripts/device_layout_speed.py, seed {SEED}, one thread",
                        rows, info)


if __name__ == "__main__":
    main()
