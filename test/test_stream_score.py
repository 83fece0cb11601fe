"""StreamScore joins truth and fused records by stamp; offline_predictions matches evaluate."""

import numpy as np
import pytest
import torch

from resilient_perception.perception.evaluation import evaluate_failures
from resilient_perception.perception.modes import FUSION_MODES
from resilient_perception.perception.stream_score import (
    FusedRecord,
    StreamScore,
    failed_set_key,
    offline_predictions,
)


def test_summary_counts_accuracy_availability_and_latency():
    score = StreamScore(n_devices=3)
    for stamp, label in [(10, 1), (20, 2), (30, 0), (40, 1)]:
        score.add_truth(stamp, frame_index=stamp // 10, label=label)
    score.add_fused(FusedRecord(20, 2, (0, 1, 2), (), 0.004))
    score.add_fused(FusedRecord(10, 1, (0, 1, 2), (), 0.002))
    score.add_fused(FusedRecord(30, 1, (0, 2), (1,), 0.006))
    score.add_fused(FusedRecord(30, 0, (0, 1, 2), (), 0.001))  # duplicate stamp: ignored
    score.add_fused(FusedRecord(50, 0, (0, 2), (1,), 0.008))  # no label
    s = score.summary()
    assert (s["labelled_frames"], s["fused_frames"], s["scored_frames"]) == (4, 4, 3)
    assert (s["missing"], s["unlabelled"], s["duplicates"]) == (1, 1, 1)
    assert s["accuracy"] == pytest.approx(2 / 3)
    assert s["accuracy_by_failed_set"] == {
        "none": {"frames": 2, "accuracy": 1.0},
        "1": {"frames": 1, "accuracy": 0.0},
    }
    assert s["frames_with_surrogate"] == 2
    assert s["device_availability"] == [1.0, 0.5, 1.0]
    assert s["device_surrogate_frames"] == [0, 2, 0]
    assert s["latency_s"]["max"] == pytest.approx(0.008)
    assert [m[0] for m in score.matched()] == [1, 2, 3]
    assert score.unfused() == [40]
    assert score.describe_unfused() == "1 of 4 labelled frames unfused: index 4 (4/4, stamp 40)"


def test_window_keeps_the_frames_stamped_inside():
    score = StreamScore(n_devices=2)
    for stamp in (10, 20, 30):
        score.add_truth(stamp, stamp, 0)
        score.add_fused(FusedRecord(stamp, 0, (0, 1), (), 0.001))
    part = score.window(15, 30)
    assert list(part.truth) == [20] and list(part.fused) == [20]
    assert len(score.truth) == 3  # the original is untouched


def test_failed_set_key_is_order_free():
    assert failed_set_key((4, 1)) == "1,4"
    assert failed_set_key([]) == "none"


@pytest.mark.parametrize("mode", FUSION_MODES)
@pytest.mark.parametrize("use_modifier", [False, True])
def test_offline_predictions_agree_with_evaluate_failures(mode, use_modifier):
    rng = np.random.default_rng(0)
    m, n, k, d = 200, 4, 5, 3
    probs = torch.softmax(torch.as_tensor(rng.normal(size=(m, n, k))), dim=-1).float()
    feats = torch.as_tensor(rng.normal(size=(m, n, d))).float()
    w = torch.as_tensor(rng.normal(size=(n, k, d))).float()
    b = torch.as_tensor(rng.normal(size=(n, k))).float()
    labels = rng.integers(0, k, size=m)
    rows = evaluate_failures(probs, feats, w, b, labels, modes=(mode,), subsets=[(1, 3)])
    expected = next(r["accuracy"] for r in rows if r["modifier"] == use_modifier)
    pred = offline_predictions(probs, feats, w, b, list(range(m)), [(1, 3)] * m, mode,
                               use_modifier)
    assert float(np.mean(pred == labels)) == pytest.approx(expected)


def test_offline_predictions_needs_one_failed_set_per_frame():
    z = np.zeros((2, 2, 2), np.float32)
    with pytest.raises(ValueError, match="one failed set per frame"):
        offline_predictions(z, z, np.zeros((2, 2, 2)), np.zeros((2, 2)), [0, 1], [()])
