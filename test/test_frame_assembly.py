"""Tests of the fusion node's ROS-free core: device health, frame assembly, frame fusion."""

import numpy as np
import pytest
import torch

from resilient_perception.perception.frame_assembly import (
    AddResult,
    ClassifierHeads,
    DeviceHealth,
    DeviceMonitor,
    Frame,
    FrameAssembler,
    StallGuard,
    fuse_frame,
)
from resilient_perception.perception.modes import FUSION_MODES
from resilient_perception.perception.modifier import fuse_with_failures

N, K, D = 3, 4, 5
TIMEOUT = 0.1


def _prediction(seed):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=K)
    probs = np.exp(logits) / np.exp(logits).sum()
    return probs.astype(np.float32), rng.normal(size=D).astype(np.float32)


def _add(assembler, stamp, device, now, seed=None):
    probs, features = _prediction(stamp * 10 + device if seed is None else seed)
    return assembler.add(stamp, device, probs, features, now)


def _heads(seed=0):
    rng = np.random.default_rng(seed)
    return ClassifierHeads(
        weights=rng.normal(size=(N, K, D)).astype(np.float32),
        biases=rng.normal(size=(N, K)).astype(np.float32),
        known=np.ones(N, bool),
    )


# ---------------------------------------------------------------- FrameAssembler


MS = 1_000_000


def test_free_running_stamps_within_the_tolerance_form_one_frame():
    # Three cameras stamping one scene 0, 14 and 9 ms apart, each 33 ms later for the next.
    assembler = FrameAssembler(N, K, D, TIMEOUT, sync_tolerance_ns=20 * MS)
    live = {0, 1, 2}
    for k in range(3):
        for device, phase in ((0, 0), (1, 14), (2, 9)):
            assert _add(assembler, (33 * k + phase) * MS, device, now=0.0) is (
                AddResult.ACCEPTED)
    frames = assembler.ready(0.0, live)
    assert [f.stamp_ns for f in frames] == [0, 33 * MS, 66 * MS]  # each its earliest stamp
    assert all(f.present.all() for f in frames)
    assert [f.latest_ns for f in frames] == [14 * MS, 47 * MS, 80 * MS]


def test_a_frame_never_spans_more_than_the_tolerance_nor_takes_two_of_one_device():
    assembler = FrameAssembler(N, K, D, TIMEOUT, sync_tolerance_ns=10 * MS)
    assert _add(assembler, 0, 0, now=0.0) is AddResult.ACCEPTED
    assert _add(assembler, 12 * MS, 1, now=0.0) is AddResult.ACCEPTED  # 12 ms: a new frame
    assert _add(assembler, 5 * MS, 0, now=0.0) is AddResult.ACCEPTED  # device 0 is in the
    assert assembler.pending_count == 2  # first: joins the second (spans 5-12 ms)
    assert _add(assembler, 12 * MS, 1, now=0.0) is AddResult.DUPLICATE
    first, second = assembler.ready(1.0, {0, 1, 2})  # both timed out
    assert list(first.present) == [True, False, False]
    assert list(second.present) == [True, True, False] and second.stamp_ns == 5 * MS


def test_a_prediction_that_could_have_joined_a_released_frame_is_stale():
    assembler = FrameAssembler(N, K, D, TIMEOUT, sync_tolerance_ns=10 * MS)
    for device in (0, 1):
        _add(assembler, 100 * MS + device * MS, device, now=0.0)
    (frame,) = assembler.ready(1.0, {0, 1, 2})  # device 2 late: released at the timeout
    assert _add(assembler, 104 * MS, 2, now=1.0) is AddResult.STALE
    assert _add(assembler, 111 * MS, 2, now=1.0) is AddResult.ACCEPTED  # the next scene


def _free_running(assembler, scenes, phases_ms, skip=()):
    """Scenes 33 ms apart, each device ``phase`` ms into it (except ``(scene, device)`` in
    ``skip``); every frame released at its timeout. Returns the released frames."""
    frames = []
    for k in range(scenes):
        now = k * 0.033
        for device, phase in enumerate(phases_ms):
            if (k, device) not in skip:
                _add(assembler, (33 * k + phase) * MS, device, now=now)
        frames += assembler.ready(now, {0, 1, 2})
    return frames + assembler.ready(1e3, {0, 1, 2})


def test_split_frames_are_counted_with_the_spread_they_needed():
    # Free-running cameras 0, 9 and 14 ms into each scene, the tolerance left at 0: every
    # scene's three predictions become three frames. The first two of each lack devices whose
    # predictions sit in the frames after them; the third's missing ones are a scene later.
    assembler = FrameAssembler(N, K, D, TIMEOUT)
    frames = _free_running(assembler, 10, (0, 9, 14))
    assert len(frames) == 30 and not any(f.present.all() for f in frames)
    assert assembler.split_frames == 20
    assert assembler.widest_split_ns == 14 * MS
    # With a tolerance that covers the spread: one complete frame per scene, none split.
    assembler = FrameAssembler(N, K, D, TIMEOUT, sync_tolerance_ns=20 * MS)
    frames = _free_running(assembler, 10, (0, 9, 14))
    assert len(frames) == 10 and all(f.present.all() for f in frames)
    assert assembler.split_frames == 0


def test_a_camera_that_skipped_an_image_did_not_split_its_frame():
    # Camera 2 skips scene 4: that frame is released without it, and its next prediction is
    # a frame period later, so the frame was not split.
    assembler = FrameAssembler(N, K, D, TIMEOUT, sync_tolerance_ns=20 * MS)
    frames = _free_running(assembler, 10, (0, 9, 14), skip={(4, 2)})
    assert [f.present.all() for f in frames].count(False) == 1
    assert assembler.split_frames == 0 and assembler.widest_split_ns == 0


def test_a_zero_tolerance_groups_exact_stamps_only():
    assembler = FrameAssembler(N, K, D, TIMEOUT)
    assert _add(assembler, 100, 0, now=0.0) is AddResult.ACCEPTED
    assert _add(assembler, 101, 1, now=0.0) is AddResult.ACCEPTED
    assert assembler.pending_count == 2
    with pytest.raises(ValueError):
        FrameAssembler(N, K, D, TIMEOUT, sync_tolerance_ns=-1)


def test_frame_completes_when_all_live_devices_report():
    assembler = FrameAssembler(N, K, D, TIMEOUT)
    live = {0, 1, 2}
    for device in (2, 0):
        assert _add(assembler, 100, device, now=0.0) is AddResult.ACCEPTED
        assert assembler.ready(0.01, live) == []  # still waiting, far from the timeout
    assert _add(assembler, 100, 1, now=0.02) is AddResult.ACCEPTED
    (frame,) = assembler.ready(0.02, live)
    assert frame.stamp_ns == 100 and frame.present.all() and frame.first_arrival == 0.0
    assert frame.probs.dtype == np.float32 and frame.probs.shape == (N, K)
    np.testing.assert_array_equal(frame.probs[1], _prediction(100 * 10 + 1)[0])
    np.testing.assert_array_equal(frame.features[2], _prediction(100 * 10 + 2)[1])
    assert assembler.pending_count == 0


def test_frame_does_not_wait_for_devices_that_are_not_live():
    assembler = FrameAssembler(N, K, D, TIMEOUT)
    _add(assembler, 100, 0, now=0.0)
    _add(assembler, 100, 2, now=0.0)
    (frame,) = assembler.ready(0.0, live={0, 2})
    assert frame.present.tolist() == [True, False, True]


def test_timeout_emits_frame_with_missing_device_which_gets_a_surrogate():
    assembler = FrameAssembler(N, K, D, TIMEOUT)
    live = {0, 1, 2}
    _add(assembler, 100, 0, now=1.0)
    _add(assembler, 100, 2, now=1.05)
    assert assembler.ready(1.0 + TIMEOUT - 1e-3, live) == []
    (frame,) = assembler.ready(1.0 + TIMEOUT, live)  # timeout counts from the first arrival
    assert frame.present.tolist() == [True, False, True]
    np.testing.assert_array_equal(frame.probs[1], np.zeros(K, np.float32))
    fused, surrogates = fuse_frame(frame, _heads(), "avg")
    assert surrogates == [1]
    assert fused.shape == (K,) and np.isclose(fused.sum(), 1.0, atol=1e-5)


def test_frames_are_released_in_stamp_order_across_interleaved_arrivals():
    assembler = FrameAssembler(N, K, D, TIMEOUT)
    live = {0, 1}
    # frame 200 starts first and completes first, but 100 is older and still pending
    _add(assembler, 200, 0, now=0.00)
    _add(assembler, 100, 0, now=0.01)
    _add(assembler, 200, 1, now=0.02)
    assert assembler.ready(0.02, live) == []
    _add(assembler, 300, 1, now=0.03)
    _add(assembler, 100, 1, now=0.04)
    assert [f.stamp_ns for f in assembler.ready(0.04, live)] == [100, 200]
    # 300 is incomplete; its own timeout bounds the wait
    assert assembler.ready(0.03 + TIMEOUT - 1e-3, live) == []
    assert [f.stamp_ns for f in assembler.ready(0.03 + TIMEOUT, live)] == [300]


def test_older_frame_timeout_releases_newer_complete_frames_behind_it():
    assembler = FrameAssembler(N, K, D, TIMEOUT)
    live = {0, 1}
    _add(assembler, 100, 0, now=0.0)  # device 1 never sends 100
    _add(assembler, 200, 0, now=0.05)
    _add(assembler, 200, 1, now=0.05)
    assert assembler.ready(0.05, live) == []
    assert [f.stamp_ns for f in assembler.ready(TIMEOUT, live)] == [100, 200]


def test_every_rejection_reason_is_returned_and_counted():
    assembler = FrameAssembler(N, K, D, TIMEOUT)
    probs, features = _prediction(0)
    nan_features = features.copy()
    nan_features[0] = np.nan
    inf_probs = probs.copy()
    inf_probs[1] = np.inf
    results = [
        assembler.add(100, N, probs, features, 0.0),
        assembler.add(100, -1, probs, features, 0.0),
        assembler.add(100, 0, probs[:-1], features, 0.0),
        assembler.add(100, 0, probs, np.append(features, 0.0), 0.0),
        assembler.add(100, 0, probs, nan_features, 0.0),
        assembler.add(100, 0, inf_probs, features, 0.0),
        assembler.add(100, 0, probs, features, 0.0),  # accepted
        assembler.add(100, 0, probs, features, 0.0),  # duplicate
    ]
    assert [len(assembler.ready(0.0, {0}))] == [1]  # releases 100
    results += [
        assembler.add(100, 1, probs, features, 0.0),  # stale: same stamp as released
        assembler.add(50, 1, probs, features, 0.0),  # stale: older than released
    ]
    assert results == [
        AddResult.DEVICE_OUT_OF_RANGE,
        AddResult.DEVICE_OUT_OF_RANGE,
        AddResult.BAD_PROBS_LENGTH,
        AddResult.BAD_FEATURES_LENGTH,
        AddResult.NON_FINITE,
        AddResult.NON_FINITE,
        AddResult.ACCEPTED,
        AddResult.DUPLICATE,
        AddResult.STALE,
        AddResult.STALE,
    ]
    assert assembler.counts == {
        "accepted": 1,
        "device_out_of_range": 2,
        "bad_probs_length": 1,
        "bad_features_length": 1,
        "non_finite": 2,
        "duplicate": 1,
        "stale": 2,
    }
    # rejected predictions created no frame and did not overwrite the accepted one
    assert assembler.pending_count == 0


def test_max_pending_forces_the_oldest_frame_out():
    assembler = FrameAssembler(N, K, D, frame_timeout=10.0, max_pending=2)
    live = {0, 1}
    for stamp in (100, 200, 300):
        _add(assembler, stamp, 0, now=0.0)  # device 1 never reports: nothing completes
        assert assembler.pending_count <= 2
    (forced,) = assembler.ready(0.0, live)
    assert forced.stamp_ns == 100 and forced.present.tolist() == [True, False, False]
    assert _add(assembler, 100, 1, now=0.0) is AddResult.STALE  # already released
    assert assembler.pending_count == 2
    assert [f.stamp_ns for f in assembler.ready(10.0, live)] == [200, 300]


# ---------------------------------------------------------------- DeviceMonitor


def test_a_device_never_heard_is_no_input_yet_not_dead():
    monitor = DeviceMonitor(N, watchdog_timeout=1.0)
    monitor.heard(0, 10.5)
    monitor.heard(1, 10.5)
    assert monitor.check_watchdog(11.5) == []  # exactly the timeout is not longer than it
    assert monitor.check_watchdog(100.0) == [0, 1]
    assert monitor.health(2) is DeviceHealth.UNKNOWN  # no input yet, however long
    assert monitor.live_devices() == set()
    assert monitor.check_watchdog(100.1) == []  # reported once, not on every check


def test_watchdog_catches_a_device_that_went_silent():
    monitor = DeviceMonitor(N, watchdog_timeout=1.0)
    for device in range(N):
        monitor.heard(device, 0.0)
    monitor.heard(0, 1.5)
    monitor.heard(2, 1.5)
    assert monitor.check_watchdog(1.5) == [1]
    assert monitor.live_devices() == {0, 2}


def test_a_stall_of_the_node_itself_is_told_from_silent_devices():
    guard = StallGuard(threshold=0.25)
    assert guard.observe(10.0) == 0.0  # the first callback has nothing to compare with
    assert guard.observe(10.1) == 0.0
    assert guard.observe(10.9) == pytest.approx(0.8) and guard.stalls == 1  # stopped 0.8 s
    assert guard.observe(11.0) == 0.0 and guard.observe(11.5) == pytest.approx(0.5)
    assert guard.stalls == 2 and guard.stalled_s == pytest.approx(1.3)  # own_stall_s
    with pytest.raises(ValueError):
        StallGuard(threshold=0.0)

    # After the stall the watchdog and the pending frames count the silence without it,
    # and so does the check a deadline event must pass (devices silent for half a deadline).
    monitor = DeviceMonitor(N, watchdog_timeout=1.0)
    for device in range(N):
        monitor.heard(device, 0.0)
    assert monitor.silence(0, 0.85) == pytest.approx(0.85)
    monitor.postpone(0.8)
    assert monitor.silence(0, 0.85) == pytest.approx(0.05)
    assert DeviceMonitor(N, watchdog_timeout=1.0).silence(0, 0.85) == float("inf")
    assert monitor.check_watchdog(1.5) == []
    assert monitor.check_watchdog(1.81) == [0, 1, 2]
    # A frame pending at the stall waits it out; so does one stamped during the stall (its
    # devices may have been held up too) that starts after it, but not one stamped later.
    assembler = FrameAssembler(N, K, D, frame_timeout=TIMEOUT)
    assembler.add(1, 0, np.full(K, 1 / K), np.zeros(D), now=0.0)
    assembler.stalled(0.8, until_ns=50)
    assembler.add(50, 0, np.full(K, 1 / K), np.zeros(D), now=0.85)
    assembler.add(51, 0, np.full(K, 1 / K), np.zeros(D), now=0.85)
    assert assembler.ready(0.85, live={0, 1}) == []
    assert [f.stamp_ns for f in assembler.ready(0.91, live={0, 1})] == [1]
    assert assembler.ready(0.85 + TIMEOUT + 0.79, live={0, 1}) == []  # 51 waits behind 50
    assert [f.stamp_ns for f in assembler.ready(0.85 + TIMEOUT + 0.81, live={0, 1})] == [50, 51]
    assembler.stalled(0.8, until_ns=100)
    assembler.postpone(0.0)  # a clock jump: the stall's stamps mean nothing any more
    assembler.add(60, 0, np.full(K, 1 / K), np.zeros(D), now=2.0)
    assert [f.stamp_ns for f in assembler.ready(2.0 + TIMEOUT, live={0, 1})] == [60]


def test_dead_device_heard_again_becomes_alive_and_counters_track_it():
    monitor = DeviceMonitor(N, watchdog_timeout=1.0)
    assert monitor.heard(1, 0.1) is True  # UNKNOWN -> ALIVE
    assert monitor.heard(1, 0.2) is False
    assert monitor.mark_dead(1, "deadline", 0.3) is True
    assert monitor.mark_dead(1, "liveliness", 0.4) is False  # already dead: first reason kept
    assert 1 not in monitor.live_devices()
    assert monitor.snapshot()[1]["reason"] == "deadline"
    monitor.record_rejection(1)
    assert monitor.heard(1, 0.5) is True
    assert monitor.health(1) is DeviceHealth.ALIVE and 1 in monitor.live_devices()
    assert monitor.snapshot()[1] == {
        "health": "alive",
        "reason": "",
        "last_heard": 0.5,
        "last_death": 0.3,
        "messages": 3,
        "rejected": 1,
        "deaths": 1,
    }
    with pytest.raises(ValueError):
        monitor.mark_dead(0, "tired", 0.6)


# ---------------------------------------------------------------- fuse_frame


def _frame(present):
    rng = np.random.default_rng(7)
    probs = rng.dirichlet(np.ones(K), size=N).astype(np.float32)
    present = np.array(present, bool)
    probs[~present] = 0.0
    features = rng.normal(size=(N, D)).astype(np.float32)
    features[~present] = 0.0
    return Frame(stamp_ns=1, probs=probs, features=features, present=present, first_arrival=0.0)


@pytest.mark.parametrize("mode", FUSION_MODES)
@pytest.mark.parametrize("use_modifier", [True, False])
@pytest.mark.parametrize("present", [[True, False, True], [True, True, True],
                                     [False, True, False], [False, False, False]])
def test_fuse_frame_equals_fuse_with_failures(mode, use_modifier, present):
    frame, heads = _frame(present), _heads()
    fuse_frame(frame, heads, mode, use_modifier)  # twice: the second uses the cached head
    fused, surrogates = fuse_frame(frame, heads, mode, use_modifier)
    expected = fuse_with_failures(
        torch.from_numpy(frame.probs)[None],
        torch.from_numpy(frame.features)[None],
        torch.from_numpy(heads.weights),
        torch.from_numpy(heads.biases),
        torch.from_numpy(frame.present)[None],
        mode=mode,
        use_modifier=use_modifier,
    )[0].numpy()
    np.testing.assert_allclose(fused, expected, rtol=1e-6, atol=1e-7)
    missing = [i for i, p in enumerate(present) if not p]
    assert surrogates == (missing if use_modifier and any(present) else [])


def test_a_new_head_replaces_the_cached_average_head():
    frame, heads = _frame([True, True, False]), _heads()
    before, _ = fuse_frame(frame, heads, "avg")
    heads.set_head(0, heads.weights[0] * 3.0, heads.biases[0])
    after, _ = fuse_frame(frame, heads, "avg")
    assert not np.allclose(before, after)


def test_fuse_frame_surrogate_needs_only_present_heads():
    frame, heads = _frame([True, False, True]), _heads()
    with_all_heads, _ = fuse_frame(frame, heads, "avg")
    heads.known[1] = False  # the missing device's own head is not needed
    heads.weights[1] = 0.0
    fused, surrogates = fuse_frame(frame, heads, "avg")
    assert surrogates == [1]
    np.testing.assert_allclose(fused, with_all_heads, rtol=1e-6)


def test_missing_head_of_a_present_device_falls_back_to_present_only():
    frame, heads = _frame([True, False, True]), _heads()
    heads.known[2] = False
    fused, surrogates = fuse_frame(frame, heads, "avg")
    assert surrogates == []
    np.testing.assert_allclose(fused, frame.probs[[0, 2]].mean(axis=0), rtol=1e-6)
    with_surrogate, _ = fuse_frame(frame, _heads(), "avg")
    assert not np.allclose(fused, with_surrogate)  # the fallback really is different
    fused_no_heads, surrogates = fuse_frame(frame, None, "avg")
    assert surrogates == []
    np.testing.assert_allclose(fused_no_heads, fused, rtol=1e-6)


def test_heads_are_collected_one_device_at_a_time():
    heads = ClassifierHeads.empty(N, K, D)
    reference = _heads()
    assert heads.set_head(0, reference.weights[0], reference.biases[0])
    assert heads.known.tolist() == [True, False, False]
    # A camera repeats its head: the same one again is not new, a changed one is.
    assert not heads.set_head(0, reference.weights[0].copy(), reference.biases[0].copy())
    assert heads.set_head(0, reference.weights[0], reference.biases[0] + 1.0)
    np.testing.assert_array_equal(heads.weights[0], reference.weights[0])
    with pytest.raises(ValueError):
        heads.set_head(1, reference.weights[1][:, :-1], reference.biases[1])
    with pytest.raises(ValueError):
        heads.set_head(1, np.full((K, D), np.nan), reference.biases[1])
    assert heads.known.tolist() == [True, False, False]
