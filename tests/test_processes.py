"""Several processes with a backup_dir (torch.distributed, gloo on this
machine): processes that see different states stop, saying so, and never
hang."""

import os
import socket
import subprocess
import sys

import keras
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))

CHILD = r"""
import os, sys
sys.path[:0] = [sys.argv[3], os.path.join(sys.argv[3], "tests")]
import keras
import torch.distributed as dist
from scenarios import compiled_model, fit_regression
from keras_aswa import ASWA

rank = int(sys.argv[1])
dist.init_process_group("gloo", rank=rank, world_size=2)
try:
    fit_regression(compiled_model(), [ASWA(backup_dir=sys.argv[2])], epochs=2)
    print("FINISHED")
except Exception as e:
    print(f"ERROR {type(e).__name__}: {e}")
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(keras.backend.backend() != "torch", reason="torch.distributed")
def test_processes_with_their_own_folders_stop_saying_so(tmp_path):
    from scenarios import Crash, compiled_model, fit_regression

    from keras_aswa import ASWA
    from keras_aswa.state import StateStore

    # The chief's folder holds a killed run's state; the other's is empty.
    chief, other = str(tmp_path / "chief"), str(tmp_path / "other")
    with pytest.raises(RuntimeError, match="preempted"):
        fit_regression(compiled_model(), [ASWA(backup_dir=chief), Crash(0)], epochs=2)
    StateStore(chief).unlock()  # the killed fit's lock, held by this process
    os.makedirs(other)
    env = dict(
        os.environ,
        MASTER_ADDR="localhost",
        MASTER_PORT=str(free_port()),
        KERAS_BACKEND="torch",
    )
    root = os.path.dirname(HERE)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(rank), folder, root],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank, folder in enumerate((chief, other))
    ]
    outputs = []
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            pytest.fail("a process hung")
        outputs.append(out)
    for out in outputs:
        assert "ERROR StateFileError" in out and "every process sees" in out, out
    # Nothing was touched: the chief's state is still there.
    assert any(n.startswith("state.") for n in os.listdir(chief))
