"""Property-based tests (hypothesis) of every function that takes data from outside.

Images, predictions and heads (from any process on the DDS domain), activation tensors and
plan rows (from other robots), fleet YAML, profile JSON, checkpoints and bags (files a user
hands to a command). For each: whatever the input, the function returns or raises its
documented error type, nothing else; valid input round-trips; invalid input gets the
documented error. Example counts are modest so the whole module stays within ~30 s.
"""

from __future__ import annotations

import contextlib
import json
import math
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from resilient_perception.message_checks import (
    HeadShapes,
    RejectionLog,
    clip_text,
    head_problem,
    link_rate_problem,
    probabilities_problem,
    stamp_problem,
    values_problem,
)
from resilient_perception.perception.frame_assembly import (
    AddResult,
    ClassifierHeads,
    FrameAssembler,
    fuse_frame,
)
from resilient_perception.perception.modes import FUSION_MODES
from resilient_perception.placement.block_profile import (
    BlockProfile,
    ProfileError,
    load_profile,
)
from resilient_perception.placement.distributed import (
    TENSOR_DTYPES,
    decode_tensor,
    encode_tensor,
    stage_work,
)
from resilient_perception.placement.fleet_config import FleetError, load_fleet
from resilient_perception.ros.image_conversion import (
    ENCODINGS,
    ImageConversionError,
    image_to_array,
    to_model_input,
)

from .conftest import ROOT

FAST = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FILES = settings(max_examples=25, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

floats = st.floats(allow_nan=True, allow_infinity=True, width=32)
PROBLEMS = {"bad_probs_length", "non_finite", "bad_probabilities", "bad_features_length",
            "value_out_of_range"}


def flip_bits(data: bytes, positions: list[int]) -> bytes:
    """``data`` with one bit flipped at each of ``positions`` (bit indices, wrapped)."""
    out = bytearray(data)
    for bit in positions:
        bit %= 8 * len(out)
        out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def damaged(original: bytes) -> st.SearchStrategy[bytes]:
    """Truncations and bit flips of ``original``: what a disk or a copy does to a file."""
    return st.one_of(
        st.integers(0, len(original) - 1).map(lambda n: original[:n]),
        st.lists(st.integers(0, 8 * len(original) - 1), min_size=1, max_size=8).map(
            lambda bits: flip_bits(original, bits)),
    )


# -- images ----------------------------------------------------------------------------------
image_messages = st.builds(
    SimpleNamespace,
    encoding=st.one_of(st.sampled_from(sorted(ENCODINGS)), st.text(max_size=20)),
    height=st.integers(-3, 12), width=st.integers(-3, 12), step=st.integers(-4, 120),
    is_bigendian=st.integers(0, 1), data=st.binary(max_size=600))


@FAST
@given(image_messages, st.sampled_from([1, 3]))
def test_image_conversion_never_raises_anything_else(msg, channels):
    try:
        pixels = image_to_array(msg)
    except ImageConversionError:
        return
    enc = ENCODINGS[msg.encoding]
    assert pixels.shape == (msg.height, msg.width, enc.channels)
    view = to_model_input(pixels, msg.encoding, channels)
    assert view.dtype == np.uint8 and view.shape == (channels, msg.height, msg.width)


@FAST
@given(st.sampled_from(sorted(ENCODINGS)), st.integers(1, 6), st.integers(1, 6),
       st.integers(0, 5), st.booleans(), st.data())
def test_image_round_trips_with_padding_and_byte_order(encoding, h, w, pad, big, data):
    enc = ENCODINGS[encoding]
    wire = enc.dtype.newbyteorder(">" if big else "<")
    pixels = data.draw(hnp.arrays(enc.dtype, (h, w, enc.channels)))
    rows = np.ascontiguousarray(pixels, dtype=wire).view(np.uint8).reshape(h, -1)
    padded = np.concatenate([rows, np.zeros((h, pad), np.uint8)], axis=1)
    msg = SimpleNamespace(encoding=encoding, height=h, width=w, step=padded.shape[1],
                          is_bigendian=int(big), data=padded.tobytes())
    np.testing.assert_array_equal(image_to_array(msg), pixels)
    # one byte less (a truncated message) is the documented error
    msg.data = msg.data[:-1]
    with pytest.raises(ImageConversionError):
        image_to_array(msg)


# -- prediction and head checks ----------------------------------------------------------------
@FAST
@given(st.integers(-2**63, 2**63), st.integers(-2**62, 2**62), st.floats(0, 3600),
       st.floats(0.001, 1e10))
def test_stamp_window(stamp, now, ahead, age):
    problem = stamp_problem(stamp, now, ahead, age)
    if now <= 0:
        assert problem is None
    elif stamp > now + round(ahead * 1e9):
        assert problem == "stamp_ahead"
    elif stamp < now - round(age * 1e9):
        assert problem == "stamp_too_old"
    else:
        assert problem is None


@FAST
@given(hnp.arrays(np.float32, st.integers(0, 12), elements=floats), st.integers(1, 12))
def test_probabilities_problem_says_why_or_accepts_a_distribution(probs, n):
    problem = probabilities_problem(probs, n, 1e-3)
    assert problem is None or problem in PROBLEMS
    if problem is None:
        assert probs.shape == (n,) and np.isfinite(probs).all() and probs.min() >= 0
        assert abs(float(probs.sum(dtype=np.float64)) - 1) <= 1e-3


@FAST
@given(hnp.arrays(np.float32, st.integers(1, 12), elements=st.floats(-30, 30, width=32)))
def test_a_softmax_is_always_accepted(logits):
    e = np.exp(logits - logits.max())
    assert probabilities_problem((e / e.sum()).astype(np.float32), len(logits), 1e-3) is None


@FAST
@given(hnp.arrays(np.float32, st.integers(0, 10), elements=floats), st.integers(0, 10),
       st.floats(1, 1e18))
def test_values_problem(values, length, max_abs):
    problem = values_problem(values, length, max_abs, "bad_features_length")
    assert problem is None or problem in PROBLEMS
    if problem is None:
        assert values.shape == (length,) and (not length or np.abs(values).max() <= max_abs)


@FAST
@given(hnp.arrays(np.float32, st.integers(0, 30), elements=floats),
       hnp.arrays(np.float32, st.integers(0, 6), elements=floats),
       st.integers(-2, 6), st.integers(-2, 6))
def test_head_problem_is_a_string_or_none(weight, bias, k, d):
    problem = head_problem(weight, bias, k, d, 1e6)
    assert problem is None or isinstance(problem, str)
    if problem is None:
        assert weight.shape == (k * d,) and bias.shape == (k,)
        assert np.isfinite(weight).all() and np.isfinite(bias).all()


@FAST
@given(st.lists(st.tuples(st.integers(0, 5), st.sampled_from([(10, 8), (11, 8), (10, 9)])),
                max_size=30))
def test_head_shapes_follow_the_majority_of_latest_heads(adds):
    shapes = HeadShapes(6)
    latest: dict[int, tuple[int, int]] = {}
    for device, shape in adds:
        shapes.add(device, np.zeros(shape, np.float32), np.zeros(shape[0], np.float32))
        latest[device] = shape
        votes = {s: list(latest.values()).count(s) for s in set(latest.values())}
        assert votes[shapes.shape] == max(votes.values())  # never a minority shape
        assert shapes.head(device) is not None or shapes.shape != shape


@FAST
@given(st.floats(allow_nan=True, allow_infinity=True))
def test_link_rate_problem(rate):
    problem = link_rate_problem(rate, 1e3, 1e11)
    assert problem in (None, "implausible_rate")
    assert (problem is None) == (rate == 0 or (math.isfinite(rate) and 1e3 <= rate <= 1e11))


@FAST
@given(st.text(max_size=300), st.lists(st.sampled_from("abc"), max_size=50))
def test_log_lines_are_bounded_and_counts_exact(text, reasons):
    assert len(clip_text(text)) <= 80 + 30
    log = RejectionLog(period=5.0)
    for i, reason in enumerate(reasons):
        log.add(reason, now=i * 0.1)
    assert log.total == len(reasons)
    assert log.counts == {r: reasons.count(r) for r in set(reasons)}


# -- frame assembly ------------------------------------------------------------------------------
predictions = st.tuples(
    st.integers(-2**63, 2**63 - 1), st.integers(-2, 5),
    hnp.arrays(np.float32, st.integers(2, 4), elements=floats),
    hnp.arrays(np.float32, st.integers(2, 4), elements=floats))


@FAST
@given(st.lists(predictions, max_size=40))
def test_frame_assembler_rejects_by_reason_and_releases_in_order(items):
    assembler = FrameAssembler(4, 3, 3, frame_timeout=0.1, max_pending=4)
    released: list[int] = []
    for now, (stamp, device, probs, features) in enumerate(items):
        result = assembler.add(stamp, device, probs, features, float(now))
        assert isinstance(result, AddResult)
        if result is AddResult.ACCEPTED:
            assert probs.shape == (3,) and features.shape == (3,)
        for frame in assembler.ready(float(now), {0, 1, 2, 3}):
            released.append(frame.stamp_ns)
    assert released == sorted(released) and len(set(released)) == len(released)
    assert sum(assembler.counts.values()) == len(items)


@FAST
@given(st.data(), st.sampled_from(FUSION_MODES), st.booleans())
def test_fusing_valid_predictions_gives_a_distribution(data, mode, modifier):
    n, k, d = 4, 3, 5
    logits = data.draw(hnp.arrays(np.float32, (n, k), elements=st.floats(-20, 20, width=32)))
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    features = data.draw(hnp.arrays(np.float32, (n, d), elements=st.floats(-1e3, 1e3,
                                                                           width=32)))
    present = data.draw(hnp.arrays(bool, n))
    heads = ClassifierHeads.empty(n, k, d)
    for device in range(n):
        heads.set_head(device, data.draw(hnp.arrays(np.float32, (k, d),
                                                    elements=st.floats(-1, 1, width=32))),
                       np.zeros(k, np.float32))
    assembler = FrameAssembler(n, k, d, frame_timeout=0.1)
    for device in np.flatnonzero(present):
        assert assembler.add(7, int(device), probs[device], features[device], 0.0) is \
            AddResult.ACCEPTED
    frames = assembler.ready(1.0, set(range(n)))
    assume(frames)
    fused, surrogates = fuse_frame(frames[0], heads, mode, modifier)
    assert np.isfinite(fused).all() and fused.min() >= 0
    if mode == "avg":
        assert abs(float(fused.sum()) - 1) < 1e-4 or not (modifier or present.all())
    if mode == "geo":  # renormalised whatever was present
        assert abs(float(fused.sum()) - 1) < 1e-4


# -- activations and plans ----------------------------------------------------------------------
@FAST
@given(st.lists(st.integers(0, 2**32 - 1), max_size=4),
       st.one_of(st.sampled_from(TENSOR_DTYPES), st.text(max_size=8)), st.binary(max_size=64))
def test_decode_tensor_only_raises_value_error(shape, dtype, data):
    try:
        array = decode_tensor(shape, dtype, data)
    except ValueError:
        return
    assert list(array.shape) == shape and array.dtype.name == dtype


@FAST
@given(st.sampled_from(TENSOR_DTYPES).flatmap(
    lambda dt: hnp.arrays(dt, hnp.array_shapes(min_dims=1, max_dims=4, max_side=4),
                          elements={"allow_nan": False, "allow_infinity": False}
                          if dt.startswith("float") else None)))
def test_tensor_round_trip(array):
    shape, dtype, data = encode_tensor(array)
    np.testing.assert_array_equal(decode_tensor(shape, dtype, data), array)


@FAST
@given(st.lists(st.integers(-3, 4), min_size=1, max_size=8), st.integers(-1, 4),
       st.integers(-2, 10))
def test_stage_work_of_any_plan_row(row, robot, start):
    try:
        work = stage_work(row, robot, start)
    except ValueError:
        assert not 0 <= start < len(row) or row[start] not in (robot, -1)
        return
    assert work.units[0] == start and all(row[u] in (robot, -1) for u in work.units)
    assert (work.next_unit is None) == (work.next_robot is None)
    if work.next_unit is not None:
        assert row[work.next_unit] == work.next_robot not in (robot, -1)


# -- fleet YAML and profile JSON -------------------------------------------------------------------
FLEET = (ROOT / "config" / "fleet_example.yaml").read_bytes()
PROFILE_PATH = ROOT / "docs" / "results" / "resnet" / "baseline-w8" / "plain" / "profile.json"
PROFILE = PROFILE_PATH.read_bytes()


def _written(data: bytes, suffix: str) -> Path:
    with tempfile.NamedTemporaryFile(suffix=suffix, delete=False) as handle:
        handle.write(data)
    return Path(handle.name)


@FILES
@given(st.one_of(damaged(FLEET), st.binary(max_size=200),
                 st.text(max_size=200).map(str.encode)))
def test_fleet_files_load_or_raise_fleet_error(data):
    path = _written(data, ".yaml")
    try:
        load_fleet(path)
    except FleetError as exc:
        assert str(path) in str(exc)
    finally:
        path.unlink()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False)
    | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                 max_size=4), max_leaves=20)


@FILES
@given(st.one_of(damaged(PROFILE), json_values.map(lambda v: json.dumps(v).encode())))
def test_profile_files_load_or_raise_profile_error(data):
    path = _written(data, ".json")
    try:
        load_profile(path)
    except ProfileError as exc:
        assert str(path) in str(exc)
    finally:
        path.unlink()


@FILES
@given(st.sampled_from(["model", "blocks", "stem", "head", "drop_accuracy", "seed",
                        "input_shape", "clean_accuracy", "dtype_bytes"]), json_values)
def test_profile_with_one_field_replaced(key, value):
    data = json.loads(PROFILE)
    data[key] = value
    with contextlib.suppress(ProfileError):
        BlockProfile.from_dict(data)


def test_valid_profile_and_fleet_round_trip():
    profile = load_profile(PROFILE_PATH)
    assert BlockProfile.from_dict(json.loads(json.dumps(profile.to_dict()))) == profile
    assert load_fleet(ROOT / "config" / "fleet_example.yaml").fleet.n_devices >= 1


# -- checkpoints ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> bytes:
    """A small but real ``multi_device_cnn`` checkpoint's bytes (a few kB)."""
    from resilient_perception.perception.checkpoint import save_checkpoint
    from resilient_perception.perception.model import MultiDeviceCNN

    path = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
    save_checkpoint(path, MultiDeviceCNN(2, 1, 3, widths=(2, 2), n_blocks=1), {"seed": 0})
    return path.read_bytes()


def _load_or_checkpoint_error(data: bytes) -> None:
    from resilient_perception.checkpoints import CheckpointError
    from resilient_perception.perception.checkpoint import load_checkpoint, load_training_state

    path = _written(data, ".safetensors")
    try:
        for load in (load_checkpoint, load_training_state):
            try:
                load(path)
            except CheckpointError as exc:
                assert str(path) in str(exc)
    finally:
        path.unlink()


@FILES
@given(st.data())
def test_damaged_checkpoints_load_or_raise_checkpoint_error(tiny_checkpoint, data):
    _load_or_checkpoint_error(data.draw(damaged(tiny_checkpoint)))


@FILES
@given(json_values)
def test_checkpoint_metadata_of_any_json(tiny_checkpoint, meta):
    """Any JSON as the metadata: a list or a number where an object belongs included."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from resilient_perception.checkpoints import META_KEY

    src = _written(tiny_checkpoint, ".safetensors")
    try:
        with safe_open(str(src), framework="pt") as fh:
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
        save_file(tensors, str(src), metadata={META_KEY: json.dumps(meta)})
        _load_or_checkpoint_error(src.read_bytes())
    finally:
        src.unlink()


def test_valid_checkpoint_round_trips(tiny_checkpoint, tmp_path):
    from resilient_perception.perception.checkpoint import load_checkpoint

    path = tmp_path / "m.safetensors"
    path.write_bytes(tiny_checkpoint)
    model, meta = load_checkpoint(path)
    assert model.n_devices == 2 and meta["seed"] == 0


# -- bags ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=["mcap", "sqlite3"])
def tiny_bag(request, tmp_path_factory) -> Path:
    """A 3-frame, 2-camera bag of 4x4 mono8 images in the given storage."""
    from resilient_perception.ros.bags import CameraFrame, write_frames

    path = tmp_path_factory.mktemp("bag") / request.param
    frames = [CameraFrame(1_000_000_000 + i * 10**8,
                          (np.full((4, 4, 1), i, np.uint8),) * 2, "mono8", i % 10, i)
              for i in range(3)]
    write_frames(path, frames, 2, storage=request.param)
    return path


def _read_bag_or_bag_error(folder: Path) -> None:
    from resilient_perception.ros.bags import BagError, read_frames, read_messages, summarize

    for read in (summarize, lambda p: list(read_messages(p)),
                 lambda p: list(read_frames(p, 2))):
        try:
            read(folder)
        except BagError as exc:
            assert str(folder) in str(exc)


@FILES
@given(st.data(), st.booleans())
def test_damaged_bags_read_or_raise_bag_error(tiny_bag, data, metadata):
    import shutil

    storage = next(f for f in tiny_bag.iterdir() if f.suffix in (".mcap", ".db3"))
    target = tiny_bag / "metadata.yaml" if metadata else storage
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "bag"
        shutil.copytree(tiny_bag, folder)
        (folder / target.name).write_bytes(data.draw(damaged(target.read_bytes())))
        _read_bag_or_bag_error(folder)


def test_a_bag_whose_metadata_names_an_unknown_type_is_named_in_the_error(tiny_bag):
    """Found by the property above: one flipped bit turned ``sensor_msgs`` into
    ``rensor_msgs`` in metadata.yaml, and the error did not say which bag."""
    import re
    import shutil

    from resilient_perception.ros.bags import BagError, summarize

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "bag"
        shutil.copytree(tiny_bag, folder)
        metadata = folder / "metadata.yaml"
        metadata.write_text(metadata.read_text().replace("sensor_msgs/", "rensor_msgs/"))
        _read_bag_or_bag_error(folder)
        if tiny_bag.name == "sqlite3":  # mcap keeps its own copy of the types
            with pytest.raises(BagError, match=re.escape(f"bag {folder}: topic ")):
                summarize(folder)


def test_valid_bag_round_trips(tiny_bag):
    from resilient_perception.ros.bags import read_frames

    frames = list(read_frames(tiny_bag, 2))
    assert [f.label for f in frames] == [0, 1, 2]
    assert all(int(img.max()) == f.frame_index for f in frames for img in f.images)
