"""The installed planner_node re-planning for a simulated fleet (one process publishing the
heartbeats and link measurements of 12 robots): a lost robot gets a plan without it at
once, the solver's plan follows only if better, a robot that comes back is planned in.
"""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from test.conftest import ROOT, domain_id, require_ros

require_ros()

from resilient_perception.harness.pipeline import (  # noqa: E402
    NodeSpec,
    Observer,
    Pipeline,
    package_prefix,
)
from resilient_perception.harness.simulated_fleet import SimulatedFleet  # noqa: E402
from resilient_perception.placement.block_profile import load_profile  # noqa: E402
from resilient_perception.placement.fleet_generator import (  # noqa: E402
    fleet_document,
    generate_fleet,
)
from resilient_perception.placement.problem import Network  # noqa: E402
from resilient_perception.ros.planner_node import INCUMBENT  # noqa: E402

DOMAIN_ID = domain_id()
PROFILE = ROOT / "docs/results/resnet/baseline-w8/plain/profile.json"
WAIT_S = 30.0

pytestmark = [
    pytest.mark.ros,
    pytest.mark.timeout(120),
    pytest.mark.skipif(not (package_prefix() / "lib/resilient_perception/planner_node").is_file(),
                       reason="planner_node not installed: scripts/setup.sh"),
]


def test_a_lost_robot_is_planned_out_at_once_and_the_solver_only_improves(tmp_path):
    config = generate_fleet(12, seed=3, accuracy_threshold=0.6)
    (tmp_path / "fleet.yaml").write_text(yaml.safe_dump(fleet_document(config)))
    rates = config.problem(Network.from_profile(load_profile(PROFILE))).rates_bps
    planner = NodeSpec("planner", "planner_node", {
        "fleet": str(tmp_path / "fleet.yaml"), "profile": str(PROFILE), "solver": "cpsat",
        "time_limit_s": 0.5, "robot_timeout_s": 0.5})
    names = list(config.fleet.names)
    with Pipeline([planner], log_dir=tmp_path / "logs", domain_id=DOMAIN_ID) as pipeline, \
            Observer("simulated_fleet", domain_id=DOMAIN_ID) as observer:
        fleet = SimulatedFleet(observer.node, names, rates)
        pipeline.start()
        observer.spin_until(lambda: fleet.plans and all(fleet.plans[-1].msg.robots_alive),
                            "a plan for all 12 robots", WAIT_S, pipeline)
        # A source of a request and a robot without one.
        for victim in (int(config.sources[0]),
                       int(np.setdiff1d(np.arange(12), config.sources)[0])):
            observer.spin_for(1.5)  # the solver is done with the plan before
            before = len(fleet.plans)
            fleet.lose(victim)
            first = observer.spin_until(
                lambda v=victim, b=before: next((p.msg for p in fleet.plans[b:]
                                                 if not p.msg.robots_alive[v]), None),
                f"a plan without {names[victim]}", WAIT_S, pipeline)
            assert first.reason == "robot lost" and first.status in ("optimal", INCUMBENT)
            assert victim not in first.devices and victim not in first.sources
            observer.spin_for(1.5)  # the solver's plan, if any, within its 0.5 s limit
            later = [p.msg for p in fleet.plans[before:] if p.msg.version > first.version]
            assert len(later) <= 1
            for plan in later:  # only ever a better plan for the same robots
                assert plan.reason == "robot lost" and plan.status in ("optimal", "feasible")
                assert plan.objective < first.objective
                assert list(plan.robots_alive) == list(first.robots_alive)
                assert plan.version == first.version + 1
            if first.status == "optimal":
                assert later == []
            fleet.revive(victim)
            back = observer.spin_until(
                lambda b=before: next((p.msg for p in fleet.plans[b:]
                                       if all(p.msg.robots_alive)), None),
                f"{names[victim]} planned in again", WAIT_S, pipeline)
            assert back.reason == "robot joined"
    log = (tmp_path / "logs/planner.log").read_text()
    assert "failed" not in log and "Traceback" not in log
