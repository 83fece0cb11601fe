"""Thin rclpy adapters over ``resilient_perception.core``: one module per node."""
