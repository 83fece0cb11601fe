"""The installed camera_node executable, as its own process, on real MNIST images over DDS."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy not installed: run scripts/setup.sh")
msgs = pytest.importorskip(
    "resilient_perception.msg", reason="messages not built: run scripts/setup.sh"
)

from builtin_interfaces.msg import Time  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from resilient_perception.core.checkpoint import save_checkpoint  # noqa: E402
from resilient_perception.core.datasets import load_mnist  # noqa: E402
from resilient_perception.core.export import DeviceRunner, export_checkpoint  # noqa: E402
from resilient_perception.core.views import ViewSpec, crop_views  # noqa: E402
from resilient_perception.ros.image_conversion import array_to_image  # noqa: E402
from resilient_perception.ros.qos import head_qos, image_qos, prediction_qos  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets"
NODE = Path(sys.executable).parent.parent / "lib" / "resilient_perception" / "camera_node"
SPEC = ViewSpec(kind="grid")  # 3x2 grid: 10x14 views of 28x28 digits
CLASSES = [str(k) for k in range(10)]
DEVICE = 2
WAIT_S = 15.0  # upper bound of any single wait; a healthy run needs well under 1 s each

pytestmark = [
    pytest.mark.ros,
    pytest.mark.timeout(60),
    pytest.mark.skipif(not DATA.is_dir(), reason="../shared/datasets not present"),
    pytest.mark.skipif(not NODE.is_file(), reason="camera_node not installed: scripts/setup.sh"),
]


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    """The first 256 real MNIST test images, uint8 (256, 1, 28, 28)."""
    return load_mnist(DATA, "test").images[:256]


@pytest.fixture(scope="module")
def model_files(briefly_trained_model, tmp_path_factory) -> dict[str, Path]:
    """A checkpoint after a few SGD steps (non-default BN statistics) and device 2's ONNX."""
    net = briefly_trained_model
    folder = tmp_path_factory.mktemp("camera_model")
    checkpoint = save_checkpoint(folder / "model.safetensors", net.eval(), {
        "view_spec": SPEC.to_dict(), "classes": CLASSES, "dataset": "mnist"})
    (onnx_path,) = export_checkpoint(checkpoint, folder, devices=[DEVICE])
    return {"checkpoint": checkpoint, "onnx": onnx_path}


@pytest.fixture(scope="module")
def runner(model_files) -> DeviceRunner:
    return DeviceRunner.from_onnx(model_files["onnx"], threads=1)


@pytest.fixture(scope="module")
def ros_env(tmp_path_factory):
    """Loopback-only DDS on a domain of this test run; restored afterwards."""
    saved = {k: os.environ.get(k) for k in ("ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_DOMAIN_ID")}
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    os.environ["ROS_DOMAIN_ID"] = str(os.getpid() % 90 + 110)
    yield dict(os.environ)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def start_node(env: dict, cwd: Path, *params: str) -> subprocess.Popen:
    """Start the installed executable; cwd outside the repo, output to files (never a pipe)."""
    args = [str(NODE), "--ros-args", "-r", "__node:=camera_2",
            "-r", "image_raw:=camera_2/image_raw"]
    for param in params:
        args += ["-p", param]
    with open(cwd / "node.out", "w") as out:  # the child keeps its own copy of the fd
        return subprocess.Popen(args, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)


class Camera:
    """The node process and this test's rclpy node (in its own context) talking to it."""

    def __init__(self, process: subprocess.Popen, log: Path) -> None:
        self.process, self.log = process, log
        self.context = rclpy.Context()
        self.context.init()
        self.node = rclpy.create_node("camera_node_test", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.images = self.node.create_publisher(Image, "camera_2/image_raw", image_qos())
        self.predictions: list = []
        # Requested deadline/lease >= the node's offered 0.5 s / 1.0 s: compatible.
        self.node.create_subscription(msgs.DevicePrediction, "prediction",
                                      self.predictions.append, prediction_qos(2.0, 2.0))

    def spin_until(self, condition, what: str, timeout: float = WAIT_S):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            value = condition()
            if value:
                return value
            assert self.process.poll() is None, f"node exited:\n{self.log.read_text()}"
            self.executor.spin_once(timeout_sec=0.05)
        pytest.fail(f"timed out waiting for {what}; node log:\n{self.log.read_text()}")

    def received(self, stamp: Time):
        return next((p for p in self.predictions if p.header.stamp == stamp), None)

    def ask(self, msg: Image):
        """Publish ``msg`` (again every second, in case discovery was still settling)."""
        last = -1.0

        def answered():
            nonlocal last
            if time.monotonic() - last > 1.0:
                self.images.publish(msg)
                last = time.monotonic()
            return self.received(msg.header.stamp)

        return self.spin_until(answered, f"a prediction stamped {msg.header.stamp}")

    def close(self) -> None:
        """Shut this side down and make sure the node process is gone."""
        self.executor.shutdown()
        self.node.destroy_node()
        self.context.try_shutdown()
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


@pytest.fixture(scope="module")
def camera(ros_env, model_files, tmp_path_factory):
    cwd = tmp_path_factory.mktemp("camera_run")
    process = start_node(ros_env, cwd, f"device_id:={DEVICE}",
                         f"model_path:={model_files['onnx']}")
    cam = Camera(process, cwd / "node.out")
    try:
        cam.spin_until(lambda: cam.images.get_subscription_count() > 0
                       and cam.node.count_publishers("prediction") > 0, "the node's topics")
        yield cam
    finally:
        cam.close()


def image_msg(image: np.ndarray, sec: int, nanosec: int = 0, encoding: str = "mono8") -> Image:
    return array_to_image(image.transpose(1, 2, 0), encoding, Time(sec=sec, nanosec=nanosec),
                          "camera_2_optical")


def test_predictions_match_the_runner_on_real_images(camera, runner, images):
    for k, index in enumerate((0, 7, 42)):
        msg = image_msg(images[index], sec=100 + k, nanosec=123_456 * k)
        pred = camera.ask(msg)
        view = crop_views(images[index : index + 1], SPEC.boxes(28, 28))[:, DEVICE]
        probs, features = runner.run(view)
        assert pred.device_id == DEVICE
        assert pred.header.frame_id == "camera_2_optical"
        np.testing.assert_allclose(pred.probabilities, probs[0], atol=1e-5)
        np.testing.assert_allclose(pred.features, features[0], atol=1e-5)
        assert 0.0 < pred.inference_time < 5.0


def test_late_subscriber_gets_the_head(camera, runner):
    heads = []
    camera.node.create_subscription(msgs.ClassifierHead, "head", heads.append, head_qos())
    head = camera.spin_until(lambda: heads and heads[0], "the transient-local head")
    weight, bias = runner.head()
    assert head.device_id == DEVICE
    assert (head.num_classes, head.feature_dim) == weight.shape
    np.testing.assert_array_equal(np.reshape(head.weight, weight.shape), weight)
    np.testing.assert_array_equal(head.bias, bias)
    assert list(head.class_names) == CLASSES


def test_bad_images_are_skipped_and_the_node_keeps_working(camera, images):
    unknown = image_msg(images[1], sec=200)
    unknown.encoding = "yuv422_weird"
    wrong_size = image_msg(images[2, :, :20, :20], sec=201)
    for msg in (unknown, wrong_size):
        camera.images.publish(msg)
    good = camera.ask(image_msg(images[3], sec=202))
    assert good.device_id == DEVICE
    # Reliable, in-order delivery: the bad ones were handled before the good one.
    assert camera.received(Time(sec=200)) is None and camera.received(Time(sec=201)) is None
    assert camera.process.poll() is None
    assert "unsupported image encoding 'yuv422_weird'" in camera.log.read_text()


def test_sigint_exits_cleanly(camera):
    camera.process.send_signal(signal.SIGINT)
    assert camera.process.wait(timeout=10) == 0, camera.log.read_text()


def test_model_for_another_device_fails_configure(ros_env, model_files, tmp_path):
    process = start_node(ros_env, tmp_path, "device_id:=3",
                         f"model_path:={model_files['onnx']}")
    try:
        assert process.wait(timeout=30) == 1
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    log = (tmp_path / "node.out").read_text()
    assert "holds device 2, but device_id is 3" in log and "autostart failed" in log


def test_checkpoint_runs_with_torch(ros_env, model_files, images, tmp_path):
    """A .safetensors checkpoint: device 2 is taken from it and run with torch."""
    from resilient_perception.core.checkpoint import load_checkpoint

    process = start_node(ros_env, tmp_path, f"device_id:={DEVICE}",
                         f"model_path:={model_files['checkpoint']}", "backend:=torch")
    cam = Camera(process, tmp_path / "node.out")
    try:
        pred = cam.ask(image_msg(images[5], sec=300))
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 0, cam.log.read_text()
    finally:
        cam.close()
    model, _ = load_checkpoint(model_files["checkpoint"])
    view = crop_views(images[5:6], SPEC.boxes(28, 28))[:, DEVICE]
    probs, features = DeviceRunner.from_torch(model.device(DEVICE)).run(view)
    np.testing.assert_allclose(pred.probabilities, probs[0], atol=1e-5)
    np.testing.assert_allclose(pred.features, features[0], atol=1e-5)
    assert "on torch" in cam.log.read_text()


@pytest.mark.parametrize("param", ["device_id:=64", "threads:=0", "device_id:=two"])
def test_invalid_parameters_exit_with_code_2(ros_env, tmp_path, param):
    process = start_node(ros_env, tmp_path, param)
    try:
        assert process.wait(timeout=30) == 2
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    log = (tmp_path / "node.out").read_text()
    assert "invalid parameter" in log and "Traceback" not in log
