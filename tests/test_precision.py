"""16-bit training: the average accumulates in float32 and is rounded once.

Under each dtype policy (`"bfloat16"`, `"float16"`, `"mixed_bfloat16"`,
`"mixed_float16"`) ASWA and SWA average exactly as a float32 model would:
the ensemble tensors are float32 whatever the variables' dtype, and the model
finally receives the float32 average of the snapshots it recorded, rounded
once to the variables' dtype (a no-op under the mixed policies, whose
variables are float32).
"""

import keras
import ml_dtypes
import numpy as np
import pytest
from keras import ops
from scenarios import (
    ADAM_LR,
    SnapshotRecorder,
    compiled_model,
    fit_regression,
    regression_model,
)

from keras_aswa import ASWA, SWA
from keras_aswa.averaging import WeightAverage

POLICIES = ["bfloat16", "float16", "mixed_bfloat16", "mixed_float16"]
EPOCHS = 6
NUMPY_DTYPES = {
    "bfloat16": ml_dtypes.bfloat16,
    "float16": np.float16,
    "float32": np.float32,
}
# Round to nearest: |round(x) - x| <= 2**-p * |x| with p bits of precision
# (bfloat16 8, float16 11).
HALF_ULP = {"bfloat16": 2.0**-8, "float16": 2.0**-11, "float32": 0.0}


@pytest.fixture(params=POLICIES)
def policy(request):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(request.param)
    try:
        yield keras.config.dtype_policy()
    finally:
        keras.config.set_dtype_policy(previous)


def _compiled_model(policy):
    model = regression_model()  # every layer takes the global policy
    optimizer = keras.optimizers.Adam(ADAM_LR)
    if policy.name == "float16":
        # Keras wraps the optimizer itself only under "mixed_float16".
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    compiled_model(model, optimizer)
    if policy.name in ("float16", "mixed_float16"):
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    return model


def _float32_mean(snapshots):
    """The running float32 average E + (θ - E) / (n + 1) of the snapshots."""
    mean = [s.astype(np.float32) for s in snapshots[0]]
    for n, snapshot in enumerate(snapshots[1:], start=1):
        mean = [
            e + (s - e) / np.float32(n + 1) for e, s in zip(mean, snapshot, strict=True)
        ]
    return mean


def _as_float32(variable):
    return ops.convert_to_numpy(ops.cast(variable, "float32"))


def _rounded(values, dtype):
    return np.asarray(values, np.float32).astype(NUMPY_DTYPES[dtype]).astype(np.float32)


def _check_float32_average(callback, model, snapshots, policy):
    variable_dtype = policy.variable_dtype
    # The ensemble accumulates in float32, whatever the variables hold.
    for v in model.weights:
        assert keras.backend.standardize_dtype(v.dtype) == variable_dtype, v.path
    reference = _float32_mean(snapshots)
    ensemble = callback.ensemble_weights()
    for got, want in zip(ensemble, reference, strict=True):
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # The model holds that float32 average rounded once to its dtype.
    for v, avg, want in zip(model.weights, ensemble, reference, strict=True):
        final = _as_float32(v)
        np.testing.assert_array_equal(final, _rounded(avg, variable_dtype))
        np.testing.assert_allclose(
            final, want, rtol=HALF_ULP[variable_dtype], atol=1e-6, err_msg=v.path
        )


def test_aswa_averages_in_float32_and_rounds_once(policy):
    model = _compiled_model(policy)
    counter = iter(range(1000))

    def rising(m):
        # A score that always improves: every provisional ensemble wins (a
        # soft update each epoch), so the ensemble averages every snapshot.
        return next(counter)

    aswa = ASWA(monitor="val_rising", mode="max", score_fn=rising)
    recorder = SnapshotRecorder()
    fit_regression(model, [recorder, aswa], epochs=EPOCHS)
    assert [h["decision"] for h in aswa.history] == ["init"] + ["soft"] * (EPOCHS - 1)
    snapshots = [recorder.snapshots[e] for e in range(EPOCHS)]
    _check_float32_average(aswa, model, snapshots, policy)


def test_swa_averages_in_float32_and_rounds_once(policy):
    model = _compiled_model(policy)
    swa, recorder = SWA(), SnapshotRecorder()
    fit_regression(model, [recorder, swa], epochs=EPOCHS)
    assert swa.ensemble_size == EPOCHS
    snapshots = [recorder.snapshots[e] for e in range(EPOCHS)]
    _check_float32_average(swa, model, snapshots, policy)


def test_keras_wraps_the_optimizer_for_mixed_float16_only(policy):
    model = compiled_model()
    wrapped = isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert wrapped == (policy.name == "mixed_float16")


def test_swa_of_500_bfloat16_snapshots_is_the_float32_mean_rounded_once():
    # Each one-step epoch moves a bias onto that epoch's target: SGD with
    # lr = 32 on the mean of 64 squared errors steps b <- b - (b - t), so the
    # snapshots scatter like the targets, 1 +- 0.5. A running average kept in
    # bfloat16 stalls once (θ - E) / (n + 1) drops below half an ulp of E.
    n, width = 500, 64
    rng = np.random.default_rng(0)
    x = np.zeros((n, 1), "float32")
    y = (1.0 + rng.normal(scale=0.5, size=(n, width))).astype("float32")
    model = keras.Sequential(
        [keras.Input((1,)), keras.layers.Dense(width, dtype="bfloat16")]
    )
    compiled_model(model, keras.optimizers.SGD(32.0))
    swa, recorder = SWA(), SnapshotRecorder()
    model.fit(
        x,
        y,
        batch_size=1,
        steps_per_epoch=1,
        epochs=n,
        shuffle=False,
        verbose=0,
        callbacks=[recorder, swa],
    )
    assert swa.ensemble_size == n
    bias = np.stack([recorder.snapshots[e][1] for e in range(n)])
    assert bias.std() > 0.4  # the snapshots really scatter
    reference = _float32_mean([[b] for b in bias])[0]

    ensemble = swa.ensemble_weights()[1]
    assert ensemble.dtype == np.float32
    np.testing.assert_allclose(ensemble, reference, rtol=1e-6)
    final = _as_float32(model.weights[1])
    np.testing.assert_array_equal(final, _rounded(ensemble, "bfloat16"))
    ours = np.abs(final - reference).max()
    assert ours <= HALF_ULP["bfloat16"] * np.abs(reference).max()

    # The naive bfloat16 running average is far off: the test has power.
    bf16 = ml_dtypes.bfloat16
    naive = bias[0].astype(bf16)
    for k in range(1, n):
        naive = (naive + (bias[k].astype(bf16) - naive) / bf16(k + 1)).astype(bf16)
    naive_error = np.abs(naive.astype(np.float32) - reference).max()
    assert naive_error > 10 * ours and naive_error > 2.0**-6


@pytest.mark.parametrize("offload", [None, "host"])
def test_running_weights_wait_in_their_own_dtype(policy, offload):
    # Engine level: while a provisional average is shown (scored), the
    # running weights are kept once, in the variables' own dtype.
    model = regression_model()
    average = WeightAverage(model.weights, offload)
    average.restart()
    average.show_provisional()
    try:
        kept = {keras.backend.standardize_dtype(t.dtype) for t in average.store.running}
    finally:
        average.hide()
    assert kept == {policy.variable_dtype}
