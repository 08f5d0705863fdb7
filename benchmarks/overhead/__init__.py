"""Cost benchmark: what `ASWA()` adds to `fit`, in time and memory, per backend.

Full run (all three backends, one subprocess each; about 12 minutes on 2 CPU
cores), tables printed and written to a file:

    .venv/bin/python -m benchmarks.overhead --backend all --out /tmp/overhead.md

Smoke run (tiny model, 3 epochs, every code path; well under a minute a
backend):

    .venv/bin/python -m benchmarks.overhead --backend all --smoke

One backend: `--backend jax` (re-launched with `KERAS_BACKEND=jax` unless this
process already runs it). `--json FILE` dumps the raw numbers, from which
`--report` re-renders the tables without Keras, given the run's own
arguments for the report's Command line (as that line shows them)::

    python -m benchmarks.overhead --report FILE.json --out FILE.md \\
        --command="ARGS"

Reference workload: an MLP 784-2048-2048-10 (5,824,522 float32 parameters,
22.2 MiB), Adam, batch 128, 2048 training and 512 validation images of
Fashion-MNIST (random data of the same shape where it is not installed), 5
epochs a fit. In one process, repetitions interleave (in rotating order):

- `plain`: `fit` with validation;
- `eval`: `fit` with `EvalOnly`, one more evaluation per scored epoch through
  the cached validation iterator ASWA uses and nothing else: the ideal ASWA,
  measured;
- `aswa`: `fit` with `ASWA()` (val_loss, restore_best=True);
- `naive`: `fit` with `NaiveASWA` below, ASWA done the way the authors' code
  does it: the running model is evaluated again, weights go through
  `get_weights`/`set_weights` and the average is computed in numpy.

Reported, as medians over repetitions: each variant's fit time and its ratio to
the plain fit of the same repetition; the ideal ratio, plain fit plus one
standalone `model.evaluate` on the validation data for every epoch whose
provisional ensemble ASWA scores (all but the first, which only starts the
ensemble); the excess over that ideal, and over the measured one (`eval`), in %
of the plain fit; the time the callback takes at each epoch end. Also the time
of one epoch's weight bookkeeping (`WeightAverage.provisional()` entered and
left without evaluating, then the decision's `discard()`, `commit()` or
`restart()`; the slowest of the three) against `np.copy` of the same float
weights on the host, with a breakdown of its steps; the bytes the average
holds; and the growth of peak RSS during one fit of each variant, each in a
fresh process (on CPU, device memory is host RAM).

The package, one job a module: `config` (workloads), `workload` (the model
and the variants' callbacks), `timing`, `bookkeeping`, `memory` and
`by_count` (what is measured), `run` and `child` (per backend, in fresh
processes where needed); `report` renders the tables and imports no Keras;
`__main__` is the command line.
"""
