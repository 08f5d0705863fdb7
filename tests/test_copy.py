"""Deep copies, as keras-tuner makes of the callbacks for every trial."""

import copy

import keras
import numpy as np
import pytest
from scenarios import (
    ADAM_LR,
    aswa_run,
    compiled_model,
    regression_data,
    regression_model,
)

from keras_aswa import ASWA, SWA


def dataset(xv, yv):
    tf = pytest.importorskip("tensorflow")
    return tf.data.Dataset.from_tensor_slices((xv, yv)).batch(32)


def test_deepcopy_with_a_tf_dataset_shares_the_data():
    _, (xv, yv) = regression_data()
    ds = dataset(xv, yv)
    original = ASWA(validation_data=ds, min_delta=1e-4)
    (copied,) = copy.deepcopy([original])
    assert copied is not original
    assert copied.validation_data is ds and copied._scorer.data is ds
    assert copied._scorer is not original._scorer
    assert copied.min_delta == 1e-4 and copied.monitor == original.monitor
    # The copy trains like the original would.
    aswa_run([copied], epochs=3)
    aswa_run([original], epochs=3)
    assert copied.history == original.history


def test_deepcopy_shares_arrays_score_fn_and_batchnorm_data():
    (x, _), (xv, yv) = regression_data()

    class Scorer:
        def __init__(self):
            self.payload = np.zeros(10)

        def score(self, model):
            return 0.0

    scorer = Scorer()
    aswa = copy.deepcopy(ASWA(validation_data=(xv, yv)))
    assert aswa.validation_data[0] is xv and aswa.validation_data[1] is yv
    by_fn = copy.deepcopy(ASWA(monitor="val_s", mode="max", score_fn=scorer.score))
    assert by_fn.score_fn.__self__ is scorer
    swa = copy.deepcopy(SWA(batchnorm="recompute", batchnorm_data=x))
    assert swa.batchnorm_data is x and swa.batchnorm == "recompute"


def test_deepcopy_after_a_fit_is_independent():
    _, (xv, yv) = regression_data()
    original = ASWA(validation_data=dataset(xv, yv))
    aswa_run([original], epochs=2)
    copied = copy.deepcopy(original)
    assert copied.history == original.history
    copied.history.append({"epoch": 99})
    assert original.history[-1]["epoch"] == 1
    # It fits again, with a model of its own.
    aswa_run([copied], epochs=2)
    assert [h["epoch"] for h in copied.history] == [0, 1]


def test_keras_tuner_search_with_a_dataset(tmp_path):
    kt = pytest.importorskip("keras_tuner")
    (x, y), (xv, yv) = regression_data()
    ds = dataset(xv, yv)
    original = ASWA(validation_data=ds)

    def build(hp):
        model = regression_model()
        lr = hp.Choice("lr", [ADAM_LR, ADAM_LR / 3])
        compiled_model(model, keras.optimizers.Adam(lr))
        return model

    tuner = kt.RandomSearch(
        build,
        objective=kt.Objective("val_loss", "min"),
        max_trials=2,
        directory=str(tmp_path),
        project_name="t",
        seed=0,
    )
    # On TensorFlow, keras-tuner imports tensorboard for every trial, which
    # tensorflow-cpu no longer installs; that step is not the copying one.
    tuner._configure_tensorboard_dir = lambda *args, **kwargs: None
    tuner.search(
        x,
        y,
        validation_data=(xv, yv),
        epochs=2,
        batch_size=32,
        shuffle=False,
        verbose=0,
        callbacks=[original],
    )
    assert len(tuner.oracle.trials) == 2
    assert all(t.status == "COMPLETED" for t in tuner.oracle.trials.values())
    assert original.history == []  # each trial trained a copy


@pytest.mark.parametrize("make", [ASWA, SWA], ids=["ASWA", "SWA"])
def test_a_fitted_callback_pickles_with_its_arguments_and_history(make, tmp_path):
    import pickle

    _, (xv, yv) = regression_data()
    kwargs = {"validation_data": (xv, yv)} if make is ASWA else {}
    original = make(backup_dir=str(tmp_path / "state"), **kwargs)
    aswa_run([original], epochs=3)
    copied = pickle.loads(pickle.dumps(original))
    assert copied.history == original.history and copied.history
    assert copied.backup_dir == original.backup_dir
    if make is ASWA:
        assert copied.best_score == original.best_score
    # It trains again, like a new one would.
    again = make(**kwargs)
    aswa_run([copied], epochs=3)
    aswa_run([again], epochs=3)
    assert copied.history == again.history
