"""Quality benchmark: ASWA against the last running model, early stopping, SWA and EMA.

Full run (benchmarks/results/quality.md: 27 min on 2 cores, 37 under load; TensorFlow
because its CPU convolutions make a Fashion-MNIST CNN epoch ~14 s here, against
~70 s on JAX)::

    python -m benchmarks.quality --backend tensorflow --seeds 1-5 \\
        --out benchmarks/results --img-dir docs/img

The UMLS timing on JAX (its plain fit is 5x faster than TensorFlow's)::

    python -m benchmarks.quality --backend jax --datasets umls --seeds 1-5 \\
        --out benchmarks/out/umls-jax

The step-level study (Fashion-MNIST, its 2-epoch runs too; step-level ASWA
every 50/100/200 batches against EMA and the rest; writes
benchmarks/results/quality-steps.json/.md)::

    python -m benchmarks.quality --steps --backend tensorflow --seeds 1-5 \\
        --timing-repeats 2 --out benchmarks/results

Smoke run (every data set, model and method, then every regime into
quality-regimes.json; tiny data, 3 epochs; 1-2 min; writes
benchmarks/out/smoke-<backend>)::

    python -m benchmarks.quality --smoke --backend torch

The regimes study (`--regime`, any of finetune, small, rich, text, or all):
fine-tuning a pretrained CNN (full, frozen backbone, LoRA; two learning
rates each), small data (2,000 images, val_loss and val_accuracy), the
data-rich Fashion-MNIST grid and text (`examples/finetune_lora.py`'s LoRA
fine-tune of a pretrained keras-hub BERT), with two more baselines read off
the same run (``best_step``, ``ema_tuned``); writes
OUT/quality-regimes.json/.md::

    python -m benchmarks.quality --regime finetune,small --backend tensorflow \
        --seeds 1-5 --out benchmarks/out/regimes-tensorflow
    python -m benchmarks.quality --report --regime all \
        --out benchmarks/out/regimes-tensorflow \
        --include benchmarks/out/regimes-jax/quality-regimes.json

Re-render the report from its JSON (no Keras needed), merging the runs above::

    python -m benchmarks.quality --report --out benchmarks/results --include \\
        benchmarks/out/smoke-*/quality.json benchmarks/out/umls-jax/quality.json

What is compared, per data set, model and seed (same data, seed and epochs):

- ``last``: the running model after the last epoch;
- ``early_stopping``: ``EarlyStopping(restore_best_weights=True)`` with
  unlimited patience, i.e. the best-validation epoch's snapshot;
- ``swa``: ``keras_aswa.SWA`` from 50 % of the epochs on;
- ``ema``: the optimizer's own ``use_ema=True`` (Keras' defaults, momentum
  0.99 per step; Keras swaps in the EMA of the trainable weights only);
- ``aswa``: ``keras_aswa.ASWA``;
- ``aswa_n<N>`` (Fashion-MNIST): ``ASWA(update_freq=N)``, deciding every N
  training batches on the first 20 validation batches, on val_loss;
  ``aswa_auto``: ``ASWA(update_freq="auto")``, N and K its own choice.
- in the regimes study also ``best_step``: the best running model among
  ``aswa_auto``'s checks (early stopping at step granularity, the same
  batches and monitor), and ``ema_tuned``: the EMA at the momentum of 0.9,
  0.99, 0.999 that scores best on validation (``MultiEMA`` tracks all three
  beside the optimizer's own).

None of them changes the training trajectory, so all five are read off ONE
training run per seed (EMA shadow on the optimizer, ASWA/SWA without
restoring, a recorder for the last and the best weights), then each method's
weights are written into the model and scored on the test set.
`verify_read_off` checks that equivalence against real single-method runs
(exact on all three backends: the callbacks leave the generators that
shuffle the training batches untouched).

Learning rates are constant for the whole run, for every method (SWA's
usual constant-rate phase; Adam 1e-3 for the images, Adam 0.1 for the
knowledge graphs as in the reference setting).

The package, one job a module: `config` (the grid), `training` (data,
models, callbacks) and `measure` (one run per seed, checks, timings) under
`run`, `regimes` (the regimes' data splits); `stats`, `results`, `report`,
`steps_report`, `regimes_report` and `rerender` turn the JSON into the
reports and import no Keras; `__main__` is the command line; `lr_sweep`
chose the fine-tuning learning rates.
"""
