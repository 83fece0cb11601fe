"""The Modifier paper's perception, without ROS.

Device CNNs, views, the Modifier and its learned options, fusion, frame assembly, joint
training with fail-simulation, failure evaluation, ONNX export and the torch-free runtime
the camera and fusion nodes call. Nothing here imports rclpy or messages; the runtime path
(views, frame assembly, export's ONNX Runtime runner) imports neither torch nor onnx at
module level.
"""
