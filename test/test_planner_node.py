"""The installed planner_node as its own process, fed heartbeats and link measurements by
this test over DDS: implausible rates are rejected at the message, a solve that fails is
survived with the plan published before it in force, and SIGINT after a CP-SAT solve still
exits 0.
"""

from __future__ import annotations

import pytest
import yaml

from test.conftest import ROOT, domain_id, require_ros

msgs = require_ros()

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from resilient_perception.harness.pipeline import (  # noqa: E402
    NodeSpec,
    Observer,
    Pipeline,
    package_prefix,
)
from resilient_perception.ros.planner_node import INCUMBENT  # noqa: E402
from resilient_perception.ros.topics import (  # noqa: E402
    HEARTBEAT_TOPIC_FORMAT,
    LINK_MEASUREMENT_TOPIC,
    PLAN_TOPIC,
    plan_qos,
    status_node,
)

DOMAIN_ID = domain_id()
ROBOTS = ["robot0", "robot1", "robot2"]
WAIT_S = 20.0

pytestmark = [
    pytest.mark.ros,
    pytest.mark.timeout(60),
    pytest.mark.skipif(not (package_prefix() / "lib/resilient_perception/planner_node").is_file(),
                       reason="planner_node not installed: scripts/setup.sh"),
]


def versions(plans: list) -> list[int]:
    """The plan versions received, each once (the planner repeats the plan in force)."""
    return sorted({p.version for p in plans})


def _counters(arrays: list) -> dict[str, str]:
    for array in reversed(arrays):
        for status in array.status:
            if status_node(status.name) == "/planner":
                return {kv.key: kv.value for kv in status.values}
    return {}


def test_bad_rates_are_rejected_a_failed_replan_is_survived_and_sigint_exits_0(tmp_path):
    # The fleet file's robot0 -> robot2 rate is 1e-300 bit/s: the first re-plan's solve
    # overflows in the solver's objective scaling (as a measured 1e-300 once did). Two
    # requests on robot0 and too little compute for both without dropping blocks: the
    # quick plan finds no plan, so the solver runs (on its thread).
    fleet = yaml.safe_load((ROOT / "config/fleet_distributed.yaml").read_text())
    fleet["rates_mbps"][0][2] = 1e-306
    fleet["requests"] = ["robot0", "robot0"]
    for device in fleet["devices"]:
        device["compute_gmacs"] = 0.013
    (tmp_path / "fleet.yaml").write_text(yaml.safe_dump(fleet))
    planner = NodeSpec("planner", "planner_node", {
        "fleet": str(tmp_path / "fleet.yaml"),
        "profile": str(ROOT / "docs/results/resnet/baseline-w8/plain/profile.json"),
        "solver": "cpsat", "time_limit_s": 0.5, "robot_timeout_s": 5.0})
    with Pipeline([planner], log_dir=tmp_path / "logs", domain_id=DOMAIN_ID) as pipeline, \
            Observer("planner_test", domain_id=DOMAIN_ID) as observer:
        plans = observer.collect(msgs.PlacementPlan, PLAN_TOPIC, plan_qos())
        diagnostics = observer.collect(DiagnosticArray, "/diagnostics")
        beats = [observer.node.create_publisher(Header, HEARTBEAT_TOPIC_FORMAT.format(r), 10)
                 for r in ROBOTS]
        links = observer.node.create_publisher(msgs.LinkMeasurement, LINK_MEASUREMENT_TOPIC, 50)
        observer.node.create_timer(0.1, lambda: [
            beat.publish(Header(frame_id=robot)) for beat, robot in zip(beats, ROBOTS,
                                                                        strict=True)])
        pipeline.start()

        def measure(rate: float, src: str = "robot0", dst: str = "robot2") -> None:
            links.publish(msgs.LinkMeasurement(from_robot=src, to_robot=dst,
                                               throughput_bps=rate))

        observer.spin_until(lambda: _counters(diagnostics).get("replan_errors") == "1",
                            "the first re-plan to fail", WAIT_S, pipeline)
        observer.spin_until(lambda: links.get_subscription_count(), "the planner's link "
                            "subscription", WAIT_S, pipeline)
        assert plans == []  # no quick plan either (Algorithm 1 finds none), plan 0 stays
        measure(5e6)  # a plausible measurement: the next re-plan succeeds
        first = observer.spin_until(lambda: plans and plans[0], "a plan", WAIT_S, pipeline)
        assert first.reason == "rate change" and first.status in ("optimal", INCUMBENT)
        observer.spin_for(3.0)  # the solver's plan, if better, within its time limit
        assert all(p.reason == "rate change" for p in plans) and len(versions(plans)) <= 2
        assert plans[-1].status in ("optimal", "feasible", INCUMBENT)
        published = versions(plans)
        assert len(plans) > len(published)  # the plan in force again, every plan_period_s
        # A reader that joins later gets the plan in force: latched, and again every
        # plan_period_s (the VOLATILE reader here gets only the repeats).
        late = observer.collect(msgs.PlacementPlan, PLAN_TOPIC)  # RELIABLE, VOLATILE
        observer.spin_until(lambda: late, "the plan in force, repeated", WAIT_S, pipeline)
        assert late[0].version == published[-1]

        # Now every bad measurement once, between valid heartbeats.
        for rate in (1e-300, 5e-324, float("nan"), float("inf"), -1e6, 1e15):
            measure(rate)
        measure(5e6, "robot0", "robot9")
        measure(5e6, "robot0", "robot0")
        measure(5e6, "x" * 10_000)  # > MAX_MESSAGE_BYTES serialised
        beats[1].publish(Header(frame_id="robot2"))
        sent = {"implausible_rate": 6, "unknown_link": 2, "oversize": 1, "bad_heartbeat": 1}
        counts = observer.spin_until(lambda: (c := _counters(diagnostics)) and all(
            int(c[r]) >= n for r, n in sent.items()) and c, "the rejections", WAIT_S, pipeline)
        observer.spin_for(1.2)  # one more diagnostics period: nothing else counted
        counts = _counters(diagnostics)
        assert {r: int(counts[r]) for r in (*sent, "malformed", "callback_error")} == {
            **sent, "malformed": 0, "callback_error": 0}
        assert counts["rejected"] == str(sum(sent.values()))
        assert counts["replan_errors"] == "1" and counts["plan_version"] == str(published[-1])
        assert versions(plans) == published  # no re-plan for a rejected one
        assert pipeline.interrupt("planner") == 0  # after CP-SAT solves: exit 0
    log = (tmp_path / "logs/planner.log").read_text()
    assert "OverflowError" in log and "keeping plan 0" in log and "Traceback" not in log
    assert max(len(line) for line in log.splitlines()) < 600
