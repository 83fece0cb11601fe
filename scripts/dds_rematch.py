#!/usr/bin/env python3
"""How long Fast DDS takes to deliver to a node that restarts, without any package code.

One process publishes a std_msgs/Header at 30 Hz; a subscriber process is started RUNS
times, each time ended (``--end kill``: SIGKILL, a crash; ``--end int``: SIGINT, a clean
exit) 1 s after its first message, and started again 1 s later, as the soak does with the
fusion node. Per run it records the time from the subscriber's node being created to its
subscription matching the publisher and to its first message. The soak's fusion restart
reaction contains this time; this script measures it for a bare pair of rclpy nodes.

``--subscriber-transport udp`` starts the subscriber with ``config/fastdds_udp_only.xml``
(its samples over UDP, not shared memory), as `soak --fusion-transport udp` starts
its fusion node.

Usage: scripts/dds_rematch.py [--runs 20] [--end kill|int] [--subscriber-transport shm|udp]
                              [--domain 230] [--out CSV]
Prints one line per run and the median and maximum; ``--out`` keeps the rows as CSV.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import signal
import statistics
import subprocess
import sys
import time

PERIOD_S = 1 / 30
UDP_ONLY_PROFILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "config",
                                "fastdds_udp_only.xml")
WAIT_S = 20.0  # a subscriber that hears nothing for this long is reported as such


def publish() -> None:
    """The publisher's process: a Header with a counter every PERIOD_S, until SIGINT."""
    import rclpy
    from std_msgs.msg import Header

    rclpy.init()
    node = rclpy.create_node("rematch_publisher")
    publisher = node.create_publisher(Header, "rematch", 10)
    count = 0

    def tick() -> None:
        nonlocal count
        count += 1
        publisher.publish(Header(frame_id=str(count)))

    node.create_timer(PERIOD_S, tick)
    with contextlib.suppress(KeyboardInterrupt, rclpy.executors.ExternalShutdownException):
        rclpy.spin(node)


def subscribe() -> None:
    """The subscriber's process: prints 'matched_s first_s' once its first message came."""
    import rclpy
    from std_msgs.msg import Header

    rclpy.init()
    node = rclpy.create_node("rematch_subscriber")
    created = time.monotonic()
    first: list[float] = []
    subscription = node.create_subscription(Header, "rematch",
                                            lambda _: first.append(time.monotonic()), 10)
    matched = None
    with contextlib.suppress(KeyboardInterrupt, rclpy.executors.ExternalShutdownException):
        while not first:
            rclpy.spin_once(node, timeout_sec=0.005)
            if matched is None and subscription.get_publisher_count() > 0:
                matched = time.monotonic()
        print(f"{(matched or first[0]) - created:.4f} {first[0] - created:.4f}", flush=True)
        rclpy.spin(node)


def measure(runs: int, end: str, domain: int, transport: str = "shm") -> list[dict]:
    """Start the publisher, then ``runs`` subscribers one after the other; their rows."""
    env = {**os.environ, "ROS_DOMAIN_ID": str(domain),
           "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}
    subscriber_env = env if transport == "shm" else {
        **env, "FASTDDS_DEFAULT_PROFILES_FILE": os.path.normpath(UDP_ONLY_PROFILE)}
    me = [sys.executable, os.path.abspath(__file__)]
    publisher = subprocess.Popen([*me, "--role", "publish"], env=env)
    rows = []
    try:
        time.sleep(2.0)
        for run in range(1, runs + 1):
            subscriber = subprocess.Popen([*me, "--role", "subscribe"], env=subscriber_env,
                                          stdout=subprocess.PIPE, text=True)
            started = time.monotonic()
            line = ""
            while not line and time.monotonic() - started < WAIT_S:
                line = subscriber.stdout.readline().strip()
            matched, first = (float(v) for v in line.split()) if line else (None, None)
            rows.append({"run": run, "end": end, "subscriber_transport": transport,
                         "matched_s": matched, "first_message_s": first})
            print(f"run {run}: matched {matched} s, first message {first} s", flush=True)
            time.sleep(1.0)
            subscriber.send_signal(signal.SIGKILL if end == "kill" else signal.SIGINT)
            subscriber.wait(10)
            time.sleep(1.0)
    finally:
        publisher.send_signal(signal.SIGINT)
        publisher.wait(10)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--end", choices=("kill", "int"), default="kill",
                        help="how each subscriber ends: SIGKILL (a crash) or SIGINT")
    parser.add_argument("--subscriber-transport", choices=("shm", "udp"), default="shm",
                        help="the subscriber's samples over shared memory (Fast DDS's "
                        "default) or UDP (config/fastdds_udp_only.xml)")
    parser.add_argument("--domain", type=int, default=230, help="ROS_DOMAIN_ID (0-232)")
    parser.add_argument("--out", help="CSV file for the rows")
    parser.add_argument("--role", choices=("publish", "subscribe"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        (publish if args.role == "publish" else subscribe)()
        return 0
    if args.runs < 1 or not 0 <= args.domain <= 232:
        parser.error("--runs must be >= 1 and --domain within 0-232")
    rows = measure(args.runs, args.end, args.domain, args.subscriber_transport)
    if args.out:
        with open(args.out, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    heard = [r["first_message_s"] for r in rows if r["first_message_s"] is not None]
    if heard:
        print(f"first message after the node: median {statistics.median(heard):.3f} s, "
              f"max {max(heard):.3f} s ({len(heard)} of {len(rows)} runs heard in {WAIT_S:g} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
