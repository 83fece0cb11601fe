"""Tests of device views, class-specialised masks and per-device noise."""

from __future__ import annotations

import json

import numpy as np
import pytest

from resilient_perception.datasets import LabeledImages, load_mnist
from resilient_perception.perception.views import (
    NoiseSpec,
    ViewBox,
    ViewSpec,
    apply_device_noise,
    assign_device_classes,
    class_specialised_mask,
    crop_view,
    crop_views,
    grid_boxes,
    make_views,
    parse_noise,
)
from test.conftest import DATA_ROOT, needs_data


@pytest.fixture(scope="module")
def mnist_test() -> LabeledImages:
    """Load the real MNIST test split (fast: 10,000 images)."""
    return load_mnist(DATA_ROOT, "test")


def coverage(boxes: list[ViewBox], height: int, width: int) -> np.ndarray:
    """Count how many boxes cover each pixel."""
    counts = np.zeros((height, width), dtype=int)
    for box in boxes:
        counts[box.top : box.top + box.height, box.left : box.left + box.width] += 1
    return counts


@pytest.mark.parametrize("size", [(28, 28), (32, 32), (31, 17), (6, 4)])
@pytest.mark.parametrize("grid", [(3, 2), (2, 2), (1, 1), (1, 3)])
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.9])
def test_grid_boxes_cover_image_with_equal_boxes(size, grid, overlap) -> None:
    """Grid boxes are equal, span edge to edge and cover every pixel."""
    height, width = size
    rows, cols = grid
    boxes = grid_boxes(height, width, rows, cols, overlap)
    assert len(boxes) == rows * cols
    assert len({(box.height, box.width) for box in boxes}) == 1
    assert coverage(boxes, height, width).min() >= 1
    assert boxes[0].top == 0 and boxes[0].left == 0
    assert boxes[-1].top + boxes[-1].height == height
    assert boxes[-1].left + boxes[-1].width == width


def test_grid_boxes_row_major_and_overlap_grows_boxes() -> None:
    """Boxes are row-major; overlap enlarges them."""
    plain = grid_boxes(28, 28, rows=3, cols=2)
    assert [(box.top, box.left) for box in plain] == [
        (0, 0),
        (0, 14),
        (9, 0),
        (9, 14),
        (18, 0),
        (18, 14),
    ]
    assert (plain[0].height, plain[0].width) == (10, 14)
    wider = grid_boxes(28, 28, rows=3, cols=2, overlap=0.5)
    assert (wider[0].height, wider[0].width) == (15, 21)
    assert coverage(wider, 28, 28).sum() > coverage(plain, 28, 28).sum()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"height": 0, "width": 28}, "height must be a positive integer"),
        ({"height": 28, "width": 28, "rows": 0}, "rows must be a positive integer"),
        ({"height": 2, "width": 28, "rows": 3}, "use fewer rows/cols"),
        ({"height": 28, "width": 28, "overlap": 1.0}, r"overlap must be .* \[0, 1\)"),
        ({"height": 28, "width": 28, "overlap": -0.1}, r"overlap must be .* \[0, 1\)"),
    ],
)
def test_grid_boxes_rejects_bad_arguments(kwargs, message) -> None:
    """Bad grid arguments raise a ValueError saying what to fix."""
    with pytest.raises(ValueError, match=message):
        grid_boxes(**kwargs)


@needs_data
def test_crop_views_match_manual_slicing(mnist_test: LabeledImages) -> None:
    """crop_views and crop_view equal plain slicing on real MNIST."""
    images = mnist_test.images[:100]
    boxes = grid_boxes(28, 28, 3, 2, overlap=0.2)
    views = crop_views(images, boxes)
    assert views.shape == (100, 6, 1, boxes[0].height, boxes[0].width)
    for device, box in enumerate(boxes):
        manual = images[:, :, box.top : box.top + box.height, box.left : box.left + box.width]
        np.testing.assert_array_equal(views[:, device], manual)
        np.testing.assert_array_equal(crop_view(images[7], box), manual[7])
    assert np.shares_memory(crop_view(images[7], boxes[3]), images)


def test_crop_rejects_unequal_or_outside_boxes() -> None:
    """Unequal, out-of-image boxes and wrong layouts are rejected."""
    images = np.zeros((2, 1, 8, 8), np.uint8)
    with pytest.raises(ValueError, match="same size"):
        crop_views(images, [ViewBox(0, 0, 4, 4), ViewBox(0, 0, 4, 5)])
    with pytest.raises(ValueError, match="inside the 8x8 image"):
        crop_views(images, [ViewBox(6, 0, 4, 4)])
    with pytest.raises(ValueError, match=r"channel-first \(C, H, W\)"):
        crop_view(images[0, 0], ViewBox(0, 0, 4, 4))


def test_view_spec_round_trip_and_validation() -> None:
    """ViewSpec survives a JSON round trip and validates fields."""
    spec = ViewSpec("grid", rows=3, cols=2, overlap=0.25)
    assert ViewSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    cameras = ViewSpec("cameras")
    assert ViewSpec.from_dict(cameras.to_dict()) == cameras
    with pytest.raises(ValueError, match="kind must be one of"):
        ViewSpec("patches")
    with pytest.raises(ValueError, match="no fields"):
        ViewSpec.from_dict({"kind": "grid", "stride": 2})
    with pytest.raises(ValueError, match="only 'grid'"):
        cameras.boxes(28, 28)


@needs_data
def test_make_views_grid_and_cameras(mnist_test: LabeledImages) -> None:
    """Grid specs cut single-view data; camera specs need cameras."""
    subset = LabeledImages(mnist_test.images[:50], mnist_test.labels[:50], mnist_test.classes)
    views, available = make_views(ViewSpec("grid"), subset)
    assert views.shape == (50, 6, 1, 10, 14) and available.all()
    with pytest.raises(ValueError, match="MultiViewImages"):
        make_views(ViewSpec("cameras"), subset)


def test_class_specialised_mask_covers_every_class() -> None:
    """Every class has a specialist device; masks follow labels."""
    labels = np.repeat(np.arange(10), 30)
    for n_devices, per_device in [(6, 2), (5, 2), (3, 4), (10, 1)]:
        assigned = assign_device_classes(n_devices, per_device, 10, seed=3)
        assert set().union(*assigned) == set(range(10))
        assert all(len(set(classes)) == per_device for classes in assigned)
        mask = class_specialised_mask(labels, n_devices, per_device, 10, seed=3)
        assert mask.shape == (300, n_devices)
        assert mask.any(axis=1).all(), "every sample is learnt by some device"
        for device, classes in enumerate(assigned):
            np.testing.assert_array_equal(mask[:, device], np.isin(labels, classes))
    assert assign_device_classes(6, 2, 10, seed=1) != assign_device_classes(6, 2, 10, seed=2)
    with pytest.raises(ValueError, match="at least 4"):
        assign_device_classes(3, 3, 10, seed=0)


def test_off_class_fraction_keeps_some_other_samples() -> None:
    """off_class_fraction keeps that share of other samples."""
    labels = np.repeat(np.arange(10), 1000)
    mask = class_specialised_mask(labels, 5, 2, 10, seed=0, off_class_fraction=0.1)
    (classes, *_) = assign_device_classes(5, 2, 10, seed=0)
    off_class = ~np.isin(labels, classes)
    assert mask[~off_class, 0].all()
    assert mask[off_class, 0].mean() == pytest.approx(0.1, abs=0.02)


def test_noise_is_deterministic_and_leaves_input_unchanged() -> None:
    """Noise is seeded per device and copies."""
    rng = np.random.default_rng(0)
    views = rng.integers(0, 256, size=(200, 4, 3, 8, 8), dtype=np.uint8)
    before = views.copy()
    noise = {1: NoiseSpec("gaussian", 0.2), 2: NoiseSpec("salt_pepper", 0.05)}
    first = apply_device_noise(views, noise, seed=7)
    np.testing.assert_array_equal(views, before)
    np.testing.assert_array_equal(first, apply_device_noise(views, noise, seed=7))
    assert not np.array_equal(first, apply_device_noise(views, noise, seed=8))
    for untouched in (0, 3):
        np.testing.assert_array_equal(first[:, untouched], views[:, untouched])
    # A device's noise does not depend on which other devices are noisy.
    alone = apply_device_noise(views, {2: noise[2]}, seed=7)
    np.testing.assert_array_equal(alone[:, 2], first[:, 2])


def test_noise_levels_match() -> None:
    """Salt-pepper pixel fraction and Gaussian std match the levels."""
    views = np.full((500, 2, 3, 16, 16), 128, dtype=np.uint8)
    noisy = apply_device_noise(
        views, {0: NoiseSpec("salt_pepper", 0.05), 1: NoiseSpec("gaussian", 0.1)}, seed=0
    )
    changed_pixels = (noisy[:, 0] != 128).any(axis=1)
    assert changed_pixels.mean() == pytest.approx(0.05, abs=0.005)
    assert set(np.unique(noisy[:, 0][:, :, changed_pixels.any(axis=0)])) <= {0, 128, 255}
    deviation = noisy[:, 1].astype(float) - 128
    assert deviation.std() == pytest.approx(0.1 * 255, rel=0.02)


def test_parse_noise() -> None:
    """parse_noise reads the CLI format."""
    assert parse_noise("1:gaussian:0.2, 2:salt_pepper:0.05") == {
        1: NoiseSpec("gaussian", 0.2),
        2: NoiseSpec("salt_pepper", 0.05),
    }
    assert parse_noise("") == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1:gaussian", "expected '<device>:<kind>:<level>"),
        ("x:gaussian:0.2", "device must be an integer"),
        ("1:gaussian:high", "level a number"),
        ("-1:gaussian:0.2", "device ids start at 0"),
        ("1:blur:0.2", "kind must be one of"),
        ("1:salt_pepper:1.5", r"pixel fraction in \[0, 1\]"),
        ("1:gaussian:nan", "finite number"),
        ("1:gaussian:0.1,1:salt_pepper:0.1", "given twice"),
    ],
)
def test_parse_noise_errors(text: str, message: str) -> None:
    """Bad noise text raises a ValueError naming the item."""
    with pytest.raises(ValueError, match=message):
        parse_noise(text)


def test_noise_for_unknown_device_is_rejected() -> None:
    """Noise for a device that does not exist is rejected."""
    with pytest.raises(ValueError, match=r"devices \[5\]"):
        apply_device_noise(np.zeros((1, 2, 1, 4, 4), np.uint8), {5: NoiseSpec("gaussian", 0.1)}, 0)
