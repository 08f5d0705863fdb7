"""Cost of step-level ASWA with `update_freq="auto"`, against a plain fit.

Two workloads, each fitted alternately without and with
`ASWA(update_freq="auto", validation_data=...)` (fresh model each time, the
same seed), `--reps` times each (`--fashion-reps` for the short Fashion-MNIST
fits, whose times move most between runs):

- `finetune`: `examples/finetune_lora.py`'s fine-tuning run (a keras-hub
  BERT classifier on the small backbone pretrained in `examples/data`, LoRA
  rank 4, mixed_bfloat16), its 6 epochs, its ASWA replaced by one with
  `"auto"`;
- `fashion`: an MLP (784-256-10) on Fashion-MNIST, 60,000 images, 2 epochs of
  batches of 128, the callback scoring on the first 5,000 test images.

Reported per backend: the median fit times and their ratio (the first
compile of each fit included), the median of the ratios of each `auto` fit
to the plain fit run just before it (steadier where the machine's speed
drifts), the warm-up `"auto"` spends before training (compiling a check and
the averaging, part of the fit's time), the N and K it chose, what the
callback timed itself (warm-up plus checks) against the plain fit, and the
median (and mean) time of a check against two evaluations of its K batches
(timed after the fit on the same compiled function, median of 5).

    python -m benchmarks.auto_cost --backend all \
        --out benchmarks/results/auto_cost.md --json benchmarks/results/auto_cost.json

Each backend runs in a fresh process. `--report FILE.json --command="ARGS"`
re-renders the report from a run's JSON without Keras.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

BACKENDS = ("tensorflow", "jax", "torch")
WORKLOADS = ("finetune", "fashion")


def _fashion(seed: int):
    import keras
    import numpy as np

    from benchmarks.datasets import load_fashion_mnist

    (x, y), (xt, yt) = load_fashion_mnist()
    x = x.reshape(len(x), -1).astype("float32") / 255
    xt = xt.reshape(len(xt), -1).astype("float32") / 255
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((784,)),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dense(10),
        ]
    )
    model.compile(
        keras.optimizers.Adam(1e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    fit = {"x": x, "y": y, "epochs": 2, "batch_size": 128, "shuffle": False}
    return model, fit, (xt[:5000], yt[:5000].astype(np.int64))


def _finetune(seed: int):
    from benchmarks.quality.training import finetune_lora_example

    job = finetune_lora_example()["prepare"](seed=seed)
    x, y = job["train"]
    fit = {
        "x": x,
        "y": y,
        "epochs": job["epochs"],
        "batch_size": job["batch_size"],
        "shuffle": False,
    }
    return job["model"], fit, job["aswa"].validation_data


def _one_backend(reps: dict) -> dict:
    import numpy as np

    from benchmarks.quality.training import TimedASWA, eval_seconds

    out = {}
    for name in WORKLOADS:
        make = _finetune if name == "finetune" else _fashion
        plain, auto, runs = [], [], []
        for rep in range(reps[name]):
            for with_aswa in (False, True):
                model, fit, validation = make(rep)
                callbacks = []
                if with_aswa:
                    aswa = TimedASWA(
                        update_freq="auto", validation_data=validation, verbose=0
                    )
                    callbacks = [aswa]
                start = time.perf_counter()
                model.fit(**fit, verbose=0, callbacks=callbacks)
                seconds = time.perf_counter() - start
                if not with_aswa:
                    plain.append(seconds)
                    continue
                auto.append(seconds)
                checks = len(aswa.history)
                runs.append(
                    {
                        "warm_up": aswa.timing["warm_up"],
                        "warm_up_check": aswa.timing["warm_up_check"],
                        "warm_up_averaging": aswa.timing["warm_up_averaging"],
                        "counted_share": aswa.cadence.share,
                        "checks_seconds": aswa.timing["checks"],
                        "fit": aswa.timing["fit"],
                        "checks": checks,
                        "every": aswa.update_every,
                        "k": aswa.cadence.validation_steps,
                        "check": aswa.timing["checks"] / max(checks, 1),
                        "check_median": float(np.median(aswa.check_seconds)),
                        "evaluation": eval_seconds(aswa, model),
                    }
                )
        out[name] = {"plain": plain, "auto": auto, "runs": runs}
    return out


def run(backends, reps: dict) -> dict:
    from benchmarks import machine

    results = {"reps": reps, "backends": {}}
    for backend in backends:
        with tempfile.NamedTemporaryFile("r", suffix=".json") as f:
            subprocess.run(
                [sys.executable, "-m", "benchmarks.auto_cost", "--child", f.name]
                + ["--reps", str(reps["finetune"])]
                + ["--fashion-reps", str(reps["fashion"])],
                env=dict(os.environ, KERAS_BACKEND=backend),
                cwd=machine.REPO,
                check=True,
            )
            figures = json.load(f)
        results["backends"][backend] = {
            "figures": figures,
            "machine": machine.machine(backend),
        }
    return results


def _median(values):
    values = sorted(values)
    middle = len(values) // 2
    if len(values) % 2:
        return values[middle]
    return (values[middle - 1] + values[middle]) / 2


def _reps(results: dict) -> str:
    """ "3", or "3 (fine-tuning) and 9 (Fashion-MNIST)"."""
    reps = results["reps"]
    if reps["finetune"] == reps["fashion"]:
        return str(reps["finetune"])
    return f"{reps['finetune']} (fine-tuning) and {reps['fashion']} (Fashion-MNIST)"


def render(results: dict, command: str) -> str:
    from benchmarks import machine

    lines = [
        '# Step-level ASWA with update_freq="auto"',
        "",
        f"Command: `python -m benchmarks.auto_cost {command}`",
        "",
    ]
    for backend, entry in results["backends"].items():
        lines += [f"Machine ({backend}): {machine.describe(entry['machine'])}", ""]
    lines += [
        "Its cost against a plain fit. "
        f"Medians of {_reps(results)} fits each, alternating plain and `auto` "
        "(fresh model, same seed). Fit times include each fit's first compile; "
        "the warm-up (compiling one check at its batch shapes, and the "
        "averaging kernels on a dry run, before training) is part of the `auto` "
        "fit and shown apart. A check scores both weight sets in one compiled "
        "call per batch, then decides and keeps the books; `checks' share` is "
        "the checks' time over the `auto` fit's, and their cost as "
        "`keras_aswa.cadence` counts it against the training's (over "
        "`check_budget` where the floor of 24 checks a fit sets N); `check / 2 x "
        "eval(K)` divides the median check of the median run by twice the "
        "median of 5 evaluations of the same K batches, timed after the fit "
        "(the mean check is shown too: it includes the first checks). `paired` "
        "is the median of each `auto` fit's time over the plain fit's just "
        "before it; `ASWA's own` the median of the warm-up plus the checks, "
        "as the callback timed them, over that plain fit: what the ratio "
        "would be without the machine's noise and the rest of the hooks.",
        "",
        "| backend | workload | plain fit (s) | auto fit (s) | ratio | paired "
        "| warm-up (s): check + averaging | ASWA's own | N, K | checks "
        "| checks' share: timed, counted | check / 2 x eval(K): median | mean |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for backend, entry in results["backends"].items():
        for name, f in entry["figures"].items():
            plain, auto = _median(f["plain"]), _median(f["auto"])
            # The run whose fit time is the median (the lower one of two).
            order = sorted(range(len(f["auto"])), key=f["auto"].__getitem__)
            r = f["runs"][order[(len(order) - 1) // 2]]
            share = r["checks_seconds"] / r["fit"]
            per_eval = r["check"] / (2 * r["evaluation"])
            per_eval_median = r["check_median"] / (2 * r["evaluation"])
            warm_up = _median([x["warm_up"] for x in f["runs"]])
            check_compile = _median([x["warm_up_check"] for x in f["runs"]])
            kernels = _median([x["warm_up_averaging"] for x in f["runs"]])
            pairs = list(zip(f["plain"], f["auto"], f["runs"], strict=True))
            paired = _median([a / p for p, a, _ in pairs])
            own = _median(
                [1 + (x["warm_up"] + x["checks_seconds"]) / p for p, _, x in pairs]
            )
            lines.append(
                f"| {backend} | {name} | {plain:.2f} | {auto:.2f} | "
                f"{auto / plain:.3f}x | {paired:.3f}x | {warm_up:.2f}: "
                f"{check_compile:.2f} + {kernels:.2f} | {own:.3f}x"
                f" | {r['every']}, {r['k']} | {r['checks']} | {100 * share:.1f}%, "
                f"{100 * r['counted_share']:.0f}% | "
                f"{per_eval_median:.2f}x | {per_eval:.2f}x |"
            )
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="all")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--fashion-reps", type=int, help="default: --reps")
    parser.add_argument("--out")
    parser.add_argument("--json")
    parser.add_argument("--report", help="re-render from this JSON")
    parser.add_argument("--command", default="")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    reps = {"finetune": args.reps, "fashion": args.fashion_reps or args.reps}
    if args.child:
        with open(args.child, "w") as f:
            json.dump(_one_backend(reps), f)
        return
    if args.report:
        with open(args.report) as f:
            results = json.load(f)
        command = args.command
    else:
        backends = BACKENDS if args.backend == "all" else args.backend.split(",")
        results = run(backends, reps)
        command = " ".join(argv if argv is not None else sys.argv[1:])
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=1)
    text = render(results, command)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    print(text)


if __name__ == "__main__":
    main()
