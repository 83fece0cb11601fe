"""numpy-only conversion between ``sensor_msgs/Image`` and arrays, and to device CNN input.

ROS 2's ``cv_bridge`` is not installable from PyPI here (the PyPI ``cv-bridge`` is a ROS 1
port that fails on numpy 2), and the conversion is small, so it is done with numpy alone.

:func:`image_to_array` reads any object with the ``sensor_msgs/Image`` fields (``height``,
``width``, ``encoding``, ``is_bigendian``, ``step``, ``data``): a real message, or one
deserialised by ``rosbags``. It honours row padding (``step`` larger than a row's bytes)
and ``is_bigendian``, and returns a native-byte-order ``(H, W, C)`` copy. Supported
encodings: rgb8, bgr8, rgba8, bgra8, mono8, mono16, 16UC1, 32FC1, and OpenCV's names
8UC1, 8UC3, 8UC4 (as mono8, bgr8, bgra8, the way cv_bridge reads them).

What camera drivers send besides those is decoded with OpenCV (imported only then) by
:func:`decode_image` and :func:`decode_compressed`: packed YUV 4:2:2 (``yuv422_yuy2`` /
``yuyv``, ``uyvy`` / ``yuv422``, as usb_cam and v4l2_camera publish it), Bayer mosaics
(``bayer_rggb8``, ``bayer_bggr8``, ``bayer_gbrg8``, ``bayer_grbg8``) and
``sensor_msgs/CompressedImage`` (JPEG, PNG: image_transport's ``compressed``), each to bgr8
(or mono8/mono16 for a grey PNG or JPEG).

:func:`to_model_input` turns such an array into what a device CNN was trained on: uint8,
channel-first, RGB for 3 input channels or BT.601 luma for 1 (see its docstring);
:class:`DeviceInput` is a camera node's whole path from a decoded image to its device's view.

:func:`camera_images` and :func:`encode` go the other way, from a dataset frame to each
camera's pixels: the player node publishes them and a camera bag records the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from resilient_perception.datasets import Dataset, MultiViewImages
from resilient_perception.message_checks import clip_text
from resilient_perception.perception.runtime import ExportError, training_image_hw
from resilient_perception.perception.views import ViewSpec, crop_view

__all__ = [
    "ENCODINGS",
    "DeviceInput",
    "ImageConversionError",
    "array_to_image",
    "bgr_to_yuyv",
    "camera_images",
    "decode_compressed",
    "decode_image",
    "encode",
    "image_to_array",
    "resize_view",
    "to_model_input",
]


class ImageConversionError(ValueError):
    """An image message or array cannot be converted (encoding, size or layout is wrong)."""


@dataclass(frozen=True)
class _Encoding:
    dtype: np.dtype  # element type, byte order unspecified
    channels: int
    color_order: str | None  # "rgb"/"bgr"/"rgba"/"bgra" for color, None for one channel


ENCODINGS: dict[str, _Encoding] = {
    "rgb8": _Encoding(np.dtype(np.uint8), 3, "rgb"),
    "bgr8": _Encoding(np.dtype(np.uint8), 3, "bgr"),
    "rgba8": _Encoding(np.dtype(np.uint8), 4, "rgba"),
    "bgra8": _Encoding(np.dtype(np.uint8), 4, "bgra"),
    "mono8": _Encoding(np.dtype(np.uint8), 1, None),
    "mono16": _Encoding(np.dtype(np.uint16), 1, None),
    "16UC1": _Encoding(np.dtype(np.uint16), 1, None),
    "32FC1": _Encoding(np.dtype(np.float32), 1, None),
    "8UC1": _Encoding(np.dtype(np.uint8), 1, None),
    "8UC3": _Encoding(np.dtype(np.uint8), 3, "bgr"),
    "8UC4": _Encoding(np.dtype(np.uint8), 4, "bgra"),
}

# Camera encodings OpenCV turns into bgr8: bytes per pixel and the cv2 conversion's name.
# ROS names a Bayer pattern by its first row, OpenCV by its second (cv_bridge's table).
_OPENCV_ENCODINGS: dict[str, tuple[int, str]] = {
    "yuv422_yuy2": (2, "COLOR_YUV2BGR_YUYV"),
    "yuyv": (2, "COLOR_YUV2BGR_YUYV"),
    "uyvy": (2, "COLOR_YUV2BGR_UYVY"),
    "yuv422": (2, "COLOR_YUV2BGR_UYVY"),
    "bayer_rggb8": (1, "COLOR_BayerBG2BGR"),
    "bayer_bggr8": (1, "COLOR_BayerRG2BGR"),
    "bayer_gbrg8": (1, "COLOR_BayerGR2BGR"),
    "bayer_grbg8": (1, "COLOR_BayerGB2BGR"),
}

# BT.601 video range: (Y, U, V) offsets removed, rows of (B, G, R) weights.
_BT601_VIDEO_RANGE = np.float32([[24.966, 128.553, 65.481],
                                 [112.0, -74.203, -37.797],
                                 [-18.214, -93.786, 112.0]]) / 255.0

# ITU-R BT.601 luma weights (R, G, B): what PIL's "L" mode and OpenCV's RGB2GRAY use.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _encoding(name: str) -> _Encoding:
    try:
        return ENCODINGS[name]
    except KeyError:
        supported = ", ".join([*ENCODINGS, *_OPENCV_ENCODINGS])
        raise ImageConversionError(  # clipped: the name comes from outside
            f"unsupported image encoding {clip_text(name)!r}; supported: {supported}"
        ) from None


def _as_uint8_buffer(data: Any) -> np.ndarray:
    """The message's ``data`` as a flat uint8 array without copying when possible."""
    if isinstance(data, np.ndarray):  # rosbags deserialises uint8[] to numpy
        return data.reshape(-1).view(np.uint8)
    try:
        return np.frombuffer(data, dtype=np.uint8)  # array.array('B'), bytes, memoryview
    except TypeError:
        return np.asarray(data, dtype=np.uint8)  # a plain list of ints


def _unpadded_rows(msg: Any, pixel_bytes: int) -> np.ndarray:
    """The image's bytes as ``(height, width * pixel_bytes)`` uint8, row padding dropped.

    Raises :class:`ImageConversionError` for a zero size, a ``step`` shorter than one row,
    or ``data`` whose length is not ``height * step``.
    """
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise ImageConversionError(f"image has zero size ({height}x{width})")
    row_bytes = width * pixel_bytes
    if step < row_bytes:
        raise ImageConversionError(
            f"step {step} is smaller than one row of {width} {msg.encoding} pixels "
            f"({row_bytes} bytes)"
        )
    buf = _as_uint8_buffer(msg.data)
    if buf.size != height * step:
        raise ImageConversionError(
            f"data has {buf.size} bytes, expected height*step = {height}*{step} = "
            f"{height * step} for a {height}x{width} {msg.encoding} image"
        )
    return np.ascontiguousarray(buf.reshape(height, step)[:, :row_bytes])


def image_to_array(msg: Any) -> np.ndarray:
    """Convert a ``sensor_msgs/Image``-like object to a native-byte-order ``(H, W, C)`` copy.

    Channels keep the encoding's order (bgr8 stays BGR); single-channel encodings give
    ``C = 1``. Raises :class:`ImageConversionError` for an unknown encoding, a zero size, a
    ``step`` shorter than one row, or ``data`` whose length is not ``height * step``.
    """
    enc = _encoding(msg.encoding)
    height, width = int(msg.height), int(msg.width)
    rows = _unpadded_rows(msg, enc.channels * enc.dtype.itemsize)
    # Reinterpret the bytes in the message's byte order.
    wire = enc.dtype.newbyteorder(">" if msg.is_bigendian else "<")
    pixels = rows.view(wire).reshape(height, width, enc.channels)
    return pixels.astype(enc.dtype.newbyteorder("="), copy=True)


def bgr_to_yuyv(bgr: np.ndarray) -> np.ndarray:
    """A ``(H, W, 3)`` uint8 BGR image packed as YUYV 4:2:2 ``(H, W, 2)``, as cameras send it.

    ITU-R BT.601 in video range (Y 16-235, U and V 16-240), what V4L2 cameras' YUYV is and
    what OpenCV's ``COLOR_YUV2BGR_YUYV`` (and so cv_bridge and :func:`decode_image`) undo;
    OpenCV's ``COLOR_BGR2YUV`` is full range and would come back up to 20 levels off. One U
    and one V per pixel pair: their mean.
    """
    if bgr.shape[1] % 2:
        raise ValueError(f"YUYV needs an even width, got {bgr.shape[1]}")
    yuv = bgr.astype(np.float32) @ _BT601_VIDEO_RANGE.T + np.float32([16.0, 128.0, 128.0])
    packed = np.empty((*bgr.shape[:2], 2), np.float32)
    packed[:, :, 0] = yuv[:, :, 0]
    packed[:, 0::2, 1] = (yuv[:, 0::2, 1] + yuv[:, 1::2, 1]) / 2
    packed[:, 1::2, 1] = (yuv[:, 0::2, 2] + yuv[:, 1::2, 2]) / 2
    return np.clip(np.rint(packed), 0, 255).astype(np.uint8)


def decode_image(msg: Any) -> tuple[np.ndarray, str]:
    """An image message's pixels and their encoding, camera encodings decoded to bgr8.

    Encodings of :data:`ENCODINGS` come back as :func:`image_to_array` gives them, with the
    message's encoding; YUV 4:2:2 and Bayer images are converted with OpenCV to ``(H, W, 3)``
    BGR and reported as ``"bgr8"``. Raises :class:`ImageConversionError` as
    :func:`image_to_array` does.
    """
    if msg.encoding not in _OPENCV_ENCODINGS:
        return image_to_array(msg), msg.encoding
    pixel_bytes, conversion = _OPENCV_ENCODINGS[msg.encoding]
    rows = _unpadded_rows(msg, pixel_bytes)
    height, width = int(msg.height), int(msg.width)
    if pixel_bytes == 2 and width % 2:
        raise ImageConversionError(f"{msg.encoding} needs an even width, got {width}")
    import cv2

    packed = rows.reshape(height, width, pixel_bytes) if pixel_bytes > 1 else rows
    return cv2.cvtColor(packed, getattr(cv2, conversion)), "bgr8"


def decode_compressed(msg: Any) -> tuple[np.ndarray, str]:
    """A ``sensor_msgs/CompressedImage``'s pixels (decoded by OpenCV) and their encoding.

    Colour images come back ``(H, W, 3)`` BGR as ``"bgr8"`` (alpha dropped), grey ones
    ``(H, W, 1)`` as ``"mono8"``, or ``"mono16"`` for a 16-bit PNG. Raises
    :class:`ImageConversionError` for data OpenCV cannot decode (its ``format`` field is only
    a hint, the data's own header decides).
    """
    import cv2

    data = _as_uint8_buffer(msg.data)
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None:
        raise ImageConversionError(
            f"compressed image ({clip_text(msg.format)!r}, {data.size} bytes) does not decode")
    if image.ndim == 2:
        return image[:, :, None], "mono16" if image.dtype == np.uint16 else "mono8"
    if image.dtype != np.uint8:
        image = cv2.convertScaleAbs(image, alpha=255.0 / 65535.0)
    return np.ascontiguousarray(image[:, :, :3]), "bgr8"


def resize_view(view: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """A channel-first uint8 ``(C, H, W)`` view resized to ``size_hw`` (OpenCV).

    The view is stretched to the new size (its aspect ratio is not kept: a camera's view
    is cut from the image in proportion, so a camera of the training images' aspect ratio
    gives the trained shapes); area averaging when shrinking, bilinear when enlarging.
    """
    import cv2

    height, width = size_hw
    shrinking = height * width < view.shape[1] * view.shape[2]
    resized = cv2.resize(np.ascontiguousarray(view.transpose(1, 2, 0)), (width, height),
                         interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    return np.ascontiguousarray(resized.reshape(height, width, -1).transpose(2, 0, 1))


def array_to_image(
    array: np.ndarray, encoding: str, stamp: Any = None, frame_id: str = ""
) -> Any:
    """Build a ``sensor_msgs/Image`` from ``(H, W, C)`` (or ``(H, W)`` for one channel).

    The array's dtype must be the encoding's (uint8 for rgb8/bgr8/rgba8/bgra8/mono8, uint16
    for mono16/16UC1, float32 for 32FC1): nothing is rescaled silently. The message is
    little-endian with unpadded rows; ``stamp`` is a ``builtin_interfaces/Time`` (default
    zero).
    """
    from sensor_msgs.msg import Image  # here, so the rest of the module needs no ROS

    enc = _encoding(encoding)
    array = np.asarray(array)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] != enc.channels:
        raise ImageConversionError(
            f"{encoding} needs an (H, W, {enc.channels}) array, got shape {array.shape}"
        )
    if array.dtype.newbyteorder("=") != enc.dtype:
        raise ImageConversionError(
            f"{encoding} needs {enc.dtype} pixels, got {array.dtype} (convert with astype)"
        )
    height, width = array.shape[:2]
    if height == 0 or width == 0:
        raise ImageConversionError(f"image has zero size ({height}x{width})")
    msg = Image()
    if stamp is not None:
        msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.height, msg.width, msg.encoding = height, width, encoding
    msg.is_bigendian = 0
    msg.step = width * enc.channels * enc.dtype.itemsize
    msg.data = np.ascontiguousarray(array, dtype=enc.dtype.newbyteorder("<")).tobytes()
    return msg


def _to_8bit(array: np.ndarray, encoding: str) -> np.ndarray:
    """Scale one array of ``encoding`` to uint8, keeping its shape."""
    dtype = ENCODINGS[encoding].dtype
    if dtype == np.uint8:
        return array
    if dtype == np.uint16:
        # Full 16-bit range onto 8 bits; /257 inverts the usual v*257 8->16 bit expansion.
        return np.rint(array.astype(np.float32) / 257.0).astype(np.uint8)
    # 32FC1: assumed in [0, 1]; NaN (no reading, as in depth images) becomes 0.
    scaled = np.clip(np.nan_to_num(array, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)
    return np.rint(scaled * 255.0).astype(np.uint8)


def _to_rgb(array: np.ndarray, color_order: str | None) -> np.ndarray:
    """(H, W, C) uint8 of any supported channel order -> (H, W, 3) RGB."""
    if color_order is None:
        return np.repeat(array, 3, axis=2)
    rgb = array[:, :, :3]  # drops alpha
    return rgb[:, :, ::-1] if color_order.startswith("bgr") else rgb


def to_model_input(array: np.ndarray, encoding: str, in_channels: int) -> np.ndarray:
    """Convert ``(H, W, C)`` from :func:`image_to_array` to device CNN input uint8 ``(C, H, W)``.

    The devices were trained on uint8 pixels, RGB for 3 channels (CIFAR-10, MVMC) and
    grayscale for 1 (MNIST), so:

    * ``in_channels == 3``: color encodings are reordered to RGB (alpha dropped); a
      single-channel image is replicated to 3 channels.
    * ``in_channels == 1``: color is reduced to BT.601 luma ``0.299 R + 0.587 G + 0.114 B``
      (rounded); single-channel images are used as they are.
    * mono16/16UC1 are scaled from the full 16-bit range to 8 bits (``round(v / 257)``);
      32FC1 is assumed to lie in ``[0, 1]`` (clipped, NaN -> 0) and mapped to
      ``round(255 v)``.
    """
    enc = _encoding(encoding)
    if array.ndim != 3 or array.shape[2] != enc.channels:
        raise ImageConversionError(
            f"{encoding} needs an (H, W, {enc.channels}) array, got shape {array.shape}"
        )
    if in_channels not in (1, 3):
        raise ImageConversionError(f"device CNNs take 1 or 3 channels, got {in_channels}")
    pixels = _to_8bit(array, encoding)
    if in_channels == 3:
        out = _to_rgb(pixels, enc.color_order)
    elif enc.color_order is None:
        out = pixels
    else:
        luma = _to_rgb(pixels, enc.color_order).astype(np.float32) @ _LUMA
        out = np.clip(np.rint(luma), 0, 255).astype(np.uint8)[:, :, None]
    return np.ascontiguousarray(out.transpose(2, 0, 1))


@dataclass(frozen=True)
class DeviceInput:
    """How a camera node turns a decoded camera image into its device CNN's input.

    The camera node and anything that must compute what it computes (the free-running
    benchmark's offline score) call this one path. An image of another size than the
    training images' ``image_hw`` is first stretched to it, so the view is the box the
    device was trained on (boxes cut in proportion from a large image differ: MNIST's 3 rows
    of 10 overlap by a pixel in 28, not in 480); then ``view_spec``'s box for ``device_id``
    is cut (None: the image is the view), converted (:func:`to_model_input`) and, if its
    size is still not ``input_hw`` (a camera of another aspect, no view spec), resized.
    """

    device_id: int
    in_channels: int
    view_spec: ViewSpec | None = None
    image_hw: tuple[int, int] | None = None
    input_hw: tuple[int, int] | None = None

    @classmethod
    def from_metadata(cls, metadata: dict, device_id: int, in_channels: int,
                      input_hw: tuple[int, int] | None, crop: bool = True) -> DeviceInput:
        """The input of a model with ``metadata`` (an export's, or a checkpoint's meta).

        ``crop`` False (or a ``cameras`` view spec) uses the whole image as the view.

        Raises:
            ValueError: If ``device_id`` has no cell in the model's grid.
        """
        spec = ViewSpec.from_dict(metadata["view_spec"]) if crop else None
        if spec is None or spec.kind != "grid":
            return cls(device_id, in_channels, None, None, input_hw)
        if not device_id < spec.rows * spec.cols:
            raise ValueError(f"device_id {device_id} has no view in a "
                             f"{spec.rows}x{spec.cols} grid")
        try:
            image_hw = training_image_hw(metadata)
        except ExportError:
            image_hw = None  # an export without it: views are cut in proportion instead
        return cls(device_id, in_channels, spec, image_hw, input_hw)

    def __call__(self, pixels: np.ndarray, encoding: str) -> np.ndarray:
        """``(H, W, C)`` pixels of ``encoding`` -> the device's uint8 ``(C, h, w)`` view.

        Raises:
            ImageConversionError: For an encoding or layout that cannot be converted.
            ValueError: For an image with fewer pixels than the grid has cells.
        """
        if self.view_spec is not None:
            if self.image_hw is not None and pixels.shape[:2] != self.image_hw:
                self.view_spec.boxes(*pixels.shape[:2])  # refuses an image under the grid
                pixels = resize_view(pixels.transpose(2, 0, 1),
                                     self.image_hw).transpose(1, 2, 0)
            # The view is cut before it is converted: converting a whole 640x480 image
            # took 5 ms, most of it for pixels of the other devices.
            box = self.view_spec.boxes(*pixels.shape[:2])[self.device_id]
            pixels = crop_view(pixels.transpose(2, 0, 1), box).transpose(1, 2, 0)
        image = to_model_input(pixels, encoding, self.in_channels)
        if self.input_hw is not None and tuple(image.shape[1:]) != self.input_hw:
            image = resize_view(image, self.input_hw)  # another camera resolution
        return image


_NATURAL_ENCODING = {1: "mono8", 3: "rgb8", 4: "rgba8"}


def camera_images(data: Dataset, index: int, num_cameras: int) -> list[np.ndarray | None]:
    """Each camera's channel-first uint8 ``(C, H, W)`` image of frame ``index``.

    Single-view datasets give every camera the full image (the same array); multi-camera
    datasets give camera ``i`` its own view, or None where that camera has no image.

    Raises:
        ValueError: If a multi-camera dataset has fewer cameras than ``num_cameras``.
    """
    if isinstance(data, MultiViewImages):
        if num_cameras > data.views.shape[1]:
            raise ValueError(f"the dataset has {data.views.shape[1]} cameras, "
                             f"not {num_cameras}")
        return [data.views[index, cam] if data.available[index, cam] else None
                for cam in range(num_cameras)]
    return [data.images[index]] * num_cameras


def encode(image: np.ndarray, encoding: str = "") -> tuple[np.ndarray, str]:
    """Turn a dataset image ``(C, H, W)`` into ``(H, W, C)`` pixels of an image encoding.

    Args:
        image: uint8 channel-first image with 1, 3 (RGB) or 4 (RGBA) channels.
        encoding: ``""`` keeps the dataset's pixels (mono8, rgb8 or rgba8); ``mono8``,
            ``rgb8`` or ``bgr8`` convert (colour to BT.601 luma, grey replicated to RGB).

    Returns:
        The pixels and the encoding name for :func:`array_to_image`.
    """
    natural = _NATURAL_ENCODING[image.shape[0]]
    pixels = image.transpose(1, 2, 0)
    if encoding in ("", natural):
        return pixels, natural
    channels = 1 if encoding == "mono8" else 3
    converted = to_model_input(pixels, natural, channels).transpose(1, 2, 0)
    return (converted[:, :, ::-1] if encoding == "bgr8" else converted), encoding
