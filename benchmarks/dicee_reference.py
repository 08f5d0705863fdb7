"""The authors' library, dicee 0.3.3, on the same UMLS runs, for reference.

Not part of the test suite: dicee needs its own environment (it pins
numpy 1.26)::

    python3 -m venv /tmp/dicee && . /tmp/dicee/bin/activate
    pip install torch==2.13.0 dicee==0.3.3 "pyarrow<19" "pandas<2.3" "polars<1.30"
    mkdir -p KGs/UMLS && for s in train valid test; do
      gunzip -c benchmarks/data/umls/$s.txt.gz > KGs/UMLS/$s.txt; done
    for seed in 1 2 3 4 5; do
      python benchmarks/dicee_reference.py runs/$seed --dataset_dir KGs/UMLS \
        --model DistMult --scoring_technique KvsAll --embedding_dim 32 \
        --optim Adam --lr 0.1 --batch_size 1024 --num_epochs 200 \
        --input_dropout_rate 0.0 --hidden_dropout_rate 0.0 \
        --label_smoothing_rate 0.0 --random_seed $seed --adaptive_swa
    done

It runs dicee's own argument parser and `Execute`, with two hooks on its ASWA
callback that do not change training:

- `ASWA.decide` is wrapped to log, per epoch, the running model's and the
  provisional ensemble's validation MRR, the ensemble weight and the branch
  taken (hard / soft / reject);
- `ASWA.on_fit_end` first evaluates the last running model on validation and
  test (so one run gives both "last" and "ASWA"), then calls the original.

Results: `benchmarks/results/dicee.md`.

Usage: python benchmarks/dicee_reference.py OUTDIR [dicee CLI args...]
"""

import copy
import json
import sys
import time

import tiktoken


class _NoBPE:
    """dicee's KG() always builds tiktoken's gpt2 encoder, which is fetched
    over the network on first use; it is only used for byte-pair-encoded
    models (--byte_pair_encoding / BytE), not here. This stand-in provides
    the two attributes the constructor reads."""

    n_vocab = 50257

    def encode(self, text):
        return [220]


tiktoken.get_encoding = lambda name: _NoBPE()

# Imported after the stand-in, in case dicee binds tiktoken at import.
import dicee.weight_averaging as wa  # noqa: E402
from dicee.executer import Execute  # noqa: E402
from dicee.scripts.run import get_default_arguments  # noqa: E402

LOG = []

_orig_decide = wa.ASWA.decide
_orig_on_fit_end = wa.ASWA.on_fit_end


def decide(self, running_sd, ens_sd, val_running, val_prov):
    before_score = self.val_aswa
    weight = sum(self.alphas)
    if val_running > val_prov and val_running > before_score:
        branch = "hard"
    elif val_prov > before_score:
        branch = "soft"
    elif before_score > val_prov:
        branch = "reject"
    else:
        branch = "none"
    out = _orig_decide(self, running_sd, ens_sd, val_running, val_prov)
    LOG.append(
        {
            "epoch": self.epoch_count,
            "running": float(val_running),
            "provisional": float(val_prov),
            "aswa_before": float(before_score),
            "weight_before": float(weight),
            "branch": branch,
            "aswa_after": float(self.val_aswa),
            "weight_after": float(sum(self.alphas)),
        }
    )
    return out


def on_fit_end(self, trainer, model):
    m = copy.deepcopy(model).to("cpu").eval()
    old = trainer.evaluator.args.eval_model
    trainer.evaluator.args.eval_model = "val_test"
    rep = trainer.evaluator.eval(
        dataset=trainer.dataset,
        trained_model=m,
        form_of_labelling=trainer.form_of_labelling,
        during_training=True,
    )
    trainer.evaluator.args.eval_model = old
    with open(f"{self.path}/last_model_eval.json", "w") as f:
        json.dump({k: rep[k] for k in ("Val", "Test")}, f, indent=2)
    with open(f"{self.path}/aswa_log.json", "w") as f:
        json.dump(LOG, f)
    return _orig_on_fit_end(self, trainer, model)


wa.ASWA.decide = decide
wa.ASWA.on_fit_end = on_fit_end

if __name__ == "__main__":
    out = sys.argv[1]
    args = get_default_arguments(sys.argv[2:] + ["--path_to_store_single_run", out])
    t0 = time.perf_counter()
    report = Execute(args).start()
    wall = time.perf_counter() - t0
    keep = {k: report.get(k) for k in ("Runtime", "Train", "Val", "Test")}
    keep["wall_seconds_execute"] = wall
    with open(f"{out}/summary.json", "w") as f:
        json.dump(keep, f, indent=2, default=float)
    print("SUMMARY", json.dumps(keep, default=float))
