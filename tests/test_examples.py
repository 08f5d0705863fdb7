"""Every example and the notebook, in smoke mode, on the current backend.

The scripts run in this process as `python examples/<name>.py --smoke` would
run them (`runpy`, `__name__ == "__main__"`, their own argument parsing), so
that Keras is imported once; the notebook runs in a fresh kernel with
nbclient, under this process's backend.
"""

import runpy
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(name, *args, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [str(EXAMPLES / name), *map(str, args)])
    runpy.run_path(str(EXAMPLES / name), run_name="__main__")
    return capsys.readouterr().out


def load_example(name):
    return runpy.run_path(str(EXAMPLES / name), run_name=f"example_{Path(name).stem}")


def test_quickstart(tmp_path, monkeypatch, capsys):
    plot = tmp_path / "quickstart.png"
    out = run_example(
        "quickstart.py",
        "--smoke",
        "--plot",
        plot,
        monkeypatch=monkeypatch,
        capsys=capsys,
    )
    # The legend, then one row per epoch, numbered from 0 as in the plot.
    assert "Epochs count from 0, as in aswa.history, plot_history and ASWA" in out
    rows = out.split("decision  size\n")[1].split("final ensemble")[0].splitlines()
    assert [row.split()[0] for row in rows] == ["0", "1", "2"]
    assert rows[0].split()[1:] == [rows[0].split()[1], "-", "-", "-", "init", "1"]
    assert "test accuracy, ASWA ensemble:" in out
    assert plot.stat().st_size > 10_000


def test_fashion_mnist(tmp_path, monkeypatch, capsys):
    if load_example("fashion_mnist.py")["find_data"]() is None:
        pytest.skip(
            "Fashion-MNIST is not installed locally (apt-get install "
            "dataset-fashion-mnist, as .ci/run does)"
        )
    plot = tmp_path / "fashion.png"
    out = run_example(
        "fashion_mnist.py",
        "--smoke",
        "--plot",
        plot,
        monkeypatch=monkeypatch,
        capsys=capsys,
    )
    assert "ASWA epoch 0: init" in out and "ASWA epoch 1: " in out
    assert "test accuracy, ASWA ensemble:" in out
    assert plot.stat().st_size > 10_000


def test_fashion_mnist_data_dir(tmp_path):
    example = load_example("fashion_mnist.py")
    assert example["find_data"](tmp_path) is None
    with pytest.raises(SystemExit, match="expected the files"):
        example["load"](str(tmp_path))


def test_link_prediction(monkeypatch, capsys):
    out = run_example(
        "link_prediction.py", "--smoke", monkeypatch=monkeypatch, capsys=capsys
    )
    assert "ASWA epoch 0: init (first scored epoch): r val_mrr=" in out
    assert "ASWA epoch 2: " in out
    assert "test filtered MRR, ASWA ensemble:" in out


class ScoreTable:
    """A stand-in model: fixed scores for each (head, relation) pair."""

    def __init__(self, table):
        self.table = table

    def predict_on_batch(self, pairs):
        return self.table[pairs[:, 0], pairs[:, 1]]


def test_link_prediction_mrr_by_hand():
    example = load_example("link_prediction.py")
    known = np.array([[0, 0, 1], [0, 0, 2]])
    score_fn = example["filtered_mrr_fn"](np.array([[0, 0, 1]]), known, 4)
    table = np.zeros((1, 1, 4), np.float32)
    # Entity 2 is filtered (another true tail), 0 ranks above the target 1,
    # 3 ties with it: rank 1 + 1 + 1/2.
    table[0, 0] = [0.9, 0.5, 0.8, 0.5]
    assert score_fn(ScoreTable(table)) == pytest.approx(1 / 2.5)
    table[0, 0, 1] = np.nan  # a NaN target ranks last: 1 + 2 + 0
    assert score_fn(ScoreTable(table)) == pytest.approx(1 / 3)


@pytest.mark.parametrize("decimals", [None, 1], ids=["distinct", "ties"])
def test_link_prediction_mrr_matches_benchmarks(decimals):
    from benchmarks.datasets import load_kg
    from benchmarks.kg import make_score_fn

    example = load_example("link_prediction.py")
    data, num_entities, num_relations = example["load_graph"](example["UMLS"])
    kg = load_kg("umls")
    np.testing.assert_array_equal(data["valid"], kg.valid)
    known = example["with_inverses"](np.concatenate(list(data.values())), num_relations)
    queries = example["with_inverses"](data["valid"], num_relations)
    ours = example["filtered_mrr_fn"](queries, known, num_entities)
    theirs = make_score_fn(kg, "valid")
    rng = np.random.default_rng(0)
    table = rng.normal(size=(num_entities, 2 * num_relations, num_entities))
    if decimals is not None:
        table = table.round(decimals)
    model = ScoreTable(table.astype(np.float32))
    assert ours(model) == pytest.approx(theirs(model), abs=1e-12)


def test_notebook(monkeypatch):
    import nbclient
    import nbformat

    # The kernel inherits the environment: this backend, and the short run.
    monkeypatch.setenv("KERAS_BACKEND", keras.backend.backend())
    monkeypatch.setenv("KERAS_ASWA_SMOKE", "1")
    notebook = nbformat.read(EXAMPLES / "quickstart.ipynb", as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(EXAMPLES)}},
    )
    client.execute()
    outputs = [
        o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs
    ]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert f"on {keras.backend.backend()}" in text
    # The decision table: epochs 0 to 2, numbered as in the plot.
    rows = text.split("decision  size\n")[1].split("test accuracy")[0].splitlines()
    assert [row.split()[0] for row in rows] == ["0", "1", "2"]
    assert rows[0].split()[-2:] == ["init", "1"]
    assert "test accuracy, ASWA ensemble of" in text
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 1  # plot_history's figure
    # The notebook is kept without outputs; executing it changed nothing on disk.
    on_disk = nbformat.read(EXAMPLES / "quickstart.ipynb", as_version=4)
    assert all(not c.get("outputs") for c in on_disk.cells if c.cell_type == "code")


def test_examples_are_all_tested():
    tested = {
        "quickstart.py",
        "fashion_mnist.py",
        "link_prediction.py",
        "quickstart.ipynb",
        "finetune_lora.py",  # in test_finetune_example.py (needs keras-hub)
        "pretrain_backbone.py",  # the same
    }
    assert {
        p.name for p in EXAMPLES.iterdir() if p.suffix in (".py", ".ipynb")
    } == tested
