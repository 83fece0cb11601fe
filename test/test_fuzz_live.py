"""`resilient-perception fuzz` with 1,000 malformed messages, over real DDS between processes.

Every node stays up, its /diagnostics counts match what was sent per reason, every labelled
frame is fused exactly as the offline computation, and RSS stays bounded
(:mod:`resilient_perception.bench.fuzz`).
"""

from __future__ import annotations

import json
import os

import pytest

from test.conftest import DATA_ROOT, domain_id, needs_cli, needs_data, require_ros, run_cli_process

require_ros()
DOMAIN_ID = domain_id()


@needs_cli
@needs_data
@pytest.mark.timeout(600)
def test_fuzz_1000_messages(briefly_trained_checkpoint, tmp_path):
    out = tmp_path / "fuzz"
    env = {**os.environ, "ROS_DOMAIN_ID": str(DOMAIN_ID),
           "RESILIENT_PERCEPTION_DATA": str(DATA_ROOT)}
    result = run_cli_process("fuzz", str(briefly_trained_checkpoint), "--messages", "1000",
                             "--out", str(out), "--no-progress", "--data-root", str(DATA_ROOT),
                             cwd=tmp_path, env=env, timeout=600)
    assert (out / "fuzz.json").is_file(), result.stderr[-3000:]
    report = json.loads((out / "fuzz.json").read_text())
    assert report["failures"] == [], result.stdout[-3000:]
    assert result.returncode == 0
    frames = report["frames"]
    assert frames["labelled_during_fuzz"] > 0
    assert frames["identical_to_offline"] == frames["labelled"]
    assert sum(report["sent_per_kind"].values()) == 1000
    assert len(report["sent_per_kind"]) == len(report["kinds"])  # every kind was sent
