"""resilient_perception: fault-tolerant multi-camera perception for ROS 2 robot fleets.

``resilient_perception.core`` holds the ROS-free algorithms (datasets, views, device CNNs,
the Modifier, fusion, training, evaluation); ``resilient_perception.ros`` holds thin rclpy
nodes over them; ``resilient_perception.cli`` is the command-line entry point.
"""

__version__ = "0.1.0"
