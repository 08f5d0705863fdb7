"""The process that tests/test_faults.py kills: a fork server of training runs.

Importing Keras and a backend costs seconds, a run of the small model below
well under one. So this script imports them once and then, for every job read
as a JSON line from stdin, forks a child that trains, with the kill point of
the job armed; the child either dies there (`os._exit(KILLED)`) or finishes
and writes what it ended with. The server answers each job with one JSON
line on stdout: the child's exit status and what it wrote.

Nothing is computed in the server before it forks: the children are the only
processes that run backend operations.

A job (all keys but `workdir` optional):

- `callback`: `"aswa"` or `"swa"`; `order`: `"keras_first"` for
  `[BackupAndRestore, averaging]`, `"aswa_first"` for the reverse.
- `update_freq`: `"epoch"` or an int (training batches between two updates).
- `kill`: None, or `[point, epoch, n]`: die at the `n`-th time (1-based)
  `point` is reached in epoch `epoch`. Points: `"slot0"`, `"slot1"`,
  `"slot2"` (a callback at that place in the list of the two, at its
  `on_epoch_end`), `"slot0_batch"`, `"slot1_batch"`, `"slot2_batch"` (the
  same, at a training batch's end), `"batch"` (a training batch's end, before
  every other callback), `"eval"` (inside a
  scoring by the averaging callback's scorer, after it ran), `"savez"`
  (halfway through writing the state's temporary file), `"replace"` (just
  before the state writer's `os.replace`/`os.rename`), `"remove"` (just
  before a generation no longer needed is removed). Inside `on_train_end`
  (`epoch`: the last one): `"slot0_end"`, `"slot1_end"`, `"slot2_end"` (a
  callback at that place, at its `on_train_end`), `"end_replace"` and
  `"end_remove"` (the state writer's rename and removals there),
  `"keras_deleted"` (just after Keras' `BackupAndRestore` deleted its backup).
- `epochs`: how many epochs `fit` runs (`EPOCHS` by default).
- `save_freq`: `BackupAndRestore`'s (`"epoch"` by default, or an int);
  `double`: its `double_checkpoint`.
- `accumulation`: the optimizer's `gradient_accumulation_steps`.
- `mixed`: train under the `"mixed_float16"` policy (a loss-scale optimizer).
- `lora`: enable LoRA (rank 2) on both Dense layers before training.
- `slow_writes`: seconds each write of the averaging state takes longer
  (after the data, before the rename), for `sigkill_after` to land in.
- `sigkill_after`: the server sends the child SIGKILL after that many
  seconds (exit status -9), wherever it is.
- `workdir`: holds `keras/` (BackupAndRestore's), `state/` (the callback's
  `backup_dir`) and `result.npz` / `result.json`.

Run by hand: `echo '{"workdir": "/tmp/w"}' | python tests/fault_child.py`.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
import traceback

KILLED = 3
EPOCHS = 9
BATCH_SIZE = 16


def _imports():
    cache = None
    if os.environ.get("KERAS_BACKEND") == "jax":
        # Each child would compile the same functions again: share them.
        cache = tempfile.mkdtemp(prefix="keras_aswa_faults_jax_")
        os.environ["JAX_COMPILATION_CACHE_DIR"] = cache
        os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
        os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
    # This checkout's keras_aswa and tests/scenarios.py, as pytest sees them.
    tests = os.path.dirname(os.path.abspath(__file__))
    sys.path[:0] = [os.path.dirname(tests), tests]
    try:  # Keras' data adapters import it on every backend: import it once
        import tensorflow  # noqa: F401
    except ImportError:
        pass
    import keras  # noqa: F401
    import numpy  # noqa: F401

    import keras_aswa  # noqa: F401
    import keras_aswa.scoring  # noqa: F401
    import keras_aswa.state  # noqa: F401

    return cache


class _Trigger:
    """Counts arrivals at kill points in the current epoch; dies at the armed one."""

    def __init__(self, kill):
        self.kill = kill
        self.epoch = -1
        self.counts = {}
        self.ending = False  # inside on_train_end

    def new_epoch(self, epoch):
        self.epoch = epoch
        self.counts = {}

    def reach(self, point, before_exit=None):
        if self.kill is None:
            return
        name, epoch, n = self.kill
        if point != name or epoch != self.epoch:
            return
        self.counts[point] = self.counts.get(point, 0) + 1
        if self.counts[point] == n:
            if before_exit is not None:
                before_exit()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(KILLED)


def _arm_patches(trigger, state_dir, slow_writes=0.0):
    """Kill points inside the scorer's evaluation and the state writer."""
    import numpy as np

    from keras_aswa import scoring

    # fit's validation scores the provisional ensemble by evaluating it; the
    # callback's own data scores both weight sets of a check in one call.
    for cls, name in (
        (scoring.FitValidation, "current"),
        (scoring.DataValidation, "scores"),
    ):
        original = getattr(cls, name)

        def scored(self, *args, _original=original):
            score = _original(self, *args)
            trigger.reach("eval")
            return score

        setattr(cls, name, scored)

    real_savez = np.savez

    def path_of(file):
        name = getattr(file, "name", file)
        if isinstance(name, int):  # a file object made with os.fdopen
            name = os.readlink(f"/proc/self/fd/{name}")
        return os.fspath(name) if isinstance(name, str | os.PathLike) else None

    def savez(file, *args, **kwargs):
        path = path_of(file)
        if path is not None and os.path.dirname(path) == state_dir:

            def half_written():
                # The temporary file exists, holding half of the state.
                real_savez(file, *args, **kwargs)
                if hasattr(file, "flush"):
                    file.flush()
                os.truncate(path, os.path.getsize(path) // 2)

            trigger.reach("savez", half_written)
            real_savez(file, *args, **kwargs)
            # A longer write, for kills from outside to land in.
            time.sleep(slow_writes)
            return None
        return real_savez(file, *args, **kwargs)

    np.savez = savez

    for fn in ("replace", "rename"):
        real = getattr(os, fn)

        def move(src, dst, *args, _real=real, **kwargs):
            if os.path.dirname(os.fspath(dst)) == state_dir:
                trigger.reach("end_replace" if trigger.ending else "replace")
            return _real(src, dst, *args, **kwargs)

        setattr(os, fn, move)

    real_remove = os.remove

    def remove(path, *args, **kwargs):
        name = os.path.basename(os.fspath(path))
        if os.path.dirname(os.fspath(path)) == state_dir and name.startswith("state."):
            trigger.reach("end_remove" if trigger.ending else "remove")
        return real_remove(path, *args, **kwargs)

    os.remove = remove

    import keras

    backup_end = keras.callbacks.BackupAndRestore.on_train_end

    def on_train_end(self, logs=None):
        backup_end(self, logs)
        trigger.reach("keras_deleted")

    keras.callbacks.BackupAndRestore.on_train_end = on_train_end


def _listing(directory):
    """{name: size} of the files under `directory` (recursively)."""
    found = {}
    for root, _, files in os.walk(directory):
        for f in files:
            path = os.path.join(root, f)
            found[os.path.relpath(path, directory)] = os.path.getsize(path)
    return found


def keras_aswa_file():
    import keras_aswa

    return keras_aswa.__file__


def run_job(job):
    import keras
    import numpy as np
    from scenarios import compiled_model, regression_data, regression_model

    from keras_aswa import ASWA, SWA

    workdir = job["workdir"]
    keras_dir = os.path.join(workdir, "keras")
    state_dir = os.path.join(workdir, "state")
    trigger = _Trigger(job.get("kill"))
    _arm_patches(trigger, state_dir, job.get("slow_writes", 0.0))
    keras.utils.set_random_seed(0)

    (x, y), (xv, yv) = regression_data(0, n_train=64, n_val=32)
    if job.get("mixed"):
        keras.config.set_dtype_policy("mixed_float16")
    model = regression_model(0)
    if job.get("lora"):
        for layer in model.layers:
            if isinstance(layer, keras.layers.Dense):
                layer.enable_lora(2)
                # Non-zero adapters from the start, so that a merge shows.
                layer.lora_kernel_b.assign(np.full(layer.lora_kernel_b.shape, 0.1))
    # XLA would compile each function afresh in every child: seconds of CPU
    # that tell nothing here. (JAX always compiles.)
    jit = "auto" if keras.backend.backend() == "jax" else False
    optimizer = keras.optimizers.Adam(
        0.03, gradient_accumulation_steps=job.get("accumulation")
    )
    compiled_model(model, optimizer, jit_compile=jit)

    update_freq = job.get("update_freq", "epoch")
    step_kw = {} if update_freq == "epoch" else {"update_freq": update_freq}
    if job.get("callback", "aswa") == "aswa":
        if update_freq != "epoch":
            step_kw["validation_data"] = (xv, yv)
        averaging = ASWA(backup_dir=state_dir, **step_kw)
    else:
        averaging = SWA(start_from_epoch=1, backup_dir=state_dir, **step_kw)
    keras_backup = keras.callbacks.BackupAndRestore(
        keras_dir,
        save_freq=job.get("save_freq", "epoch"),
        double_checkpoint=job.get("double", False),
    )

    class Tracker(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            trigger.new_epoch(epoch)

        def on_train_batch_end(self, batch, logs=None):
            trigger.reach("batch")

        def on_train_end(self, logs=None):
            trigger.ending = True

    class Slot(keras.callbacks.Callback):
        def __init__(self, name):
            super().__init__()
            self.name = name

        def on_epoch_end(self, epoch, logs=None):
            trigger.reach(self.name)

        def on_train_batch_end(self, batch, logs=None):
            trigger.reach(f"{self.name}_batch")

        def on_train_end(self, logs=None):
            trigger.reach(f"{self.name}_end")

    pair = (
        [keras_backup, averaging]
        if job.get("order", "keras_first") == "keras_first"
        else [averaging, keras_backup]
    )
    callbacks = [
        Tracker(),
        Slot("slot0"),
        pair[0],
        Slot("slot1"),
        pair[1],
        Slot("slot2"),
    ]
    result = {"state_before": _listing(state_dir), "package": keras_aswa_file()}
    try:
        model.fit(
            x,
            y,
            validation_data=(xv, yv),
            epochs=job.get("epochs", EPOCHS),
            batch_size=BATCH_SIZE,
            shuffle=False,
            verbose=0,
            callbacks=callbacks,
        )
    except Exception as e:  # the rerun may stop with an error: report it
        result["error"] = f"{type(e).__name__}: {e}"
        result["traceback"] = traceback.format_exc()
    result["state_after"] = _listing(state_dir)
    result["keras_after"] = _listing(keras_dir)
    if "error" not in result:
        result["history"] = averaging.history
        result["ensemble_size"] = averaging.ensemble_size
        result["best_score"] = getattr(averaging, "best_score", None)
        # The model handed back, scored as ASWA scores it.
        result["evaluated"] = model.evaluate(
            xv, yv, batch_size=BATCH_SIZE, verbose=0, return_dict=True
        )["loss"]
        arrays = {
            f"e{i}": w
            for i, w in enumerate(averaging.ensemble_weights())
            if w is not None
        }
        arrays.update(
            {
                f"m{i}": keras.ops.convert_to_numpy(v)
                for i, v in enumerate(model.weights)
            }
        )
        np.savez(os.path.join(workdir, "result.npz"), **arrays)
    with open(os.path.join(workdir, "result.json"), "w") as f:
        json.dump(result, f)


def _child(job):
    status = 1
    try:
        log = os.open(
            os.path.join(job["workdir"], "log.txt"),
            os.O_WRONLY | os.O_CREAT | os.O_APPEND,
        )
        os.dup2(log, 1)
        os.dup2(log, 2)
        run_job(job)
        status = 0
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


def serve(timeout=240):
    cache = _imports()
    try:
        _serve(timeout)
    finally:
        if cache is not None:
            shutil.rmtree(cache, ignore_errors=True)


def _serve(timeout):
    out = sys.stdout
    for line in sys.stdin:
        if not line.strip():
            continue
        job = json.loads(line)
        os.makedirs(job["workdir"], exist_ok=True)
        for name in ("result.json", "result.npz"):
            path = os.path.join(job["workdir"], name)
            if os.path.exists(path):
                os.remove(path)
        start = time.monotonic()
        sigkill_after = job.get("sigkill_after")
        pid = os.fork()
        if pid == 0:
            _child(job)
        status = None
        while status is None:
            done, raw = os.waitpid(pid, os.WNOHANG)
            if done:
                status = os.waitstatus_to_exitcode(raw)
            elif sigkill_after is not None and time.monotonic() - start > sigkill_after:
                os.kill(pid, 9)  # from outside, wherever the child is
                sigkill_after = None
            elif time.monotonic() - start > timeout:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                status = "timeout"
            else:
                time.sleep(0.02)
        out.write(
            json.dumps({"status": status, "seconds": time.monotonic() - start}) + "\n"
        )
        out.flush()


if __name__ == "__main__":
    serve()
