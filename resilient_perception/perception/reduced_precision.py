"""Reduced-precision device exports for edge boards: int8 (static QDQ) and fp16.

An fp32 export (:func:`.export.export_onnx`) is converted into:

* **int8**: ONNX Runtime's static quantisation in QDQ format, weights int8 in a 7-bit range
  (per output channel; full 8-bit weights saturate on x86 CPUs without VNNI), activations
  uint8 with min/max ranges calibrated on the device's own training views. QDQ runs on
  every execution provider (CPU, CUDA, TensorRT's int8 path).
* **fp16**: every float initializer and operation in half precision, input and outputs kept
  float32, so the camera node feeds and reads the same arrays. On a GPU (CUDA, TensorRT)
  this halves memory traffic; on a CPU it mostly halves the file.

Both keep the fp32 export's metadata, so :class:`.runtime.DeviceRunner` (and the camera
node) load them like the float model, and the classifier head the Modifier averages stays
float32. :func:`precision_accuracy` scores each variant the way ``evaluate`` scores the
checkpoint: avg fusion with the Modifier, mean accuracy per number of failed devices.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process
from onnxruntime.transformers.float16 import convert_float_to_float16

from .checkpoint import load_checkpoint
from .evaluation import evaluate_failures, summarise
from .experiment import DeviceViews, load_device_views
from .modes import REDUCED_PRECISIONS
from .runtime import META_KEY, DeviceRunner, views_to_float32
from .views import ViewSpec

__all__ = [
    "REDUCED_PRECISIONS",
    "calibration_views",
    "convert_fp16",
    "export_reduced_precisions",
    "precision_accuracy",
    "precision_path",
    "precision_table",
    "quantize_int8",
    "runner_outputs",
]



def precision_path(fp32_path: str | os.PathLike[str], precision: str) -> Path:
    """Where the ``precision`` variant of an fp32 export goes: ``device_2.int8.onnx``."""
    if precision not in REDUCED_PRECISIONS:
        raise ValueError(f"precision must be one of {REDUCED_PRECISIONS}, got {precision!r}")
    path = Path(fp32_path)
    return path.with_name(f"{path.stem}.{precision}{path.suffix}")


class _ViewReader(CalibrationDataReader):
    """Feeds uint8 views (M, C, h, w) to the calibrator as ``views`` float batches."""

    def __init__(self, views: np.ndarray, batch_size: int) -> None:
        self._batches = iter([{"views": views_to_float32(views[s : s + batch_size])}
                              for s in range(0, len(views), batch_size)])

    def get_next(self) -> dict | None:
        return next(self._batches, None)


def _copy_metadata(source: str | os.PathLike[str], model: onnx.ModelProto) -> None:
    props = {p.key: p.value for p in onnx.load(str(source)).metadata_props if p.key == META_KEY}
    onnx.helper.set_model_props(model, props)


def quantize_int8(
    fp32_path: str | os.PathLike[str],
    int8_path: str | os.PathLike[str],
    calibration: np.ndarray,
    per_channel: bool = True,
    batch_size: int = 32,
    reduce_range: bool = True,
) -> Path:
    """Quantise one fp32 device export to int8 (static, QDQ) and return its path.

    The model is pre-processed as ONNX Runtime recommends (``quant_pre_process``: shape
    inference, constant folding of the shortcut's pad arithmetic) before the QDQ pairs are
    inserted. ``calibration`` is uint8 (M, C, h, w), the device's own training views.
    ``reduce_range`` keeps weights to 7 bits, so the export runs as well on x86 CPUs without
    VNNI (AVX2), whose 8-bit dot products saturate in 16-bit sums: there a full-range export
    agreed with fp32 on only 87% of one device's test views.
    """
    int8_path = Path(int8_path)
    int8_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=int8_path.parent) as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared))
        quantize_static(
            str(prepared), str(int8_path), _ViewReader(calibration, batch_size),
            quant_format=QuantFormat.QDQ, per_channel=per_channel,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax, reduce_range=reduce_range,
        )
    model = onnx.load(str(int8_path))
    _copy_metadata(fp32_path, model)
    onnx.save(model, str(int8_path))
    return int8_path


def _sort_nodes(graph: onnx.GraphProto) -> None:
    """Order ``graph``'s nodes so each comes after the producers of its inputs.

    The fp16 converter appends its input casts at the end of the node list; ONNX Runtime
    does not mind, but the ONNX spec (and its checker, and TensorRT's parser) want
    topological order.
    """
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(i in available for i in n.input)]
        if not ready:
            raise ValueError("the fp16 graph has a cycle or an input no node produces")
        for node in ready:
            available.update(node.output)
        ordered += ready
        pending = [n for n in pending if all(n is not r for r in ready)]
    del graph.node[:]
    graph.node.extend(ordered)


def convert_fp16(fp32_path: str | os.PathLike[str], fp16_path: str | os.PathLike[str]) -> Path:
    """Convert one fp32 device export to fp16 (float32 input and outputs) and return its path."""
    fp16_path = Path(fp16_path)
    fp16_path.parent.mkdir(parents=True, exist_ok=True)
    model = convert_float_to_float16(onnx.load(str(fp32_path)), keep_io_types=True)
    _sort_nodes(model.graph)
    _copy_metadata(fp32_path, model)
    onnx.checker.check_model(model)
    onnx.save(model, str(fp16_path))
    return fp16_path


def calibration_views(train: DeviceViews, device: int, samples: int,
                      rng: np.random.Generator) -> np.ndarray:
    """``samples`` random training views of ``device`` (only samples where it has a view)."""
    candidates = np.flatnonzero(train.available[:, device])
    chosen = rng.choice(candidates, min(samples, len(candidates)), replace=False)
    return train.views[np.sort(chosen), device]


def runner_outputs(
    runners: Sequence[DeviceRunner],
    views: np.ndarray,
    batch_size: int = 1024,
    progress: Callable[[int], object] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Device ``probs (M, N, K)`` and ``features (M, N, D)`` of uint8 views (M, N, C, h, w).

    ``progress`` is called with the number of samples done after each batch.
    """
    probs, features = [], []
    for start in range(0, len(views), batch_size):
        outputs = [runner.run(views[start : start + batch_size, i])
                   for i, runner in enumerate(runners)]
        probs.append(np.stack([p for p, _ in outputs], axis=1))
        features.append(np.stack([f for _, f in outputs], axis=1))
        if progress is not None:
            progress(len(probs[-1]))
    return np.concatenate(probs), np.concatenate(features)


def precision_accuracy(
    exports: dict[str, Sequence[Path]],
    test: DeviceViews,
    progress: Callable[[int], object] | None = None,
) -> dict:
    """Accuracy of each precision's exports on ``test``: avg fusion with the Modifier.

    ``exports`` maps a precision name to the device files in device order. Returns, per
    precision, ``by_n_failed`` (mean accuracy over every failed set of each size, 0..N-1)
    and ``single_failure_mean`` / ``no_failure``; the heads are each export's own metadata.
    """
    result = {}
    for name, paths in exports.items():
        runners = [DeviceRunner.from_onnx(p, threads=1) for p in paths]
        probs, features = runner_outputs(runners, test.views, progress=progress)
        weights = np.stack([r.head()[0] for r in runners])
        biases = np.stack([r.head()[1] for r in runners])
        rows = evaluate_failures(probs, features, weights, biases, test.labels,
                                 test.available, modes=("avg",))
        summary = summarise(rows)["avg"]["modifier"]
        result[name] = {key: summary[key]
                        for key in ("no_failure", "single_failure_mean", "by_n_failed")}
    return result


def export_reduced_precisions(
    checkpoint: str | os.PathLike[str],
    fp32_paths: Sequence[Path],
    precisions: Sequence[str],
    test_dataset: str,
    data_root: str | os.PathLike[str] | None = None,
    calibration_samples: int = 1000,
    seed: int = 0,
    limit: int | None = None,
    progress: Callable[[int], object] | None = None,
) -> dict:
    """Write each of ``precisions`` beside a checkpoint's fp32 exports and score them all.

    ``fp32_paths`` are the checkpoint's device exports in device order (every device: the
    accuracy is the fused one). int8 is calibrated on ``calibration_samples`` training
    views per device drawn with ``seed``; accuracy is on ``test_dataset`` (first ``limit``
    samples). Returns the files and :func:`precision_accuracy` of fp32 and each precision.
    """
    bad = [p for p in precisions if p not in REDUCED_PRECISIONS]
    if bad:
        raise ValueError(f"precisions must be in {REDUCED_PRECISIONS}, got {bad}")
    _, meta = load_checkpoint(checkpoint)
    spec = ViewSpec.from_dict(meta["view_spec"])
    exports: dict[str, list[Path]] = {"fp32": list(fp32_paths)}
    if "int8" in precisions:
        train = load_device_views(meta["dataset"], "train", spec, data_root)
        rng = np.random.default_rng(seed)
        exports["int8"] = [
            quantize_int8(path, precision_path(path, "int8"),
                          calibration_views(train, i, calibration_samples, rng))
            for i, path in enumerate(fp32_paths)
        ]
    if "fp16" in precisions:
        exports["fp16"] = [convert_fp16(path, precision_path(path, "fp16"))
                           for path in fp32_paths]
    test = load_device_views(test_dataset, "test", spec, data_root, limit)
    return {
        "checkpoint": str(checkpoint), "test_dataset": test_dataset,
        "test_samples": int(len(test.labels)), "calibration_samples": calibration_samples,
        "seed": seed, "fusion": "avg with the Modifier",
        "files": {name: [str(p) for p in paths] for name, paths in exports.items()},
        "accuracy": precision_accuracy(exports, test, progress),
    }


def precision_table(result: dict) -> str:
    """The accuracy of :func:`export_reduced_precisions` as a Markdown table (percent)."""
    accuracy = result["accuracy"]
    names = list(accuracy)
    header = "| failed devices | " + " | ".join(
        n if n == "fp32" else f"{n} (vs fp32)" for n in names) + " |"
    lines = [header, "|---" * (len(names) + 1) + "|"]
    for k, fp32 in enumerate(accuracy["fp32"]["by_n_failed"]):
        cells = []
        for name in names:
            value = accuracy[name]["by_n_failed"][k]
            cells.append(f"{100 * value:.2f}" if name == "fp32"
                         else f"{100 * value:.2f} ({100 * (value - fp32):+.2f})")
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
