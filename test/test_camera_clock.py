"""Tests of CameraClock: a camera's own stamps put on this machine's clock from arrivals."""

import numpy as np
import pytest

from resilient_perception.perception.camera_clock import CameraClock

PERIOD_NS = 33_333_333  # 30 Hz
LEAST_DELAY_NS = 400_000
HOST_START_NS = 1_765_000_000 * 10**9  # this machine's clock: Unix time
CAMERA_START_NS = 12 * 10**9  # the camera's: 12 s since it powered up


def _stream(n, seed=0, drift_ppm=0.0, delays_ns=None):
    """Captures on the host clock, the camera's stamps of them, and their arrivals."""
    rng = np.random.default_rng(seed)
    captures = HOST_START_NS + np.arange(n, dtype=np.int64) * PERIOD_NS
    stamps = CAMERA_START_NS + np.round(
        (captures - HOST_START_NS) * (1 + drift_ppm * 1e-6)).astype(np.int64)
    if delays_ns is None:  # a least delay, then a long tail, as a loaded machine delivers
        delays_ns = LEAST_DELAY_NS + rng.exponential(5e6, n).astype(np.int64)
        delays_ns[::10] = LEAST_DELAY_NS  # now and then an image that came at once
    return captures, stamps, captures + delays_ns


def _translate(clock, stamps, arrivals):
    return np.array([clock.translate(int(s), int(a))
                     for s, a in zip(stamps, arrivals, strict=True)])


def test_stamps_keep_their_spacing_shifted_by_the_least_delay():
    captures, stamps, arrivals = _stream(300)
    clock = CameraClock()
    translated = _translate(clock, stamps, arrivals)
    # The first image came at once: from it on, every stamp is its capture + the least delay.
    np.testing.assert_array_equal(translated - captures, LEAST_DELAY_NS)
    assert clock.offset_ns == HOST_START_NS - CAMERA_START_NS + LEAST_DELAY_NS
    assert clock.restarts == 0
    # Stamping on arrival instead would carry every delay: here up to tens of ms.
    assert (arrivals - captures).max() > 10 * LEAST_DELAY_NS


def test_never_later_than_the_arrival_nor_earlier_than_the_capture():
    rng = np.random.default_rng(3)
    delays = LEAST_DELAY_NS + rng.exponential(20e6, 500).astype(np.int64)
    captures, stamps, arrivals = _stream(500, delays_ns=delays)
    translated = _translate(CameraClock(), stamps, arrivals)
    assert (translated <= arrivals).all() and (translated >= captures).all()


@pytest.mark.parametrize("drift_ppm", [-100.0, 100.0])
def test_a_drifting_camera_clock_is_followed(drift_ppm):
    captures, stamps, arrivals = _stream(30 * 120, drift_ppm=drift_ppm)

    def error(window_s):
        translated = _translate(CameraClock(window_s=window_s), stamps, arrivals)
        return np.abs(translated - captures - LEAST_DELAY_NS).max()

    # A slow camera clock's offset grows: the window's minimum lags it by at most the
    # window's drift, 10 s x 100 ppm = 1 ms (a fast one's offset falls: the minimum follows).
    assert error(10.0) <= 1_000_000
    if drift_ppm < 0:  # a minimum over the whole run would lag by the run's: 12 ms
        assert error(1e6) > 10_000_000


def test_a_camera_clock_that_restarts_starts_the_estimate_again():
    captures, stamps, arrivals = _stream(200)
    stamps[100:] -= stamps[100] - 500_000_000  # the camera rebooted: its clock reads 0.5 s
    clock = CameraClock()
    translated = _translate(clock, stamps, arrivals)
    assert clock.restarts == 1
    assert (translated <= arrivals).all() and (translated >= captures).all()
    np.testing.assert_array_equal(translated[100:] - captures[100:], LEAST_DELAY_NS)


def test_images_held_up_for_seconds_keep_their_capture_stamps():
    # A driver that stalled for 2 s sends its queued frames at once, then runs on.
    delays = np.full(200, 3_000_000, np.int64)
    delays[::10] = LEAST_DELAY_NS
    delays[50:54] = 2_000_000_000 - np.arange(4) * PERIOD_NS  # all four arrive together
    captures, stamps, arrivals = _stream(200, delays_ns=delays)
    clock = CameraClock(restart_s=1.0)
    translated = _translate(clock, stamps, arrivals)
    assert clock.restarts == 0
    np.testing.assert_array_equal(translated - captures, LEAST_DELAY_NS)


def test_a_camera_clock_that_paused_starts_the_estimate_again_after_restart_s():
    # The camera slept 5 s with its clock stopped: from image 100 on, every image's
    # arrival - stamp is 5 s above the estimate.
    captures, stamps, arrivals = _stream(300)
    captures[100:] += 5 * 10**9
    arrivals[100:] += 5 * 10**9
    clock = CameraClock(restart_s=1.0)
    translated = _translate(clock, stamps, arrivals)
    assert clock.restarts == 1
    assert (translated <= arrivals).all()
    # Images of the first second after the pause still carry the old estimate (5 s early);
    # from the restart on the new offset, exact from the next image that came at once.
    restart = 100 + int(np.argmax(arrivals[100:] - arrivals[100] >= 10**9))
    exact = restart + (-restart) % 10
    np.testing.assert_array_equal(translated[100:restart] - captures[100:restart],
                                  LEAST_DELAY_NS - 5 * 10**9)
    assert (translated[restart:] >= captures[restart:]).all()
    np.testing.assert_array_equal(translated[exact:] - captures[exact:], LEAST_DELAY_NS)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="window_s"):
        CameraClock(window_s=0)
    with pytest.raises(ValueError, match="restart_s"):
        CameraClock(restart_s=-1)
    assert CameraClock().offset_ns is None
