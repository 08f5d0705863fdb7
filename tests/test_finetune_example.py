"""examples/finetune_lora.py in smoke mode, on the current backend.

A keras-hub BERT classifier with LoRA in mixed_bfloat16, under step-level
ASWA: built from its constructor, and through `from_preset` on a tiny preset
saved here (no pretrained weights can be downloaded). Skipped where keras-hub
is not installed (the `hub` extra; see docs/finetuning.md).
"""

import contextlib
import io
import runpy
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

keras_hub = pytest.importorskip("keras_hub")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "finetune_lora.py"


@pytest.fixture(scope="module")
def example():
    return runpy.run_path(str(EXAMPLE), run_name="example_finetune_lora")


def _nbytes(values) -> int:
    total = 0
    for value in values:
        dtype = keras.backend.standardize_dtype(value.dtype)
        itemsize = 2 if dtype == "bfloat16" else np.dtype(dtype).itemsize
        total += int(np.prod(value.shape)) * itemsize
    return total


def test_data_is_the_vendored_novels(example):
    texts, labels, titles = example["load_paragraphs"]()
    assert len(titles) == 6 and "Pride and Prejudice" in titles
    assert len(texts) == 1500
    np.testing.assert_array_equal(np.bincount(labels), [250] * 6)
    assert any(
        "Elizabeth" in t for t in texts[labels == titles.index("Pride and Prejudice")]
    )


def test_tokenize_makes_bert_inputs(example):
    vocabulary = example["build_vocabulary"](["the cat, the dog"], 8)
    assert vocabulary[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert vocabulary[5] == "the"
    x = example["tokenize"](["The cat sat", "dog " * 10], vocabulary, 6)
    cat, sat = vocabulary.index("cat"), 1  # "sat" is not in the vocabulary
    np.testing.assert_array_equal(x["token_ids"][0], [2, 5, cat, sat, 3, 0])
    np.testing.assert_array_equal(x["token_ids"][1, [0, -1]], [2, 3])  # cut
    np.testing.assert_array_equal(x["padding_mask"][0], [1, 1, 1, 1, 1, 0])
    assert not x["segment_ids"].any()


def _lora_base_kernels(model):
    layers = model._flatten_layers(include_self=False)
    return [layer._kernel for layer in layers if getattr(layer, "lora_enabled", False)]


@pytest.fixture(scope="module")
def smoke_run(example):
    """The constructor path's smoke run, with what it froze and trained before."""
    job = example["prepare"](smoke=True)
    model = job["model"]
    frozen = {v.path: v.numpy().copy() for v in model.weights if not v.trainable}
    trainable = [v.numpy().copy() for v in model.trainable_weights]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        result = example["run"](job)
    return {**result, "frozen": frozen, "trainable": trainable, "out": out.getvalue()}


def test_smoke_builds_lora_in_bfloat16(smoke_run):
    model = smoke_run["model"]
    assert model.backbone.dtype_policy.name == "mixed_bfloat16"
    base_kernels = _lora_base_kernels(model)
    assert len(base_kernels) == 2  # query and value of the one layer
    assert all(v.path in smoke_run["frozen"] for v in base_kernels)
    assert {v.path.rsplit("/", 1)[1] for v in model.trainable_weights} == {
        "lora_kernel_a",
        "lora_kernel_b",
        "bias",
        "kernel",  # the classification head's
    }


def test_smoke_decides_every_n_steps(smoke_run):
    model, aswa, out = smoke_run["model"], smoke_run["aswa"], smoke_run["out"]
    assert int(model.optimizer.iterations.numpy()) == 6  # 86 paragraphs, batch 16
    # update_freq=2: a decision after optimizer steps 2, 4 and 6, and no other.
    assert [h["step"] for h in aswa.history] == [2, 4, 6]
    assert aswa.history[0]["decision"] == "init"
    assert {h["decision"] for h in aswa.history[1:]} <= {"hard", "soft", "reject"}
    assert "ASWA decisions: 3, every 2 batches" in out
    assert "step 2" in out and "test accuracy, ASWA ensemble:" in out
    assert 0.0 <= smoke_run["ensemble"] <= 1.0


def test_smoke_leaves_frozen_weights_alone(smoke_run):
    model = smoke_run["model"]
    # Training moved the LoRA factors and the head...
    assert any(
        not np.array_equal(before, v.numpy())
        for before, v in zip(
            smoke_run["trainable"], model.trainable_weights, strict=True
        )
    )
    # ...and nothing frozen moved (LoRA base kernels, embeddings, the rest of
    # the backbone), not even when the ensemble was written into the model.
    for v in model.weights:
        if v.path in smoke_run["frozen"]:
            np.testing.assert_array_equal(
                v.numpy(), smoke_run["frozen"][v.path], err_msg=v.path
            )


def test_smoke_ensemble_holds_what_trains(smoke_run):
    model, aswa = smoke_run["model"], smoke_run["aswa"]
    held = aswa._average.variables  # what the callback's WeightAverage holds
    assert {v.path for v in held} == {v.path for v in model.trainable_weights}
    ensemble = aswa._average.numpy()  # one float32 array per held variable
    assert _nbytes(ensemble) == _nbytes(model.trainable_weights)


def test_smoke_from_preset(example, tmp_path, monkeypatch, capsys):
    # keras-hub's fit tokenizes strings inside tf.data, where its WordPiece
    # tokenizer needs TensorFlow Text's ops (eager calls fall back to Python).
    pytest.importorskip(
        "tensorflow_text",
        reason="pip install --no-deps 'tensorflow-text==2.21.*' (docs/finetuning.md)",
    )
    # A tiny preset of the kind --preset loads: backbone, task head and the
    # preprocessor with its own (WordPiece) tokenizer, saved to a folder.
    texts, _, titles = example["load_paragraphs"]()
    vocabulary = example["build_vocabulary"](texts, 512)
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=vocabulary)
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(
        tokenizer, sequence_length=32
    )
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=len(vocabulary),
        num_layers=1,
        num_heads=2,
        hidden_dim=32,
        intermediate_dim=64,
        max_sequence_length=32,
    )
    keras_hub.models.BertTextClassifier(
        backbone, num_classes=len(titles), preprocessor=preprocessor
    ).save_to_preset(str(tmp_path))

    monkeypatch.setattr(
        sys, "argv", [str(EXAMPLE), "--smoke", "--preset", str(tmp_path)]
    )
    runpy.run_path(str(EXAMPLE), run_name="__main__")
    out = capsys.readouterr().out
    assert f"model: {tmp_path}" in out
    assert "ASWA decisions: 3, every 2 batches" in out
    assert "test accuracy, ASWA ensemble:" in out
