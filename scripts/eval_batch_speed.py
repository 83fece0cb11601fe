#!/usr/bin/env python3
"""How fast offline scoring is at each batch size, on this machine, for both model kinds.

Scores 2,048 random CIFAR-sized inputs (speed does not depend on the pixels) with freshly
initialised models, one torch thread: the six device CNNs on their 3x2 grid views with 50%
overlap (``device_outputs``, what every evaluation and each epoch of a long device run
calls) and the width-16 block-addressable ResNet with flip test-time augmentation
(``evaluate_tta``, each epoch of ``train-resnet-recipe``). Each size is timed REPEATS times
after a warm-up; the fastest is kept. ``perception.modes.EVAL_BATCH`` is the default these
measurements chose.

Usage: scripts/eval_batch_speed.py [--sizes 1024,500,128,32] [--repeats 2] [--out CSV]
Run it on an otherwise idle machine (pause the accuracy lanes).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from resilient_perception.paper.device_cost import machine_info, write_speed_csv
from resilient_perception.perception.evaluation import device_outputs
from resilient_perception.perception.model import MultiDeviceCNN
from resilient_perception.perception.views import ViewSpec
from resilient_perception.placement.resnet import ResNet
from resilient_perception.placement.resnet_recipe import evaluate_tta

IMAGES = 2048
SEED = 0


def fastest(score, repeats: int) -> float:
    """Seconds of the fastest of ``repeats`` calls of ``score()`` after one warm-up call."""
    score()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        score()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1024,500,128,32",
                        help="comma-separated batch sizes")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default=None, help="CSV of the measurements")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    torch.set_num_threads(1)
    info = machine_info()
    torch.manual_seed(SEED)
    rng = np.random.default_rng(SEED)

    box = ViewSpec(kind="grid", rows=3, cols=2, overlap=0.5).boxes(32, 32)[0]
    views = torch.from_numpy(rng.integers(0, 256, (IMAGES, 6, 3, box.height, box.width),
                                          dtype=np.uint8))
    devices = MultiDeviceCNN(6, 3, 10)
    images = rng.integers(0, 256, (IMAGES, 3, 32, 32), dtype=np.uint8)
    labels = np.zeros(IMAGES, dtype=np.int64)
    resnet = ResNet(base_width=16, num_classes=10, in_channels=3)
    resnet = resnet.to(memory_format=torch.channels_last).eval()

    rows = []
    for model, score in (
            ("six devices", lambda b: device_outputs(devices, views, b)),
            ("ResNet width 16, flip TTA", lambda b: evaluate_tta(resnet, images, labels, b))):
        for size in sizes:
            seconds = fastest(lambda: score(size), args.repeats)  # noqa: B023
            rows.append({"model": model, "batch": size, "images": IMAGES,
                         "seconds": round(seconds, 3),
                         "images_per_s": round(IMAGES / seconds, 1)})
            print(f"{model}: batch {size}: {seconds:.2f} s for {IMAGES} images", flush=True)
    for model in {r["model"] for r in rows}:
        mine = [r for r in rows if r["model"] == model]
        best, largest = min(mine, key=lambda r: r["seconds"]), max(mine, key=lambda r: r["batch"])
        print(f"{model}: fastest batch {best['batch']}, "
              f"{largest['seconds'] / best['seconds']:.1f}x the speed of batch {largest['batch']}")
    if args.out:
        write_speed_csv(args.out, f"scripts/eval_batch_speed.py, seed {SEED}, one thread",
                        rows, info)


if __name__ == "__main__":
    main()
