"""Constructor arguments: what Keras would accept is accepted, the rest is
refused at construction with a message that says what to pass."""

import ast
import math
import re
import warnings

import keras
import numpy as np
import pytest
from scenarios import aswa_run

from keras_aswa import ASWA, SWA
from keras_aswa.callbacks.peers import check_peers


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


# --- the calls that peers' messages suggest ----------------------------------

CALL = re.compile(r"\b([A-Z]\w*)\(\s*(\w+\s*=[^()]*)\)")
CALLABLE = {
    "ASWA": ASWA,
    "SWA": SWA,
    "EarlyStopping": keras.callbacks.EarlyStopping,
}


def peer_messages(callback, callbacks, optimizer=None):
    """The warnings (or the error) check_peers gives for a set-up."""
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        try:
            check_peers(callback, callbacks, optimizer)
        except ValueError as e:
            return [str(e)]
    return [str(w.message) for w in record]


def ema_optimizer():
    return keras.optimizers.Adam(1e-3, use_ema=True)


def both_write(first, second):
    return peer_messages(first, [first, second])


def after_swap(later):
    """The errors for `later` placed after `ASWA(swap_on_epoch=True)`."""
    swapping = ASWA(swap_on_epoch=True)
    callbacks = [swapping, later]
    messages = peer_messages(swapping, callbacks)
    if isinstance(later, ASWA | SWA):
        messages += peer_messages(later, callbacks)  # each refuses it
    return messages


SITUATIONS = {
    "early stopping restores too": lambda: both_write(
        ASWA(), keras.callbacks.EarlyStopping(restore_best_weights=True)
    ),
    "ASWA and SWA restore": lambda: both_write(SWA(), ASWA()),
    "two SWAs restore": lambda: both_write(SWA(), SWA()),
    "ASWA with optimizer EMA": lambda: peer_messages(ASWA(), [], ema_optimizer()),
    "SWA with optimizer EMA": lambda: peer_messages(SWA(), [], ema_optimizer()),
    "averaging after swap_on_epoch": lambda: after_swap(SWA()),
    "BackupAndRestore after swap_on_epoch": lambda: after_swap(
        keras.callbacks.BackupAndRestore("unused")
    ),
}


@pytest.mark.parametrize("situation", list(SITUATIONS))
def test_calls_suggested_by_peer_messages_are_accepted(situation):
    messages = SITUATIONS[situation]()
    assert messages, "the situation gave no message"
    calls = [m for message in messages for m in CALL.finditer(message)]
    assert calls, f"no Name(arg=value) call in {messages}"
    for message in messages:
        assert not re.search(r"\brestore=", message), message
    for match in calls:
        name, source = match.group(1), match.group(0)
        assert name in CALLABLE, f"{source}: not a callback the user builds"
        keywords = ast.parse(source, mode="eval").body.keywords
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a deprecated name fails too
            built = eval(source, {"__builtins__": {}}, dict(CALLABLE))
        assert isinstance(built, CALLABLE[name])
        for keyword in keywords:
            assert getattr(built, keyword.arg) == ast.literal_eval(keyword.value)
