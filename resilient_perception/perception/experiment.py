"""One train -> evaluate experiment over device views: the steps the CLI and demo share.

``DeviceViews`` is a dataset split already cut into N device views; ``train_devices``
trains the N device CNNs jointly on it and ``evaluate_devices`` scores every failure subset
with and without the Modifier. ``format_failure_table`` renders the paper's Table 4/5
layout (one row per failed device) for a terminal.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..compute import CPU
from ..datasets import load_dataset
from .checkpoint import load_training_state, save_training_state
from .evaluation import device_outputs, evaluate_failures, summarise
from .model import MultiDeviceCNN
from .modes import PAPER_MODES
from .training import TrainConfig, TrainState, train
from .views import ViewSpec, apply_device_noise, class_specialised_mask, make_views

__all__ = [
    "TRAINING_STATE",
    "DeviceViews",
    "StaleTrainingState",
    "default_view_spec",
    "evaluate_devices",
    "format_failure_table",
    "load_device_views",
    "train_devices",
]


@dataclass(frozen=True)
class DeviceViews:
    """A dataset split cut into device views: ``views`` uint8 (M, N, C, h, w)."""

    views: np.ndarray
    available: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]
    dataset: str
    split: str
    spec: ViewSpec

    @property
    def n_devices(self) -> int:
        """Number of devices (views per sample)."""
        return int(self.views.shape[1])

    def subset(self, index: np.ndarray) -> DeviceViews:
        """The samples ``index`` (same spec, classes and names)."""
        return dataclasses.replace(self, views=self.views[index],
                                   available=self.available[index], labels=self.labels[index])


def default_view_spec(dataset: str) -> ViewSpec:
    """The MVMC dataset's own 6 cameras; the paper's 3x2 grid of patches for the others."""
    return ViewSpec(kind="cameras") if dataset == "mvmc" else ViewSpec(kind="grid", rows=3, cols=2)


def load_device_views(
    dataset: str,
    split: str,
    spec: ViewSpec | None = None,
    root: str | Path | None = None,
    limit: int | None = None,
) -> DeviceViews:
    """Load a dataset split and cut it into device views (the first ``limit`` samples)."""
    spec = spec or default_view_spec(dataset)
    data = load_dataset(dataset, split, root)
    views, available = make_views(spec, data)
    labels = data.labels
    if limit is not None:
        views, available, labels = views[:limit], available[:limit], labels[:limit]
    return DeviceViews(views, available, labels, tuple(data.classes), dataset, split, spec)


# The file a resumable run keeps its training state in, beside its final model.
TRAINING_STATE = "training-state.safetensors"


class StaleTrainingState(ValueError):
    """A saved training state belongs to a run with other settings."""


def train_devices(
    data: DeviceViews,
    config: TrainConfig,
    classes_per_device: int | None = None,
    progress: bool = True,
    state_path: Path | None = None,
    device: torch.device = CPU,
) -> tuple[MultiDeviceCNN, list[dict], dict]:
    """Jointly train N device CNNs on ``data``; returns the model, history and metadata.

    ``classes_per_device`` makes the training non-IID: device i's loss only sees samples
    of the classes it specialises in (see :func:`views.class_specialised_mask`).
    ``state_path`` makes the run resumable: the training state is saved there after every
    epoch, and a state already there is continued (:class:`StaleTrainingState` if it was
    saved with other settings). The caller deletes it once the final model is saved.
    Training runs on ``device`` (default the CPU); the model is returned on the CPU, where
    it is saved and evaluated.
    """
    metadata = {
        "dataset": data.dataset,
        "train_split": data.split,
        "train_samples": int(len(data.labels)),
        "view_spec": data.spec.to_dict(),
        "classes": list(data.classes),
        "classes_per_device": classes_per_device,
        "seed": config.seed,
        "train_config": config.asdict(),
    }
    model, resume = None, None
    if state_path is not None and state_path.exists():
        model, resume, saved = load_training_state(state_path)
        _check_same_run(state_path, saved, metadata)
    if model is None:
        torch.manual_seed(config.seed)
        model = MultiDeviceCNN(data.n_devices, data.views.shape[2], len(data.classes))
    mask = None
    if classes_per_device is not None:
        mask = class_specialised_mask(
            data.labels, data.n_devices, classes_per_device, len(data.classes), config.seed
        )

    def save_state(state: TrainState) -> None:
        save_training_state(state_path, model, state, metadata)

    model.to(device)
    history = train(
        model, data.views, data.labels, config, available=data.available,
        sample_mask=mask, progress=progress,
        on_epoch_end=save_state if state_path is not None else None, resume=resume,
    )
    model.cpu()
    return model, history, {**metadata, "history": history}


def _check_same_run(path: Path, saved: dict, metadata: dict) -> None:
    # The thread count changes the arithmetic's order, not the run: it may differ.
    def settings(meta: dict) -> dict:
        config = meta.get("train_config", {})
        return {**{k: meta.get(k) for k in metadata if k != "train_config"},
                **{k: config.get(k) for k in metadata["train_config"] if k != "num_threads"}}

    ours, theirs = settings(metadata), settings(saved)
    differing = sorted(k for k in ours if ours[k] != theirs[k])
    if differing:
        raise StaleTrainingState(
            f"{path} holds a run with other settings ({', '.join(differing)} differ); "
            "pass the same options to resume it, or delete it to start over"
        )


def evaluate_devices(
    model: MultiDeviceCNN,
    data: DeviceViews,
    noise: dict | None = None,
    seed: int = 0,
    modes: tuple[str, ...] = PAPER_MODES,
) -> tuple[list[dict], dict]:
    """Score every failure subset, with and without the Modifier; returns rows and summary."""
    views = apply_device_noise(data.views, noise, seed) if noise else data.views
    probs, feats = device_outputs(model, views)
    weights, biases = (t.detach() for t in model.classifier_heads())
    rows = evaluate_failures(
        probs, feats, weights, biases, data.labels, available=data.available, modes=modes
    )
    return rows, summarise(rows)


def format_failure_table(summary: dict) -> str:
    """Render accuracy (%) per single failed device, with/without the Modifier, per mode."""
    modes = sorted(summary)
    header = ["failed device"]
    for mode in modes:
        header += [f"{mode} no-mod", f"{mode} Modifier"]
    lines = []

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.2f}"

    def row(label: str, key: str, index: int | None = None) -> list[str]:
        cells = [label]
        for mode in modes:
            for kind in ("baseline", "modifier"):
                value = summary[mode][kind][key]
                cells.append(pct(value if index is None else value[index]))
        return cells

    lines.append(row("none", "no_failure"))
    n_devices = len(summary[modes[0]]["baseline"]["single_failure_per_device"])
    lines += [row(str(i), "single_failure_per_device", i) for i in range(n_devices)]
    lines.append(row("mean single", "single_failure_mean"))
    ratio = ["recovery ratio"]
    for mode in modes:
        r = summary[mode]["recovery_ratio"]
        ratio += ["", "-" if r is None else f"{100 * r:.0f}%"]
    lines.append(ratio)
    widths = [max(len(c[i]) for c in [header, *lines]) for i in range(len(header))]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    return "\n".join(fmt.format(*c) for c in [header, *lines])



# The Modifier paper's Tables 4 and 5 (accuracy %, single failures): no failure, mean single
# failure without the Modifier, mean single failure with it. Used as the reference rows.
PAPER_SINGLE_FAILURE = {
    "mnist": {"avg": (96.25, 93.37, 94.28), "max": (85.23, 81.11, 82.60)},
    "cifar10": {"avg": (83.49, 79.53, 80.16), "max": (75.50, 70.57, 71.51)},
}


def markdown_report(summaries: dict[str, dict], throughputs: list[dict] | None = None) -> str:
    """Markdown tables of several runs' ``summary.json`` (and training-throughput JSONs).

    ``summaries`` maps a run name to the content of its ``summary.json`` as written by
    ``resilient-perception evaluate``.
    """

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.2f}"

    lines = [
        "| run | fusion | no failure | mean single failure, no Modifier | with Modifier "
        "| recovery ratio | 5 of 6 failed, with Modifier |",
        "|---|---|---|---|---|---|---|",
    ]
    datasets = {payload.get("dataset") for payload in summaries.values()}
    for dataset in sorted(d for d in datasets if d in PAPER_SINGLE_FAILURE):
        for mode, (nofail, without, with_mod) in PAPER_SINGLE_FAILURE[dataset].items():
            ratio = (with_mod - without) / (nofail - without)
            lines.append(f"| paper ({dataset}) | {mode} | {nofail:.2f} | {without:.2f} "
                         f"| {with_mod:.2f} | {100 * ratio:.0f}% | - |")
    for name, payload in summaries.items():
        for mode, s in sorted(payload["summary"].items()):
            base, mod, ratio = s["baseline"], s["modifier"], s["recovery_ratio"]
            lines.append(
                f"| {name} | {mode} | {pct(base['no_failure'])} "
                f"| {pct(base['single_failure_mean'])} | {pct(mod['single_failure_mean'])} "
                f"| {'-' if ratio is None else f'{100 * ratio:.0f}%'} "
                f"| {pct(mod['by_n_failed'][-1])} |"
            )
    for t in throughputs or []:
        precision = t.get("precision", "fp32")
        lines += [
            "",
            f"| training, one epoch of {t['images']} images, {t['threads']} threads, batch "
            f"{t['batch_size']}, {precision} | seconds | images/s |",
            "|---|---|---|",
            f"| vectorised (grouped convolutions) | {t['vectorised_s_per_epoch']:.1f} "
            f"| {t['vectorised_images_per_s']:.0f} |",
            f"| naive loop over the devices ({t['naive_images_timed']} images timed, "
            f"extrapolated) | {t['naive_s_per_epoch']:.1f} | {t['naive_images_per_s']:.0f} |",
            f"| speed-up | {t['speedup']:.2f}x | |",
        ]
    return "\n".join(lines) + "\n"
