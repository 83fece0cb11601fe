"""Thin rclpy nodes, one module per node, and their plumbing.

The plumbing: the topic contract (:mod:`.topics`, every topic name and QoS profile), image
conversion, bags, warm-up and node utilities. A node converts messages, keeps time and
liveness, and calls the ROS-free rooms.
"""
