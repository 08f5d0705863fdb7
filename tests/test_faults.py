"""Fault injection: a run killed at any point resumes to the same ensemble.

A child process (tests/fault_child.py, a fork server that imports Keras once)
trains a small model with `keras.callbacks.BackupAndRestore` and
`ASWA(backup_dir=...)` or `SWA(backup_dir=...)`, in either order, and dies with
`os._exit` at one point of one epoch: before or after either callback's
`on_epoch_end`, inside the averaging callback's evaluation, halfway through
writing its state file, just before the rename that publishes it, or just
before it removes a generation no longer needed. Then the
same command runs again, without the kill, to the end. It must end with
exactly the ensemble, history and model of an uninterrupted run, and leave no
file behind; or, where the state on disk cannot be used, stop with an error
that names the file and the way out, deleting nothing.

Every process costs seconds of tracing and compiling, so the whole matrix
(marked `faults`) kills one run at every point in turn, a point an epoch,
each in the run resumed after the previous kill, and compares only the end;
the unmarked tests, a quick subset, kill single points.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
KILLED = 3  # fault_child.KILLED
KILL_EPOCH = 2  # of fault_child.EPOCHS = 9, for the single kills
STEP_FREQ = 2  # training batches between two checks; 4 batches an epoch

ORDERS = ["keras_first", "aswa_first"]
SLOTS = ["slot0", "slot1", "slot2"]  # before, between, after the two callbacks
WRITES = [("savez", 1), ("replace", 1), ("remove", 1)]


class ForkServer:
    """Talks to one fault_child.py process for the whole module."""

    def __init__(self, log_dir):
        self.stderr = open(os.path.join(log_dir, "server.log"), "w")
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "fault_child.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            cwd=os.path.dirname(HERE),
        )

    def run(self, job: dict) -> tuple[int | str, dict]:
        """Runs one job; returns the child's exit status and result.json."""
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(
                f"the fault server died; see {self.stderr.name}: "
                + open(self.stderr.name).read()[-3000:]
            )
        status = json.loads(line)["status"]
        path = os.path.join(job["workdir"], "result.json")
        result = {}
        if os.path.exists(path):
            with open(path) as f:
                result = json.load(f)
        return status, result

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=60)
        self.stderr.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = ForkServer(str(tmp_path_factory.mktemp("fault_server")))
    yield s
    s.close()


_references: dict = {}


def log_tail(workdir: str) -> str:
    path = os.path.join(workdir, "log.txt")
    return open(path).read()[-4000:] if os.path.exists(path) else "(no log)"


def arrays(workdir: str) -> dict:
    with np.load(os.path.join(workdir, "result.npz")) as data:
        return {k: data[k] for k in data.files}


# Job keys that change the trajectory; the others (order, kill) do not.
TRAJECTORY = ("callback", "update_freq", "epochs", "accumulation", "mixed", "lora")


def reference(server, tmp_path_factory, job):
    """The uninterrupted run, once per trajectory."""
    key = tuple((k, job.get(k)) for k in TRAJECTORY)
    if key not in _references:
        workdir = str(tmp_path_factory.mktemp("uninterrupted"))
        job = dict(job, workdir=workdir, kill=None)
        status, result = server.run(job)
        failure = result.get("traceback") or log_tail(workdir)
        assert status == 0 and "error" not in result, failure
        _references[key] = (result, arrays(workdir))
    return _references[key]


def files(directory: str) -> dict:
    """{relative path: bytes} of everything under `directory`."""
    found = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, directory)] = f.read()
    return found


def kill_and_rerun(server, workdir, job, kill, damage=None):
    """Kills a run at `kill`, (optionally damages its state), reruns it."""
    status, _ = server.run(dict(job, kill=kill))
    assert status == KILLED, (
        f"the kill point {kill} was never reached (exit status {status}): "
        f"the test no longer tests it.\n{log_tail(workdir)}"
    )
    state = os.path.join(workdir, "state")
    if damage is not None:
        damage(state)
    on_disk = files(state)
    status, result = server.run(job)
    assert status == 0, log_tail(workdir)
    # The child trained with this checkout's package, not an installed one.
    assert result["package"].startswith(os.path.dirname(HERE)), result["package"]
    return on_disk, result


def assert_error_names_file_and_way_out(result, on_disk, state):
    error = result["error"]
    assert any(os.path.join(state, name) in error for name in on_disk), (
        f"the error names no state file of {sorted(on_disk)}: {error}"
    )
    assert "delete" in error or "backup_dir" in error, (
        f"the error does not say what to do: {error}"
    )
    assert files(state) == on_disk, "the failed rerun changed or deleted state files"


def check_resumed(server, tmp_path_factory, workdir, job, kills):
    """Kills the run at each of `kills` in turn, then lets it finish."""
    expected, expected_arrays = reference(server, tmp_path_factory, job)
    state = os.path.join(workdir, "state")
    for i, kill in enumerate(kills):
        status, result = server.run(dict(job, kill=kill))
        assert "error" not in result, (
            f"after kills {kills[:i]}, the rerun stopped:\n{result['error']}"
        )
        assert status == KILLED, (
            f"the kill point {kill} was never reached (exit status {status}, "
            f"after kills {kills[:i]}): the test no longer tests it.\n"
            f"{log_tail(workdir)}"
        )
    on_disk = files(state)
    status, result = server.run(job)
    assert status == 0, log_tail(workdir)
    assert result["package"].startswith(os.path.dirname(HERE)), result["package"]
    if "error" in result:
        assert_error_names_file_and_way_out(result, on_disk, state)
        pytest.fail(
            f"killed at {kills}, the rerun stopped instead of resuming:\n"
            f"{result['error']}\n(state files then: {sorted(on_disk)})"
        )
    assert result["history"] == expected["history"], f"killed at {kills}"
    assert result["ensemble_size"] == expected["ensemble_size"]
    got = arrays(workdir)
    assert sorted(got) == sorted(expected_arrays)
    for name in sorted(expected_arrays):
        np.testing.assert_array_equal(
            got[name], expected_arrays[name], err_msg=f"{name}, killed at {kills}"
        )
    assert_hands_back_what_it_scored(result)
    # A finished run leaves nothing behind, temporaries included.
    assert result["state_after"] == {}, result["state_after"]
    assert result["keras_after"] == {}, result["keras_after"]


def assert_hands_back_what_it_scored(result):
    """The final model evaluates to ASWA's best score (as it measured it)."""
    if result.get("best_score") is not None:
        np.testing.assert_allclose(result["evaluated"], result["best_score"], rtol=1e-4)


def points(callback, update_freq):
    """Every kill point of one epoch (or of a check at step level)."""
    if update_freq == "epoch":
        found = [(slot, 1) for slot in SLOTS] + list(WRITES)
        evaluation = ("eval", 1)  # the provisional (fit's logs give the running)
    else:
        # A batch between two checks, and the first check's state write.
        found = [("batch", 3), ("savez", 1), ("replace", 1)]
        evaluation = ("eval", 2)  # the check after the first, once scored
    return found + ([evaluation] if callback == "aswa" else [])


def chains():
    """One run per callback, order and frequency, killed at every point.

    The kills fall in successive epochs (2, 3, ...: SWA averages from epoch 1
    on), each in the run resumed after the one before, so that one sequence
    of processes covers every point; the quick tests below kill single
    points.
    """
    cases = []
    for update_freq in ("epoch", STEP_FREQ):
        for callback in ("aswa", "swa"):
            for order in ORDERS:
                kills = [
                    [point, epoch, n]
                    for epoch, (point, n) in enumerate(
                        points(callback, update_freq), start=2
                    )
                ]
                freq = "epoch" if update_freq == "epoch" else f"step{update_freq}"
                cases.append(
                    pytest.param(
                        callback,
                        order,
                        update_freq,
                        kills,
                        id=f"{callback}-{order}-{freq}",
                    )
                )
    return cases


def matrix(*values, id):
    """A case of the whole matrix (marked `faults`), not of the quick subset."""
    return pytest.param(*values, id=id, marks=pytest.mark.faults)


QUICK = [
    pytest.param("aswa", "aswa_first", ["slot1", KILL_EPOCH, 1], id="aswa-slot1"),
    pytest.param("aswa", "keras_first", ["eval", KILL_EPOCH, 1], id="aswa-eval1"),
    pytest.param("swa", "keras_first", ["savez", KILL_EPOCH, 1], id="swa-savez1"),
    # Killed while the average is still empty (SWA starts at epoch 1): the
    # state saved at epoch 0 holds no arrays.
    pytest.param("swa", "aswa_first", ["slot0", 1, 1], id="swa-empty-average"),
]


@pytest.mark.parametrize("callback, order, kill", QUICK)
def test_quick_kill_resume(server, tmp_path_factory, tmp_path, callback, order, kill):
    job = {"workdir": str(tmp_path), "callback": callback, "order": order}
    job["update_freq"] = "epoch"
    check_resumed(server, tmp_path_factory, str(tmp_path), job, [kill])


@pytest.mark.faults
@pytest.mark.parametrize("callback, order, update_freq, kills", chains())
def test_killed_at_every_point(
    server, tmp_path_factory, tmp_path, callback, order, update_freq, kills
):
    job = {"workdir": str(tmp_path), "callback": callback, "order": order}
    job["update_freq"] = update_freq
    check_resumed(server, tmp_path_factory, str(tmp_path), job, kills)


def test_damaged_state_stops_the_rerun_naming_the_file(server, tmp_path):
    # Killed after both callbacks saved epoch 2; then the latest state file
    # is cut short (a disk fault). The rerun must not guess: it stops, names
    # the file and the way out, and leaves every file as it was.
    def truncate_latest(state):
        path = os.path.join(
            state, max(n for n in os.listdir(state) if n.endswith(".npz"))
        )
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)

    workdir = str(tmp_path)
    job = {"workdir": workdir, "callback": "aswa", "order": "aswa_first"}
    on_disk, result = kill_and_rerun(
        server, workdir, job, ["slot2", KILL_EPOCH, 1], damage=truncate_latest
    )
    assert "error" in result, "the rerun used a truncated state file"
    assert_error_names_file_and_way_out(result, on_disk, os.path.join(workdir, "state"))


def edge_chain(order, last):
    """Kills at every batch of epoch 0 and of the last epoch, and between and
    around the two callbacks' writes there, each in the run resumed after the
    one before (where the rerun passes that point again)."""
    chain = []
    for epoch in (0, last):
        chain += [["batch", epoch, n] for n in (1, 2, 3, 4)]
        chain += [["slot0", epoch, 1], ["slot1", epoch, 1]]
        if order == "aswa_first":  # Keras has not saved: the epoch runs again
            chain.append(["slot2", epoch, 1])
    return chain


EDGE_EPOCHS = 4


def edge_cases():
    """Each callback, order and level once (ASWA and SWA take the same resume
    path; the mid-run chains above cover every combination)."""
    cases = [
        ("aswa", "keras_first", "epoch"),
        ("aswa", "aswa_first", STEP_FREQ),
        ("swa", "aswa_first", "epoch"),
        ("swa", "keras_first", STEP_FREQ),
    ]
    return [
        pytest.param(
            callback,
            order,
            update_freq,
            id=f"{callback}-{order}-"
            + ("epoch" if update_freq == "epoch" else f"step{update_freq}"),
        )
        for callback, order, update_freq in cases
    ]


@pytest.mark.faults
@pytest.mark.parametrize("callback, order, update_freq", edge_cases())
def test_killed_in_the_first_and_the_last_epoch(
    server, tmp_path_factory, tmp_path, callback, order, update_freq
):
    job = {"workdir": str(tmp_path), "callback": callback, "order": order}
    job.update(update_freq=update_freq, epochs=EDGE_EPOCHS)
    check_resumed(
        server, tmp_path_factory, str(tmp_path), job, edge_chain(order, EDGE_EPOCHS - 1)
    )


@pytest.mark.parametrize(
    "callback, order, update_freq, kill",
    [
        # Keras saved epoch 0, the callback did not: epoch 0 is replayed.
        matrix("aswa", "keras_first", "epoch", ["slot1", 0, 1], id="epoch0-replayed"),
        # The callback saved epoch 0, Keras did not: epoch 0 runs again.
        matrix("aswa", "aswa_first", "epoch", ["slot1", 0, 1], id="epoch0-again"),
        # A kill in epoch 0 after the first check: epoch 0 runs again.
        pytest.param(
            "aswa", "keras_first", STEP_FREQ, ["batch", 0, 3], id="step-epoch0"
        ),
        # After the last epoch's backups: Keras trains no epoch.
        matrix(
            "swa",
            "keras_first",
            "epoch",
            ["slot2", EDGE_EPOCHS - 1, 1],
            id="swa-after-last",
        ),
        matrix(
            "aswa",
            "keras_first",
            STEP_FREQ,
            ["slot2", EDGE_EPOCHS - 1, 1],
            id="step-after-last",
        ),
        # Between them: the last epoch end is replayed, with no epoch to run.
        pytest.param(
            "aswa",
            "keras_first",
            "epoch",
            ["slot1", EDGE_EPOCHS - 1, 1],
            id="last-replayed",
        ),
    ],
)
def test_killed_at_an_edge(
    server, tmp_path_factory, tmp_path, callback, order, update_freq, kill
):
    job = {"workdir": str(tmp_path), "callback": callback, "order": order}
    job.update(update_freq=update_freq, epochs=EDGE_EPOCHS)
    check_resumed(server, tmp_path_factory, str(tmp_path), job, [kill])


BATCHES = 4  # an epoch's batches in fault_child (64 samples, batches of 16)


def restored_batches(kill, save_freq, order):
    """fit's batches when Keras' last int-save_freq backup before `kill` was made.

    Keras backs up every `save_freq` batches from the start, at a batch's end;
    at `"batch"` (before every callback) its hook has not run yet for that
    batch, at `"slot1_batch"` (between the two callbacks) it has where it
    comes first.
    """
    point, epoch, n = kill
    done = epoch * BATCHES + n
    if point == "batch" or order == "aswa_first":
        done -= 1
    return done // save_freq * save_freq


# save_freq below, equal to and above update_freq (STEP_FREQ = 2); kills
# before both callbacks' batch hooks, and between them in either order.
INTEGER_KILLS = {
    ("aswa", 1): [
        ("keras_first", "slot1_batch", (1,)),
        ("aswa_first", "slot1_batch", (2,)),
        ("keras_first", "batch", (3,)),
    ],
    ("aswa", STEP_FREQ): [
        ("keras_first", "slot1_batch", (2,)),
        ("aswa_first", "slot1_batch", (2,)),
        ("keras_first", "batch", (1,)),
    ],
    ("aswa", 3): [
        ("keras_first", "batch", (1, 3)),
        ("keras_first", "slot1_batch", (1,)),
        ("aswa_first", "slot1_batch", (3,)),
    ],
    ("swa", 3): [
        ("keras_first", "slot1_batch", (1,)),
        ("keras_first", "batch", (2,)),
    ],
}


@pytest.mark.parametrize(
    "callback, save_freq, order, kill",
    [
        pytest.param(
            callback,
            save_freq,
            order,
            [point, KILL_EPOCH, n],
            id=f"{callback}-save{save_freq}-{order}-{point}{n}",
            # The first kill of each save_freq on every backend, the rest in
            # the matrix.
            marks=() if i == j == 0 else pytest.mark.faults,
        )
        for (callback, save_freq), kills in INTEGER_KILLS.items()
        for i, (order, point, ns) in enumerate(kills)
        for j, n in enumerate(ns)
    ],
)
def test_integer_save_freq_keeps_the_checks_up_to_the_restored_batch(
    server, tmp_path_factory, tmp_path, callback, save_freq, order, kill
):
    # Keras restores the weights of its last backup and trains that epoch
    # again from its first batch: a new trajectory from there on.
    job = {"workdir": str(tmp_path), "callback": callback, "order": order}
    job.update(update_freq=STEP_FREQ, save_freq=save_freq)
    expected, _ = reference(server, tmp_path_factory, job)
    _, result = kill_and_rerun(server, str(tmp_path), job, kill)
    assert "error" not in result, result.get("traceback")
    restored = restored_batches(kill, save_freq, order)
    steps = [record["step"] for record in result["history"]]
    assert steps == sorted(set(steps)), steps
    assert all(step % STEP_FREQ == 0 for step in steps), steps
    kept = [r for r in result["history"] if r["step"] <= restored]
    assert kept == [r for r in expected["history"] if r["step"] <= restored]
    # The checks go on at every STEP_FREQ batches of the new trajectory.
    after = [step for step in steps if step > restored]
    assert after and after[0] <= restored + STEP_FREQ, (restored, steps)
    assert_hands_back_what_it_scored(result)
    assert result["state_after"] == {} and result["keras_after"] == {}


@pytest.mark.parametrize(
    "flags",
    [
        pytest.param({"accumulation": 2}, id="gradient-accumulation"),
        matrix({"mixed": True}, id="mixed-float16"),
    ],
)
def test_step_counting_survives_accumulation_and_loss_scaling(
    server, tmp_path_factory, tmp_path, flags
):
    # The checks count fit's batches, not the optimizer's iterations, which
    # accumulation (and skipped loss-scale steps) hold back.
    job = {"workdir": str(tmp_path), "callback": "aswa", "order": "keras_first"}
    job.update(update_freq=STEP_FREQ, **flags)
    kills = [["batch", 3, 3], ["slot1", 4, 1]]
    check_resumed(server, tmp_path_factory, str(tmp_path), job, kills)
    expected, _ = reference(server, tmp_path_factory, job)
    steps = [r["step"] for r in expected["history"]]
    assert steps == list(range(STEP_FREQ, STEP_FREQ * (len(steps) + 1), STEP_FREQ))


@pytest.mark.parametrize(
    "callback, order, update_freq, kills",
    [
        matrix(
            "aswa",
            "aswa_first",
            "epoch",
            [["slot1", 2, 1], ["slot2", 4, 1]],
            id="aswa-epoch",
        ),
        matrix(
            "swa",
            "keras_first",
            "epoch",
            [["slot2", 2, 1], ["batch", 4, 2]],
            id="swa-epoch",
        ),
        pytest.param(
            "aswa",
            "keras_first",
            STEP_FREQ,
            [["batch", 2, 3], ["slot2", 4, 1]],
            id="aswa-step",
        ),
        # Killed after Keras' backup and before ASWA's write: Keras holds the
        # running adapters only merged; the ones written just before it are
        # used to replay the epoch end.
        pytest.param(
            "aswa",
            "keras_first",
            "epoch",
            [["slot1", 2, 1], ["slot1", 5, 1]],
            id="aswa-replayed",
        ),
        matrix("swa", "keras_first", "epoch", [["slot1", 3, 1]], id="swa-replayed"),
    ],
)
def test_lora_model_resumes_on_the_base_it_was_validated_with(
    server, tmp_path_factory, tmp_path, callback, order, update_freq, kills
):
    # Keras saves LoRA layers merged and restores them into the base with
    # zeroed adapters; the ensemble holds the adapters only.
    job = {"workdir": str(tmp_path), "callback": callback, "order": order}
    job.update(update_freq=update_freq, lora=True)
    check_resumed(server, tmp_path_factory, str(tmp_path), job, kills)


@pytest.mark.faults
def test_random_sigkills_while_the_state_is_written(server, tmp_path_factory, tmp_path):
    # SIGKILL from outside at random times of a run whose state writes are
    # slowed down, so that most kills land in them; Keras keeps its previous
    # backup too (a kill inside its own .h5 write can leave it unreadable).
    job = {"workdir": str(tmp_path), "callback": "aswa", "order": "keras_first"}
    job.update(update_freq=STEP_FREQ, double=True, slow_writes=0.05)
    probe = str(tmp_path_factory.mktemp("probe"))
    start = time.monotonic()
    status, _ = server.run(dict(job, workdir=probe))
    duration = time.monotonic() - start
    assert status == 0, log_tail(probe)
    rng = np.random.default_rng(0)
    for delay in rng.uniform(0.1, 0.9, size=4) * duration:
        status, result = server.run(dict(job, sigkill_after=float(delay)))
        assert "error" not in result, result["error"]
        if status == 0:
            break  # the rerun finished before the kill
        assert status == -9, log_tail(str(tmp_path))
    check_resumed(server, tmp_path_factory, str(tmp_path), job, [])


END_POINTS = [
    ("slot0_end", 1),
    ("slot1_end", 1),
    ("slot2_end", 1),
    ("end_replace", 1),
    ("end_remove", 1),
    ("keras_deleted", 1),
]


def end_cases():
    """Every kill point inside on_train_end, for ASWA and SWA in either
    order; the quick subset kills between Keras' deletion of its backup and
    the state's, in either order."""
    cases = []
    for callback in ("aswa", "swa"):
        for order in ORDERS:
            for point, n in END_POINTS:
                quick = point == "keras_deleted" and (callback == "aswa") == (
                    order == "keras_first"
                )
                cases.append(
                    pytest.param(
                        callback,
                        order,
                        [point, EDGE_EPOCHS - 1, n],
                        id=f"{callback}-{order}-{point}",
                        marks=() if quick else pytest.mark.faults,
                    )
                )
    return cases


@pytest.mark.parametrize("callback, order, kill", end_cases())
def test_killed_inside_on_train_end(
    server, tmp_path_factory, tmp_path, callback, order, kill
):
    # The end of a run is one step: the same command run again hands back
    # the model of the uninterrupted run, and leaves nothing behind.
    job = {"workdir": str(tmp_path), "callback": callback, "order": order}
    job.update(update_freq="epoch", epochs=EDGE_EPOCHS)
    check_resumed(server, tmp_path_factory, str(tmp_path), job, [kill])


@pytest.mark.parametrize("order", ORDERS)
def test_step_level_killed_before_its_first_check(
    server, tmp_path_factory, tmp_path, order
):
    # update_freq above two epochs of batches (4 an epoch): killed in epoch 2,
    # before the first check, the batch count goes on from Keras' backup and
    # the checks land on the batches of the uninterrupted run.
    job = {"workdir": str(tmp_path), "callback": "aswa", "order": order}
    job.update(update_freq=10, epochs=6)
    check_resumed(server, tmp_path_factory, str(tmp_path), job, [["batch", 2, 2]])
    expected, _ = reference(server, tmp_path_factory, job)
    assert [r["step"] for r in expected["history"]] == [10, 20]
