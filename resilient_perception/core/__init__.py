"""ROS-free core: pure numpy/torch algorithms. Nothing here may import rclpy or messages."""
