"""Scoring a fused prediction stream against ground truth, frame by frame.

The live pipeline (and a bag of its outputs) yields, per source frame, a ground-truth
label (``FrameLabel``) and one fused prediction per fusion stream (``FusedPrediction``:
predicted label, the devices used live, the devices replaced by a surrogate, latency).
Both carry the source image stamp, which is the join key. :class:`StreamScore` collects
them in any order and summarises accuracy, availability, surrogate use and latency;
:func:`offline_predictions` recomputes what the offline evaluation predicts for the same
frames with the same devices failed, so a stream can be checked against ``evaluate``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch

from .modifier import fuse_with_failures

__all__ = ["FusedRecord", "StreamScore", "failed_set_key", "offline_predictions"]


@dataclass(frozen=True)
class FusedRecord:
    """One fused prediction of a stream."""

    stamp_ns: int
    predicted: int
    live: tuple[int, ...]
    surrogates: tuple[int, ...]
    latency: float  # seconds from the source stamp to the fused publish


def failed_set_key(devices: tuple[int, ...] | list[int]) -> str:
    """Stable text key of a device set, e.g. ``"1,4"``; ``"none"`` when empty."""
    return ",".join(str(d) for d in sorted(devices)) or "none"


def _set_order(key: str) -> tuple[int, list[int]]:
    """Sort key of :func:`failed_set_key` keys: by size, then by device ids."""
    devices = [] if key == "none" else [int(d) for d in key.split(",")]
    return len(devices), devices


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None, "max": None, "mean": None}
    a = np.asarray(values, dtype=np.float64)
    return {
        "p50": float(np.percentile(a, 50)),
        "p99": float(np.percentile(a, 99)),
        "max": float(a.max()),
        "mean": float(a.mean()),
    }


class StreamScore:
    """Ground truth and fused predictions of one stream, joined by source stamp.

    A stamp seen twice (a duplicate publish) keeps the first record and is counted in
    ``duplicates`` (a fused one's stamp also in ``duplicate_stamps``, so a soak can tell
    when it happened): the fusion node promises one output per stamp.
    """

    def __init__(self, n_devices: int) -> None:
        """Score a stream of ``n_devices`` devices."""
        if n_devices < 1:
            raise ValueError("n_devices must be >= 1")
        self.n_devices = n_devices
        self.truth: dict[int, tuple[int, int]] = {}  # stamp -> (frame index, label)
        self.fused: dict[int, FusedRecord] = {}
        self.duplicates = 0
        self.duplicate_stamps: list[int] = []

    def add_truth(self, stamp_ns: int, frame_index: int, label: int) -> None:
        """Record the ground truth of the frame stamped ``stamp_ns``."""
        if stamp_ns in self.truth:
            self.duplicates += 1
            return
        self.truth[stamp_ns] = (int(frame_index), int(label))

    def add_fused(self, record: FusedRecord) -> None:
        """Record one fused prediction."""
        if record.stamp_ns in self.fused:
            self.duplicates += 1
            self.duplicate_stamps.append(record.stamp_ns)
            return
        self.fused[record.stamp_ns] = record

    def window(self, start_ns: int, end_ns: int) -> StreamScore:
        """A new score with only the frames stamped in ``[start_ns, end_ns)``."""
        out = StreamScore(self.n_devices)
        out.truth = {s: t for s, t in self.truth.items() if start_ns <= s < end_ns}
        out.fused = {s: r for s, r in self.fused.items() if start_ns <= s < end_ns}
        return out

    def unfused(self) -> list[int]:
        """Stamps of the labelled frames without a fused output yet, in stamp order."""
        return sorted(self.truth.keys() - self.fused.keys())

    def describe_unfused(self, limit: int = 5) -> str:
        """Which labelled frames are not fused, e.g. for a timeout: where in the stream."""
        unfused = self.unfused()
        if not unfused:
            return "none unfused"
        order = sorted(self.truth)
        frames = ", ".join(f"index {self.truth[s][0]} ({order.index(s) + 1}/{len(order)}, "
                           f"stamp {s})" for s in unfused[:limit])
        more = f" and {len(unfused) - limit} more" if len(unfused) > limit else ""
        return f"{len(unfused)} of {len(order)} labelled frames unfused: {frames}{more}"

    def matched(self) -> list[tuple[int, int, FusedRecord]]:
        """``(frame index, label, record)`` for every stamp with both, in stamp order."""
        return [
            (*self.truth[s], self.fused[s]) for s in sorted(self.truth.keys() & self.fused.keys())
        ]

    def summary(self) -> dict:
        """Counts, accuracy (overall and per failed set), availability, latency (JSON-safe).

        The failed set of a frame is the devices not in its ``live`` list.

        ``missing`` counts labelled frames without a fused output: frames the pipeline lost
        (only meaningful once the stream has drained).
        """
        rows = self.matched()
        correct = [r.predicted == label for _, label, r in rows]
        by_set: dict[str, list[bool]] = defaultdict(list)
        everyone = set(range(self.n_devices))
        for (*_, r), ok in zip(rows, correct, strict=True):
            # keyed by the devices not used live, so a stream without the Modifier (no
            # surrogates) is grouped like one with it
            by_set[failed_set_key(tuple(everyone - set(r.live)))].append(ok)
        live_counts = np.zeros(self.n_devices, dtype=np.int64)
        surrogate_counts = np.zeros(self.n_devices, dtype=np.int64)
        for r in self.fused.values():
            live_counts[list(r.live)] += 1
            surrogate_counts[list(r.surrogates)] += 1
        n_fused = len(self.fused)
        return {
            "labelled_frames": len(self.truth),
            "fused_frames": n_fused,
            "scored_frames": len(rows),
            "missing": len(self.unfused()),
            "unlabelled": len(self.fused.keys() - self.truth.keys()),
            "duplicates": self.duplicates,
            "accuracy": float(np.mean(correct)) if correct else None,
            "accuracy_by_failed_set": {
                key: {"frames": len(v), "accuracy": float(np.mean(v))}
                for key, v in sorted(by_set.items(), key=lambda kv: _set_order(kv[0]))
            },
            "frames_with_surrogate": sum(1 for r in self.fused.values() if r.surrogates),
            "device_availability": (live_counts / max(1, n_fused)).tolist(),
            "device_surrogate_frames": surrogate_counts.tolist(),
            "latency_s": _percentiles([r.latency for r in self.fused.values()]),
        }


def offline_predictions(
    probs: np.ndarray | torch.Tensor,
    features: np.ndarray | torch.Tensor,
    weights: np.ndarray | torch.Tensor,
    biases: np.ndarray | torch.Tensor,
    frame_indices: list[int],
    failed_sets: list[tuple[int, ...]],
    mode: str = "avg",
    use_modifier: bool = True,
) -> np.ndarray:
    """Labels the offline evaluation predicts for frames with given devices failed.

    Args:
        probs: (M, N, K) device probabilities of the whole split (``device_outputs``).
        features: (M, N, D) device features.
        weights: (N, K, D) classifier weights.
        biases: (N, K) classifier biases.
        frame_indices: the split indices of the frames to predict.
        failed_sets: per frame, the devices that failed (a stream's surrogate devices).
        mode: ``"avg"`` or ``"max"``.
        use_modifier: substitute surrogates for the failed devices.

    Returns:
        (len(frame_indices),) int64 predicted labels.

    """
    if len(frame_indices) != len(failed_sets):
        raise ValueError("need one failed set per frame")
    idx = torch.as_tensor(frame_indices, dtype=torch.long)
    n = probs.shape[1]
    live = torch.ones(len(idx), n, dtype=torch.bool)
    for row, failed in enumerate(failed_sets):
        live[row, list(failed)] = False
    with torch.inference_mode():
        fused = fuse_with_failures(
            torch.as_tensor(probs, dtype=torch.float32)[idx],
            torch.as_tensor(features, dtype=torch.float32)[idx],
            torch.as_tensor(weights, dtype=torch.float32),
            torch.as_tensor(biases, dtype=torch.float32),
            live,
            mode,
            use_modifier,
        )
    return fused.argmax(dim=1).numpy()
