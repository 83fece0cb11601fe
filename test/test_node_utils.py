"""ROS-free helpers of the nodes (resilient_perception.ros.node_utils)."""

from __future__ import annotations

import pytest

from test.conftest import require_ros

require_ros()

from resilient_perception.ros.node_utils import InputStats  # noqa: E402


def test_input_stats_give_the_rate_and_percentiles_of_the_last_window():
    stats = InputStats(window_s=10.0)
    assert stats.summary(0.0) == {"input_rate_hz": 0.0, "p50_ms": 0.0, "p99_ms": 0.0}
    for k in range(20):  # 2 Hz for 10 s; every fifth input rejected
        stats.add(k * 0.5, None if k % 5 == 0 else 0.001 * (1 + k % 5))
    summary = stats.summary(9.5)
    assert summary["input_rate_hz"] == pytest.approx(20 / 9.5, abs=0.01)
    # accepted ones took 2, 3, 4 and 5 ms in turn
    assert summary["p50_ms"] == pytest.approx(3.5)
    assert summary["p99_ms"] == pytest.approx(5.0, abs=0.05)
    stats.add(30.0, 0.010)  # the old ones leave the window
    assert stats.summary(30.0) == {"input_rate_hz": 0.1, "p50_ms": 10.0, "p99_ms": 10.0}
