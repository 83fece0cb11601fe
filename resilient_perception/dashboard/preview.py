"""Camera previews for the page: a small JPEG of an image, encoded with OpenCV."""

from __future__ import annotations

import numpy as np

__all__ = ["preview_jpeg"]


def preview_jpeg(rgb: np.ndarray, max_width: int = 160, quality: int = 80) -> bytes:
    """``rgb`` ((H, W, 3) uint8) as a JPEG at most ``max_width`` pixels wide.

    Larger images are shrunk with area averaging; smaller ones are left as they are (the
    page scales them up without smoothing).

    Raises:
        ValueError: If the image is not (H, W, 3) uint8 or cannot be encoded.
    """
    import cv2

    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 or 0 in rgb.shape:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {rgb.shape} {rgb.dtype}")
    height, width = rgb.shape[:2]
    if width > max_width:
        size = (max_width, max(1, round(height * max_width / width)))
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    ok, data = cv2.imencode(".jpg", np.ascontiguousarray(rgb[:, :, ::-1]),
                            [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("OpenCV could not encode the preview")
    return data.tobytes()
