"""Constructor arguments: what Keras would accept is accepted, the rest is
refused at construction with a message that says what to pass."""

import math

import numpy as np
import pytest
from scenarios import aswa_run

from keras_aswa import ASWA, SWA


@pytest.mark.parametrize("start", [True, False, -1, 1.5, "3", None, np.float64(2.0)])
def test_aswa_start_from_epoch_refused(start):
    with pytest.raises(ValueError, match="start_from_epoch must be a non-negative int"):
        ASWA(start_from_epoch=start)


@pytest.mark.parametrize("start", [np.int64(3), np.int32(3), np.uint8(3), 3])
def test_aswa_start_from_epoch_numpy_ints_accepted(start):
    aswa = ASWA(start_from_epoch=start)
    assert aswa.start_from_epoch == 3 and type(aswa.start_from_epoch) is int


def test_numpy_start_from_epoch_trains_and_is_honoured(tmp_path):
    # The state file holds start_from_epoch's effects as JSON: an np.int64
    # kept as it was would not serialise.
    aswa = ASWA(start_from_epoch=np.int64(2), backup_dir=str(tmp_path / "s"))
    aswa_run([aswa], epochs=4)
    assert [h["epoch"] for h in aswa.history] == [2, 3]


@pytest.mark.parametrize("delta", ["0.1", None, [0.1], True])
def test_min_delta_of_another_type_is_a_type_error(delta):
    with pytest.raises(TypeError, match="min_delta must be a real number"):
        ASWA(min_delta=delta)


@pytest.mark.parametrize("delta", [math.nan, math.inf, -math.inf, np.float32("nan")])
def test_non_finite_min_delta_is_refused(delta):
    # With NaN, no epoch could ever count as an improvement.
    with pytest.raises(ValueError, match="min_delta must be finite"):
        ASWA(min_delta=delta)


@pytest.mark.parametrize(
    "delta, expected", [(np.float32(0.25), 0.25), (-0.5, 0.5), (np.int64(1), 1.0)]
)
def test_min_delta_numpy_and_negative(delta, expected):
    aswa = ASWA(min_delta=delta)
    assert aswa.min_delta == expected and type(aswa.min_delta) is float


@pytest.mark.parametrize("cls", [ASWA, SWA])
@pytest.mark.parametrize("verbose", ["1", None, -1, 1.5])
def test_bad_verbose_is_refused(cls, verbose):
    with pytest.raises(ValueError, match="verbose must be 0"):
        cls(verbose=verbose)


@pytest.mark.parametrize("cls", [ASWA, SWA])
@pytest.mark.parametrize("verbose, expected", [(True, 1), (np.int64(0), 0), (2, 2)])
def test_verbose_accepts_ints_and_bools(cls, verbose, expected):
    cb = cls(verbose=verbose)
    assert cb.verbose == expected and type(cb.verbose) is int


@pytest.mark.parametrize("start", [True, -1, 1.5, 0.0, "3", None, np.float64(1.0)])
def test_swa_start_from_epoch_refused(start):
    with pytest.raises(ValueError, match="start_from_epoch"):
        SWA(start_from_epoch=start)


@pytest.mark.parametrize(
    "start, expected",
    [(np.int64(2), 2), (np.float64(0.5), 0.5), (np.float32(0.25), 0.25), (0, 0)],
)
def test_swa_start_from_epoch_numpy_accepted(start, expected):
    swa = SWA(start_from_epoch=start)
    assert swa.start_from_epoch == expected
    assert type(swa.start_from_epoch) is type(expected)


@pytest.mark.parametrize("frequency", [True, 0, 2.0, "2", None])
def test_swa_frequency_refused(frequency):
    with pytest.raises(ValueError, match="frequency must be an int >= 1"):
        SWA(frequency=frequency)


def test_swa_numpy_frequency_accepted():
    swa = SWA(frequency=np.int64(2))
    assert swa.frequency == 2 and type(swa.frequency) is int
    aswa_run([swa], epochs=5)
    assert [h["epoch"] for h in swa.history] == [0, 2, 4]
