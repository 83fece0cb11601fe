"""Cost of one device CNN and of the Modifier on this CPU: latency, int8 size and accuracy.

The Modifier paper's Table 3 compares one device CNN forward pass with the Modifier on two
edge boards, and its text gives the device model's size under 8-bit quantisation (15,074
parameters, ~14.72 KB). The analogue here, all ROS-free:

* **Latency.** :func:`time_call` times a callable at batch 1 (the caller pins threads);
  warm-up calls are excluded. The Modifier is timed as the fusion node runs it, with
  :func:`.frame_assembly.fuse_frame` on one frame with one device missing, with and without
  the surrogate (the difference is the Modifier's cost), and as the vectorised torch
  :func:`.modifier.synthesize_surrogate` for that frame.
* **int8.** :func:`.reduced_precision.quantize_int8` quantises an exported device (the
  same conversion as ``export --int8``), calibrated on training views of that device.
* **Accuracy.** :func:`.reduced_precision.runner_outputs` runs device runners over a whole
  split, so the :func:`.evaluation.evaluate_failures` that scores torch outputs scores ORT
  fp32 / int8.
"""

from __future__ import annotations

import csv
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from tqdm import tqdm

from ..perception.checkpoint import load_checkpoint
from ..perception.evaluation import evaluate_failures, summarise
from ..perception.experiment import DeviceViews, load_device_views
from ..perception.frame_assembly import ClassifierHeads, Frame, fuse_frame
from ..perception.model import count_parameters
from ..perception.modifier import synthesize_surrogate
from ..perception.reduced_precision import calibration_views, quantize_int8, runner_outputs
from ..perception.runtime import DeviceRunner
from ..perception.views import ViewSpec

__all__ = [
    "PAPER_COST",
    "cost_markdown",
    "device_frame",
    "machine_info",
    "measure_modifier_cost",
    "median_time",
    "onnx_size_kb",
    "run_cost_benchmark",
    "surrogate_call",
    "time_call",
    "timing_summary",
]

# The paper's numbers (Table 2 and Table 3; its text: 15,074 parameters "~14.72 KB" int8).
PAPER_COST = {
    "parameters": 15_074,
    "int8_kb": 14.72,
    "latency_ms": {
        "raspberry_pi_4": {"device_cnn": 5.6, "modifier": 0.84},
        "jetson_nano": {"device_cnn": 3.1, "modifier": 0.65},
    },
}


def time_call(fn: Callable[[], object], repeats: int, warmup: int | None = None) -> np.ndarray:
    """Seconds of each of ``repeats`` calls of ``fn``, after ``warmup`` untimed calls.

    ``warmup`` defaults to a tenth of ``repeats`` (at least 10): first calls allocate
    buffers and fill caches, and the steady state is what a stream of frames sees.
    """
    for _ in range(max(10, repeats // 10) if warmup is None else warmup):
        fn()
    times = np.empty(repeats)
    for i in range(repeats):
        started = time.perf_counter()
        fn()
        times[i] = time.perf_counter() - started
    return times


def median_time(fn: Callable[[], object], repeats: int) -> float:
    """Median seconds of one call of ``fn`` (:func:`time_call`, default warm-up)."""
    return float(np.median(time_call(fn, repeats)))


def timing_summary(times: np.ndarray) -> dict:
    """Median, quartiles, min, mean (seconds) and the number of timed calls."""
    q25, median, q75 = np.percentile(times, [25, 50, 75])
    return {"median_s": float(median), "q25_s": float(q25), "q75_s": float(q75),
            "min_s": float(times.min()), "mean_s": float(times.mean()),
            "repeats": int(len(times))}


def device_frame(
    runners: Sequence[DeviceRunner], views: np.ndarray, failed: Sequence[int]
) -> tuple[Frame, ClassifierHeads]:
    """One frame as the fusion node holds it: every device's output, ``failed`` missing.

    ``views`` is one sample's (N, C, h, w) device views; the heads are the runners'.
    """
    outputs = [runner.run(views[i : i + 1]) for i, runner in enumerate(runners)]
    probs = np.concatenate([p for p, _ in outputs])
    features = np.concatenate([f for _, f in outputs])
    heads = ClassifierHeads.empty(len(runners), probs.shape[1], features.shape[1])
    for i, runner in enumerate(runners):
        heads.set_head(i, *runner.head())
    present = np.ones(len(runners), bool)
    present[list(failed)] = False
    return Frame(0, probs * present[:, None], features * present[:, None], present, 0.0), heads


def measure_modifier_cost(
    runners: Sequence[DeviceRunner], views: np.ndarray, repeats: int = 2000
) -> dict:
    """Median seconds of one device forward pass vs the Modifier, for one frame.

    The frame is built from ``views`` (one sample, (N, C, h, w)) with the last device
    missing. The Modifier's cost is what :func:`fuse_frame` takes in addition when it
    builds the surrogate; the forward pass is device 0's at batch 1. Threads are the
    caller's (runners built with ``threads=1``, ``torch.set_num_threads(1)``).
    """
    frame, heads = device_frame(runners, views, [len(runners) - 1])
    forward = median_time(lambda: runners[0].run(views[:1]), repeats)
    fuse_with = median_time(lambda: fuse_frame(frame, heads, "avg", True), repeats)
    fuse_without = median_time(lambda: fuse_frame(frame, heads, "avg", False), repeats)
    return {
        "device_forward_s": forward,
        "fuse_frame_with_modifier_s": fuse_with, "fuse_frame_without_modifier_s": fuse_without,
        "modifier_s": fuse_with - fuse_without,
        "modifier_vs_forward": (fuse_with - fuse_without) / forward,
        "repeats": repeats, "provider": runners[0].provider,
    }


def surrogate_call(frame: Frame, heads: ClassifierHeads) -> Callable[[], torch.Tensor]:
    """A call of the torch :func:`synthesize_surrogate` on ``frame`` (batch of one)."""
    features = torch.from_numpy(frame.features)[None]
    weights, biases = torch.from_numpy(heads.weights), torch.from_numpy(heads.biases)
    live = torch.from_numpy(frame.present)[None]
    return lambda: synthesize_surrogate(features, weights, biases, live)


def onnx_size_kb(path: str | os.PathLike[str]) -> dict:
    """Size of an ONNX file in KB (1024 bytes), and of its stored weights alone.

    ``weights_kb`` is the bytes of the graph's initializers (int8 weights, int32 biases and
    float scales once quantised): the part to compare with a parameter count. The rest of
    the file is the graph's nodes (QDQ adds a pair per tensor) and the ``export_onnx``
    metadata, which carries a float copy of the classifier head.
    """
    model = onnx.load(str(path))
    weights = sum(onnx.numpy_helper.to_array(t).nbytes for t in model.graph.initializer)
    return {"file_kb": Path(path).stat().st_size / 1024, "weights_kb": weights / 1024}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    """CPU, core count, Python and library versions, and the load average (1/5/15 min)."""
    return {
        "cpu": _cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(),
        "torch": torch.__version__, "onnxruntime": ort.__version__, "onnx": onnx.__version__,
        "numpy": np.__version__, "load_average_start": list(os.getloadavg()),
    }


def write_speed_csv(path: str | os.PathLike[str], source: str, rows: Sequence[dict],
                    info: dict) -> None:
    """``rows`` as CSV under one comment line: ``source`` and the machine ``info`` measured on.

    ``info`` is :func:`machine_info` taken before the measurements; the load average after
    them is added, so a reader sees whether something else ran meanwhile.
    """
    machine = (f"{info['cpu']}, {info['cores']} cores, torch {info['torch']}, load average "
               f"{info['load_average_start'][0]:.2f} before, {os.getloadavg()[0]:.2f} after")
    with open(path, "w", newline="") as fh:
        fh.write(f"# {source}, {machine}\n")
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _accuracy(probs, features, weights, biases, data: DeviceViews) -> dict:
    """Accuracy of avg fusion: no failure, mean single failure with and without Modifier."""
    n = data.n_devices
    subsets = [(), *((i,) for i in range(n))]
    rows = evaluate_failures(probs, features, weights, biases, data.labels, data.available,
                             modes=("avg",), subsets=subsets)
    summary = summarise(rows)["avg"]
    return {
        "no_failure": summary["baseline"]["no_failure"],
        "single_failure_mean_without_modifier": summary["baseline"]["single_failure_mean"],
        "single_failure_mean_with_modifier": summary["modifier"]["single_failure_mean"],
        "single_failure_per_device_with_modifier":
            summary["modifier"]["single_failure_per_device"],
    }


def run_cost_benchmark(
    checkpoint: str | os.PathLike[str],
    onnx_pattern: str,
    int8_dir: str | os.PathLike[str],
    data_root: str | os.PathLike[str] | None = None,
    repeats: int = 2000,
    calibration_samples: int = 1000,
    per_channel: bool = True,
    seed: int = 0,
    limit: int | None = None,
    progress: bool = True,
) -> dict:
    """Size, batch-1 latency and int8 accuracy of a checkpoint's devices (the cost.json).

    ``onnx_pattern`` (``.../device_{}.onnx``) holds the checkpoint's fp32 export; the int8
    models are written to ``int8_dir``. Latency runs on one thread (torch and ORT) with
    ``repeats`` timed calls after a warm-up; accuracy is on the test split (first ``limit``
    samples). ``seed`` draws the calibration views.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _cost_benchmark(checkpoint, onnx_pattern, int8_dir, data_root, repeats,
                               calibration_samples, per_channel, seed, limit, progress)
    finally:
        torch.set_num_threads(threads)


def _cost_benchmark(checkpoint, onnx_pattern, int8_dir, data_root, repeats,
                    calibration_samples, per_channel, seed, limit, progress) -> dict:
    machine = machine_info()
    model, meta = load_checkpoint(checkpoint)
    spec = ViewSpec.from_dict(meta["view_spec"])
    test = load_device_views(meta["dataset"], "test", spec, data_root, limit)
    train = load_device_views(meta["dataset"], "train", spec, data_root)
    n = model.n_devices
    rng = np.random.default_rng(seed)
    fp32_paths = [Path(onnx_pattern.format(i)) for i in range(n)]
    int8_paths = [
        quantize_int8(fp32_paths[i], Path(int8_dir) / f"device_{i}.onnx",
                      calibration_views(train, i, calibration_samples, rng), per_channel)
        for i in tqdm(range(n), desc="quantising", unit="device", disable=not progress)
    ]
    runners = {
        "torch_fp32": [DeviceRunner.from_torch(model.device(i)) for i in range(n)],
        "ort_fp32": [DeviceRunner.from_onnx(p, threads=1) for p in fp32_paths],
        "ort_int8": [DeviceRunner.from_onnx(p, threads=1) for p in int8_paths],
    }

    sample = test.views[0]  # (N, C, h, w); times do not depend on the values
    frame, heads = device_frame(runners["ort_fp32"], sample, [n - 1])
    calls = {f"device_forward_{name}": (lambda r=r: r[0].run(sample[:1]))
             for name, r in runners.items()}
    calls["fuse_frame_with_modifier"] = lambda: fuse_frame(frame, heads, "avg", True)
    calls["fuse_frame_without_modifier"] = lambda: fuse_frame(frame, heads, "avg", False)
    calls["synthesize_surrogate_torch"] = surrogate_call(frame, heads)
    latency = {name: timing_summary(time_call(fn, repeats))
               for name, fn in tqdm(calls.items(), desc="timing", unit="call",
                                    disable=not progress)}
    modifier_s = (latency["fuse_frame_with_modifier"]["median_s"]
                  - latency["fuse_frame_without_modifier"]["median_s"])
    modifier = {"fuse_frame_difference_s": modifier_s, "percent_of_device_forward": {
        name: {"fuse_frame_difference": 100 * modifier_s / latency[f"device_forward_{name}"]
               ["median_s"],
               "synthesize_surrogate_torch": 100 * latency["synthesize_surrogate_torch"]
               ["median_s"] / latency[f"device_forward_{name}"]["median_s"]}
        for name in runners}}

    weights, biases = (t.detach() for t in model.classifier_heads())
    accuracy, fused_argmax, device_argmax = {}, {}, {}
    bar = tqdm(total=len(runners) * len(test.labels), desc="test outputs", unit="sample",
               disable=not progress)
    for name, backend in runners.items():
        probs, features = runner_outputs(backend, test.views, progress=bar.update)
        accuracy[name] = _accuracy(probs, features, weights, biases, test)
        device_argmax[name] = probs.argmax(axis=2)
        fused_argmax[name] = probs.mean(axis=1).argmax(axis=1)
    bar.close()
    agreement = {
        "device_argmax_per_device": (device_argmax["ort_int8"]
                                     == device_argmax["ort_fp32"]).mean(axis=0).tolist(),
        "fused_argmax_no_failure": float((fused_argmax["ort_int8"]
                                          == fused_argmax["ort_fp32"]).mean()),
    }
    sizes = {
        "parameters": count_parameters(model.device(0)),
        "ort_fp32": [onnx_size_kb(p) for p in fp32_paths],
        "ort_int8": [onnx_size_kb(p) for p in int8_paths],
    }
    sizes["parameters_x1_byte_kb"] = sizes["parameters"] / 1024
    machine["load_average_end"] = list(os.getloadavg())
    return {
        "checkpoint": str(checkpoint), "dataset": meta["dataset"], "view_spec": spec.to_dict(),
        "devices": n, "test_samples": int(len(test.labels)), "seed": seed,
        "threads": 1, "batch_size": 1, "repeats": repeats, "machine": machine,
        "quantization": {
            "tool": "onnxruntime.quantization quant_pre_process + quantize_static",
            "format": "QDQ",
            "weights": ("int8 in a 7-bit range (reduce_range), "
                        + ("per output channel" if per_channel else "per tensor")),
            "activations": "uint8, per tensor", "calibration": "MinMax",
            "calibration_samples": calibration_samples, "calibration_split": "train",
            "head": "float32 (metadata, used by the Modifier)",
        },
        "size": sizes, "latency": latency, "modifier": modifier, "accuracy": accuracy,
        "int8_vs_fp32_agreement": agreement, "paper": PAPER_COST,
    }


BACKEND_NAMES = {"torch_fp32": "torch fp32", "ort_fp32": "ONNX Runtime fp32",
                 "ort_int8": "ONNX Runtime int8"}


def _ms(seconds: float) -> str:
    return f"{1e3 * seconds:.3f}"


def cost_markdown(result: dict) -> str:
    """cost.md: the tables of a :func:`run_cost_benchmark` result, ours beside the paper's."""
    paper, size, lat, machine = result["paper"], result["size"], result["latency"], \
        result["machine"]
    rpi, nano = paper["latency_ms"]["raspberry_pi_4"], paper["latency_ms"]["jetson_nano"]
    quant = result["quantization"]
    load_start = "/".join(f"{x:.2f}" for x in machine["load_average_start"])
    load_end = "/".join(f"{x:.2f}" for x in machine["load_average_end"])

    def mean_kb(backend: str, key: str) -> str:
        return f"{np.mean([s[key] for s in size[backend]]):.2f}"

    lines = [
        "# Cost of one device CNN and of the Modifier (Table 3 analogue)",
        "",
        f"Written by `resilient-perception bench-cost` from `{result['checkpoint']}` "
        f"({result['dataset']}, {result['devices']} devices). Machine: {machine['cpu']}, "
        f"{machine['cores']} cores; load average (1/5/15 min) {load_start} at the start and "
        f"{load_end} at the end: timings on a loaded machine are slower and noisier. "
        f"Versions: torch {machine['torch']}, onnxruntime {machine['onnxruntime']}. Raw "
        "values: cost.json.",
        "",
        "The paper's latencies are from a Raspberry Pi 4 and a Jetson Nano downclocked to "
        "~100-200 MHz (Table 3); ours are from this CPU at full clock, so only the ratio "
        "Modifier / device forward is comparable.",
        "",
        "## Size of one device model",
        "",
        "| quantity | ours | paper |",
        "|---|---|---|",
        f"| parameters | {size['parameters']:,} | {paper['parameters']:,} |",
        f"| parameters x 1 byte, KB | {size['parameters_x1_byte_kb']:.2f} | "
        f"{paper['int8_kb']:.2f} |",
        f"| int8 ONNX ({quant['format']}, weights {quant['weights']}): stored weights, KB | "
        f"{mean_kb('ort_int8', 'weights_kb')} | - |",
        f"| int8 ONNX file, KB | {mean_kb('ort_int8', 'file_kb')} | - |",
        f"| fp32 ONNX: stored weights, KB | {mean_kb('ort_fp32', 'weights_kb')} | - |",
        f"| fp32 ONNX file, KB | {mean_kb('ort_fp32', 'file_kb')} | - |",
        "",
        "Sizes are means over the devices (per device in cost.json). Stored weights are the "
        "graph's initializers (int8 weights, int32 biases, float scales; batch norm is folded "
        "into the convolutions); the rest of a file is graph structure and metadata (a float "
        "copy of the classifier head, which the Modifier averages).",
        "",
        f"## Latency at batch 1, one thread (median of {result['repeats']} calls after a "
        "warm-up)",
        "",
        "| component | ours, ms | paper RPi 4, ms | paper Jetson Nano, ms |",
        "|---|---|---|---|",
    ]
    for name, label in BACKEND_NAMES.items():
        lines.append(f"| device CNN forward, {label} | "
                     f"{_ms(lat[f'device_forward_{name}']['median_s'])} | {rpi['device_cnn']} | "
                     f"{nano['device_cnn']} |")
    lines += [
        f"| Modifier: fuse_frame with minus without surrogate (numpy, as the fusion node) | "
        f"{_ms(result['modifier']['fuse_frame_difference_s'])} | {rpi['modifier']} | "
        f"{nano['modifier']} |",
        f"| Modifier: synthesize_surrogate (torch, one frame) | "
        f"{_ms(lat['synthesize_surrogate_torch']['median_s'])} | - | - |",
        f"| fuse_frame with surrogate (one device failed) | "
        f"{_ms(lat['fuse_frame_with_modifier']['median_s'])} | - | - |",
        f"| fuse_frame without surrogate | "
        f"{_ms(lat['fuse_frame_without_modifier']['median_s'])} | - | - |",
        "",
        "| Modifier as % of one device forward | fuse_frame difference | synthesize_surrogate "
        "(torch) | paper RPi 4 | paper Jetson Nano |",
        "|---|---|---|---|---|",
    ]
    for name, label in BACKEND_NAMES.items():
        pct = result["modifier"]["percent_of_device_forward"][name]
        lines.append(f"| {label} | {pct['fuse_frame_difference']:.1f}% | "
                     f"{pct['synthesize_surrogate_torch']:.1f}% | "
                     f"{100 * rpi['modifier'] / rpi['device_cnn']:.1f}% | "
                     f"{100 * nano['modifier'] / nano['device_cnn']:.1f}% |")
    agreement = result["int8_vs_fp32_agreement"]
    lines += [
        "",
        f"## Accuracy, int8 vs float ({result['dataset']} test, {result['test_samples']} "
        "samples, avg fusion, %)",
        "",
        "| device outputs from | no failure | mean single failure, no Modifier | "
        "mean single failure, Modifier |",
        "|---|---|---|---|",
    ]
    for name, label in BACKEND_NAMES.items():
        acc = result["accuracy"][name]
        lines.append(f"| {label} | {100 * acc['no_failure']:.2f} | "
                     f"{100 * acc['single_failure_mean_without_modifier']:.2f} | "
                     f"{100 * acc['single_failure_mean_with_modifier']:.2f} |")
    lines += [
        "",
        f"int8 quantisation: {quant['tool']}, {quant['format']}, weights {quant['weights']}, "
        f"activations {quant['activations']}, {quant['calibration']} calibration on "
        f"{quant['calibration_samples']} random {quant['calibration_split']} views per "
        f"device (seed {result['seed']}); the classifier heads the Modifier averages stay "
        "float. int8 and fp32 ONNX Runtime agree on the fused (no failure) argmax for "
        f"{100 * agreement['fused_argmax_no_failure']:.2f}% of the test samples and on "
        "each device's own argmax for "
        + ", ".join(f"{100 * a:.1f}" for a in agreement["device_argmax_per_device"])
        + "% (devices 0..N-1).",
    ]
    return "\n".join(lines) + "\n"
