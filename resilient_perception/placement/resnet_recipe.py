"""A fast CPU recipe for the block-addressable ResNet, resumable per epoch.

The model is :class:`.resnet.ResNet` unchanged (ResNet-50's 3-4-6-3 bottleneck blocks, each
droppable), wider than the old default. What makes short training reach high accuracy,
after the fast-CIFAR literature (airbench, Keller Jordan; read, not copied):

* **Label smoothing** (0.2): soft targets keep the logits small, which a short run with a
  high learning rate needs, and calibrate the outputs the drop study averages.
* **Flip + translate** augmentation of the whole image (:func:`.resnet_training.augment`).
* **One-cycle learning rate**: linear warm-up to the peak over ``warmup_frac`` of the
  steps, then linear decay to zero; SGD with Nesterov momentum 0.9, batch 256.
* **Weight EMA**: an exponential moving average of the weights (and a copy of the BN
  statistics) is what is evaluated and saved: it smooths the last, noisy steps.
* **Flip test-time augmentation**: reported beside the plain accuracy (the drop study and
  the planner use the plain, single-pass model, the one that is deployed).
* **BN-friendly init**: zero-initialised last BN of every residual branch (in the model),
  so each block starts as its shortcut.
* **CPU speed**: channels-last tensors, bfloat16 autocast (AMX/AVX512-BF16 kernels), and
  ``torch.compile`` (fuses BN, ReLU and the residual adds, ~1.7x per step on one core;
  not with stochastic depth, whose per-batch coins break the graph). The same recipe runs
  on a CUDA GPU (``device``, :mod:`..compute`).

Stochastic depth (``stochastic_depth=P``, the last block's drop probability, linear decay)
is the drop-robust variant, trained with the same recipe.

Resumable: after each epoch :func:`.run_state.save_epoch` stores model, EMA, optimiser
(momentum), torch and numpy RNG states, the epoch and the metrics log atomically; a run
killed anywhere continues from its last finished epoch. When the last epoch is done,
``checkpoint.safetensors`` (the EMA model, for ``drop-study``) marks the run finished.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..compute import CPU, autocast, model_device
from ..datasets import LabeledImages
from ..perception.modes import EVAL_BATCH
from ..run_state import check_same_run, code_commit, load_state, save_epoch
from ..throughput import EpochMeter
from .drop_study import scoring_batches, spread_subset, to_input
from .resnet import ResNet, save_resnet_checkpoint
from .resnet_training import CHECKPOINT_NAME, augment

__all__ = ["ResNetRecipe", "evaluate_tta", "train_resnet_recipe"]



@dataclass
class ResNetRecipe:
    """Settings of one run (JSON-safe via :meth:`asdict`); a resumed run must match them."""

    base_width: int = 16
    stochastic_depth: float = 0.0
    epochs: int = 24
    batch_size: int = 256
    lr: float = 0.2  # peak
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_frac: float = 0.15
    label_smoothing: float = 0.2
    ema_decay: float = 0.995  # per step; ~200 steps (one epoch) of memory
    pad: int = 4
    precision: str = "bf16"
    compile: bool = True
    seed: int = 0
    train_limit: int | None = None  # N evenly spaced training images (pilots, tests)
    test_limit: int | None = None

    def asdict(self) -> dict:
        """Plain-dict copy (JSON-serialisable)."""
        return dataclasses.asdict(self)

    def validate(self) -> None:
        """Raise ``ValueError`` for settings out of range."""
        if self.epochs < 1 or self.batch_size < 1 or self.base_width < 1 or not self.lr > 0:
            raise ValueError("epochs, batch_size, base_width and lr must be positive")
        if not 0.0 <= self.ema_decay < 1.0 or not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError("ema_decay and label_smoothing must be in [0, 1)")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16, got {self.precision!r}")

    def lr_at(self, step: int, total: int) -> float:
        """One-cycle: linear warm-up to ``lr`` then linear decay to 0 at step ``total``."""
        warm = max(1, round(self.warmup_frac * total))
        if step < warm:
            return self.lr * (step + 1) / warm
        return self.lr * max(0.0, (total - step) / max(1, total - warm))


def evaluate_tta(model: ResNet, images: np.ndarray, labels: np.ndarray,
                 batch_size: int = EVAL_BATCH) -> tuple[float, float]:
    """``(plain accuracy, flip-TTA accuracy)``: TTA averages the logits of x and flip(x).

    The model runs where its parameters are.
    """
    model.eval()
    plain = tta = 0
    with torch.inference_mode():
        for x, y in scoring_batches(images, labels, batch_size, model_device(model)):
            logits = model(x)
            plain += int((logits.argmax(1) == y).sum())
            tta += int(((logits + model(x.flip(3))).argmax(1) == y).sum())
    return plain / len(labels), tta / len(labels)


@torch.no_grad()
def _update_ema(ema: ResNet, model: ResNet, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters(), strict=True):
        e.lerp_(p, 1.0 - decay)
    for e, b in zip(ema.buffers(), model.buffers(), strict=True):
        e.copy_(b)


def train_resnet_recipe(out: Path, recipe: ResNetRecipe, train_data: LabeledImages,
                        test_data: LabeledImages, progress: bool = True,
                        max_epochs: int | None = None,
                        device: torch.device = CPU) -> list[dict]:
    """Train (or continue) one run in ``out``; return the metrics log so far.

    ``max_epochs`` stops after that many epochs of this call (pilots, tests). A finished
    run (``checkpoint.safetensors`` present) returns its log at once. ``device``: where to
    train (default the CPU).
    """
    recipe.validate()
    out = Path(out)
    images, labels = spread_subset(train_data.images, train_data.labels, recipe.train_limit)
    test_images, test_labels = spread_subset(test_data.images, test_data.labels,
                                             recipe.test_limit)
    torch.manual_seed(recipe.seed)
    model = ResNet(base_width=recipe.base_width, num_classes=len(train_data.classes),
                   in_channels=images.shape[1], stochastic_depth=recipe.stochastic_depth)
    model = model.to(device, memory_format=torch.channels_last)
    ema = copy.deepcopy(model)
    # No weight decay on BN parameters and biases: it only fights the normalisation.
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    optimizer = torch.optim.SGD(
        [{"params": decay, "weight_decay": recipe.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=recipe.lr, momentum=recipe.momentum, nesterov=True)
    settings = {"recipe": recipe.asdict(), "dataset": "cifar10"}
    meta = load_state(out, {"model": model, "ema": ema}, optimizer)
    log: list[dict] = meta["log"] if meta else []
    if meta is not None:
        check_same_run(out, meta["settings"], settings)
    if (out / CHECKPOINT_NAME).exists() and len(log) == recipe.epochs:
        return log
    rng = np.random.default_rng(recipe.seed)
    if meta is not None:
        rng.bit_generator.state = meta["numpy_rng"]
    # Stochastic depth tosses a Python coin per block and batch, which breaks a compiled
    # graph into pieces that run slower than eager code: it trains eagerly.
    step_fn = (torch.compile(model) if recipe.compile and not recipe.stochastic_depth
               else model)
    steps_per_epoch = math.ceil(len(labels) / recipe.batch_size)
    total = recipe.epochs * steps_per_epoch
    images_t, labels_t = torch.from_numpy(images), torch.from_numpy(labels)
    meter = EpochMeter(model, images.shape[1:], recipe.precision)
    last = recipe.epochs if max_epochs is None else min(recipe.epochs, len(log) + max_epochs)
    for epoch in range(len(log), last):
        model.train()
        order = torch.from_numpy(rng.permutation(len(labels)))
        loss_sum, correct = 0.0, 0
        meter.start()
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{recipe.epochs}",
                   disable=not progress, leave=False, mininterval=30.0)
        for step in bar:
            lr = recipe.lr_at(epoch * steps_per_epoch + step, total)
            for group in optimizer.param_groups:
                group["lr"] = lr
            index = order[step * recipe.batch_size:(step + 1) * recipe.batch_size]
            x = to_input(augment(images_t[index], rng, pad=recipe.pad).to(device))
            y = labels_t[index].to(device)
            with autocast(device, recipe.precision):
                logits = step_fn(x).float()
            loss = F.cross_entropy(logits, y, label_smoothing=recipe.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            # Warm the average up from the start: (1 + t) / (10 + t) caps the early decay.
            t = epoch * steps_per_epoch + step
            _update_ema(ema, model, min(recipe.ema_decay, (1 + t) / (10 + t)))
            loss_sum += loss.item() * len(y)
            correct += int((logits.argmax(1) == y).sum())
        bar.close()
        timing = meter.stop(len(labels))
        plain, tta = evaluate_tta(ema, test_images, test_labels)
        log.append({"epoch": epoch + 1, "lr": lr, "train_loss": loss_sum / len(labels),
                    "train_acc": correct / len(labels), "test_acc": plain,
                    "test_acc_tta": tta, **timing})
        save_epoch(out, {"model": model, "ema": ema}, optimizer, settings, log, rng)
        if progress:
            e = log[-1]
            tqdm.write(f"epoch {e['epoch']}/{recipe.epochs}: loss {e['train_loss']:.3f}, "
                       f"test {100 * plain:.2f}% (flip TTA {100 * tta:.2f}%), "
                       f"{e['seconds']:.0f} s, {e['gflops']:.1f} GFLOP/s of "
                       f"{e['peak_gflops']:.0f} peak")
    if len(log) == recipe.epochs:
        save_resnet_checkpoint(out / CHECKPOINT_NAME, ema.eval(), {
            "dataset": "cifar10", "classes": list(train_data.classes), "seed": recipe.seed,
            "train_config": recipe.asdict(), "history": log, "commit": code_commit(),
            "torch_threads": torch.get_num_threads()})
    return log
