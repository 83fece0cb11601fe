"""Small helpers shared by the package's nodes (parameter descriptors, a main loop)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

__all__ = ["THROTTLE_S", "descriptor", "run_node"]

# Period of throttled warnings about bad messages, seconds.
THROTTLE_S = 5.0


def descriptor(
    description: str,
    kind: int,
    int_range: tuple[int, int] | None = None,
    float_range: tuple[float, float] | None = None,
) -> ParameterDescriptor:
    """A parameter descriptor with a type and, optionally, an inclusive value range.

    Args:
        description: Text shown by ``ros2 param describe``.
        kind: A ``rcl_interfaces.msg.ParameterType`` constant.
        int_range: Inclusive (from, to) for integer parameters.
        float_range: Inclusive (from, to) for double parameters.

    Returns:
        The descriptor; rclpy then rejects values of another type or outside the range.
    """
    result = ParameterDescriptor(description=description, type=kind)
    if int_range is not None:
        result.integer_range = [
            IntegerRange(from_value=int_range[0], to_value=int_range[1], step=1)]
    if float_range is not None:
        result.floating_point_range = [
            FloatingPointRange(from_value=float_range[0], to_value=float_range[1], step=0.0)]
    return result


def run_node(
    node_class: type,
    name: str,
    argv: list[str] | None = None,
    on_created: Callable[[Any], int | None] | None = None,
) -> int:
    """Create ``node_class()`` and spin it until SIGINT/SIGTERM; return the exit code.

    ``on_created(node)`` runs before spinning (e.g. a lifecycle node's autostart); a
    non-None result is returned as the exit code without spinning.

    Exit codes: 0 after SIGINT/SIGTERM, 2 for a parameter of the wrong type or out of its
    range, or another invalid configuration (a ``ValueError`` from the constructor).
    """
    import rclpy
    from rclpy.exceptions import (
        InvalidParameterTypeException,
        InvalidParameterValueException,
    )
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor

    rclpy.init(args=argv)
    node = None
    try:
        try:
            node = node_class()
        except (InvalidParameterTypeException, InvalidParameterValueException,
                ValueError) as exc:
            rclpy.logging.get_logger(name).fatal(f"invalid parameter or configuration: {exc}")
            return 2
        if on_created is not None and (code := on_created(node)) is not None:
            return code
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0
