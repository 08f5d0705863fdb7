"""The shared weight arithmetic against numpy."""

import warnings

import keras
import ml_dtypes
import numpy as np
import pytest
from keras import ops

from keras_aswa.averaging import WeightAverage, accumulation_dtype


def variables(rng, dtype="float32"):
    return [
        keras.Variable(rng.normal(size=(3, 4)), dtype=dtype),
        keras.Variable(rng.normal(size=(4,)), dtype=dtype),
        keras.Variable(np.array([7, 8], dtype="int32"), dtype="int32", trainable=False),
    ]


def assign_all(vs, values):
    for v, x in zip(vs, values, strict=True):
        v.assign(x)


def numpy_of(vs):
    return [ops.convert_to_numpy(v) for v in vs]


def test_accumulation_dtypes():
    assert accumulation_dtype("float32") == "float32"
    assert accumulation_dtype("bfloat16") == "float32"
    assert accumulation_dtype("float16") == "float32"
    assert accumulation_dtype("float64") == "float64"
    assert accumulation_dtype("int32") is None
    assert accumulation_dtype("int8") is None
    assert accumulation_dtype("bool") is None


def test_running_average_matches_numpy_mean():
    rng = np.random.default_rng(0)
    vs = variables(rng)
    avg = WeightAverage(vs)
    members = []
    for k in range(5):
        values = [
            rng.normal(size=(3, 4)).astype("float32"),
            rng.normal(size=(4,)).astype("float32"),
            np.array([k, -k], dtype="int32"),
        ]
        assign_all(vs, values)
        members.append(values)
        if k == 0:
            avg.restart()
        else:
            avg.update()
    result = avg.numpy()
    for i in range(2):
        expected = np.mean([m[i] for m in members], axis=0)
        np.testing.assert_allclose(result[i], expected, rtol=1e-6, atol=1e-6)
    # Integer variables are never averaged: the running value is reported.
    np.testing.assert_array_equal(result[2], members[-1][2])
    assert avg.count == 5


def test_restart_forgets_earlier_members():
    rng = np.random.default_rng(1)
    vs = variables(rng)
    avg = WeightAverage(vs)
    avg.restart()
    avg.update()
    new = rng.normal(size=(3, 4)).astype("float32")
    vs[0].assign(new)
    avg.restart()
    assert avg.count == 1
    np.testing.assert_array_equal(avg.numpy()[0], new)


def test_provisional_shows_blend_and_restores_exactly():
    rng = np.random.default_rng(2)
    vs = variables(rng)
    avg = WeightAverage(vs)
    avg.restart()
    e = numpy_of(vs)
    theta = [rng.normal(size=(3, 4)).astype("float32"), rng.normal(size=(4,))]
    assign_all(vs[:2], theta)
    vs[2].assign(np.array([5, 6], dtype="int32"))
    before = numpy_of(vs)
    with avg.provisional():
        inside = numpy_of(vs)
    after = numpy_of(vs)
    for i in range(2):
        np.testing.assert_allclose(
            inside[i], e[i] + (before[i] - e[i]) / 2, rtol=1e-6, atol=1e-7
        )
    np.testing.assert_array_equal(inside[2], before[2])
    for b, a in zip(before, after, strict=True):
        np.testing.assert_array_equal(a, b)
    # The average itself is unchanged by the provisional view.
    assert avg.count == 1
    np.testing.assert_array_equal(avg.numpy()[0], e[0])


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("offload", [None, "host"])
def test_commit_adopts_the_provisional_average_like_update(dtype, offload):
    rng = np.random.default_rng(5)
    vs = variables(rng, dtype)
    committed, updated = WeightAverage(vs, offload), WeightAverage(vs, offload)
    for k in range(4):
        assign_all(vs[:2], [rng.normal(size=(3, 4)), rng.normal(size=(4,))])
        if k == 0:
            committed.restart()
            updated.restart()
            continue
        with committed.provisional():
            shown = numpy_of(vs)
        committed.commit()
        updated.update()
        ours, reference = committed.numpy(), updated.numpy()
        for i in range(2):
            np.testing.assert_array_equal(ours[i], reference[i])
            # What the model showed is what was adopted, rounded to its dtype.
            rounded = ops.convert_to_numpy(
                ops.cast(ops.cast(ours[i], dtype), "float32")
            )
            np.testing.assert_array_equal(
                ops.convert_to_numpy(ops.cast(shown[i], "float32")), rounded
            )
    assert committed.count == updated.count == 4
    with pytest.raises(RuntimeError, match="No provisional average to commit"):
        committed.commit()  # once only


def test_nothing_to_commit_after_discard_or_a_change():
    rng = np.random.default_rng(6)
    vs = variables(rng)
    avg = WeightAverage(vs)
    avg.restart()
    with avg.provisional():
        pass
    avg.discard()
    with pytest.raises(RuntimeError, match="No provisional average"):
        avg.commit()
    with avg.provisional():
        pass
    avg.update()
    with pytest.raises(RuntimeError, match="No provisional average"):
        avg.commit()
    avg.show_ensemble()  # the average itself, not a provisional one
    avg.hide()
    with pytest.raises(RuntimeError, match="No provisional average"):
        avg.commit()


def test_provisional_restores_after_an_error():
    rng = np.random.default_rng(3)
    vs = variables(rng)
    avg = WeightAverage(vs)
    avg.restart()
    vs[0].assign(rng.normal(size=(3, 4)))
    before = numpy_of(vs)
    with pytest.raises(ZeroDivisionError):
        with avg.provisional():
            raise ZeroDivisionError
    for b, a in zip(before, numpy_of(vs), strict=True):
        np.testing.assert_array_equal(a, b)


def test_apply_writes_average_and_keeps_integers():
    rng = np.random.default_rng(4)
    vs = variables(rng)
    avg = WeightAverage(vs)
    avg.restart()
    first = numpy_of(vs)
    vs[0].assign(np.zeros((3, 4)))
    vs[2].assign(np.array([1, 2], dtype="int32"))
    avg.update()
    vs[0].assign(np.ones((3, 4)))
    avg.apply()
    np.testing.assert_allclose(
        ops.convert_to_numpy(vs[0]), first[0] / 2, rtol=1e-6, atol=1e-7
    )
    np.testing.assert_array_equal(ops.convert_to_numpy(vs[2]), [1, 2])
    # The average survives being applied (JAX: the variable owns a copy).
    vs[0].assign(np.ones((3, 4)))
    np.testing.assert_allclose(avg.numpy()[0], first[0] / 2, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_16_bit_average_accumulates_in_float32(dtype):
    # 500 snapshots: a running average kept in 16 bits stalls, since
    # (θ - E) / (n + 1) falls below half an ulp of E.
    rng = np.random.default_rng(5)
    np_dtype = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.float16
    v = keras.Variable(np.zeros(64), dtype=dtype)
    avg = WeightAverage([v])
    reference = naive = None
    for n in range(500):
        member = (1.0 + rng.normal(scale=0.5, size=64)).astype(np_dtype)
        v.assign(member.astype("float32"))
        m32 = member.astype("float32")
        if n == 0:
            avg.restart()
            reference, naive = m32, member
        else:
            avg.update()
            reference = reference + (m32 - reference) / np.float32(n + 1)
            naive = (naive + (member - naive) / np_dtype(n + 1)).astype(np_dtype)
    result = avg.numpy()[0]
    assert result.dtype == np.float32
    np.testing.assert_allclose(result, reference, rtol=1e-5)
    avg.apply()
    written = ops.convert_to_numpy(ops.cast(v, "float32"))
    rounded_once = reference.astype(np_dtype).astype("float32")
    np.testing.assert_allclose(written, rounded_once, rtol=2**-7, atol=0)
    # The naive 16-bit average is measurably off; ours is not.
    naive_error = np.abs(naive.astype("float32") - reference).max()
    ours_error = np.abs(written - reference).max()
    assert ours_error <= 2**-7 < naive_error


def test_float64_variables_accumulate_in_float64():
    v = keras.Variable(np.array([1.0, 2.0]), dtype="float64")
    # JAX without jax_enable_x64 stores float64 variables as float32; the
    # rule then applies to the dtype the values really have.
    expected = ops.convert_to_numpy(v).dtype
    avg = WeightAverage([v])

    def quietly(step):  # nor a truncation warning at every call (Keras' own
        with warnings.catch_warnings():  # `assign` may warn once)
            warnings.simplefilter("error")
            step()

    quietly(avg.restart)
    v.assign(np.array([1.0 + 1e-12, 4.0]))
    quietly(avg.update)
    quietly(avg.show_ensemble)
    quietly(avg.hide)
    quietly(avg.apply)
    result = avg.numpy()[0]
    assert result.dtype == np.dtype(expected)
    if expected == "float64":
        assert result[0] == pytest.approx(1.0 + 5e-13, abs=1e-15)
    np.testing.assert_allclose(result[1], 3.0)


def test_empty_average_says_what_to_do():
    avg = WeightAverage([keras.Variable(np.zeros(2))])
    with pytest.raises(RuntimeError, match="no member"):
        avg.apply()
    with pytest.raises(RuntimeError, match="no member"):
        avg.numpy()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_host_offload_gives_the_device_result(dtype):
    rng = np.random.default_rng(6)
    device_vars = [keras.Variable(np.zeros((4, 3)), dtype=dtype)]
    host_vars = [keras.Variable(np.zeros((4, 3)), dtype=dtype)]
    on_device = WeightAverage(device_vars)
    on_host = WeightAverage(host_vars, offload="host")
    for k in range(6):
        value = rng.normal(size=(4, 3))
        for v in device_vars + host_vars:
            v.assign(value)
        for avg in (on_device, on_host):
            avg.restart() if k in (0, 3) else avg.update()
    assert isinstance(on_host.average[0], np.ndarray)
    assert on_host.average[0].dtype == np.float32
    np.testing.assert_allclose(on_host.numpy()[0], on_device.numpy()[0], rtol=1e-6)
    # Equal up to the last bit of float32 (XLA may divide by multiplying with
    # the reciprocal), so up to one rounding step of the variable's dtype.
    rtol = 1e-6 if dtype == "float32" else 2**-8

    def as_float32(vs):
        return keras.ops.convert_to_numpy(keras.ops.cast(vs[0], "float32"))

    with on_device.provisional(), on_host.provisional():
        np.testing.assert_allclose(
            as_float32(host_vars), as_float32(device_vars), rtol=rtol
        )
    on_device.apply()
    on_host.apply()
    np.testing.assert_allclose(
        as_float32(host_vars), as_float32(device_vars), rtol=rtol
    )


def test_unknown_offload():
    with pytest.raises(ValueError, match="offload="):
        WeightAverage([], offload="disk")


@pytest.mark.parametrize("offload", [None, "host"])
def test_many_variables_of_mixed_dtypes_follow_numpy(offload):
    # Every decision over a list that interleaves float32, bfloat16 and
    # integer variables: each float entry must follow its own numpy mean.
    rng = np.random.default_rng(7)
    dtypes = ["float32", "bfloat16", "int32", "float32", "bfloat16"] * 8
    shapes = [(int(rng.integers(1, 9)), 3) for _ in dtypes]
    vs = [
        keras.Variable(np.zeros(s), dtype=d, trainable=d != "int32")
        for s, d in zip(shapes, dtypes, strict=True)
    ]
    floats = [i for i, d in enumerate(dtypes) if d != "int32"]

    def draw():
        values = [rng.normal(size=s) for s in shapes]
        assign_all(
            vs,
            [
                np.round(x * 10) if d == "int32" else x
                for x, d in zip(values, dtypes, strict=True)
            ],
        )
        # What the variables hold, in float32 (bfloat16 rounds on assign).
        return [ops.convert_to_numpy(ops.cast(v, "float32")) for v in vs]

    avg = WeightAverage(vs, offload)
    reference = draw()
    avg.restart()
    n = 1
    for decision in ["soft", "reject", "update", "soft", "hard", "soft", "reject"]:
        theta = draw()
        blended = [
            e + (t - e) / np.float32(n + 1)
            for e, t in zip(reference, theta, strict=True)
        ]
        if decision == "update":
            avg.update()
        else:
            with avg.provisional():
                shown = numpy_of(vs)
            for i in floats:
                np.testing.assert_allclose(
                    ops.convert_to_numpy(ops.cast(shown[i], "float32")),
                    blended[i],
                    rtol=2**-8 if dtypes[i] == "bfloat16" else 1e-6,
                    atol=1e-6,
                )
            after = numpy_of(vs)  # the running values, back exactly
            for i in range(len(vs)):
                np.testing.assert_array_equal(
                    ops.convert_to_numpy(ops.cast(after[i], "float32")), theta[i]
                )
        if decision in ("soft", "update"):
            if decision == "soft":
                avg.commit()
            reference, n = blended, n + 1
        elif decision == "hard":
            avg.restart()
            reference, n = theta, 1
        else:
            avg.discard()
        got = avg.numpy()
        assert avg.count == n
        for i in floats:
            assert got[i].dtype == np.float32
            np.testing.assert_allclose(got[i], reference[i], rtol=1e-5, atol=1e-6)
        for i in set(range(len(vs))) - set(floats):  # the running integers
            np.testing.assert_array_equal(got[i], theta[i].astype("int32"))


def test_arrays_handed_out_or_in_are_never_written_later():
    # The average may be updated in place (torch) or over its old buffers
    # (JAX donation): what numpy() returned and what load() got must not move.
    rng = np.random.default_rng(8)
    vs = variables(rng)
    avg = WeightAverage(vs)
    avg.restart()
    first = avg.numpy()
    kept = [a.copy() for a in first]
    given = [rng.normal(size=(3, 4)).astype("float32"), np.ones(4, "float32"), None]
    given_copy = [None if a is None else a.copy() for a in given]
    for _ in range(3):
        vs[0].assign(rng.normal(size=(3, 4)))
        avg.update()
    for a, b in zip(first, kept, strict=True):
        np.testing.assert_array_equal(a, b)
    avg.load(given, count=2)
    vs[0].assign(np.zeros((3, 4)))
    avg.update()
    for a, b in zip(given, given_copy, strict=True):
        if a is not None:
            np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(avg.numpy()[0], given_copy[0] * 2 / 3, rtol=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("offload", [None, "host"])
def test_warm_up_leaves_variables_bit_for_bit_and_the_average_empty(dtype, offload):
    rng = np.random.default_rng(6)
    vs = variables(rng, dtype)
    vs[1].assign(np.array([-0.0, 0.0, 1e-30, -3.5]))  # signed zeros too
    before = [np.asarray(a).view(np.uint8) for a in numpy_of(vs)]
    avg = WeightAverage(vs, offload, on_write=lambda: pytest.fail("on_write"))
    avg.warm_up()
    after = [np.asarray(a).view(np.uint8) for a in numpy_of(vs)]
    for b, a in zip(before, after, strict=True):
        np.testing.assert_array_equal(a, b)
    assert avg.empty and avg.count == 0 and not avg.showing
    with pytest.raises(RuntimeError, match="no member yet"):
        avg.numpy()
    # Then it averages as a fresh one does: the mean of what it was shown.
    avg.on_write = None
    members = []
    for k in range(3):
        assign_all(vs[:2], [rng.normal(size=(3, 4)), rng.normal(size=(4,))])
        members.append([ops.convert_to_numpy(ops.cast(v, "float64")) for v in vs[:2]])
        if k == 0:
            avg.restart()
        else:
            with avg.provisional():
                pass
            avg.commit()
    for i in range(2):
        mean = np.mean([m[i] for m in members], axis=0)
        np.testing.assert_allclose(avg.numpy()[i], mean, rtol=1e-6, atol=1e-6)
    # A no-op on an average with members.
    kept = avg.numpy()
    avg.warm_up()
    assert avg.count == 3
    np.testing.assert_array_equal(avg.numpy()[0], kept[0])


@pytest.mark.parametrize("offload", [None, "host"])
def test_another_policy_is_a_few_lines_on_the_engine(offload):
    # An exponential moving average of snapshots, w = 1 - momentum: the
    # policy is the divisor (1 / w) alone; the stores and kernels are
    # unchanged. A demonstration, not a shipped policy.
    class SnapshotEMA(WeightAverage):
        momentum = 0.75

        def divisor(self):
            return 1.0 / (1.0 - self.momentum)

    def step(expected, values):
        return [0.75 * e + 0.25 * t for e, t in zip(expected, values, strict=False)]

    rng = np.random.default_rng(3)
    vs = variables(rng)
    ema = SnapshotEMA(vs, offload)
    expected = None
    for k in range(6):
        values = [rng.normal(size=(3, 4)), rng.normal(size=(4,)), np.array([k, k])]
        assign_all(vs, values)
        if expected is None:
            ema.restart()
            expected = values[:2]
        elif k % 2:
            ema.update()
            expected = step(expected, values)
        else:  # shown, then adopted: the same weight
            with ema.provisional():
                shown = numpy_of(vs)
            ema.commit()
            expected = step(expected, values)
            for got, want in zip(shown, expected, strict=False):
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    got = ema.numpy()
    for i in range(2):
        np.testing.assert_allclose(got[i], expected[i], rtol=1e-5, atol=1e-6)
    assert ema.count == 6


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="TensorFlow's slot graphs"
)
def test_slot_graphs_trace_once_whatever_the_weight():
    vs = variables(np.random.default_rng(1))
    avg = WeightAverage(vs)
    avg.restart()
    for _ in range(3):
        avg.update()
        with avg.provisional():
            pass
        avg.commit()
    # One concrete function per graph (and per `keep` / `kept` flag).
    assert sorted(avg.store._traced) == [
        ("_adopt_graph", True),
        ("_hide_graph", True),
        ("_restart_graph",),
        ("_show_provisional_graph",),
        ("_update_graph",),
    ]
