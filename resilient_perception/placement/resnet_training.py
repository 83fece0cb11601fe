"""Resumable CIFAR-10 training of the block-addressable :class:`.resnet.ResNet`.

One loop, no framework. SGD with momentum 0.9 and weight decay, a linear warm-up then
cosine decay over all steps (the schedule of :mod:`..perception.training`), standard CIFAR
augmentation (random 32x32 crop of the zero-padded 40x40 image, random horizontal flip).

Resumable in chunks: after every epoch ``<out>/checkpoint.safetensors`` is rewritten
atomically with the model, the SGD momentum buffers (extra tensors), the epoch and the
history, and ``<out>/history.csv`` is rewritten. The random state of an epoch (batch
order, crops, flips, stochastic-depth coins) is derived from ``(seed, epoch)`` alone, so
the saved epoch number *is* the RNG state: a run stopped after any epoch and resumed is
bit-identical to a straight run with the same thread count.
"""

from __future__ import annotations

import csv
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..compute import CPU
from ..datasets import LabeledImages
from ..perception.training import SGDConfig, lr_factor, momentum_buffers, restore_momentum
from .drop_study import evaluate_accuracy, spread_subset, to_input
from .resnet import ResNet, load_resnet_checkpoint, save_resnet_checkpoint

__all__ = ["CHECKPOINT_NAME", "HISTORY_NAME", "ResNetTrainConfig", "augment", "train_resnet"]

CHECKPOINT_NAME = "checkpoint.safetensors"
HISTORY_NAME = "history.csv"
HISTORY_FIELDS = ("epoch", "train_loss", "train_acc", "test_acc", "lr", "seconds")
PAD = 4


@dataclass
class ResNetTrainConfig(SGDConfig):
    """Hyper-parameters of :func:`train_resnet` (JSON-safe via :meth:`asdict`).

    The SGD settings are :class:`~..perception.training.SGDConfig`'s, with 15 epochs and a
    2% warm-up by default.
    """

    epochs: int = 15
    warmup_frac: float = 0.02
    base_width: int = 8
    stochastic_depth: float = 0.0  # drop probability of the last block (linear decay)
    seed: int = 0
    train_limit: int | None = None  # N evenly spaced training images only (quick runs)
    test_limit: int | None = None

    def validate(self) -> None:
        """Raise ``ValueError`` for settings out of range."""
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be >= 1")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not 0.0 <= self.stochastic_depth < 1.0:
            raise ValueError(f"stochastic depth must be in [0, 1), got {self.stochastic_depth}")


def augment(images: torch.Tensor, rng: np.random.Generator, pad: int = PAD,
            flip: bool = True) -> torch.Tensor:
    """Random crop (zero padding ``pad``) and horizontal flip of a uint8 ``(B, C, H, W)`` batch.

    The random draws are the same for any ``pad``/``flip``, so the defaults keep old runs'
    batches bit-identical.
    """
    b, _, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad))
    top = torch.from_numpy(rng.integers(0, 2 * pad + 1, b))
    left = torch.from_numpy(rng.integers(0, 2 * pad + 1, b))
    rows = (top[:, None] + torch.arange(h))[:, None, :, None]  # (B, 1, H, 1)
    cols = (left[:, None] + torch.arange(w))[:, None, None, :]  # (B, 1, 1, W)
    batch = torch.arange(b)[:, None, None, None]
    channels = torch.arange(images.shape[1])[None, :, None, None]
    cropped = padded[batch, channels, rows, cols]
    flipped = torch.from_numpy(rng.random(b) < 0.5) & flip
    return torch.where(flipped[:, None, None, None], cropped.flip(3), cropped)


def _write_history(path: Path, history: list[dict]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=HISTORY_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(history)


def _resume(path: Path, config: ResNetTrainConfig) -> tuple[ResNet, dict, dict]:
    model, meta, extra = load_resnet_checkpoint(path)
    saved = meta.get("train_config", {})
    differing = sorted(k for k, v in config.asdict().items() if saved.get(k) != v)
    if differing:
        raise ValueError(
            f"{path} was trained with different settings ("
            + ", ".join(f"{k}={saved.get(k)!r}" for k in differing)
            + "); pass the same options to resume, or choose another --out"
        )
    return model, meta, extra


def train_resnet(
    out: Path,
    config: ResNetTrainConfig,
    train_data: LabeledImages,
    test_data: LabeledImages,
    resume: bool = False,
    progress: bool = True,
    chunk: int | None = None,
    device: torch.device = CPU,
) -> list[dict]:
    """Train (or, with ``resume``, continue training) a ResNet; returns the history so far.

    ``device``: where to train (default the CPU; :mod:`..compute`).

    Writes ``<out>/checkpoint.safetensors`` and ``<out>/history.csv`` after every epoch.
    ``chunk`` stops after that many epochs of this call (resume later for the rest). A
    finished run (all ``config.epochs`` done) returns its history without training.
    """
    config.validate()
    out = Path(out)
    path = out / CHECKPOINT_NAME
    if path.exists() and not resume:
        raise ValueError(f"{path} exists; pass --resume to continue it or choose another --out")
    images, labels = spread_subset(train_data.images, train_data.labels, config.train_limit)
    test_images, test_labels = spread_subset(test_data.images, test_data.labels,
                                             config.test_limit)
    n_classes = len(train_data.classes)

    if resume and path.exists():
        model, meta, extra = _resume(path, config)
        history = meta["history"]
    else:
        torch.manual_seed(config.seed)
        model = ResNet(base_width=config.base_width, num_classes=n_classes,
                       in_channels=images.shape[1], stochastic_depth=config.stochastic_depth)
        history, extra = [], {}
    model = model.to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay, nesterov=True)
    restore_momentum(optimizer, extra)
    steps_per_epoch = math.ceil(len(labels) / config.batch_size)
    schedule = lr_factor(config, config.epochs * steps_per_epoch)
    images_t, labels_t = torch.from_numpy(images), torch.from_numpy(labels)

    last_epoch = config.epochs if chunk is None else min(config.epochs, len(history) + chunk)
    for epoch in range(len(history), last_epoch):
        rng = np.random.default_rng([config.seed, epoch])
        torch.manual_seed(int(rng.integers(2**62)))
        order = torch.from_numpy(rng.permutation(len(labels)))
        model.train()
        started = time.perf_counter()
        loss_sum, correct = 0.0, 0
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{config.epochs}",
                   disable=not progress, leave=False, mininterval=5.0)
        for step in bar:
            lr = config.lr * schedule(epoch * steps_per_epoch + step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            index = order[step * config.batch_size:(step + 1) * config.batch_size]
            x = to_input(augment(images_t[index], rng).to(device))
            y = labels_t[index].to(device)
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(y)
            correct += int((logits.argmax(1) == y).sum())
            if step % 20 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.4f}", refresh=False)
        bar.close()
        test_acc = evaluate_accuracy(model, test_images, test_labels)
        history.append({
            "epoch": epoch + 1, "train_loss": loss_sum / len(labels),
            "train_acc": correct / len(labels), "test_acc": test_acc, "lr": lr,
            "seconds": time.perf_counter() - started,
        })
        metadata = {"dataset": "cifar10", "classes": list(train_data.classes),
                    "seed": config.seed, "train_config": config.asdict(), "history": history,
                    "torch_threads": torch.get_num_threads()}
        save_resnet_checkpoint(path, model, metadata, momentum_buffers(optimizer))
        _write_history(out / HISTORY_NAME, history)
        if progress:
            h = history[-1]
            tqdm.write(f"epoch {h['epoch']}/{config.epochs}: loss {h['train_loss']:.3f}, "
                       f"train {100 * h['train_acc']:.2f}%, test {100 * test_acc:.2f}%, "
                       f"{h['seconds']:.0f} s")
    model.eval()
    return history
