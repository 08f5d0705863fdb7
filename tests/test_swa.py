"""The SWA callback: the plain mean of the chosen epochs' weights."""

import inspect
import warnings

import keras
import numpy as np
import pytest
from scenarios import SnapshotRecorder, aswa_run

from keras_aswa import ASWA, SWA


@pytest.mark.parametrize(
    "start, frequency, epochs, averaged",
    [(0, 1, 4, [0, 1, 2, 3]), (2, 3, 10, [2, 5, 8]), (0.5, 2, 8, [4, 6])],
)
def test_final_weights_are_numpy_mean_of_snapshots(start, frequency, epochs, averaged):
    recorder, swa = SnapshotRecorder(), SWA(start_from_epoch=start, frequency=frequency)
    model = aswa_run([recorder, swa], epochs=epochs)
    assert [h["epoch"] for h in swa.history] == averaged
    float_mask = [keras.backend.is_float_dtype(v.dtype) for v in model.weights]
    for i, (v, is_float) in enumerate(zip(model.weights, float_mask, strict=True)):
        got = keras.ops.convert_to_numpy(v)
        if is_float:
            want = np.mean([recorder.snapshots[e][i] for e in averaged], axis=0)
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert model.history.history["swa_size"] == [
        sum(e <= k for e in averaged) for k in range(epochs)
    ]


def test_restore_best_false_keeps_running_weights():
    recorder, swa = SnapshotRecorder(), SWA(restore_best=False)
    model = aswa_run([recorder, swa], epochs=3)
    for got, want in zip(model.get_weights(), recorder.snapshots[2], strict=True):
        np.testing.assert_array_equal(got, want)
    assert swa.ensemble_size == 3


@pytest.mark.parametrize("start", [-1, 1.0, 0.0, 1.5, "2", True])
def test_bad_start_from_epoch(start):
    with pytest.raises(ValueError, match="start_from_epoch"):
        SWA(start_from_epoch=start)


@pytest.mark.parametrize("frequency", [0, -2, 1.5])
def test_bad_frequency(frequency):
    with pytest.raises(ValueError, match="frequency"):
        SWA(frequency=frequency)


def test_start_after_last_epoch_warns_and_keeps_model():
    recorder = SnapshotRecorder()
    with pytest.warns(UserWarning, match="averaged no epoch"):
        model = aswa_run([recorder, SWA(start_from_epoch=5)], epochs=2)
    for got, want in zip(model.get_weights(), recorder.snapshots[1], strict=True):
        np.testing.assert_array_equal(got, want)


def test_restore_best_is_the_flag_of_both_callbacks():
    for cls in (SWA, ASWA):
        parameter = inspect.signature(cls).parameters["restore_best"]
        assert parameter.default is True
        assert "restore" not in inspect.signature(cls).parameters
    assert vars(SWA(restore_best=False))["restore_best"] is False
    assert vars(ASWA(restore_best=False))["restore_best"] is False


def test_restore_is_not_an_argument_nor_an_attribute():
    with pytest.raises(TypeError, match="restore"):
        SWA(restore=False)
    assert not hasattr(SWA(), "restore")


def test_restore_best_needs_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        swa = SWA(0, 1, False)
        assert swa.restore_best is False
        SWA(restore_best=True)
