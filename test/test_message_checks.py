"""The ROS-free checks of outside messages (message_checks), on plain values."""

from __future__ import annotations

import numpy as np
import pytest

from resilient_perception.message_checks import (
    HeadShapes,
    RejectionLog,
    clip_text,
    head_problem,
    link_rate_problem,
    probabilities_problem,
    stamp_problem,
    values_problem,
)

S = 1_000_000_000
NOW = 1_700_000_000 * S


def test_stamps_outside_the_window_of_the_clock_are_rejected():
    assert stamp_problem(NOW, NOW, 1.0, 30.0) is None
    assert stamp_problem(NOW + S, NOW, 1.0, 30.0) is None
    assert stamp_problem(NOW + 60 * S, NOW, 1.0, 30.0) == "stamp_ahead"
    assert stamp_problem(NOW - 31 * S, NOW, 1.0, 30.0) == "stamp_too_old"
    assert stamp_problem(0, NOW, 1.0, 30.0) == "stamp_too_old"
    # Simulated time before the first /clock: nothing to compare with.
    assert stamp_problem(NOW + 60 * S, 0, 1.0, 30.0) is None


def test_probabilities_must_be_a_distribution_of_the_agreed_length():
    good = np.array([0.2, 0.3, 0.5], np.float32)
    assert probabilities_problem(good, 3, 1e-3) is None
    assert probabilities_problem(good, 4, 1e-3) == "bad_probs_length"
    assert probabilities_problem(good.reshape(1, 3), 3, 1e-3) == "bad_probs_length"
    assert probabilities_problem(np.array([np.nan, 0.5, 0.5]), 3, 1e-3) == "non_finite"
    assert probabilities_problem(np.array([-0.1, 0.6, 0.5]), 3, 1e-3) == "bad_probabilities"
    assert probabilities_problem(np.array([0.5, 0.5, 0.5]), 3, 1e-3) == "bad_probabilities"
    assert probabilities_problem(np.array([1e30, 0.0, 0.0]), 3, 1e-3) == "bad_probabilities"
    assert probabilities_problem(np.array([0.2, 0.3, 0.5005]), 3, 1e-3) is None


def test_values_are_finite_and_bounded():
    assert values_problem(np.zeros(4), 4, 10.0, "bad_features_length") is None
    assert values_problem(np.zeros(5), 4, 10.0, "bad_features_length") == "bad_features_length"
    assert values_problem(np.array([0, np.inf, 0, 0]), 4, 10.0, "x") == "non_finite"
    assert values_problem(np.array([0, -11.0, 0, 0]), 4, 10.0, "x") == "value_out_of_range"


def test_head_problems_name_what_is_wrong():
    w, b = np.zeros(6, np.float32), np.zeros(2, np.float32)
    assert head_problem(w, b, 2, 3, 1e6) is None
    assert "weights" in head_problem(w, b, 2, 4, 1e6)
    assert "empty" in head_problem(w[:0], b[:0], 0, 3, 1e6)
    assert "non finite" in head_problem(np.full(6, np.nan, np.float32), b, 2, 3, 1e6)
    assert "out of range" in head_problem(w, np.full(2, 1e7, np.float32), 2, 3, 1e6)


def _head(k: int, d: int, value: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    return np.full((k, d), value, np.float32), np.full(k, value, np.float32)


def test_one_early_bad_head_is_outvoted_by_the_second_real_one():
    shapes = HeadShapes(6)
    assert shapes.add(0, *_head(11, 8)) and shapes.shape == (11, 8)  # first head: used
    assert not shapes.add(1, *_head(10, 8))  # a tie keeps the shape in use
    assert shapes.shape == (11, 8)
    assert shapes.add(2, *_head(10, 8)) and shapes.shape == (10, 8)
    assert shapes.head(1)[0].shape == (10, 8) and shapes.head(0) is None
    assert shapes.votes_for_other_shapes() == 1
    # Device 0's real head replaces its bad one (its vote changes too).
    assert not shapes.add(0, *_head(10, 8, 1.0))
    assert shapes.votes_for_other_shapes() == 0 and shapes.head(0)[0][0, 0] == 1.0


def test_a_later_odd_head_does_not_take_a_devices_usable_head_away():
    shapes = HeadShapes(3)
    for device in range(3):
        shapes.add(device, *_head(10, 8, device))
    assert not shapes.add(1, *_head(11, 8))  # outvoted 2:1
    assert shapes.shape == (10, 8) and shapes.head(1)[0][0, 0] == 1.0
    # Only the last two shapes per device are kept.
    shapes.add(1, *_head(12, 8))
    shapes.add(1, *_head(13, 8))
    assert shapes.head(1) is None


def test_a_configured_shape_refuses_other_heads():
    shapes = HeadShapes(2, fixed=(10, 8))
    assert shapes.shape == (10, 8) and shapes.head(0) is None
    with pytest.raises(ValueError, match="configured shape is 10x8"):
        shapes.add(0, *_head(11, 8))
    assert not shapes.add(0, *_head(10, 8)) and shapes.head(0) is not None


@pytest.mark.parametrize("rate", [1e-300, 5e-324, float("nan"), float("inf"), -1e6, 1e15])
def test_implausible_link_rates_are_rejected(rate):
    assert link_rate_problem(rate, 1e3, 1e12) == "implausible_rate"


def test_plausible_and_unmeasured_link_rates_pass():
    assert link_rate_problem(0.0, 1e3, 1e12) is None
    assert link_rate_problem(20e6, 1e3, 1e12) is None


def test_rejection_log_counts_every_reason_and_throttles_each_on_its_own():
    log = RejectionLog(["stale"], period=5.0)
    assert log.counts == {"stale": 0}
    assert log.add("stale", 100.0) == 0  # logged
    assert log.add("stale", 101.0) is None
    assert log.add("oversize", 101.5) == 0  # another reason is not hidden by the first
    assert log.add("stale", 102.0) is None
    assert log.add("stale", 105.5) == 2  # logged, with the two that were not
    assert log.counts == {"stale": 4, "oversize": 1} and log.total == 5


def test_echoed_text_is_clipped():
    assert clip_text("rgb8") == "rgb8"
    clipped = clip_text("x" * 100_000)
    assert len(clipped) < 120 and clipped.endswith("(100000 characters)")
