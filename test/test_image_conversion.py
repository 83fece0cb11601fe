"""sensor_msgs/Image <-> numpy conversion on real MNIST and CIFAR-10 pixels."""

from __future__ import annotations

import numpy as np
import pytest

from test.conftest import DATA_ROOT, needs_data

sensor_msgs = pytest.importorskip("sensor_msgs.msg")

from builtin_interfaces.msg import Time  # noqa: E402

from resilient_perception.datasets import load_cifar10, load_mnist  # noqa: E402
from resilient_perception.ros.image_conversion import (  # noqa: E402
    ENCODINGS,
    ImageConversionError,
    array_to_image,
    bgr_to_yuyv,
    decode_compressed,
    decode_image,
    image_to_array,
    to_model_input,
)

pytestmark = needs_data


@pytest.fixture(scope="module")
def mnist_hw() -> np.ndarray:
    """One real MNIST test digit as (28, 28, 1) uint8."""
    return load_mnist(DATA_ROOT, "test").images[0].transpose(1, 2, 0).copy()


@pytest.fixture(scope="module")
def cifar_rgb() -> np.ndarray:
    """One real CIFAR-10 test image as (32, 32, 3) uint8 RGB."""
    return load_cifar10(DATA_ROOT, "test").images[7].transpose(1, 2, 0).copy()


def real_pixels(encoding: str, mnist_hw: np.ndarray, cifar_rgb: np.ndarray) -> np.ndarray:
    """Real pixels in the dtype and channel count of ``encoding``."""
    alpha = np.resize(mnist_hw, (32, 32, 1))  # any real plane makes a non-constant alpha
    return {
        "rgb8": cifar_rgb,
        "bgr8": cifar_rgb[:, :, ::-1].copy(),
        "rgba8": np.concatenate([cifar_rgb, alpha], axis=2),
        "bgra8": np.concatenate([cifar_rgb[:, :, ::-1], alpha], axis=2),
        "mono8": mnist_hw,
        # Not v*257: that maps each pixel to two equal bytes, blind to byte order.
        "mono16": mnist_hw.astype(np.uint16) * 251 + 1,
        "16UC1": mnist_hw.astype(np.uint16) * 131 + 7,
        "32FC1": mnist_hw.astype(np.float32) / 255.0,
        "8UC1": mnist_hw,
        "8UC3": cifar_rgb[:, :, ::-1].copy(),
        "8UC4": np.concatenate([cifar_rgb[:, :, ::-1], alpha], axis=2),
    }[encoding]


def image(**fields) -> sensor_msgs.Image:
    """A real Image message with the given fields set."""
    msg = sensor_msgs.Image()
    for name, value in fields.items():
        setattr(msg, name, value)
    return msg


@pytest.mark.parametrize("encoding", list(ENCODINGS))
def test_round_trip_every_encoding(encoding, mnist_hw, cifar_rgb):
    pixels = real_pixels(encoding, mnist_hw, cifar_rgb)
    msg = array_to_image(pixels, encoding, stamp=Time(sec=12, nanosec=34), frame_id="cam_2")
    h, w, c = pixels.shape
    assert (msg.height, msg.width, msg.encoding, msg.is_bigendian) == (h, w, encoding, 0)
    assert msg.step == w * c * pixels.dtype.itemsize
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec, msg.header.frame_id) == (
        12, 34, "cam_2")
    back = image_to_array(msg)
    assert back.dtype == pixels.dtype and back.shape == (h, w, c)
    np.testing.assert_array_equal(back, pixels)


def test_two_dimensional_mono_array_is_accepted(mnist_hw):
    msg = array_to_image(mnist_hw[:, :, 0], "mono8")
    np.testing.assert_array_equal(image_to_array(msg), mnist_hw)


@pytest.mark.parametrize("encoding", ["rgb8", "mono16", "32FC1"])
def test_padded_step_is_honoured(encoding, mnist_hw, cifar_rgb):
    pixels = real_pixels(encoding, mnist_hw, cifar_rgb)
    h, w, c = pixels.shape
    row = w * c * pixels.dtype.itemsize
    step = row + 13  # odd padding, as some drivers align rows to their own boundaries
    padded = np.full((h, step), 0xAB, dtype=np.uint8)
    padded[:, :row] = pixels.astype(pixels.dtype.newbyteorder("<")).view(np.uint8).reshape(h, row)
    msg = image(height=h, width=w, encoding=encoding, is_bigendian=0, step=step,
                data=padded.tobytes())
    np.testing.assert_array_equal(image_to_array(msg), pixels)


@pytest.mark.parametrize("encoding", ["mono16", "16UC1", "32FC1"])
def test_big_endian_data(encoding, mnist_hw, cifar_rgb):
    pixels = real_pixels(encoding, mnist_hw, cifar_rgb)
    h, w, _ = pixels.shape
    big = pixels.astype(pixels.dtype.newbyteorder(">"))
    msg = image(height=h, width=w, encoding=encoding, is_bigendian=1,
                step=w * pixels.dtype.itemsize, data=big.tobytes())
    out = image_to_array(msg)
    assert out.dtype.isnative
    np.testing.assert_array_equal(out, pixels)
    # The same bytes read as little-endian are different numbers: the flag matters.
    msg.is_bigendian = 0
    assert not np.array_equal(image_to_array(msg), pixels)


def test_bgr_and_rgb_give_the_same_model_input(cifar_rgb):
    rgb = image_to_array(array_to_image(cifar_rgb, "rgb8"))
    bgr = image_to_array(array_to_image(cifar_rgb[:, :, ::-1].copy(), "bgr8"))
    # Raw arrays keep the wire order: channel 0 is red in rgb8 and blue in bgr8.
    np.testing.assert_array_equal(rgb[:, :, 0], cifar_rgb[:, :, 0])
    np.testing.assert_array_equal(bgr[:, :, 0], cifar_rgb[:, :, 2])
    expected = cifar_rgb.transpose(2, 0, 1)
    for arr, enc in ((rgb, "rgb8"), (bgr, "bgr8")):
        out = to_model_input(arr, enc, 3)
        assert out.dtype == np.uint8 and out.flags.c_contiguous
        np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(to_model_input(rgb, "rgb8", 1), to_model_input(bgr, "bgr8", 1))


def test_model_input_luma_and_alpha(cifar_rgb):
    gray = to_model_input(cifar_rgb, "rgb8", 1)
    r, g, b = (cifar_rgb[:, :, i].astype(np.float64) for i in range(3))
    expected = np.rint(0.299 * r + 0.587 * g + 0.114 * b)
    assert gray.shape == (1, 32, 32)
    assert np.abs(gray[0].astype(np.float64) - expected).max() <= 1  # float32 rounding
    rgba = np.concatenate([cifar_rgb, np.zeros_like(cifar_rgb[:, :, :1])], axis=2)
    np.testing.assert_array_equal(to_model_input(rgba, "rgba8", 3), cifar_rgb.transpose(2, 0, 1))


def test_model_input_of_mono_encodings_matches_mnist_training_pixels(mnist_hw):
    expected = mnist_hw.transpose(2, 0, 1)
    for encoding, arr in (
        ("mono8", mnist_hw),
        ("mono16", mnist_hw.astype(np.uint16) * 257),
        ("16UC1", mnist_hw.astype(np.uint16) * 257),
        ("32FC1", mnist_hw.astype(np.float32) / 255.0),
    ):
        np.testing.assert_array_equal(to_model_input(arr, encoding, 1), expected)
    np.testing.assert_array_equal(to_model_input(mnist_hw, "mono8", 3),
                                  np.repeat(expected, 3, axis=0))


def test_32fc1_out_of_range_and_nan_are_clipped(mnist_hw):
    arr = mnist_hw.astype(np.float32) / 255.0
    arr[0, 0, 0], arr[0, 1, 0], arr[0, 2, 0] = np.nan, -3.0, 7.0
    out = to_model_input(arr, "32FC1", 1)
    assert out[0, 0, :3].tolist() == [0, 0, 255]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"encoding": "yuv422"}, "unsupported image encoding 'yuv422'"),
        ({"height": 0}, "zero size"),
        ({"width": 0, "step": 0}, "zero size"),
        ({"step": 27}, "step 27 is smaller than one row"),
        ({"data": bytes(28 * 28 - 1)}, r"data has 783 bytes, expected height\*step = 28\*28 = 784"),
        ({"data": bytes(28 * 28 + 28)}, "data has 812 bytes"),
        ({"encoding": "mono16"}, "step 28 is smaller than one row of 28 mono16 pixels"),
    ],
)
def test_bad_messages_raise_clear_errors(fields, message, mnist_hw):
    msg = image(**{"height": 28, "width": 28, "encoding": "mono8", "step": 28,
                   "data": mnist_hw.tobytes(), **fields})
    with pytest.raises(ImageConversionError, match=message):
        image_to_array(msg)


@pytest.mark.parametrize(
    ("array", "encoding", "message"),
    [
        (np.zeros((4, 4, 3), np.uint8), "nv12", "unsupported image encoding"),
        (np.zeros((4, 4, 1), np.uint8), "rgb8", r"rgb8 needs an \(H, W, 3\) array"),
        (np.zeros((4, 4), np.float64), "32FC1", "32FC1 needs float32 pixels, got float64"),
        (np.zeros((4, 4), np.uint8), "mono16", "mono16 needs uint16"),
        (np.zeros((0, 4, 3), np.uint8), "bgr8", "zero size"),
        (np.zeros(12, np.uint8), "mono8", "needs an"),
    ],
)
def test_bad_arrays_raise_clear_errors(array, encoding, message):
    with pytest.raises(ImageConversionError, match=message):
        array_to_image(array, encoding)


def test_model_input_rejects_bad_channels(cifar_rgb):
    with pytest.raises(ImageConversionError, match="1 or 3 channels, got 4"):
        to_model_input(cifar_rgb, "rgb8", 4)
    with pytest.raises(ImageConversionError, match=r"mono8 needs an \(H, W, 1\)"):
        to_model_input(cifar_rgb, "mono8", 1)
    with pytest.raises(ImageConversionError, match="unsupported"):
        to_model_input(cifar_rgb, "rgb16", 3)


def test_conversion_error_is_a_value_error():
    assert issubclass(ImageConversionError, ValueError)


# -- camera encodings and compressed images (OpenCV) ----------------------------------------


def packed_image(data: np.ndarray, encoding: str, width: int) -> sensor_msgs.Image:
    height = data.shape[0]
    return image(height=height, width=width, encoding=encoding, is_bigendian=0,
                 step=data.size // height, data=data.tobytes())


@pytest.mark.parametrize(("encoding", "order"), [
    ("yuv422_yuy2", "YUYV"), ("yuyv", "YUYV"), ("uyvy", "UYVY"), ("yuv422", "UYVY")])
def test_yuv422_decodes_as_opencv_does_and_gives_back_what_the_camera_saw(encoding, order,
                                                                         cifar_rgb):
    import cv2

    bgr = cifar_rgb[:, :, ::-1].copy()
    bgr[:, 1::2] = bgr[:, 0::2]  # each pixel pair one colour: 4:2:2 keeps all of it
    packed = bgr_to_yuyv(bgr)
    if order == "UYVY":
        packed = np.ascontiguousarray(packed[:, :, ::-1])  # (U, Y0), (V, Y1)
    pixels, decoded_as = decode_image(packed_image(packed.reshape(32, 64), encoding, 32))
    assert decoded_as == "bgr8" and pixels.shape == (32, 32, 3)
    np.testing.assert_array_equal(pixels, cv2.cvtColor(
        packed, getattr(cv2, f"COLOR_YUV2BGR_{order}")))
    # BT.601 video range both ways: within rounding of the source (full range on one side
    # and video range on the other is up to 20 levels off).
    assert np.abs(pixels.astype(int) - bgr).max() <= 2


@pytest.mark.parametrize("pattern", ["rggb", "bggr", "gbrg", "grbg"])
def test_bayer_patterns_decode_to_the_colours_they_sampled(pattern):
    # A flat colour seen through the mosaic: a pattern mapped to the wrong OpenCV
    # conversion swaps red and blue.
    rgb = {"r": 200, "g": 100, "b": 40}
    mosaic = np.empty((8, 8), np.uint8)
    for k, colour in enumerate(pattern):
        mosaic[k // 2::2, k % 2::2] = rgb[colour]
    pixels, decoded_as = decode_image(packed_image(mosaic, f"bayer_{pattern}8", 8))
    assert decoded_as == "bgr8"
    np.testing.assert_array_equal(pixels[2:6, 2:6], np.broadcast_to([40, 100, 200],
                                                                     (4, 4, 3)))


def test_yuv422_needs_an_even_width_and_enough_bytes():
    with pytest.raises(ImageConversionError, match="even width"):
        decode_image(packed_image(np.zeros((2, 6), np.uint8), "yuyv", 3))
    with pytest.raises(ImageConversionError, match="expected height"):
        decode_image(image(height=2, width=4, encoding="uyvy", step=8, data=bytes(10)))


def compressed(data: bytes, fmt: str) -> sensor_msgs.CompressedImage:
    msg = sensor_msgs.CompressedImage()
    msg.format, msg.data = fmt, data
    return msg


def test_compressed_png_is_lossless_and_jpeg_close(cifar_rgb, mnist_hw):
    import cv2

    bgr = cifar_rgb[:, :, ::-1].copy()
    for array, expected, encoding in ((bgr, bgr, "bgr8"), (mnist_hw, mnist_hw, "mono8"),
                                      (mnist_hw.astype(np.uint16) * 257,
                                       mnist_hw.astype(np.uint16) * 257, "mono16")):
        ok, png = cv2.imencode(".png", array)
        pixels, decoded_as = decode_compressed(compressed(png.tobytes(), "png"))
        assert ok and decoded_as == encoding
        np.testing.assert_array_equal(pixels.reshape(expected.shape), expected)
    ok, jpeg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])
    pixels, decoded_as = decode_compressed(compressed(jpeg.tobytes(), "jpeg"))
    assert decoded_as == "bgr8" and np.abs(pixels.astype(int) - bgr).mean() < 6
    with pytest.raises(ImageConversionError, match="does not decode"):
        decode_compressed(compressed(b"not an image", "jpeg"))
    with pytest.raises(ImageConversionError, match="does not decode"):
        decode_compressed(compressed(b"", "png"))


def test_resize_view_stretches_to_the_model_input(mnist_hw, cifar_rgb):
    from resilient_perception.ros.image_conversion import resize_view

    grey = mnist_hw.transpose(2, 0, 1)  # (1, 28, 28)
    doubled = np.repeat(np.repeat(grey, 2, axis=1), 2, axis=2)
    np.testing.assert_array_equal(resize_view(doubled, (28, 28)), grey)  # 2x2 areas
    colour = resize_view(cifar_rgb.transpose(2, 0, 1), (20, 40))
    assert colour.shape == (3, 20, 40) and colour.dtype == np.uint8
    assert resize_view(grey, (28, 28)).shape == (1, 28, 28)
