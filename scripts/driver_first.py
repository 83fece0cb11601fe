#!/usr/bin/env python3
"""Does a best-effort subscriber started after its publisher hear it? Bare rclpy, many times.

A camera driver usually starts before the node that reads its images. This script repeats
that start-up ROUNDS times inside one long-lived process, as a test session does: each
round it creates a context and a "driver" node with a best-effort (sensor data)
CompressedImage publisher (``--order driver-first``; ``node-first`` creates it once the
subscriber is up), starts a subscriber process (a bare rclpy node, no package code),
waits until both ends have matched, then publishes one image a second until the
subscriber reports its first one or WAIT_S pass. The subscriber is then ended (``--end``
SIGINT or SIGKILL) and the context shut down. Every round uses the same domain, so
participant ids and their ports are reused, as within one test module.

Usage: scripts/driver_first.py [--rounds 30] [--order driver-first|node-first]
                               [--end int|kill] [--domain 231] [--out CSV]
Prints one line per round (matched, heard, seconds to the first image) and a summary.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import signal
import subprocess
import sys
import time

TOPIC = "driver_first/image_raw/compressed"
WAIT_S = 15.0  # as the camera tests wait for an answer


def subscribe() -> None:
    """The subscriber's process: prints 'first <seconds since its node>' on its first image."""
    import rclpy
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import CompressedImage

    rclpy.init()
    node = rclpy.create_node("driver_first_subscriber")
    created = time.monotonic()
    heard: list[float] = []
    node.create_subscription(CompressedImage, TOPIC, lambda _: heard.append(time.monotonic()),
                             qos_profile_sensor_data)
    with contextlib.suppress(KeyboardInterrupt, rclpy.executors.ExternalShutdownException):
        while not heard:
            rclpy.spin_once(node, timeout_sec=0.01)
        print(f"first {heard[0] - created:.4f}", flush=True)
        rclpy.spin(node)


def one_round(order: str, end: str, env: dict[str, str], domain: int) -> dict:
    """One start-up: driver, subscriber process, images until heard; the round's row."""
    import rclpy
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import CompressedImage

    context = rclpy.Context()
    context.init(domain_id=domain)
    node = rclpy.create_node("driver_first_driver", context=context)
    try:
        def driver():
            return node.create_publisher(CompressedImage, TOPIC, qos_profile_sensor_data)

        publisher = driver() if order == "driver-first" else None
        me = [sys.executable, os.path.abspath(__file__), "--role", "subscribe"]
        subscriber = subprocess.Popen(me, env=env, stdout=subprocess.PIPE, text=True)
        os.set_blocking(subscriber.stdout.fileno(), False)
        started = time.monotonic()
        if publisher is None:
            while node.count_subscribers(TOPIC) == 0 and time.monotonic() - started < WAIT_S:
                time.sleep(0.02)
            publisher = driver()
        while publisher.get_subscription_count() == 0 and time.monotonic() - started < WAIT_S:
            time.sleep(0.02)
        matched = time.monotonic() - started if publisher.get_subscription_count() else None
        sent, line, last = 0, "", 0.0
        deadline = time.monotonic() + WAIT_S
        while matched is not None and not line and time.monotonic() < deadline:
            if time.monotonic() - last >= 1.0:
                publisher.publish(CompressedImage(format="png", data=b"\x89PNG" * 64))
                sent, last = sent + 1, time.monotonic()
            time.sleep(0.02)
            line = subscriber.stdout.readline().strip()
        subscriber.send_signal(signal.SIGKILL if end == "kill" else signal.SIGINT)
        subscriber.wait(10)
        first = float(line.split()[1]) if line.startswith("first") else None
        return {"order": order, "end": end, "matched_s": matched, "images_sent": sent,
                "heard": first is not None, "first_image_s": first}
    finally:
        node.destroy_node()
        context.shutdown()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--order", choices=("driver-first", "node-first"), default="driver-first",
                        help="the driver's publisher before the subscriber's process, or after "
                        "its subscription is up")
    parser.add_argument("--end", choices=("int", "kill"), default="int",
                        help="how each subscriber ends: SIGINT or SIGKILL (a crash)")
    parser.add_argument("--domain", type=int, default=231, help="ROS_DOMAIN_ID (0-232)")
    parser.add_argument("--out", help="CSV file for the rows")
    parser.add_argument("--role", choices=("subscribe",), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        subscribe()
        return 0
    if args.rounds < 1 or not 0 <= args.domain <= 232:
        parser.error("--rounds must be >= 1 and --domain within 0-232")
    env = {**os.environ, "ROS_DOMAIN_ID": str(args.domain),
           "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    rows = []
    for n in range(1, args.rounds + 1):
        row = one_round(args.order, args.end, env, args.domain)
        rows.append(row)
        print(f"round {n}: matched {row['matched_s']} s, {row['images_sent']} images sent, "
              f"first heard {row['first_image_s']} s", flush=True)
    if args.out:
        with open(args.out, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    deaf = sum(not r["heard"] for r in rows)
    print(f"{args.order}, subscribers ended by SIG{args.end.upper()}: the subscriber heard "
          f"nothing within {WAIT_S:g} s in {deaf} of {len(rows)} rounds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
