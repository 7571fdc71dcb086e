"""The smallest study: two widths, two budgets, two optimizers on the synthetic corpus.

  python -m trainers.study --config=configs/studies/smoke.py --workdir=/tmp/smoke --parallel=2

A few minutes on a 2-core CPU; CI runs it (tests/bench/test_study_smoke.py).
Tuned at width 32 (a two-value learning-rate grid), carried to width 64 with
the same point; the 0.25x budget branches from the 0.5x run's stable phase.
"""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.name = "smoke"
  c.base_config = "configs/tiny.py"
  c.overrides = {
      "model": {"num_layers": 1, "ffn_dim": 128},
      "data": {"seq_len": 32, "global_batch_size": 16, "synthetic_train_tokens": 400_000,
               "synthetic_val_tokens": 20_000, "prefetch_threads": 0},
      "optimizer": {"schedule": {"name": "wsd", "warmup_steps": 10, "decay_fraction": 0.2,
                                 "final_fraction": 0.0}},
      "train": {"log_every": 20, "eval_batches": 2, "full_eval_at_end": False,
                "checkpoint_every": 0, "keep_checkpoints": 1},
      "mesh": {"data": -1},
  }
  c.models = {"w32": {"overrides": {"model": {"d_model": 32, "num_heads": 2}}},
              "w64": {"overrides": {"model": {"d_model": 64, "num_heads": 4}}}}
  c.budgets = {"chinchilla": [0.25, 0.5]}
  c.tokens_per_param = 20
  c.param_count = "non_embedding"
  c.batch_sizes = []
  c.seeds = [0]
  c.evals_per_trial = 4
  c.reference_optimizer = "adamw"
  c.optimizers = {
      "adamw": dict(baseline=dict(learning_rate=3e-3, weight_decay=0.1, b1=0.9, b2=0.99),
                    grid={"learning_rate": [3e-3, 1e-2]}),
      "lion": dict(baseline=dict(learning_rate=3e-4, weight_decay=0.1, b1=0.9, b2=0.99),
                   grid={"learning_rate": [3e-4, 1e-3]}),
  }
  c.plan = dict(tune=["w32"], transfer="same", strategy="coordinate_descent", threshold=0.0,
                trial_budget=0, local_search={}, local_trial_budget=0)
  c.share_stable_phase = True
  c.speedup = dict(gamma="loss_floor", num_bootstrap=200)
  c.extrapolate = [1e6]
  return c
