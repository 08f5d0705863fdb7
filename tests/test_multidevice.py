"""ASWA across several devices and processes, on simulated CPU devices.

Each backend's pass collects only its own tests (no skips):

- JAX: `keras.distribution.DataParallel` and `ModelParallel` over the four
  host devices that conftest.py asks XLA for. The ensemble keeps every
  variable's sharding, and decisions and weights match a one-device run.
- TensorFlow: `MirroredStrategy` over two logical CPUs (a subprocess: logical
  devices must be configured before TensorFlow starts), and
  `MultiWorkerMirroredStrategy` with two worker processes on 127.0.0.1.
- PyTorch: Keras has no `keras.distribution` and no distributed `fit` on
  torch; its documented route is a Keras model wrapped in
  `DistributedDataParallel` and trained by a torch loop. Two gloo processes
  train that way, driving ASWA's hooks by hand.

Single-device references run the same seeded scenario. Data-parallel runs
sum gradients in another order, so weights agree to float32 noise; the
decisions must be identical.

This file is also the worker script: `python test_multidevice.py ROLE`
prints one JSON line (see `_main`).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time

import keras
import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
BACKEND = keras.backend.backend()
# 8 epochs: the reference run decides init, soft, soft, hard, reject, reject,
# hard, soft.
EPOCHS = 8
TIMEOUT = 240  # seconds for any one subprocess group


def _report(aswa, model) -> dict:
    return {
        "decisions": [h["decision"] for h in aswa.history],
        "running": [h["running"] for h in aswa.history],
        "provisional": [h["provisional"] for h in aswa.history],
        "size": aswa.ensemble_size,
        "weights": [keras.ops.convert_to_numpy(v).tolist() for v in model.weights],
    }


def _assert_same_run(got: dict, want: dict):
    assert got["decisions"] == want["decisions"]
    assert got["size"] == want["size"]
    np.testing.assert_allclose(got["running"], want["running"], rtol=1e-5)
    assert [p is None for p in got["provisional"]] == [
        p is None for p in want["provisional"]
    ]
    np.testing.assert_allclose(
        [p for p in got["provisional"] if p is not None],
        [p for p in want["provisional"] if p is not None],
        rtol=1e-5,
    )
    for a, b in zip(got["weights"], want["weights"], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _run_workers(role: str, envs: list[dict], timeout: float = TIMEOUT) -> list[dict]:
    """Runs this file as `role` once per env, together; their JSON results.

    Every process is killed if any fails or the group overruns `timeout`.
    """
    procs, logs = [], []
    try:
        for extra in envs:
            env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **extra)
            # Files, not pipes: a chatty worker must never block on a full pipe.
            out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
            logs.append((out, err))
            procs.append(
                subprocess.Popen(
                    [sys.executable, os.path.abspath(__file__), role],
                    env=env,
                    cwd=HERE,
                    stdout=out,
                    stderr=err,
                    text=True,
                )
            )
        deadline = time.monotonic() + timeout
        while any(p.poll() is None for p in procs):
            for i, p in enumerate(procs):
                if p.poll() not in (None, 0):
                    logs[i][1].seek(0)
                    raise AssertionError(
                        f"{role} worker {i} failed ({p.returncode}):\n"
                        f"{logs[i][1].read()[-4000:]}"
                    )
            if time.monotonic() > deadline:
                raise AssertionError(f"{role} workers ran past {timeout}s")
            time.sleep(0.1)
        results = []
        for i, (p, (out, err)) in enumerate(zip(procs, logs, strict=True)):
            out.seek(0)
            err.seek(0)
            lines = out.read().strip().splitlines()
            assert p.returncode == 0 and lines, (
                f"{role} worker {i} failed ({p.returncode}):\n{err.read()[-4000:]}"
            )
            results.append(json.loads(lines[-1]))
        return results
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for out, err in logs:
            out.close()
            err.close()


def test_a_lone_process_is_chief(monkeypatch):
    from keras_aswa.distribute import is_chief

    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert is_chief() is True


# ---------------------------------------------------------------- JAX

if BACKEND == "jax":
    from keras.distribution import (
        DataParallel,
        DeviceMesh,
        LayoutMap,
        ModelParallel,
        list_devices,
    )
    from scenarios import aswa_run

    from keras_aswa import ASWA

    def _jax_run(distribution=None):
        aswa = ASWA()
        if distribution is None:
            model = aswa_run([aswa], epochs=EPOCHS)
        else:
            with distribution.scope():
                model = aswa_run([aswa], epochs=EPOCHS)
        return aswa, model

    @pytest.fixture(scope="module")
    def jax_single():
        aswa, model = _jax_run()
        return _report(aswa, model)

    @pytest.fixture(scope="module")
    def devices():
        found = list_devices("cpu")
        if len(found) < 4:
            pytest.fail(
                f"{len(found)} JAX host device(s): conftest.py must set XLA_FLAGS="
                "--xla_force_host_platform_device_count=4 before jax is imported."
            )
        return found[:4]

    def _engine(model):
        """The averaging engine over the trained model's weights, as the
        callbacks build it (engine level: its tensors are the unit here)."""
        from keras_aswa.averaging import WeightAverage

        average = WeightAverage(model.weights)
        average.restart()
        average.update()
        return average

    def _check_sharding(model, expected_specs):
        specs = {}
        average = _engine(model)
        for v, avg in zip(model.weights, average.average, strict=True):
            sharding = v.value.sharding
            specs[v.path] = tuple(sharding.spec)
            if avg is None:
                continue
            assert avg.sharding.mesh == sharding.mesh, v.path
            assert avg.sharding.spec == sharding.spec, v.path
            assert avg.sharding.is_equivalent_to(sharding, avg.ndim), v.path
        # The running weights kept while the provisional ensemble is scored,
        # and the provisional ensemble written in, keep their layout too.
        store = average.store  # what it holds beside the ensemble
        average.show_provisional()
        try:
            for v, saved in zip(store.variables, store.running, strict=True):
                assert saved.sharding.spec == v.value.sharding.spec, v.path
        finally:
            average.hide()
        # So does the provisional ensemble kept for adoption (`commit`).
        for v, kept in zip(store.variables, store.pending, strict=True):
            if kept is not None:
                assert kept.sharding.spec == v.value.sharding.spec, v.path
        average.commit()
        for v, avg in zip(model.weights, average.average, strict=True):
            assert avg.sharding.spec == v.value.sharding.spec, v.path
        for pattern, spec in expected_specs.items():
            hits = [s for path, s in specs.items() if pattern in path]
            assert hits and all(s == spec for s in hits), (pattern, specs)
        return specs

    def test_jax_data_parallel(devices, jax_single):
        mesh = DeviceMesh((4,), ["batch"], devices)
        aswa, model = _jax_run(DataParallel(device_mesh=mesh))
        for v in model.weights:  # replicated over the four devices
            assert len(v.value.sharding.device_set) == 4
        _check_sharding(model, {"kernel": (None, None)})
        _assert_same_run(_report(aswa, model), jax_single)

    def test_jax_model_parallel(devices, jax_single):
        mesh = DeviceMesh((2, 2), ["batch", "model"], devices)
        layout_map = LayoutMap(mesh)
        layout_map[".*dense.*kernel"] = ("model", None)  # rows split over "model"
        layout_map[".*batch_normalization.*"] = ("model",)  # moving stats too
        distribution = ModelParallel(layout_map=layout_map, batch_dim_name="batch")
        aswa, model = _jax_run(distribution)
        _check_sharding(
            model,
            {"kernel": ("model", None), "moving_mean": ("model",), "gamma": ("model",)},
        )
        # Each device holds half of a sharded kernel, in the ensemble too.
        pairs = zip(model.weights, _engine(model).average, strict=True)
        kernel = next(a for v, a in pairs if "kernel" in v.path)
        shard_rows = {s.data.shape[0] for s in kernel.addressable_shards}
        assert shard_rows == {kernel.shape[0] // 2}
        _assert_same_run(_report(aswa, model), jax_single)


# ---------------------------------------------------------- TensorFlow


def _tf_model():
    """The scenarios' regression model, with BatchNorm synchronised across
    replicas so that a data-parallel step normalises with the global batch's
    statistics, as one device does."""
    from scenarios import set_numpy_weights

    model = keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(16, activation="tanh"),
            keras.layers.BatchNormalization(synchronized=True),
            keras.layers.Dense(1),
        ]
    )
    set_numpy_weights(model, np.random.default_rng(1))
    return model


def _tf_run(strategy=None) -> tuple[dict, keras.Model]:
    import contextlib

    from scenarios import compiled_model, fit_regression

    from keras_aswa import ASWA

    scope = strategy.scope() if strategy is not None else contextlib.nullcontext()
    with scope:
        model = _tf_model()
        compiled_model(model)
    aswa, engine = ASWA(), EngineProbe()
    fit_regression(model, [aswa, engine], epochs=EPOCHS)
    report = _report(aswa, model)
    report["ensemble_devices"] = engine.devices
    return report, model


class EngineProbe(keras.callbacks.Callback):
    """Builds the averaging engine where the callbacks build theirs (at the
    start of `fit`, in its context) and records its tensors' devices."""

    def on_train_begin(self, logs=None):
        from keras_aswa.averaging import WeightAverage

        average = WeightAverage(self.model.weights)
        average.restart()
        self.devices = sorted({a.device for a in average.average if a is not None})


if BACKEND == "tensorflow":

    @pytest.fixture(scope="module")
    def tf_single():
        return _tf_run()[0]

    WORKERS = {"worker": ["a:1", "b:1"]}
    WITH_CHIEF = {"chief": ["c:1"], "worker": ["a:1"]}
    WITH_EVALUATOR = {"worker": ["a:1"], "evaluator": ["e:1"]}

    @pytest.mark.parametrize(
        "cluster, task_type, index, chief",
        [
            (WORKERS, "worker", 0, True),
            (WORKERS, "worker", 1, False),
            (WITH_CHIEF, "chief", 0, True),
            (WITH_CHIEF, "worker", 0, False),
            (WITH_EVALUATOR, "evaluator", 0, False),
        ],
    )
    def test_tf_chief_from_tf_config(monkeypatch, cluster, task_type, index, chief):
        from keras_aswa.distribute import is_chief

        task = {"type": task_type, "index": index}
        monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": task}))
        assert is_chief() is chief

    def test_tf_mirrored_strategy(tf_single):
        (got,) = _run_workers("tf-mirrored", [{"KERAS_BACKEND": "tensorflow"}])
        assert got["replicas"] == 2
        assert got["chief"] is True
        # The variables are mirrored; the ensemble is one copy, on the device
        # where the primary replica lives.
        assert got["variable_devices"] == ["CPU:0", "CPU:1"]
        assert len(got["ensemble_devices"]) == 1
        assert got["ensemble_devices"][0].endswith("CPU:0")
        assert got["replicas_equal"] is True
        _assert_same_run(got, tf_single)

    def test_tf_multi_worker_mirrored_strategy(tf_single):
        ports = _free_ports(2)
        cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
        envs = [
            {
                "KERAS_BACKEND": "tensorflow",
                "TF_CONFIG": json.dumps(
                    {"cluster": cluster, "task": {"type": "worker", "index": i}}
                ),
            }
            for i in range(2)
        ]
        workers = _run_workers("tf-worker", envs)
        assert [w["chief"] for w in workers] == [True, False]
        assert all(w["replicas"] == 2 for w in workers)
        chief, other = workers
        # Both workers take the same decisions on the same scores.
        assert chief["decisions"] == other["decisions"]
        assert chief["running"] == other["running"]
        assert chief["provisional"] == other["provisional"]
        for a, b in zip(chief["weights"], other["weights"], strict=True):
            np.testing.assert_array_equal(a, b)
        _assert_same_run(chief, tf_single)


def _tf_worker(role: str) -> dict:
    import tensorflow as tf

    from keras_aswa.distribute import is_chief

    if role == "tf-mirrored":
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2
        )
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    else:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        _work_around_keras_20585()
    report, model = _tf_run(strategy)
    report["replicas"] = strategy.num_replicas_in_sync
    report["chief"] = is_chief(model)
    assert is_chief() == report["chief"]  # from TF_CONFIG alone
    if role == "tf-mirrored":
        replicas = [w.value.values for w in model.weights]
        report["variable_devices"] = sorted(
            r.device.split("device:")[-1] for r in replicas[0]
        )
        # The final ensemble reached every replica.
        report["replicas_equal"] = all(
            np.array_equal(a.numpy(), b.numpy()) for a, b in replicas
        )
    return report


def _work_around_keras_20585():
    """Lets Keras 3's TensorFlow `fit` run under MultiWorkerMirroredStrategy.

    Keras 3.15 fails there twice (keras-team/keras#20585,
    tensorflow/tensorflow#72388), before ASWA is ever called:

    - before the first step `fit` builds the model from one distributed batch
      reduced with `strategy.reduce("MEAN", (x, y))`, and that strategy
      reduces single values only. The build needs shapes, not values: build
      from this worker's first replica's batch instead.
    - each step's logs, per-replica scalars, are averaged with
      `strategy.reduce("MEAN", v, axis=0)`, which fails on a scalar. Average
      across replicas (`axis=None`) instead: what MirroredStrategy gets.
    """
    from keras.src import tree
    from keras.src.backend.tensorflow import trainer as tf_trainer
    from keras.src.backend.tensorflow.trainer import TensorFlowTrainer

    keras_reduce = tf_trainer.reduce_per_replica

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean"):
            return tree.map_structure(
                lambda v: strategy.reduce("MEAN", v, axis=None), values
            )
        return keras_reduce(values, strategy, reduction)

    tf_trainer.reduce_per_replica = reduce_per_replica

    def maybe_symbolic_build(self, iterator=None, data_batch=None):
        strategy = self._distribute_strategy
        if strategy is None:
            return
        if iterator is not None:
            for _, _, it in iterator:
                data_batch = tree.map_structure(
                    lambda v: strategy.experimental_local_results(v)[0], next(it)
                )
                break
        with strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    TensorFlowTrainer._maybe_symbolic_build = maybe_symbolic_build


# ------------------------------------------------------------- PyTorch


def _torch_run(rank: int = 0, world: int = 1) -> dict:
    """Keras' documented multi-GPU route on torch: the Keras model wrapped in
    `DistributedDataParallel`, trained by a torch loop, each rank on its share
    of every global batch; ASWA's hooks are driven by that loop.

    No BatchNormalization here: DDP does not synchronise Keras' moving
    statistics (they are parameters, not buffers), so each rank would keep
    its own, and the ranks' ensembles would drift apart.
    """
    import torch
    from scenarios import ADAM_LR, BATCH_SIZE, regression_data, set_numpy_weights

    from keras_aswa import ASWA

    (x, y), (xv, yv) = regression_data(0)
    model = keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(16, activation="tanh"),
            keras.layers.Dense(1),
        ]
    )
    set_numpy_weights(model, np.random.default_rng(1))
    model.compile(loss="mse")  # for ASWA's evaluations; the loop trains
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=ADAM_LR)
    aswa = ASWA(validation_data=(xv, yv))
    callbacks = keras.callbacks.CallbackList([aswa], model=net)
    callbacks.on_train_begin()
    for epoch in range(EPOCHS):
        callbacks.on_epoch_begin(epoch)
        for start in range(0, len(x), BATCH_SIZE):
            xb = torch.from_numpy(x[start : start + BATCH_SIZE][rank::world])
            yb = torch.from_numpy(y[start : start + BATCH_SIZE][rank::world])
            loss = torch.mean((net(xb, training=True) - yb) ** 2)
            optimizer.zero_grad()
            loss.backward()  # DDP averages the ranks' gradients here
            optimizer.step()
        callbacks.on_epoch_end(epoch, {})
    callbacks.on_train_end()
    return _report(aswa, model)


if BACKEND == "torch":

    def test_torch_distributed_data_parallel():
        single = _torch_run()
        port = _free_ports(1)[0]
        envs = [
            {
                "KERAS_BACKEND": "torch",
                "RANK": str(r),
                "WORLD_SIZE": "2",
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port),
            }
            for r in range(2)
        ]
        ranks = _run_workers("torch-ddp", envs)
        assert [r["chief"] for r in ranks] == [True, False]
        # The ranks hold the same weights, so they score alike and decide alike.
        assert ranks[0]["decisions"] == ranks[1]["decisions"]
        assert ranks[0]["running"] == ranks[1]["running"]
        for a, b in zip(ranks[0]["weights"], ranks[1]["weights"], strict=True):
            np.testing.assert_array_equal(a, b)
        assert {"soft", "hard"} <= set(single["decisions"])
        _assert_same_run(ranks[0], single)


def _torch_worker() -> dict:
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    from keras_aswa.distribute import is_chief

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method="env://", timeout=timedelta(seconds=60))
    try:
        report = _torch_run(dist.get_rank(), dist.get_world_size())
        report["chief"] = is_chief()
    finally:
        dist.destroy_process_group()
    return report


def _main(role: str) -> None:
    sys.path.insert(0, HERE)
    if role.startswith("tf-"):
        result = _tf_worker(role)
    elif role == "torch-ddp":
        result = _torch_worker()
    else:
        raise SystemExit(f"unknown role {role!r}")
    print(json.dumps(result))


if __name__ == "__main__":
    _main(sys.argv[1])
