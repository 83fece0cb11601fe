"""The live pipeline benchmark, shortened: every phase runs and no labelled frame is lost.

Timings are the benchmark's business, not this test's: it checks what the benchmark
produces and the one property that does not depend on the machine's speed (each player
warms up until its frames reach every camera, so none of its labelled frames is lost).
"""

from __future__ import annotations

import json

import pytest

from test.conftest import DATA_ROOT, ROOT, needs_data, require_ros

require_ros()

from resilient_perception.bench.pipeline_benchmark import (  # noqa: E402
    frames_lost,
    run_pipeline_benchmark,
)
from resilient_perception.harness.browser import chromium_path  # noqa: E402
from resilient_perception.harness.pipeline import package_prefix  # noqa: E402

pytestmark = [
    pytest.mark.ros,
    pytest.mark.timeout(300),
    pytest.mark.skipif(not (package_prefix() / "lib" / "resilient_perception" / "player_node")
                       .is_file(), reason="nodes not installed: run scripts/setup.sh"),
    needs_data,
]


def test_short_benchmark_runs_every_phase_and_loses_no_frame(briefly_trained_onnx, tmp_path,
                                                             monkeypatch):
    monkeypatch.setenv("RESILIENT_PERCEPTION_DATA", str(DATA_ROOT))
    result = run_pipeline_benchmark(ROOT / "config" / "mnist_6cam.yaml", briefly_trained_onnx,
                                    tmp_path, steady_s=3.0, kills=1, rates=(30.0,),
                                    rate_step_s=2.0, emit=lambda _: None,
                                    compare_one_process=True,
                                    dashboard=chromium_path() is not None)
    assert frames_lost(result) == 0
    assert result["steady"]["stream"]["labelled_frames"] == 90
    (kill,) = result["failure_reaction"]["kills"]
    assert kill["device"] == 0 and kill["reaction_s"] is not None  # a surrogate came
    assert result["max_rate"]["steps"][0]["lost"] == 0
    deployments = result["deployments"]
    per, one = deployments["per_process"], deployments["one_process"]
    assert per["processes"] == [*(f"camera_{i}" for i in range(6)), "fusion"]
    assert one["processes"] == ["perception"]
    for deployment in (per, one):
        assert deployment["lost"] == 0 and deployment["frames"] == 90
        assert deployment["deactivation_reaction_s"] is not None  # a surrogate came
    assert one["rss_mb"] < per["rss_mb"]  # one participant and runtime instead of seven
    assert result == json.loads((tmp_path / "benchmark.json").read_text())
    assert "| processes (fusion + cameras) | - | 7 | 1 |" in (tmp_path / "benchmark.md").read_text()
    assert "| frames lost (steady + kills) | 0 | 0 |" in (tmp_path / "benchmark.md").read_text()
    if chromium_path() is not None:  # without, with the page open, without again
        runs = result["dashboard"]["runs"]
        assert [runs[k]["stream"]["missing"] for k in runs] == [0, 0, 0]
        assert runs["with_dashboard"]["url"].startswith("http://127.0.0.1:")
        assert "| dashboard + page open | 90 | 0 |" in (tmp_path / "benchmark.md").read_text()
