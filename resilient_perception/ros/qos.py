"""QoS profiles shared by the camera and fusion nodes.

Publisher and subscriber of one topic must use *compatible* profiles, or DDS never matches
them and messages silently stop (rclpy only logs an "incompatible QoS" event):

* reliability: a RELIABLE subscriber needs a RELIABLE publisher;
* durability: a TRANSIENT_LOCAL subscriber needs a TRANSIENT_LOCAL publisher;
* deadline: the publisher's *offered* deadline must be <= the subscriber's *requested* one;
* liveliness: the offered lease duration must be <= the requested one (and the kinds must
  be compatible: AUTOMATIC offered satisfies AUTOMATIC requested).

Both sides therefore build their profiles with these helpers and the same parameters; a
camera node may offer a *shorter* deadline or lease than the fusion node requests, never a
longer one.
"""

from __future__ import annotations

from rclpy.duration import Duration
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    LivelinessPolicy,
    QoSProfile,
    ReliabilityPolicy,
)

__all__ = ["IMAGE_QUEUE_DEPTH", "PREDICTION_QUEUE_DEPTH", "head_qos", "image_qos",
           "prediction_qos"]


def _duration(seconds: float, name: str) -> Duration:
    if not seconds > 0.0:
        raise ValueError(f"{name} must be a positive number of seconds, got {seconds!r}")
    return Duration(nanoseconds=round(seconds * 1e9))


# Predictions a camera's writer and the fusion node's reader each hold: a fusion node that
# stalls for up to 100 frames (3.3 s at 30 Hz) catches up without losing one. With 10 it
# lost whole frames after a stall of a third of a second (test_pipeline's stall test): a
# RELIABLE KEEP_LAST writer drops samples its reader has not acknowledged once its history
# is full. A prediction is ~300 bytes, so the depth costs next to nothing.
PREDICTION_QUEUE_DEPTH = 100

# Images a camera's reader holds: a camera that stops taking images for up to 1 s at 30 Hz
# catches up without losing one. A camera stops when its own publish() blocks: with Fast
# DDS's default synchronous publication, a reader process that freezes (SIGSTOP, a
# debugger, swapping) can block its writers' publish() for as long as it stays frozen, over
# shared memory and UDP alike. A fusion node frozen for 0.8 s blocked every camera for all
# of it in about one freeze in ten, and with depth 5 the cameras lost all but the last 5
# images (test_pipeline's stall test). Asynchronous publication avoids the block but cost
# 2-4 ms of end-to-end latency and half the throughput on 2 cores (docs/results.md). The
# price of depth 30: a camera too slow for the frame rate lags up to 30 frames before it
# drops.
IMAGE_QUEUE_DEPTH = 30


def prediction_qos(deadline_s: float, lease_s: float) -> QoSProfile:
    """Profile of ``DevicePrediction`` topics: liveness is watched through QoS events.

    RELIABLE, KEEP_LAST :data:`PREDICTION_QUEUE_DEPTH`, VOLATILE, with a ``deadline`` (a
    subscriber gets a deadline-missed event when no sample arrived for that long) and
    AUTOMATIC liveliness with lease ``lease_s`` (liveliness-lost when the publishing
    process dies or hangs).

    The publisher's offered deadline and lease must be <= the subscriber's requested ones,
    otherwise the two never match and predictions silently stop arriving. Deadline events
    fire only after a first sample, so the fusion node also needs a watchdog.

    Args:
        deadline_s: Deadline period in seconds (> 0).
        lease_s: Liveliness lease duration in seconds (> 0).

    Returns:
        The QoS profile.

    Raises:
        ValueError: If a duration is not positive.
    """
    return QoSProfile(
        reliability=ReliabilityPolicy.RELIABLE,
        history=HistoryPolicy.KEEP_LAST,
        depth=PREDICTION_QUEUE_DEPTH,
        durability=DurabilityPolicy.VOLATILE,
        deadline=_duration(deadline_s, "deadline"),
        liveliness=LivelinessPolicy.AUTOMATIC,
        liveliness_lease_duration=_duration(lease_s, "liveliness lease"),
    )


def head_qos() -> QoSProfile:
    """Profile of ``ClassifierHead`` topics: latched (RELIABLE, TRANSIENT_LOCAL, depth 1).

    The head is published once; a subscriber that joins later (a restarted fusion node)
    still receives the last one. Subscribers must also request TRANSIENT_LOCAL to get it.
    """
    return QoSProfile(
        reliability=ReliabilityPolicy.RELIABLE,
        history=HistoryPolicy.KEEP_LAST,
        depth=1,
        durability=DurabilityPolicy.TRANSIENT_LOCAL,
    )


def image_qos() -> QoSProfile:
    """Profile of camera image topics: sensor-data-like, but RELIABLE and deeper.

    Like ``qos_profile_sensor_data`` (KEEP_LAST, VOLATILE: only fresh frames matter)
    except for reliability and the depth, :data:`IMAGE_QUEUE_DEPTH` instead of 5. A
    RELIABLE subscription matches only RELIABLE publishers, and bag replay and most camera
    drivers and Gazebo bridges publish RELIABLE; a BEST_EFFORT subscription would match both
    but lets DDS drop frames of a replayed bag, which breaks frame-by-frame comparisons. A
    camera driver that publishes BEST_EFFORT is not matched by this profile: its images
    then silently never arrive (subscribe with ``qos_profile_sensor_data`` for such a
    driver).
    """
    return QoSProfile(
        reliability=ReliabilityPolicy.RELIABLE,
        history=HistoryPolicy.KEEP_LAST,
        depth=IMAGE_QUEUE_DEPTH,
        durability=DurabilityPolicy.VOLATILE,
    )
