"""The adaptive ResNet's placement, without ROS.

The block-addressable ResNet and its training, the block-drop study, block profiles, the
placement problem and its solvers, fleet files, link-rate estimation and the arithmetic of
distributed inference. Nothing here imports rclpy or messages.
"""
