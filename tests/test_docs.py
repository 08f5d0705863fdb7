"""Every Python block of the README and the docs runs as written, on this backend.

Sybil reads each page's ```python blocks and runs them in order in one
namespace per page, like the cells of a notebook. A block that cannot run (an
outline with `...` in it) is preceded by `<!-- skip: next -->` and says on the
page that it is an outline. Pages that use a `model` and data before defining
them say so near their top: the namespace starts with the names that
`docs_namespace` gives, small stand-ins for the getting-started script's (a
compiled classifier and arrays), so that each block takes seconds.
"""

import os
import re
import warnings
from pathlib import Path

import keras
import numpy as np
import pytest
from sybil import Sybil
from sybil.parsers.markdown import PythonCodeBlockParser, SkipParser

ROOT = Path(__file__).resolve().parents[1]
PAGES = [
    "README.md",
    *sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("docs/**/*.md")),
]
SYBIL = Sybil(parsers=[PythonCodeBlockParser(), SkipParser()], path=str(ROOT))


def docs_namespace():
    """What the pages' snippets assume: `model`, `x`, `y` and friends."""
    from keras_aswa import ASWA, SWA

    rng = np.random.default_rng(0)
    x = rng.normal(size=(240, 8)).astype("float32")
    y = (x[:, 0] + x[:, 1] * x[:, 2] > 0).astype("int32") + (x[:, 3] > 1)
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.BatchNormalization(),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    model.compile(
        keras.optimizers.SGD(0.1, momentum=0.9),
        "sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return {
        "keras": keras,
        "np": np,
        "ASWA": ASWA,
        "SWA": SWA,
        "model": model,
        "x": x,
        "y": y,
        "x_train": x[:160],
        "y_train": y[:160],
        "x_val": x[160:200],
        "y_val": y[160:200],
        "x_test": x[200:],
        "y_test": y[200:],
    }


@pytest.mark.parametrize("page", PAGES)
def test_page(page, tmp_path, monkeypatch):
    document = SYBIL.parse(ROOT / page)
    examples = list(document)
    if not examples:
        pytest.skip("no Python blocks")
    monkeypatch.chdir(tmp_path)  # snippets that write files (backups) write here
    environ = dict(os.environ)
    document.namespace.update(docs_namespace())
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            for example in examples:
                example.evaluate()
    finally:
        # A snippet may set KERAS_BACKEND (too late to matter in this process)
        # or a global dtype policy: leave neither to the next test.
        os.environ.clear()
        os.environ.update(environ)
        keras.config.set_dtype_policy("float32")
        keras.utils.clear_session()


def test_every_python_block_is_run_or_marked():
    for page in PAGES:
        text = (ROOT / page).read_text()
        fences = re.findall(r"^```(\w+)", text, re.M)
        assert not {"py", "python3", "pycon"} & set(fences), page
        found = len(re.findall(r"^```python\n", text, re.M))
        skips = len(re.findall(r"^<!-- skip: next -->$", text, re.M))
        assert found == len(list(SYBIL.parse(ROOT / page))) - skips, page


def test_kaggle_cell_is_the_notebooks():
    """Getting started's Kaggle/Colab cell is the notebook's two set-up cells."""
    import nbformat

    notebook = nbformat.read(ROOT / "examples/quickstart.ipynb", as_version=4)
    page = (ROOT / "docs/getting-started.md").read_text()
    for index in (2, 4):
        assert notebook.cells[index].source in page
