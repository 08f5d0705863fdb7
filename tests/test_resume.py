"""A run's identity in its state (keras_aswa.resume): a resume that would not
continue the run stops before training, naming the file and what changed."""

import json
import os

import keras
import numpy as np
import pytest
from scenarios import Crash, compiled_model, regression_data, regression_model

from keras_aswa import ASWA, SWA
from keras_aswa.state import StateFileError, StateStore

EPOCHS = 4
(X, Y), (XV, YV) = regression_data(0)


def run(tmp_path, make, crash=None, model=None, epochs=EPOCHS, x=X, y=Y, **fit_kw):
    """One command: a fresh model, Keras' backup, the callback `make(model)`."""
    model = model or regression_model()
    compiled_model(model)
    callback = make(model)
    callbacks = [keras.callbacks.BackupAndRestore(str(tmp_path / "keras")), callback]
    if crash is not None:
        callbacks.append(Crash(*crash))
    fit_kw.setdefault("validation_data", (XV, YV))
    model.fit(
        x,
        y,
        epochs=epochs,
        batch_size=32,
        shuffle=False,
        verbose=0,
        callbacks=callbacks,
        **fit_kw,
    )
    return model, callback


def crashed(tmp_path, make, **kw):
    with pytest.raises(RuntimeError, match="preempted"):
        run(tmp_path, make, crash=(1,), **kw)
    state = str(tmp_path / "state")
    return state, sorted(os.listdir(state))


def assert_refused(tmp_path, state, before, make, what, **kw):
    with pytest.raises(StateFileError) as info:
        run(tmp_path, make, **kw)
    message = str(info.value)
    assert state in message, message
    assert what in message, message
    assert "backup_dir" in message, message  # the way out: a new average
    assert sorted(os.listdir(state)) == before  # nothing touched


def test_other_variables_of_the_same_shapes_are_refused(tmp_path):
    # The first Dense layer's bias and BatchNormalization's gamma: both (16,).
    state = str(tmp_path / "state")
    state, before = crashed(
        tmp_path,
        lambda m: SWA(variables=[m.layers[0].bias], backup_dir=state),
    )
    assert_refused(
        tmp_path,
        state,
        before,
        lambda m: SWA(variables=[m.layers[1].gamma], backup_dir=state),
        "variables=",
    )


@pytest.mark.parametrize(
    "change",
    ["validation_data", "validation_steps", "fit_validation"],
)
def test_other_validation_data_or_k_is_refused(tmp_path, change):
    state = str(tmp_path / "state")
    own = change != "fit_validation"

    def make(steps=None, data=(XV, YV)):
        if not own:
            return lambda m: ASWA(backup_dir=state)
        return lambda m: ASWA(
            validation_data=data, validation_steps=steps, backup_dir=state
        )

    state, before = crashed(tmp_path, make(steps=2 if own else None))
    other = (XV + 1.0, YV)
    if change == "validation_data":
        assert_refused(tmp_path, state, before, make(2, other), "validation=")
    elif change == "validation_steps":
        assert_refused(tmp_path, state, before, make(3), "validation_steps=")
    else:
        assert_refused(
            tmp_path, state, before, make(), "validation=", validation_data=other
        )
    # The same command resumes.
    run(tmp_path, make(2 if own else None))


def test_best_score_of_the_wrong_type_is_refused(tmp_path):
    state = str(tmp_path / "state")
    state, _ = crashed(tmp_path, lambda m: ASWA(backup_dir=state))
    path = os.path.join(state, max(n for n in os.listdir(state) if n.endswith(".npz")))
    with np.load(path, allow_pickle=False) as data:
        payload = {k: data[k] for k in data.files}
    meta = json.loads(str(payload["__meta__"]))
    meta["best_score"] = "x"
    payload["__meta__"] = np.array(json.dumps(meta))
    with open(path, "wb") as f:
        np.savez(f, **payload)
    with pytest.raises(StateFileError, match="best_score='x'") as info:
        run(tmp_path, lambda m: ASWA(backup_dir=state))
    assert path in str(info.value)


def test_auto_keeps_k_across_two_kills(tmp_path):
    # A budget no check fits: K = 8 of the 16 validation batches.
    (x, y), (xv, yv) = regression_data(0, n_train=512, n_val=512)
    state = str(tmp_path / "state")

    def make(m):
        return ASWA(
            update_freq="auto",
            validation_data=(xv, yv),
            check_budget=1e-9,
            backup_dir=state,
        )

    _, whole = run(tmp_path / "whole", make, x=x, y=y)  # clears state/ at its end
    assert whole.cadence.validation_steps == 8
    for crash in (1, 2):
        with pytest.raises(RuntimeError, match="preempted"):
            run(tmp_path, make, crash=(crash,), x=x, y=y)
        store = StateStore(state)
        store.load(tidy=False)
        assert store.generations[0][1]["validation_steps"] == 8, crash
    _, resumed = run(tmp_path, make, x=x, y=y)
    assert resumed.history == whole.history
    assert resumed.best_score == whole.best_score


def test_a_second_fit_from_epoch_1_records_no_epoch_0(tmp_path):
    model = regression_model()
    compiled_model(model)
    aswa = ASWA(backup_dir=str(tmp_path / "state"))

    def fit(**kw):
        model.fit(
            X,
            Y,
            batch_size=32,
            validation_data=(XV, YV),
            verbose=0,
            callbacks=[aswa],
            **kw,
        )

    fit(epochs=2)
    with pytest.warns(UserWarning, match="starts a new average"):
        fit(initial_epoch=1, epochs=3)
    assert [r["epoch"] for r in aswa.history] == [1, 2]


def test_only_the_chief_deletes_a_discarded_generation(tmp_path, monkeypatch):
    import importlib

    # Killed after ASWA wrote epoch 2 and before Keras backed it up: the
    # rerun resumes from epoch 1 and discards the state of epoch 2. A process
    # that is not the chief must leave the file to the chief.
    state = str(tmp_path / "state")

    def command(crash):
        model = regression_model()
        compiled_model(model)
        callbacks = [ASWA(backup_dir=state)]
        callbacks += [Crash(2)] if crash else []
        callbacks.append(keras.callbacks.BackupAndRestore(str(tmp_path / "keras")))
        model.fit(
            X, Y, epochs=EPOCHS, batch_size=32, shuffle=False, verbose=0,
            validation_data=(XV, YV), callbacks=callbacks,
        )  # fmt: skip

    with pytest.raises(RuntimeError, match="preempted"):
        command(True)
    StateStore(state).unlock()
    before = sorted(os.listdir(state))
    for name in ("keras_aswa.callbacks.base", "keras_aswa.resume"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        monkeypatch.setattr(module, "is_chief", lambda model=None: False, raising=False)
    command(False)
    assert sorted(os.listdir(state)) == before


def test_a_finished_run_killed_while_it_tidied_up_hands_back_its_model(tmp_path):
    # Killed after the state was written finished and Keras deleted its
    # backup, before the state was deleted: the same command trains nothing
    # and hands back the uninterrupted run's model; another command (other
    # epochs) is refused.
    import keras_aswa.resume

    _, whole = run(tmp_path / "whole", lambda m: ASWA(backup_dir=str(tmp_path / "w")))
    whole_weights = [keras.ops.convert_to_numpy(v) for v in _.weights]
    state = str(tmp_path / "state")
    close = keras_aswa.resume.Resume.close

    def killed_close(self):
        raise RuntimeError("preempted")

    keras_aswa.resume.Resume.close = killed_close
    try:
        with pytest.raises(RuntimeError, match="preempted"):
            run(tmp_path, lambda m: ASWA(backup_dir=state))
    finally:
        keras_aswa.resume.Resume.close = close
    StateStore(state).unlock()
    assert not os.path.exists(tmp_path / "keras")  # Keras deleted its backup
    with pytest.raises(StateFileError, match="finished run of 4 epochs"):
        run(tmp_path, lambda m: ASWA(backup_dir=state), epochs=5)
    model, again = run(tmp_path, lambda m: ASWA(backup_dir=state))
    assert again.history == whole.history
    for got, want in zip(model.weights, whole_weights, strict=True):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(got), want)
    assert os.listdir(state) == []


def test_keras_backup_reused_after_a_killed_fit_leaves_the_state_alone(tmp_path):
    # A fit killed mid-run never reaches on_train_end; the same
    # BackupAndRestore then serves a fit without the averaging callback,
    # which must not end (write finished, or delete) the killed run's state.
    state = str(tmp_path / "state")
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "keras"))
    model = regression_model()
    compiled_model(model)
    fit_kw = dict(x=X, y=Y, batch_size=32, verbose=0, validation_data=(XV, YV))
    with pytest.raises(RuntimeError, match="preempted"):
        model.fit(
            epochs=3, callbacks=[backup, ASWA(backup_dir=state), Crash(1)], **fit_kw
        )
    StateStore(state).unlock()
    before = {n: os.path.getsize(os.path.join(state, n)) for n in os.listdir(state)}
    other = regression_model()
    compiled_model(other)
    other.fit(epochs=3, callbacks=[backup], **fit_kw)
    after = {n: os.path.getsize(os.path.join(state, n)) for n in os.listdir(state)}
    assert after == before
