"""Tests for `keras_aswa.batchnorm.update_batchnorm`.

The expected statistics come from a NumPy float64 forward pass written out
layer by layer below, with the model's own weights: training-mode
BatchNormalization (biased batch variance) and the equal-weight average over
batches, as `torch.optim.swa_utils.update_bn` computes it.
"""

from __future__ import annotations

import math
import warnings

import keras
import numpy as np
import pytest
from keras import ops

from keras_aswa.batchnorm import update_batchnorm

BATCH = 16
N = 48  # 3 batches of 16: one shape, one compilation per call.
RTOL, ATOL = 1e-5, 1e-6


def _np(value) -> np.ndarray:
    # Around np.array(): KerasVariable, tf.Variable and torch.Tensor __array__
    # predate NumPy 2's copy keyword and warn.
    if isinstance(value, keras.Variable):
        value = value.value
    if keras.backend.backend() == "torch":
        return value.detach().cpu().numpy().copy()
    if keras.backend.backend() == "tensorflow":
        return np.array(value.numpy())
    return np.array(value)


def _batches(array, batch_size=BATCH):
    return [array[i : i + batch_size] for i in range(0, len(array), batch_size)]


def _randomize_bn(model, seed=0):
    # Non-trivial gamma, beta and moving statistics, so that a layer that
    # normalised in the wrong mode, or kept its old statistics, shows.
    rng = np.random.default_rng(seed)
    for layer in _bn_layers(model):
        shape = layer.moving_mean.shape
        layer.gamma.assign(rng.uniform(0.5, 1.5, shape).astype("float32"))
        layer.beta.assign(rng.normal(size=shape).astype("float32"))
        layer.moving_mean.assign(rng.normal(size=shape).astype("float32"))
        layer.moving_variance.assign(rng.uniform(0.5, 2.0, shape).astype("float32"))


def _scramble_statistics(model, seed):
    # The result must not depend on the old statistics of the layers it
    # recomputes; gamma and beta stay, so the forward pass is the same.
    rng = np.random.default_rng(seed)
    for layer in _bn_layers(model):
        shape = layer.moving_mean.shape
        layer.moving_mean.assign(rng.normal(size=shape).astype("float32"))
        layer.moving_variance.assign(rng.uniform(0.5, 2.0, shape).astype("float32"))


def _bn_layers(model):
    return [
        layer
        for layer in model._flatten_layers()
        if isinstance(layer, keras.layers.BatchNormalization)
    ]


class _Reference:
    """NumPy training-mode BatchNormalization that records batch statistics."""

    def __init__(self):
        self.means: dict[str, list[np.ndarray]] = {}
        self.variances: dict[str, list[np.ndarray]] = {}

    def bn(self, h, layer):
        axes = tuple(i for i in range(h.ndim) if i != layer.axis % h.ndim)
        if layer.trainable:
            mean, variance = h.mean(axis=axes), h.var(axis=axes)
            self.means.setdefault(layer.name, []).append(mean)
            self.variances.setdefault(layer.name, []).append(variance)
        else:  # Frozen: inference mode.
            mean, variance = _np(layer.moving_mean), _np(layer.moving_variance)
        shape = [1] * h.ndim
        shape[layer.axis % h.ndim] = -1
        std = np.sqrt(variance.reshape(shape) + layer.epsilon)
        normed = (h - mean.reshape(shape)) / std
        return _np(layer.gamma).reshape(shape) * normed + _np(layer.beta).reshape(shape)

    def expected(self, name):
        return np.mean(self.means[name], axis=0), np.mean(self.variances[name], axis=0)


def _dense(h, layer):
    return h @ _np(layer.kernel).astype(np.float64) + _np(layer.bias)


def _relu(h):
    return np.maximum(h, 0.0)


class Block(keras.layers.Layer):
    """A layer (not a model) holding a BatchNormalization layer."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.dense = keras.layers.Dense(units, name="block_dense")
        self.norm = keras.layers.BatchNormalization(momentum=0.9, name="block_bn")

    def build(self, input_shape):
        self.dense.build(input_shape)
        self.norm.build((*input_shape[:-1], self.units))

    def call(self, x, training=None):
        return ops.relu(self.norm(self.dense(x), training=training))


def _nested_model():
    inputs = keras.Input((5, 5, 2))
    h = keras.layers.Conv2D(3, 2, name="conv")(inputs)
    h = keras.layers.BatchNormalization(axis=-1, momentum=0.8, name="bn_conv")(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(6, name="dense")(h)
    h = keras.layers.BatchNormalization(epsilon=1e-2, name="bn_dense")(h)
    h = keras.layers.ReLU()(h)
    inner = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(5, name="inner_dense"),
            keras.layers.BatchNormalization(momentum=0.5, name="inner_bn"),
            keras.layers.ReLU(),
            Block(4, name="block"),
        ],
        name="inner",
    )
    h = inner(h)
    outputs = keras.layers.Dense(2, name="head")(h)
    model = keras.Model(inputs, outputs)
    _randomize_bn(model)
    return model


def _nested_reference(model, batches) -> _Reference:
    ref = _Reference()
    conv = model.get_layer("conv")
    inner = model.get_layer("inner")
    block = inner.get_layer("block")
    kernel = _np(conv.kernel).astype(np.float64)  # (kh, kw, c_in, c_out)
    for x in batches:
        windows = np.lib.stride_tricks.sliding_window_view(
            x.astype(np.float64), kernel.shape[:2], axis=(1, 2)
        )  # (n, h, w, c_in, kh, kw)
        h = np.einsum("nhwcij,ijco->nhwo", windows, kernel) + _np(conv.bias)
        h = _relu(ref.bn(h, model.get_layer("bn_conv")))
        h = h.reshape(len(h), -1)
        h = _dense(h, model.get_layer("dense"))
        h = _relu(ref.bn(h, model.get_layer("bn_dense")))
        h = _dense(h, inner.get_layer("inner_dense"))
        h = _relu(ref.bn(h, inner.get_layer("inner_bn")))
        ref.bn(_dense(h, block.dense), block.norm)
    return ref


def _check(model, ref, names=None):
    layers = {layer.name: layer for layer in _bn_layers(model)}
    names = names if names is not None else list(ref.means)
    assert names
    for name in names:
        mean, variance = ref.expected(name)
        np.testing.assert_allclose(_np(layers[name].moving_mean), mean, RTOL, ATOL)
        np.testing.assert_allclose(
            _np(layers[name].moving_variance), variance, RTOL, ATOL
        )


def _state(model):
    return {v.path: _np(v).copy() for v in model.variables}


def _momenta(model):
    return {layer.name: layer.momentum for layer in _bn_layers(model)}


def _assert_unchanged_except(model, before, momenta, recomputed):
    skip = set()
    for layer in recomputed:
        skip |= {layer.moving_mean.path, layer.moving_variance.path}
    after = _state(model)
    assert after.keys() == before.keys()
    for path, value in before.items():
        if path not in skip:
            assert np.array_equal(after[path], value, equal_nan=True), path
    now = _momenta(model)
    assert now == momenta
    assert all(type(m) is float for m in now.values())


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(N, 5, 5, 2)).astype("float32")
    y = rng.normal(size=(N, 2)).astype("float32")
    return x, y


@pytest.fixture(scope="module")
def nested(data):
    model = _nested_model()
    return model, _nested_reference(model, _batches(data[0]))


def test_nested_layers_match_numpy(nested, data):
    model, _ = nested
    # Batches of 20, 20 and 8: the smaller last batch weighs as much.
    ref = _nested_reference(model, _batches(data[0], 20))
    assert set(ref.means) == {"bn_conv", "bn_dense", "inner_bn", "block_bn"}
    before, momenta = _state(model), _momenta(model)
    result = update_batchnorm(model, data[0], batch_size=20)
    assert result is None
    _check(model, ref)
    _assert_unchanged_except(model, before, momenta, _bn_layers(model))


class _PyBatches(keras.utils.PyDataset):
    def __init__(self, x, y):
        super().__init__()
        self.x, self.y = x, y

    def __len__(self):
        return math.ceil(len(self.x) / BATCH)

    def __getitem__(self, i):
        return self.x[i * BATCH : (i + 1) * BATCH], self.y[i * BATCH : (i + 1) * BATCH]


def _sources(x, y):
    return {
        "x_y": lambda: (x, y),
        "x_y_sample_weight": lambda: (x, y, np.ones(len(x), "float32")),
        "generator_x_y": lambda: (
            (a, b) for a, b in zip(_batches(x), _batches(y), strict=True)
        ),
        "iterator_bare_x": lambda: iter(_batches(x)),
        "py_dataset": lambda: _PyBatches(x, y),
    }


@pytest.mark.parametrize("kind", list(_sources(None, None)))
def test_data_formats(nested, data, kind):
    model, ref = nested
    _scramble_statistics(model, seed=7)
    update_batchnorm(model, _sources(*data)[kind](), batch_size=BATCH)
    _check(model, ref)


def test_tf_data(nested, data):
    tf = pytest.importorskip("tensorflow")
    model, ref = nested
    _scramble_statistics(model, seed=8)
    dataset = tf.data.Dataset.from_tensor_slices(data).batch(BATCH)
    update_batchnorm(model, dataset)
    _check(model, ref)


def test_torch_dataloader(nested, data):
    # Keras reads a torch DataLoader on every backend.
    import torch

    model, ref = nested
    _scramble_statistics(model, seed=9)
    dataset = torch.utils.data.TensorDataset(*map(torch.from_numpy, data))
    update_batchnorm(model, torch.utils.data.DataLoader(dataset, batch_size=BATCH))
    _check(model, ref)


def test_steps_limits_batches(nested, data):
    model, _ = nested
    ref = _nested_reference(model, _batches(data[0])[:2])
    update_batchnorm(model, data[0], steps=2, batch_size=BATCH)
    _check(model, ref)
    # An endless source is fine with steps.
    ref = _nested_reference(model, [data[0][:BATCH]] * 3)

    def endless():
        while True:
            yield (data[0][:BATCH],)

    update_batchnorm(model, endless(), steps=3)
    _check(model, ref)


def test_stale_nan_statistics_are_replaced(nested, data):
    model, ref = nested
    for layer in _bn_layers(model):
        layer.moving_mean.assign(ops.full(layer.moving_mean.shape, np.nan))
        layer.moving_variance.assign(ops.full(layer.moving_variance.shape, np.inf))
    update_batchnorm(model, data[0], batch_size=BATCH)
    _check(model, ref)


def test_frozen_layer_kept_and_run_in_inference_mode(data):
    model = _nested_model()
    frozen = model.get_layer("bn_dense")
    frozen.trainable = False
    ref = _nested_reference(model, _batches(data[0]))
    assert "bn_dense" not in ref.means
    before, momenta = _state(model), _momenta(model)
    update_batchnorm(model, data[0], batch_size=BATCH)
    # Downstream layers saw the frozen layer's inference-mode output.
    _check(model, ref)
    recomputed = [layer for layer in _bn_layers(model) if layer is not frozen]
    _assert_unchanged_except(model, before, momenta, recomputed)


def test_all_frozen_warns_and_changes_nothing(data):
    model = _nested_model()
    model.trainable = False
    before, momenta = _state(model), _momenta(model)
    with pytest.warns(UserWarning, match="frozen"):
        update_batchnorm(model, data[0])
    _assert_unchanged_except(model, before, momenta, [])


def _multi_input_model():
    a, b = keras.Input((3,), name="a"), keras.Input((2,), name="b")
    h = keras.layers.Concatenate()([a, b])
    h = keras.layers.Dense(4, name="dense")(h)
    outputs = keras.layers.BatchNormalization(name="bn")(h)
    model = keras.Model({"a": a, "b": b}, outputs)
    _randomize_bn(model)
    return model


def _multi_input_model_tuple():
    a, b = keras.Input((3,), name="a"), keras.Input((2,), name="b")
    h = keras.layers.Concatenate()([a, b])
    h = keras.layers.Dense(4, name="dense")(h)
    outputs = keras.layers.BatchNormalization(name="bn")(h)
    model = keras.Model((a, b), outputs)
    _randomize_bn(model)
    return model


def _multi_input_reference(model, a, b):
    ref = _Reference()
    for xa, xb in zip(_batches(a), _batches(b), strict=True):
        h = np.concatenate([xa, xb], axis=1).astype(np.float64)
        ref.bn(_dense(h, model.get_layer("dense")), model.get_layer("bn"))
    return ref


@pytest.mark.parametrize("as_generator", [False, True])
def test_multi_input_dict(as_generator):
    rng = np.random.default_rng(2)
    a = rng.normal(size=(N, 3)).astype("float32")
    b = rng.normal(1.0, 2.0, size=(N, 2)).astype("float32")
    y = np.zeros((N, 4), "float32")
    model = _multi_input_model()
    ref = _multi_input_reference(model, a, b)
    if as_generator:
        batches = zip(*map(_batches, (a, b, y)), strict=True)
        source = (({"a": xa, "b": xb}, yb) for xa, xb, yb in batches)
    else:
        source = ({"a": a, "b": b}, y)
    update_batchnorm(model, source, batch_size=BATCH)
    _check(model, ref)


def test_multi_input_tuple():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(N, 3)).astype("float32")
    b = rng.normal(-1.0, 0.5, size=(N, 2)).astype("float32")
    model = _multi_input_model_tuple()
    ref = _multi_input_reference(model, a, b)
    # A tuple of arrays is (x, y): the inputs tuple goes inside.
    update_batchnorm(model, ((a, b),), batch_size=BATCH)
    _check(model, ref)


def _dropout_model(seed):
    inputs = keras.Input((6,))
    h = keras.layers.Dense(8, name="dense")(inputs)
    h = keras.layers.Dropout(0.5, seed=seed)(h)
    h = keras.layers.GaussianNoise(0.3, seed=seed)(h)
    outputs = keras.layers.BatchNormalization(name="bn")(h)
    return keras.Model(inputs, outputs)


@pytest.mark.parametrize("seed", [None, 3])
def test_random_layers_leave_no_trace(seed):
    model = _dropout_model(seed)
    x = np.random.default_rng(4).normal(size=(N, 6)).astype("float32")
    before, momenta = _state(model), _momenta(model)
    torch_rng = None
    if keras.backend.backend() == "torch":
        import torch

        torch_rng = torch.get_rng_state()
    update_batchnorm(model, x, batch_size=BATCH)
    first = [_np(v) for v in (model.get_layer("bn").moving_mean,)]
    _assert_unchanged_except(model, before, momenta, _bn_layers(model))
    if torch_rng is not None:
        assert torch.equal(torch.get_rng_state(), torch_rng)
    # Nothing random advanced: a second call draws the same masks.
    update_batchnorm(model, x, batch_size=BATCH)
    assert np.array_equal(_np(model.get_layer("bn").moving_mean), first[0])
    # Dropout and noise were active: the variance is not that of Dense alone.
    ref = _Reference()
    for xb in _batches(x):
        h = _dense(xb.astype(np.float64), model.get_layer("dense"))
        ref.bn(h, model.get_layer("bn"))
    _, clean_variance = ref.expected("bn")
    assert not np.allclose(_np(model.get_layer("bn").moving_variance), clean_variance)


class _PartlyUsed(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(3, name="dense")
        self.used = keras.layers.BatchNormalization(name="used")
        self.unused = keras.layers.BatchNormalization(name="unused")

    def build(self, input_shape):
        self.dense.build(input_shape)
        self.used.build((None, 3))
        self.unused.build((None, 3))

    def call(self, x, training=None):
        return self.used(self.dense(x), training=training)


def test_layer_not_called_keeps_statistics_and_warns():
    model = _PartlyUsed()
    model.build((None, 4))
    _randomize_bn(model)
    x = np.random.default_rng(5).normal(size=(N, 4)).astype("float32")
    unused = (_np(model.unused.moving_mean), _np(model.unused.moving_variance))
    ref = _Reference()
    for xb in _batches(x):
        ref.bn(_dense(xb.astype(np.float64), model.dense), model.used)
    with pytest.warns(UserWarning, match="unused"):
        update_batchnorm(model, x, batch_size=BATCH)
    _check(model, ref)
    assert np.array_equal(_np(model.unused.moving_mean), unused[0])
    assert np.array_equal(_np(model.unused.moving_variance), unused[1])


def test_renorm():
    inputs = keras.Input((4,))
    h = keras.layers.Dense(3, name="dense")(inputs)
    outputs = keras.layers.BatchNormalization(renorm=True, name="bn")(h)
    model = keras.Model(inputs, outputs)
    bn = model.get_layer("bn")
    x = np.random.default_rng(6).normal(size=(N, 4)).astype("float32")
    ref = _Reference()
    for xb in _batches(x):
        ref.bn(_dense(xb.astype(np.float64), model.get_layer("dense")), bn)
    renorm = (_np(bn.renorm_mean), _np(bn.renorm_stddev))
    update_batchnorm(model, x, batch_size=BATCH)
    _check(model, ref)
    np.testing.assert_allclose(
        _np(bn.moving_stddev),
        np.sqrt(_np(bn.moving_variance) + bn.epsilon),
        RTOL,
    )
    assert np.array_equal(_np(bn.renorm_mean), renorm[0])
    assert np.array_equal(_np(bn.renorm_stddev), renorm[1])


def test_no_batchnorm_warns():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    before = _state(model)
    with pytest.warns(UserWarning, match="no BatchNormalization"):
        assert update_batchnorm(model, np.ones((4, 3), "float32")) is None
    assert all(np.array_equal(v, before[k]) for k, v in _state(model).items())


@pytest.mark.parametrize(
    "make",
    [
        lambda: np.zeros((0, 5, 5, 2), "float32"),
        lambda: (b for b in ()),
        lambda: iter([]),
    ],
    ids=["empty_array", "empty_generator", "empty_iterator"],
)
def test_empty_data_raises(nested, make):
    model, _ = nested
    before, momenta = _state(model), _momenta(model)
    with pytest.raises(ValueError):
        update_batchnorm(model, make())
    _assert_unchanged_except(model, before, momenta, [])


@pytest.mark.parametrize("steps", [0, -1, 1.5, True])
def test_bad_steps_raises(nested, data, steps):
    with pytest.raises(ValueError, match="steps"):
        update_batchnorm(nested[0], data[0], steps=steps)


def test_error_in_forward_pass_restores_model(nested):
    model, _ = nested
    before, momenta = _state(model), _momenta(model)
    with pytest.raises(Exception):  # noqa: B017 - each backend raises its own
        update_batchnorm(model, np.ones((8, 7), "float32"))
    _assert_unchanged_except(model, before, momenta, [])


def test_unbuilt_model_raises():
    model = keras.Sequential([keras.layers.Dense(2), keras.layers.BatchNormalization()])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="not built"):
            update_batchnorm(model, np.ones((4, 3), "float32"))
