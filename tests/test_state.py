"""Averaging state on disk: atomic generations, resume, and bad files."""

import os

import keras
import numpy as np
import pytest
from scenarios import (
    Crash,
    compiled_model,
    fit_regression,
    regression_data,
    regression_model,
    weights,
)

from keras_aswa import ASWA, SWA
from keras_aswa.state import StateFileError, StateStore

EPOCHS = 8


def load_states(directory):
    store = StateStore(directory)
    store.load(tidy=False)
    return store.generations


def meta(epoch, step=None):
    return {
        "callback": "ASWA",
        "config": {},
        "epoch": epoch,
        "step": step,
        "batches": step,
        "epoch_start": None,
        "every": None,
        "count": 1,
        "signature": [[[3], "float32"], [[], None]],
        "history": [],
    }


def keep_all(metas):
    return metas


def latest_file(state):
    """The newest generation's file."""
    return os.path.join(state, max(n for n in os.listdir(state) if n.endswith(".npz")))


def run(tmp_path, callback, crash_at=None, model=None):
    """The same command each time: fresh model, BackupAndRestore, callback."""
    model = model or regression_model()
    compiled_model(model)
    callbacks = [keras.callbacks.BackupAndRestore(str(tmp_path / "keras")), callback]
    if crash_at is not None:
        callbacks.append(Crash(crash_at, batch=3))
    return fit_regression(model, callbacks, epochs=EPOCHS)


@pytest.mark.parametrize(
    "make", [ASWA, lambda **kw: SWA(start_from_epoch=2, **kw)], ids=["ASWA", "SWA"]
)
def test_killed_and_resumed_run_ends_like_an_uninterrupted_one(tmp_path, make):
    whole = make(backup_dir=str(tmp_path / "a"))
    expected = weights(run(tmp_path / "whole", whole))

    state = str(tmp_path / "b")
    first = make(backup_dir=state)
    with pytest.raises(RuntimeError, match="preempted"):
        run(tmp_path / "killed", first, crash_at=5)
    assert os.path.exists(latest_file(state))
    resumed = make(backup_dir=state)
    got = weights(run(tmp_path / "killed", resumed))

    assert resumed.history == whole.history
    assert resumed.ensemble_size == whole.ensemble_size
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    # A finished run leaves no state behind: the next fit starts afresh.
    assert load_states(state) == []


def test_resume_picks_the_generation_matching_keras_backup(tmp_path):
    # Killed after ASWA saved epoch 5 but before BackupAndRestore did: Keras
    # resumes at epoch 5, so the state of epoch 4 (the previous one) applies.
    whole = ASWA(backup_dir=str(tmp_path / "a"))
    expected = weights(run(tmp_path / "whole", whole))

    state = str(tmp_path / "b")
    model = compiled_model()
    keras_backup = keras.callbacks.BackupAndRestore(str(tmp_path / "k"))
    with pytest.raises(RuntimeError):
        fit_regression(
            model,
            [ASWA(backup_dir=state), Crash(5), keras_backup],
            epochs=EPOCHS,
        )
    epochs = [meta["epoch"] for _, meta in load_states(state)]
    assert epochs == [5, 4]
    resumed = ASWA(backup_dir=state)
    model = compiled_model()
    fit_regression(
        model,
        [keras.callbacks.BackupAndRestore(str(tmp_path / "k")), resumed],
        epochs=EPOCHS,
    )
    assert resumed.history == whole.history
    for a, b in zip(weights(model), expected, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def crashed_state(tmp_path):
    state = str(tmp_path / "state")
    with pytest.raises(RuntimeError):
        run(tmp_path / "k", ASWA(backup_dir=state), crash_at=3)
    return state


def test_truncated_state_file_is_an_error_and_is_kept(tmp_path):
    state = crashed_state(tmp_path)
    path = latest_file(state)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    damaged = open(path, "rb").read()
    with pytest.raises(StateFileError, match=os.path.basename(path)) as info:
        run(tmp_path / "k", ASWA(backup_dir=state))
    assert "truncated" in str(info.value)
    assert open(path, "rb").read() == damaged  # never silently replaced


def test_state_of_another_model_is_an_error(tmp_path):
    state = crashed_state(tmp_path)
    other = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(3), keras.layers.Dense(1)]
    )
    with pytest.raises(StateFileError, match="other weights"):
        run(tmp_path / "other", ASWA(backup_dir=state), model=other)


def test_state_of_another_callback_is_an_error(tmp_path):
    state = crashed_state(tmp_path)
    with pytest.raises(StateFileError, match="written by ASWA"):
        run(tmp_path / "k", SWA(backup_dir=state))


def test_stale_state_with_a_fresh_start_is_an_error(tmp_path):
    state = crashed_state(tmp_path)
    (x, y), (xv, yv) = regression_data()
    model = compiled_model()
    with pytest.raises(StateFileError, match="fit starts at epoch 0"):
        model.fit(
            x,
            y,
            validation_data=(xv, yv),
            epochs=2,
            verbose=0,
            callbacks=[ASWA(backup_dir=state)],
        )


def test_generations_are_kept_as_told_and_writes_are_atomic(tmp_path):
    d = str(tmp_path)
    store = StateStore(d)
    store.lock()
    f32 = np.arange(3, dtype="float32")
    store.save([f32, None], meta(0), keep=keep_all)
    store.save([f32 + 1, None], meta(1), keep=keep_all)
    (latest, latest_meta), (prev, prev_meta) = load_states(d)
    assert latest_meta["epoch"] == 1 and prev_meta["epoch"] == 0
    np.testing.assert_array_equal(latest[0], [1, 2, 3])
    assert latest[1] is None
    names = sorted(n for n in os.listdir(d) if n != ".lock")
    assert len(names) == 2  # no temporaries

    class Boom(Exception):
        pass

    class Exploding:
        def __array__(self, *a, **k):
            raise Boom

    with pytest.raises(Boom):
        store.save([Exploding()], meta(2), keep=keep_all)
    assert load_states(d)[0][1]["epoch"] == 1  # the old state stands
    assert sorted(n for n in os.listdir(d) if n != ".lock") == names
    # Only what `keep` names stays.
    store.save([f32, None], meta(3), keep=lambda metas: metas[:1])
    assert [m["epoch"] for _, m in load_states(d)] == [3]
    store.clear()
    assert os.listdir(d) == []


def test_finished_run_clears_state_without_restore(tmp_path):
    state = str(tmp_path / "s")
    run(tmp_path / "k", ASWA(backup_dir=state, restore_best=False))
    assert load_states(state) == []


class RaiseAt(keras.callbacks.Callback):
    """Stops the run at the end of `epoch`, where it stands in the list."""

    def __init__(self, epoch):
        super().__init__()
        self.stop_epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.stop_epoch:
            raise RuntimeError("preempted")


@pytest.mark.parametrize(
    "make", [ASWA, lambda **kw: SWA(start_from_epoch=2, **kw)], ids=["ASWA", "SWA"]
)
def test_kill_after_keras_backup_and_before_the_callback_saves(tmp_path, make):
    # [BackupAndRestore, X, callback]: Keras has saved epoch 5, the callback
    # has not. The rerun replays the missed epoch end from Keras' weights.
    whole = make(backup_dir=str(tmp_path / "a"))
    expected = weights(run(tmp_path / "whole", whole))

    state = str(tmp_path / "b")
    model = compiled_model()
    keras_dir = str(tmp_path / "k")
    with pytest.raises(RuntimeError, match="preempted"):
        fit_regression(
            model,
            [
                keras.callbacks.BackupAndRestore(keras_dir),
                RaiseAt(5),
                make(backup_dir=state),
            ],
            epochs=EPOCHS,
        )
    resumed = make(backup_dir=state)
    model = compiled_model()
    fit_regression(
        model,
        [keras.callbacks.BackupAndRestore(keras_dir), resumed],
        epochs=EPOCHS,
    )
    assert resumed.history == whole.history
    for a, b in zip(weights(model), expected, strict=True):
        np.testing.assert_array_equal(a, b)


def test_two_callbacks_sharing_a_backup_dir_are_refused(tmp_path):
    state = str(tmp_path / "shared")
    with pytest.raises(ValueError, match="share backup_dir"):
        fit_regression(
            compiled_model(),
            [ASWA(backup_dir=state), SWA(backup_dir=state + "/")],
            epochs=1,
        )


def test_state_written_with_other_arguments_is_an_error(tmp_path):
    state = crashed_state(tmp_path)
    before = sorted(os.listdir(state))
    with pytest.raises(StateFileError, match="monitor") as info:
        run(tmp_path / "k", ASWA(backup_dir=state, monitor="val_mse", mode="min"))
    assert os.path.basename(latest_file(state)) in str(info.value)
    assert "same arguments" in str(info.value)
    assert sorted(os.listdir(state)) == before


def rewrite_meta(path, change):
    import json

    with np.load(path, allow_pickle=False) as data:
        payload = {k: data[k] for k in data.files}
    meta = json.loads(str(payload["__meta__"]))
    change(meta, payload)
    payload["__meta__"] = np.array(json.dumps(meta))
    with open(path, "wb") as f:
        np.savez(f, **payload)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda m, p: m.pop("signature"), "lacks \\['signature'\\]"),
        (lambda m, p: m.update(format=99), "format version 99"),
        (lambda m, p: p.update(a0=np.zeros((2, 2), "float32")), "do not match"),
        (lambda m, p: m.update(history=5), "invalid values: history=5"),
        (lambda m, p: m.update(count="x"), "invalid values: count='x'"),
        (lambda m, p: m.update(count=-3), "invalid values: count=-3"),
        (lambda m, p: m.update(epoch=1.5), "invalid values: epoch=1.5"),
        (lambda m, p: m.update(signature=[["3"], 1]), "invalid values: signature"),
    ],
    ids=[
        "missing-key",
        "format",
        "shape",
        "history",
        "count-str",
        "count-neg",
        "epoch-float",
        "signature",
    ],
)
def test_damaged_metadata_names_the_file(tmp_path, change, message):
    state = crashed_state(tmp_path)
    path = latest_file(state)
    rewrite_meta(path, change)
    with pytest.raises(StateFileError, match=message) as info:
        run(tmp_path / "k", ASWA(backup_dir=state))
    assert path in str(info.value)
    assert os.path.exists(path)


def test_temporary_file_of_a_killed_write_does_not_outlive_the_run(tmp_path):
    state = crashed_state(tmp_path)
    stale = os.path.join(state, ".state-killed.npz")
    with open(stale, "wb") as f:
        f.write(b"half a state")
    run(tmp_path / "k", ASWA(backup_dir=state))
    assert os.listdir(state) == []


class Batches(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seen = 0

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1


@pytest.mark.parametrize("below", [False, True], ids=["file", "below-a-file"])
def test_backup_dir_that_is_not_a_folder_stops_fit_before_training(tmp_path, below):
    path = tmp_path / "taken"
    path.write_text("not a folder")
    backup_dir = str(path / "state") if below else str(path)
    batches = Batches()
    with pytest.raises(StateFileError, match="is not a folder"):
        fit_regression(
            compiled_model(), [ASWA(backup_dir=backup_dir), batches], epochs=2
        )
    assert batches.seen == 0
    assert path.read_text() == "not a folder"


HOLD_LOCK = """
import sys
from keras_aswa.state import StateStore
StateStore(sys.argv[1]).lock()
print("locked", flush=True)
sys.stdin.readline()
"""


def test_a_second_process_on_the_same_backup_dir_is_refused(tmp_path):
    import subprocess
    import sys

    state = str(tmp_path / "state")
    os.makedirs(state)
    # A write in progress of the process that holds the folder.
    in_progress = os.path.join(state, ".state-inprogress.npz")
    with open(in_progress, "wb") as f:
        f.write(b"half")
    other = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, state],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, KERAS_BACKEND=keras.backend.backend()),
    )
    try:
        assert other.stdout.readline().strip() == "locked"
        batches = Batches()
        with pytest.raises(StateFileError, match="in use by another process"):
            fit_regression(
                compiled_model(), [ASWA(backup_dir=state), batches], epochs=2
            )
        assert batches.seen == 0
        assert os.path.exists(in_progress), "the other process' write was deleted"
    finally:
        other.stdin.close()
        other.wait(timeout=120)
    # Once it is gone, the folder is free again.
    fit_regression(compiled_model(), [ASWA(backup_dir=state)], epochs=2)
    assert os.listdir(state) == []
