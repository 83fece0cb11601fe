"""Device views: how one sample becomes N equally shaped camera/device inputs.

A single-view dataset (MNIST, CIFAR-10) is cut into a grid of overlapping patches, one per
device, as in the Modifier paper's 6-patch setup; a multi-camera dataset (MVMC) uses its own
cameras. All views of one sample have the same shape, because the device CNNs are evaluated
as one batched network over the device axis.

Also here: non-IID class-specialised training masks and per-device noise for robustness runs.
Pure numpy; no ROS and no torch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..datasets import LabeledImages, MultiViewImages

VIEW_KINDS = ("grid", "cameras")
NOISE_KINDS = ("gaussian", "salt_pepper")


@dataclass(frozen=True)
class ViewBox:
    """A rectangle of an image in pixels: rows ``top:top+height``, columns ``left:left+width``."""

    top: int
    left: int
    height: int
    width: int


def _spread_starts(extent: int, box: int, count: int) -> list[int]:
    """Return ``count`` starts, evenly spread so the first is 0 and the last box ends at extent."""
    if count == 1:
        return [0]
    span = extent - box
    # Integer round-half-up keeps the result identical on every platform.
    return [(i * span * 2 + (count - 1)) // (2 * (count - 1)) for i in range(count)]


def grid_boxes(
    height: int, width: int, rows: int = 3, cols: int = 2, overlap: float = 0.0
) -> list[ViewBox]:
    """Split an image into ``rows x cols`` equal-size boxes, in row-major order.

    Device 0 is top-left, device 1 the next box to its right, and so on (3 rows x 2 cols is
    the paper's 6 patches). A cell is ``ceil(height / rows)`` by ``ceil(width / cols)``
    pixels; ``overlap`` (a fraction of the cell, ``0 <= overlap < 1``) enlarges every box by
    that share of the cell, up to the full image. Box starts are spread evenly so the first
    box starts at 0 and the last ends at the image edge; together the boxes cover the image.
    """
    for name, value in (("height", height), ("width", width), ("rows", rows), ("cols", cols)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if rows > height or cols > width:
        raise ValueError(
            f"a {rows}x{cols} grid needs at least one pixel per cell; the image is only "
            f"{height}x{width}: use fewer rows/cols or a larger image"
        )
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be a fraction of the cell in [0, 1), got {overlap!r}")
    box_h = min(height, math.ceil(math.ceil(height / rows) * (1.0 + overlap)))
    box_w = min(width, math.ceil(math.ceil(width / cols) * (1.0 + overlap)))
    tops = _spread_starts(height, box_h, rows)
    lefts = _spread_starts(width, box_w, cols)
    return [ViewBox(top, left, box_h, box_w) for top in tops for left in lefts]


def _check_boxes(boxes: list[ViewBox], height: int, width: int) -> tuple[int, int]:
    if not boxes:
        raise ValueError("need at least one ViewBox")
    sizes = {(box.height, box.width) for box in boxes}
    if len(sizes) != 1:
        raise ValueError(f"all views must have the same size, got sizes {sorted(sizes)}")
    for box in boxes:
        rows_inside = box.top >= 0 and box.height >= 1 and box.top + box.height <= height
        cols_inside = box.left >= 0 and box.width >= 1 and box.left + box.width <= width
        if not (rows_inside and cols_inside):
            raise ValueError(f"{box} does not lie inside the {height}x{width} image")
    return sizes.pop()


def crop_views(images: np.ndarray, boxes: list[ViewBox]) -> np.ndarray:
    """Crop every box out of every image: ``(M, C, H, W)`` -> ``(M, N, C, h, w)``.

    The result is one new contiguous array: N boxes at arbitrary offsets cannot be expressed
    as a single strided axis of the input, so a copy of ``M*N*C*h*w`` elements is made.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (M, C, H, W), got shape {images.shape}")
    _check_boxes(boxes, images.shape[2], images.shape[3])
    crops = [
        images[:, :, box.top : box.top + box.height, box.left : box.left + box.width]
        for box in boxes
    ]
    return np.stack(crops, axis=1)


def crop_view(image: np.ndarray, box: ViewBox) -> np.ndarray:
    """Crop one box out of one channel-first image ``(C, H, W)`` -> ``(C, h, w)`` (no copy).

    Channel-first matches the training layout; a camera node converting a ROS image (which
    is ``(H, W, C)``) transposes first, so device inputs are identical in training and live.
    """
    if image.ndim != 3:
        raise ValueError(f"image must be channel-first (C, H, W), got shape {image.shape}")
    _check_boxes([box], image.shape[1], image.shape[2])
    return image[:, box.top : box.top + box.height, box.left : box.left + box.width]


@dataclass(frozen=True)
class ViewSpec:
    """How a dataset becomes N device views; saved in checkpoints via :meth:`to_dict`.

    ``kind="grid"`` cuts each image into ``rows x cols`` boxes (see :func:`grid_boxes`);
    ``kind="cameras"`` uses a multi-camera dataset's own cameras as the views, and then
    ``rows``, ``cols`` and ``overlap`` are not used.
    """

    kind: str = "grid"
    rows: int = 3
    cols: int = 2
    overlap: float = 0.0

    def __post_init__(self) -> None:
        """Validate the fields so a bad spec fails when built, not when used."""
        if self.kind not in VIEW_KINDS:
            raise ValueError(f"ViewSpec kind must be one of {VIEW_KINDS}, got {self.kind!r}")
        for name in ("rows", "cols"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ViewSpec {name} must be a positive integer, got {value!r}")
        if (
            isinstance(self.overlap, bool)
            or not isinstance(self.overlap, (int, float))
            or not (0.0 <= self.overlap < 1.0)
        ):
            raise ValueError(f"ViewSpec overlap must be in [0, 1), got {self.overlap!r}")

    def boxes(self, height: int, width: int) -> list[ViewBox]:
        """Return the grid boxes of an image of this size (only for ``kind="grid"``)."""
        if self.kind != "grid":
            raise ValueError(f"ViewSpec kind {self.kind!r} has no boxes; only 'grid' does")
        return grid_boxes(height, width, self.rows, self.cols, self.overlap)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-safe dict that :meth:`from_dict` turns back into this spec."""
        return {**asdict(self), "overlap": float(self.overlap)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ViewSpec:
        """Build a spec from :meth:`to_dict` output; unknown keys are an error."""
        unknown = set(data) - {"kind", "rows", "cols", "overlap"}
        if unknown:
            raise ValueError(f"ViewSpec has no fields {sorted(unknown)}")
        return cls(**data)


def make_views(
    spec: ViewSpec, data: LabeledImages | MultiViewImages
) -> tuple[np.ndarray, np.ndarray]:
    """Turn a dataset into device views.

    Returns ``views`` ``uint8 (M, N, C, h, w)`` and ``available`` ``bool (M, N)``. Grid views
    of single-view images are always available; camera views keep the dataset's mask.
    """
    if spec.kind == "grid":
        if not isinstance(data, LabeledImages):
            raise ValueError("ViewSpec kind 'grid' needs single-view LabeledImages")
        views = crop_views(data.images, spec.boxes(*data.images.shape[2:]))
        return views, np.ones(views.shape[:2], dtype=bool)
    if not isinstance(data, MultiViewImages):
        raise ValueError("ViewSpec kind 'cameras' needs a multi-camera dataset (MultiViewImages)")
    return data.views, data.available


def assign_device_classes(
    n_devices: int, classes_per_device: int, n_classes: int, seed: int
) -> tuple[tuple[int, ...], ...]:
    """Return the classes each device specialises in, covering every class.

    Classes are shuffled by ``seed`` and dealt round-robin: device ``i`` takes the next
    ``classes_per_device`` classes of the shuffled cycle, so every class is covered once
    ``n_devices * classes_per_device >= n_classes`` and coverage is as even as possible.
    """
    if n_classes < 1 or n_devices < 1:
        raise ValueError(f"need at least one class and one device, got {n_classes} and {n_devices}")
    if not 1 <= classes_per_device <= n_classes:
        raise ValueError(
            f"classes_per_device must be in [1, {n_classes}], got {classes_per_device}"
        )
    if n_devices * classes_per_device < n_classes:
        raise ValueError(
            f"{n_devices} devices x {classes_per_device} classes cannot cover {n_classes} "
            f"classes: raise classes_per_device to at least {math.ceil(n_classes / n_devices)}"
        )
    order = np.random.default_rng(seed).permutation(n_classes)
    return tuple(
        tuple(
            sorted(
                int(order[(i * classes_per_device + k) % n_classes])
                for k in range(classes_per_device)
            )
        )
        for i in range(n_devices)
    )


def class_specialised_mask(
    labels: np.ndarray,
    n_devices: int,
    classes_per_device: int,
    n_classes: int,
    seed: int,
    off_class_fraction: float = 0.0,
) -> np.ndarray:
    """Return ``bool (M, n_devices)``: which training samples each device learns from.

    Device ``i`` learns from the samples of its classes (:func:`assign_device_classes`) plus
    a random ``off_class_fraction`` of the other samples. This only weights each device's
    training loss: at inference every device still sees its view of every sample.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or (labels.size and (labels.min() < 0 or labels.max() >= n_classes)):
        raise ValueError(f"labels must be 1-D with values in [0, {n_classes})")
    if not 0.0 <= off_class_fraction <= 1.0:
        raise ValueError(f"off_class_fraction must be in [0, 1], got {off_class_fraction}")
    device_classes = assign_device_classes(n_devices, classes_per_device, n_classes, seed)
    # A separate stream from the class shuffle, so changing the fraction keeps assignments.
    rng = np.random.default_rng([seed, 1])
    mask = np.empty((len(labels), n_devices), dtype=bool)
    for device, classes in enumerate(device_classes):
        kept_off_class = rng.random(len(labels)) < off_class_fraction
        mask[:, device] = np.isin(labels, classes) | kept_off_class
    return mask


@dataclass(frozen=True)
class NoiseSpec:
    """Noise for one device's views.

    ``kind="gaussian"``: additive noise with std ``level * 255``. ``kind="salt_pepper"``:
    a ``level`` fraction of pixels (all channels of a pixel together) set to 0 or 255.
    """

    kind: str
    level: float

    def __post_init__(self) -> None:
        """Validate kind and level so bad CLI input fails before any data is touched."""
        if self.kind not in NOISE_KINDS:
            raise ValueError(f"noise kind must be one of {NOISE_KINDS}, got {self.kind!r}")
        if not math.isfinite(self.level) or self.level < 0:
            raise ValueError(f"noise level must be a finite number >= 0, got {self.level!r}")
        if self.kind == "salt_pepper" and self.level > 1:
            raise ValueError(f"salt_pepper level is a pixel fraction in [0, 1], got {self.level}")


def apply_device_noise(views: np.ndarray, noise: dict[int, NoiseSpec], seed: int) -> np.ndarray:
    """Return a noisy copy of ``views`` ``uint8 (M, N, C, h, w)``; the input is unchanged.

    Each device's noise comes from its own random stream seeded by ``(seed, device)``, so a
    device's noise is reproducible and does not change when other devices are added. Views
    marked unavailable get noise too; fusion ignores them by their availability mask.
    """
    if views.dtype != np.uint8 or views.ndim != 5:
        raise ValueError(f"views must be uint8 (M, N, C, h, w), got {views.dtype} {views.shape}")
    n_devices = views.shape[1]
    bad = sorted(device for device in noise if not 0 <= device < n_devices)
    if bad:
        raise ValueError(f"noise given for devices {bad}, but there are only {n_devices}")
    noisy = views.copy()
    for device, spec in sorted(noise.items()):
        rng = np.random.default_rng([seed, device])
        view = noisy[:, device]
        if spec.kind == "gaussian":
            sample = rng.standard_normal(view.shape, dtype=np.float32) * np.float32(
                spec.level * 255.0
            )
            view[...] = np.clip(np.rint(view + sample), 0, 255).astype(np.uint8)
        else:
            m, _, h, w = view.shape
            hit = rng.random((m, h, w)) < spec.level
            salt = rng.random((m, h, w)) < 0.5
            values = np.where(salt, np.uint8(255), np.uint8(0))
            # Broadcast one decision per pixel across channels: a dead pixel, not a dead subpixel.
            view[...] = np.where(hit[:, None], values[:, None], view)
    return noisy


def parse_noise(text: str) -> dict[int, NoiseSpec]:
    """Parse ``"1:gaussian:0.2,2:salt_pepper:0.05"`` into ``{device: NoiseSpec}``.

    Empty text means no noise. Each comma-separated item is ``<device>:<kind>:<level>``.
    """
    form = "'<device>:<kind>:<level>[,...]', e.g. '1:gaussian:0.2,2:salt_pepper:0.05'"
    noise: dict[int, NoiseSpec] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        parts = [part.strip() for part in item.split(":")]
        if len(parts) != 3:
            raise ValueError(f"bad noise item {item!r}: expected {form}")
        device_text, kind, level_text = parts
        try:
            device, level = int(device_text), float(level_text)
        except ValueError:
            raise ValueError(
                f"bad noise item {item!r}: device must be an integer and level a number; "
                f"expected {form}"
            ) from None
        if device < 0:
            raise ValueError(f"bad noise item {item!r}: device ids start at 0")
        if device in noise:
            raise ValueError(f"bad noise item {item!r}: device {device} is given twice")
        try:
            noise[device] = NoiseSpec(kind, level)
        except ValueError as err:
            raise ValueError(f"bad noise item {item!r}: {err}") from None
    return noise
