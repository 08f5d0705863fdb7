"""Memory benchmark: what ASWA's ensemble holds for a LoRA fine-tune.

The issue's figure: bytes the ensemble holds / bytes of the trainable weights,
for a BERT-base-sized keras-hub classifier with LoRA rank 4, on each backend;
also the process's peak RSS. A LoRA fine-tune trains about 1% of the weights:
an ensemble that copies every float variable holds some hundred times what
training changes.

The model is built from its constructor (no pretrained weights are needed to
count bytes): `BertBackbone` with bert-base's dimensions (vocabulary 30,522,
12 layers, 12 heads, hidden 768, intermediate 3,072, 512 positions) under
`BertTextClassifier(num_classes=2, preprocessor=None)`, then
`backbone.enable_lora(rank=4)`. The callback's state is made the way a user
makes it: one `fit` of one batch (2 sequences of 16 random token ids) with
`ASWA(validation_data=...)`, whose first decision (`init`) fills the
ensemble. Then the bytes of what its `WeightAverage` keeps are added up, and
the trainable variables it leaves out are listed. A second
`ASWA(variables=model.trainable_weights)` in the same fit gives the figure of
an ensemble that holds exactly what trains.

    python -m benchmarks.lora_memory --backend all \
        --out benchmarks/results/lora_memory.md \
        --json benchmarks/results/lora_memory.json

One backend: `--backend jax`. Each backend runs in a fresh process (with
`KERAS_BACKEND` set), so that its peak RSS is its own; `--json FILE` keeps the
raw figures. Needs keras-hub (`pip install --no-deps keras-hub`, see
docs/finetuning.md). About 1-2 minutes a backend on 2 CPU cores.

`--report FILE.json --command="ARGS"` re-renders the report from a run's JSON
without Keras (ARGS: that run's arguments; the date and machine are the
re-render's, the JSON has neither).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.machine import REPO, code_version, describe, machine, proc_status_kib

BACKENDS = ("tensorflow", "jax", "torch")
BERT_BASE = dict(
    vocabulary_size=30522,
    num_layers=12,
    num_heads=12,
    hidden_dim=768,
    intermediate_dim=3072,
    max_sequence_length=512,
)
LORA_RANK = 4
MIB = 2**20


def _nbytes(x) -> int:
    import keras
    import numpy as np

    dtype = keras.backend.standardize_dtype(x.dtype)
    itemsize = {"bfloat16": 2}.get(dtype) or np.dtype(dtype).itemsize
    return int(np.prod(x.shape)) * itemsize


def _peak_rss_mib() -> float:
    # VmHWM: the process's peak resident set, in KiB (Linux); ru_maxrss elsewhere.
    kib = proc_status_kib("VmHWM")
    if kib is None:
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / 1024


def measure(dtype: str = "float32") -> dict:
    """Builds the model, fits one batch with ASWA, counts the bytes.

    Args:
        dtype: The Keras dtype policy of the model (`"float32"` or
            `"mixed_bfloat16"`; variables are float32 under both).

    Returns:
        A dict of the figures, in bytes and MiB.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import keras_hub
    import numpy as np

    import keras_aswa

    start = time.perf_counter()
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.BertBackbone(**BERT_BASE, dtype=dtype)
    model = keras_hub.models.BertTextClassifier(
        backbone, num_classes=2, preprocessor=None
    )
    backbone.enable_lora(rank=LORA_RANK)
    model.compile(
        optimizer=keras.optimizers.AdamW(1e-4),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    rng = np.random.default_rng(0)
    n, length = 2, 16
    x = {
        "token_ids": rng.integers(0, BERT_BASE["vocabulary_size"], (n, length)),
        "segment_ids": np.zeros((n, length), "int32"),
        "padding_mask": np.ones((n, length), "int32"),
    }
    y = np.array([0, 1])
    built_s = time.perf_counter() - start
    rss_built = _peak_rss_mib()

    # The default selection, and the trainable variables named explicitly
    # (what the default should hold), in one fit.
    default = keras_aswa.ASWA(validation_data=(x, y), restore_best=False)
    explicit = keras_aswa.ASWA(
        validation_data=(x, y),
        variables=list(model.trainable_weights),
        restore_best=False,
    )
    model.fit(x, y, batch_size=n, epochs=1, callbacks=[default, explicit], verbose=0)

    trainable = sum(_nbytes(v) for v in model.trainable_weights)
    floats = [v for v in model.weights if keras.backend.is_float_dtype(v.dtype)]

    def held(aswa):
        average = aswa._average  # the WeightAverage the callback keeps
        # numpy(): the average's arrays, whatever holds them on the backend
        # (tensors, or TensorFlow slot variables); every held one is float.
        pairs = zip(average.variables, average.numpy(), strict=True)
        kept = [(v, a) for v, a in pairs if keras.backend.is_float_dtype(v.dtype)]
        ids = {id(v) for v, _ in kept}
        return {
            "ensemble_bytes": sum(_nbytes(a) for _, a in kept),
            "ensemble_variables": len(kept),
            "ratio": sum(_nbytes(a) for _, a in kept) / trainable,
            # Trainable variables left out: the ensemble should hold them all.
            "trainable_not_held": [
                v.path for v in model.trainable_weights if id(v) not in ids
            ],
            "decisions": [h["decision"] for h in aswa.history],
        }

    return {
        "backend": keras.backend.backend(),
        "commit": code_version(),
        "dtype": dtype,
        "keras_hub": keras_hub.__version__,
        "parameters": int(sum(np.prod(v.shape) for v in model.weights)),
        "trainable_parameters": int(
            sum(np.prod(v.shape) for v in model.trainable_weights)
        ),
        "trainable_bytes": trainable,
        "float_bytes": sum(_nbytes(v) for v in floats),
        "trainable_variables": len(model.trainable_weights),
        **held(default),
        "explicit": held(explicit),
        "peak_rss_mib_after_build": rss_built,
        "peak_rss_mib": _peak_rss_mib(),
        "build_s": built_s,
        "total_s": time.perf_counter() - start,
    }


def _run_backend(backend: str, dtype: str) -> dict:
    """`measure` in a fresh process on `backend`."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "out.json"
        env = {**os.environ, "KERAS_BACKEND": backend}
        cmd = [sys.executable, "-m", "benchmarks.lora_memory", "--backend", backend]
        cmd += ["--dtype", dtype, "--child", str(path)]
        subprocess.run(cmd, check=True, env=env, cwd=REPO)
        return json.loads(path.read_text())


def report(results: list[dict], command: str, before: list[dict] = ()) -> str:
    """The Markdown report of `results` (one dict per backend).

    Args:
        results: What `measure` returned, per backend.
        command: The command line that made them.
        before: The same figures from an earlier code version, shown beside.
    """
    first = results[0]
    earlier = {r["backend"]: r for r in before}
    lines = [
        f"Command: `{command}`",
        f"Date: {datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds')}"
        f"; commit {first['commit']}",
        f"Machine: {describe(machine())}; keras-hub {first['keras_hub']}",
        "Model: BertTextClassifier on a BertBackbone of bert-base's dimensions "
        "(vocabulary 30,522, 12 layers, 12 heads, hidden 768, intermediate 3,072, "
        f"512 positions), num_classes=2, `enable_lora(rank={LORA_RANK})`, dtype "
        f"policy {first['dtype']}; {first['parameters']:,} parameters, "
        f"{first['trainable_parameters']:,} trainable. The ensemble is what "
        "`ASWA(validation_data=...)` holds after a one-batch `fit` (its `init` "
        "decision), with the default `variables=None`; beside it, "
        "`ASWA(variables=model.trainable_weights)` in the same fit. Peak RSS: "
        "the process's, after building the model and after the fit.",
        "",
        "| backend | trainable MiB | float weights MiB | ensemble MiB | "
        "ensemble / trainable | trainable variables held | with "
        "`variables=model.trainable_weights` | peak RSS MiB (build; fit) | "
        "seconds |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        ratio = f"{r['ratio']:.2f}x"
        if r["backend"] in earlier:
            old = earlier[r["backend"]]
            ratio += f" (was {old['ratio']:.2f}x at {old['commit']})"
        held = r["trainable_variables"] - len(r["trainable_not_held"])
        explicit = r.get("explicit")
        explicit = (
            "-"
            if explicit is None
            else f"{explicit['ratio']:.2f}x, {explicit['ensemble_variables']} variables"
        )
        lines.append(
            f"| {r['backend']} | {r['trainable_bytes'] / MIB:.2f} | "
            f"{r['float_bytes'] / MIB:.1f} | {r['ensemble_bytes'] / MIB:.2f} | "
            f"{ratio} | {held} of {r['trainable_variables']} "
            f"({r['ensemble_variables']} held in all) | {explicit} | "
            f"{r['peak_rss_mib_after_build']:.0f}; {r['peak_rss_mib']:.0f} | "
            f"{r['total_s']:.0f} |"
        )
    missing = sorted({p for r in results for p in r["trainable_not_held"]})
    if missing:
        lines += [
            "",
            f"Trainable variables the ensemble does not hold ({len(missing)}, "
            f"e.g. `{missing[0]}`): training changes them, and the ensemble "
            "written back into the model leaves them at their running values.",
        ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    """Measures each backend (or re-renders, `--report`); prints the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="all", choices=[*BACKENDS, "all"])
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--json", help="write the raw figures here")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # one backend's JSON
    parser.add_argument(
        "--before", help="JSON of an earlier run (--json), shown beside the figures"
    )
    parser.add_argument("--out", help="write the Markdown report here")
    parser.add_argument(
        "--report",
        metavar="JSON",
        help="re-render the report from the --json file of an earlier run "
        "instead of measuring (date and machine: this one's)",
    )
    parser.add_argument(
        "--command",
        help="with --report: the arguments of the run that wrote JSON, for "
        "the report's Command line",
    )
    args = parser.parse_args(argv)
    backends = BACKENDS if args.backend == "all" else (args.backend,)
    if args.child:
        Path(args.child).write_text(json.dumps(measure(args.dtype)))
        return
    if args.report:
        if args.command is None:
            parser.error("--report needs --command: the arguments of its run")
        results = json.loads(Path(args.report).read_text())
        command = args.command
    else:
        results = [_run_backend(b, args.dtype) for b in backends]
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))
        command = " ".join(sys.argv[1:] if argv is None else argv)
    before = json.loads(Path(args.before).read_text()) if args.before else []
    text = report(results, "python -m benchmarks.lora_memory " + command, before)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
