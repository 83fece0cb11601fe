"""CIFAR-10 device CNNs at the Modifier paper's budget, resumable per epoch.

The reproduction protocol (`reproduce`) trains the six device CNNs for 4 epochs on fixed,
non-overlapping patches; the paper trains 40 epochs with SGD (initial learning rate 0.01,
momentum 0.9) and cuts the image into sections "with some overlap". This module trains one
such run:

* **Augmentation before cutting.** Each batch of whole 32x32 images gets one random
  translation (zero padding ``pad``, random crop) and horizontal flip per image, and only
  then is cut into the 3x2 grid of views (:func:`.views.grid_boxes`, with ``overlap``). All
  six devices therefore see the same transformed scene, as six cameras watching one object
  would; augmenting each view independently would break the views' spatial agreement that
  fusion and the Modifier rely on.
* **Loss** is :func:`.training.joint_loss` with the method's options (``paper``: the
  paper's Algorithm 2; ``ours``: plus the fused-output loss), one simulated failure per step.
* **Validation split**: ``val_size`` training images (a fixed draw,
  :func:`.validation.holdout_split`) are held out of training, for the gated Modifier
  (:mod:`.gated_modifier`), which must be fitted on data the devices never saw.
* **Schedule**: SGD, momentum 0.9, the paper's learning rate 0.01 as the initial (peak) rate
  after a short warm-up, then cosine decay to 0 over the 40 epochs (``schedule="constant"``
  keeps 0.01 throughout).
* **Resumable**: after every epoch :func:`.run_state.save_epoch` writes model, optimiser,
  numpy and torch RNG states, the epoch and the metrics log atomically; a killed run
  continues from its last finished epoch. Each epoch also scores the test split (average
  fusion with no failure, and the mean single failure with and without the Modifier) so
  ``metrics.json`` is a learning curve. At the end ``model.safetensors`` (a normal device
  checkpoint: ``evaluate``, ``export`` work on it) and ``evaluation.json`` (every failure
  subset, avg and max fusion, with and without the Modifier) are written; the latter marks
  the run finished.
* **Device**: the run trains on the CPU or a CUDA GPU (``device``, :mod:`..compute`); its
  files hold host tensors, so a run may continue on another kind of machine.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..compute import CPU, autocast
from ..datasets import LabeledImages
from ..perception.checkpoint import save_checkpoint
from ..perception.evaluation import device_outputs, evaluate_failures, summarise
from ..perception.model import MultiDeviceCNN, views_to_float
from ..perception.modes import PRECISIONS
from ..perception.training import SCHEDULES, TrainConfig, joint_loss, lr_factor
from ..perception.validation import VALIDATION_SEED, holdout_split
from ..perception.views import ViewSpec, crop_views
from ..placement.drop_study import spread_subset
from ..placement.resnet_training import augment
from ..run_state import check_same_run, code_commit, load_state, save_epoch, write_json_atomic
from ..throughput import EpochMeter

__all__ = ["DEVICE_METHODS", "DeviceRecipe", "train_device_run"]

# The two fail-simulation methods of the paper reproduction (reproduction.METHODS), and
# ours with its fused-output loss scored in the geometric mean that the devices are then
# pooled by (modes.FUSION_MODES).
DEVICE_METHODS = {"paper": {"fail_simulation": True, "fused_weight": 0.0},
                  "ours": {"fail_simulation": True, "fused_weight": 1.0},
                  "ours-geo": {"fail_simulation": True, "fused_weight": 1.0,
                               "fused_mode": "geo"}}
MODEL_NAME = "model.safetensors"
EVALUATION_NAME = "evaluation.json"


@dataclass
class DeviceRecipe:
    """Settings of one run (JSON-safe via :meth:`asdict`); a resumed run must match them."""

    method: str = "ours"
    epochs: int = 40
    batch_size: int = 128
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    warmup_frac: float = 0.02
    overlap: float = 0.5  # grid views enlarged by this fraction of a cell
    # Training images held out (validation.holdout_split) for the Modifier's gate; the
    # paper, too, tuned on "a validation set".
    val_size: int = 5000
    pad: int = 4  # translation range of the augmentation in pixels; 0 with flip=False: none
    flip: bool = True
    precision: str = "bf16"
    seed: int = 0
    train_limit: int | None = None  # N evenly spaced training images (tests)
    test_limit: int | None = None

    def asdict(self) -> dict:
        """Plain-dict copy (JSON-serialisable)."""
        return dataclasses.asdict(self)

    def validate(self) -> None:
        """Raise ``ValueError`` for settings out of range."""
        if self.method not in DEVICE_METHODS:
            raise ValueError(f"method must be one of {list(DEVICE_METHODS)}, got {self.method!r}")
        if self.schedule not in SCHEDULES or self.precision not in PRECISIONS:
            raise ValueError(f"schedule must be in {SCHEDULES}, precision in {PRECISIONS}")
        if self.epochs < 1 or self.batch_size < 1 or self.pad < 0 or not self.lr > 0:
            raise ValueError("epochs, batch_size and lr must be positive, pad >= 0")
        ViewSpec(overlap=self.overlap)  # validates the overlap

    def loss_config(self) -> TrainConfig:
        """The :class:`TrainConfig` whose loss options and schedule this run uses."""
        return TrainConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                           momentum=self.momentum, weight_decay=self.weight_decay,
                           schedule=self.schedule, warmup_frac=self.warmup_frac,
                           seed=self.seed, precision=self.precision,
                           **DEVICE_METHODS[self.method])


def _cut(images: torch.Tensor, spec: ViewSpec) -> torch.Tensor:
    """uint8 ``(B, C, H, W)`` -> uint8 views ``(B, N, C, h, w)`` on the spec's grid."""
    return torch.from_numpy(crop_views(images.numpy(), spec.boxes(*images.shape[2:])))


def _score(model: MultiDeviceCNN, views: np.ndarray, labels: np.ndarray,
           subsets: list[tuple[int, ...]] | None = None) -> tuple[list[dict], dict]:
    probs, feats = device_outputs(model, views)
    w, b = model.classifier_heads()
    rows = evaluate_failures(probs, feats, w.detach().cpu(), b.detach().cpu(), labels,
                             modes=("avg", "max"), subsets=subsets)
    return rows, summarise(rows)


def train_device_run(out: Path, recipe: DeviceRecipe, train_data: LabeledImages,
                     test_data: LabeledImages, progress: bool = True,
                     max_epochs: int | None = None, device: torch.device = CPU) -> dict:
    """Train (or continue) one run in ``out``; return its metrics log and, once done, summary.

    ``max_epochs`` stops after that many epochs of this call (tests; resume for the rest).
    A finished run (``evaluation.json`` present) returns at once. ``device``: where to
    train (default the CPU).
    """
    recipe.validate()
    out = Path(out)
    if (out / EVALUATION_NAME).exists():
        return json.loads((out / EVALUATION_NAME).read_text())
    spec = ViewSpec(kind="grid", rows=3, cols=2, overlap=recipe.overlap)
    train_images, train_labels = spread_subset(train_data.images, train_data.labels,
                                               recipe.train_limit)
    fit, _ = holdout_split(len(train_labels), recipe.val_size)
    images, labels = torch.from_numpy(train_images[fit]), torch.from_numpy(train_labels[fit])
    test_images, test_labels = spread_subset(test_data.images, test_data.labels,
                                             recipe.test_limit)
    test_views = crop_views(test_images, spec.boxes(*test_images.shape[2:]))
    n_devices = len(spec.boxes(*images.shape[2:]))
    cfg = recipe.loss_config()
    cfg.validate(n_devices)

    torch.manual_seed(recipe.seed)
    model = MultiDeviceCNN(n_devices, images.shape[1], len(train_data.classes)).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                                weight_decay=recipe.weight_decay)
    steps_per_epoch = math.ceil(len(labels) / recipe.batch_size)
    schedule_factor = lr_factor(cfg, recipe.epochs * steps_per_epoch)
    rng = np.random.default_rng(recipe.seed)
    settings = {"recipe": recipe.asdict(), "view_spec": spec.to_dict(), "dataset": "cifar10"}
    meta = load_state(out, {"model": model}, optimizer)
    log: list[dict] = []
    if meta is not None:
        check_same_run(out, meta["settings"], settings)
        log, rng.bit_generator.state = meta["log"], meta["numpy_rng"]
    single = [()] + [(i,) for i in range(n_devices)]
    box = spec.boxes(*images.shape[2:])[0]
    meter = EpochMeter(model, (n_devices, images.shape[1], box.height, box.width),
                       recipe.precision)
    last = recipe.epochs if max_epochs is None else min(recipe.epochs, len(log) + max_epochs)
    for epoch in range(len(log), last):
        model.train()
        order = torch.from_numpy(rng.permutation(len(labels)))
        totals = {"loss": 0.0, "correct": 0, "seen": 0}
        meter.start()
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{recipe.epochs}",
                   disable=not progress, leave=False, mininterval=30.0)
        for step in bar:
            lr = recipe.lr * schedule_factor(epoch * steps_per_epoch + step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            index = order[step * recipe.batch_size:(step + 1) * recipe.batch_size]
            batch = images[index]
            if recipe.pad or recipe.flip:
                batch = augment(batch, rng, pad=recipe.pad, flip=recipe.flip)
            x = views_to_float(_cut(batch, spec).to(device))
            y = labels[index].to(device)
            dropped = rng.choice(n_devices, size=cfg.drop_k, replace=False).tolist()
            with autocast(device, recipe.precision):
                logits, feats = model(x)
            logits, feats = logits.float(), feats.float()
            w, b = model.classifier_heads()
            loss, _, _ = joint_loss(logits, feats, w, b, y, dropped=dropped,
                                    **cfg.loss_options())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            totals["loss"] += loss.item() * len(y)
            totals["correct"] += int((logits.softmax(-1).mean(1).argmax(1) == y).sum())
            totals["seen"] += len(y)
        bar.close()
        timing = meter.stop(totals["seen"])
        _, summary = _score(model, test_views, test_labels, single)
        avg = summary["avg"]
        log.append({
            "epoch": epoch + 1, "lr": lr, "train_loss": totals["loss"] / totals["seen"],
            "train_acc": totals["correct"] / totals["seen"],
            "test_no_failure": avg["baseline"]["no_failure"],
            "test_single_failure": avg["baseline"]["single_failure_mean"],
            "test_single_failure_modifier": avg["modifier"]["single_failure_mean"],
            **timing,
        })
        save_epoch(out, {"model": model}, optimizer, settings, log, rng)
        if progress:
            e = log[-1]
            tqdm.write(f"epoch {e['epoch']}/{recipe.epochs}: loss {e['train_loss']:.3f}, "
                       f"test {100 * e['test_no_failure']:.2f}% (one failure + Modifier "
                       f"{100 * e['test_single_failure_modifier']:.2f}%), "
                       f"{e['seconds']:.0f} s, {e['gflops']:.1f} GFLOP/s")
    result: dict = {"settings": settings, "log": log}
    if len(log) == recipe.epochs:
        model.eval()
        save_checkpoint(out / MODEL_NAME, model, {
            "dataset": "cifar10", "train_split": "train", "train_samples": len(labels),
            "view_spec": spec.to_dict(), "classes": list(train_data.classes),
            "validation": {"seed": VALIDATION_SEED, "size": recipe.val_size,
                           "of": len(train_labels), "limit": recipe.train_limit,
                           "limit_rule": "spread"},
            "classes_per_device": None, "seed": recipe.seed, "train_config": cfg.asdict(),
            "recipe": recipe.asdict(), "history": log, "commit": code_commit()})
        rows, summary = _score(model, test_views, test_labels)
        result.update({"rows": rows, "summary": summary, "commit": code_commit()})
        write_json_atomic(out / EVALUATION_NAME, result)
    return result
