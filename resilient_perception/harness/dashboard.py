"""The dashboard beside a pipeline: its node spec, its URL, and a headless browser on it.

Shared by the demo (``demo --dashboard``), the benchmark (``bench-pipeline --dashboard``)
and the browser test: the dashboard node is one more process of the pipeline, and its URL
(port 0 picks a free port) is read from its ``/diagnostics``.
"""

from __future__ import annotations

from diagnostic_msgs.msg import DiagnosticArray

from ..ros.topics import DIAGNOSTICS_TOPIC, status_node
from .pipeline import NodeSpec, Observer, Pipeline

__all__ = ["DASHBOARD_NODE", "all_tiles_live", "dashboard_node", "wait_for_dashboard_url"]

DASHBOARD_NODE = "dashboard"
"""Name of the dashboard node in the harness's pipelines."""


def dashboard_node(num_cameras: int, port: int = 0, bind_address: str = "127.0.0.1",
                   fusion_node: str = "fusion", image_transport: str = "raw") -> NodeSpec:
    """The dashboard node of a pipeline with ``num_cameras`` cameras (port 0: a free one)."""
    return NodeSpec(DASHBOARD_NODE, "dashboard_node", {
        "num_devices": num_cameras, "port": port, "bind_address": bind_address,
        "fusion_node": fusion_node, "image_transport": image_transport})


def wait_for_dashboard_url(observer: Observer, timeout: float,
                           pipeline: Pipeline | None = None) -> str:
    """The dashboard node's URL, from its ``/diagnostics`` (its first report, ~1 s).

    Raises:
        TimeoutError: If no dashboard reported within ``timeout`` s.
    """
    arrays: list[DiagnosticArray] = []
    subscription = observer.node.create_subscription(DiagnosticArray, DIAGNOSTICS_TOPIC,
                                                     arrays.append, 10)

    def url() -> str | None:
        return next((kv.value for array in arrays for status in array.status
                     if status_node(status.name) == f"/{DASHBOARD_NODE}" for kv in status.values
                     if kv.key == "url"), None)

    try:
        return observer.spin_until(url, "the dashboard's URL on /diagnostics", timeout,
                                   pipeline)
    finally:
        observer.node.destroy_subscription(subscription)


def all_tiles_live(num_cameras: int) -> str:
    """A page expression: ``num_cameras`` tiles, each live with a preview image."""
    return (f"document.querySelectorAll('.tile').length == {num_cameras} && "
            "[...document.querySelectorAll('.tile')].every("
            "t => t.dataset.state == 'live' && t.querySelector('img').src)")
