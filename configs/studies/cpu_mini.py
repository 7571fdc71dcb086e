"""A study you can run on a laptop: three widths x three budgets x five optimizer entries.

  python -m trainers.study --config=configs/studies/cpu_mini.py --workdir=runs/cpu_mini --parallel=2

On the synthetic corpus (its entropy floor is known, so speedups fix gamma to
it): 1-layer Llamas of width 16, 32 and 64 (4k, 16k and 66k non-embedding
parameters), 1/2, 1 and 2x Chinchilla, two seeds for the best points (the
seed noise the report's significance calls need). Entries:

* ``adamw_default``: AdamW at a common default (GPT-3's lr 6e-4, betas (0.9,
  0.95), weight decay 0.1), never tuned: what tuning is worth;
* ``adamw``, ``muon``, ``ademamix``, ``soap``: tuned by coordinate descent on a
  learning-rate grid (and weight decay for AdamW) at widths 16 and 32, every
  budget (at most 4 trials per optimizer and budget); width 64 gets each
  hyperparameter from a power law in N and D fitted to the tuned cells (Wen et
  al. 2025's phase III), with no local search (to stay under the hour; a copy with
  ``plan.local_search = {"learning_rate": [0.5, 1, 2]}`` refines the carried point).

Under an hour on 2 CPU cores. Its report is kept in docs/studies/cpu_mini/.
"""

import ml_collections

LRS = [1e-3, 3e-3, 1e-2]


def get_config():
  c = ml_collections.ConfigDict()
  c.name = "cpu_mini"
  c.base_config = "configs/tiny.py"
  c.overrides = {
      "model": {"num_layers": 1},
      "data": {"seq_len": 64, "global_batch_size": 16, "synthetic_train_tokens": 2_000_000,
               "synthetic_val_tokens": 60_000, "prefetch_threads": 0},
      "optimizer": {"grad_clip": 1.0,
                    "schedule": {"name": "wsd", "warmup_steps": 5, "decay_fraction": 0.2,
                                 "final_fraction": 0.0}},
      "train": {"log_every": 20, "eval_batches": 4, "full_eval_at_end": False,
                "checkpoint_every": 0, "keep_checkpoints": 1},
      "mesh": {"data": -1},
  }
  c.models = {"w16": {"overrides": {"model": {"d_model": 16, "num_heads": 2, "ffn_dim": 64}}},
              "w32": {"overrides": {"model": {"d_model": 32, "num_heads": 2, "ffn_dim": 128}}},
              "w64": {"overrides": {"model": {"d_model": 64, "num_heads": 4, "ffn_dim": 256}}}}
  c.budgets = {"chinchilla": [0.5, 1.0, 2.0]}
  c.tokens_per_param = 20
  c.param_count = "non_embedding"
  c.batch_sizes = []
  c.seeds = [0, 1]
  c.evals_per_trial = 8
  c.reference_optimizer = "adamw"
  # ln(512) = 6.24 at the start: above it a run got worse than uniform (Wen et al.'s 6 is
  # for text with a 128k vocabulary).
  c.divergence = dict(loss_threshold=7.0, after_steps=2000, after_fraction=0.5)
  c.optimizers = {
      "adamw_default": dict(optimizer="adamw",
                            baseline=dict(learning_rate=6e-4, weight_decay=0.1, b1=0.9,
                                          b2=0.95),
                            grid={"learning_rate": [6e-4]}),
      "adamw": dict(baseline=dict(learning_rate=3e-3, weight_decay=0.1, b1=0.9, b2=0.95),
                    grid={"learning_rate": LRS, "weight_decay": [0.0, 0.1]}),
      "muon": dict(baseline=dict(learning_rate=1e-2, adam_learning_rate=3e-3, beta=0.95),
                   grid={"learning_rate": [3e-3, 1e-2, 3e-2]}),
      "ademamix": dict(baseline=dict(learning_rate=3e-3, b1=0.9, b2=0.999, b3=0.999, alpha=8.0),
                       grid={"learning_rate": LRS}),
      "soap": dict(baseline=dict(learning_rate=3e-3, b1=0.9, b2=0.99, precondition_frequency=10),
                   grid={"learning_rate": LRS}),
  }
  c.plan = dict(tune=["w16", "w32"], transfer="fit", strategy="coordinate_descent",
                threshold=3e-3, trial_budget=4, local_search={}, local_trial_budget=0)
  c.share_stable_phase = True
  c.speedup = dict(gamma="loss_floor", num_bootstrap=500)
  c.extrapolate = [1e6]
  return c
