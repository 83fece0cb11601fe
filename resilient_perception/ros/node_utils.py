"""Small helpers shared by the package's nodes (parameter descriptors)."""

from __future__ import annotations

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

__all__ = ["THROTTLE_S", "descriptor"]

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
