"""Wen, Hall, Ma & Liang (2025), "Fantastic Pretraining Optimizers and Where to Find Them": 130M.

  python -m trainers.sweep --config=configs/sweeps/wen2025_130m.py --workdir=runs/wen130m --parallel=N

Their phase-I protocol on the 130M model (configs/130m.py: 32 x 512, seq
4096, batch 128, WSD): coordinate descent from the tuned 130M optima
(REFERENCE.md Sec. 1B), each round trying every one-at-a-time change, adopting
the best if it improves the final loss by > 3e-3; runs with loss >= 6 after
2000 steps count as diverged. Budgets are 1x/2x/4x/8x Chinchilla (20 tokens
per parameter): 20 * 130M / (128 * 4096 tokens/step) = 4960 steps for 1x.
Deviation: an equal cap of 40 trials per optimizer and budget, so every
optimizer gets the same tuning effort (the paper has no fixed cap).
"""

import ml_collections

CHINCHILLA_STEPS = 4960


def get_config():
  c = ml_collections.ConfigDict()
  c.name = "wen2025_130m"
  c.base_config = "configs/130m.py"
  c.overrides = {}
  c.evals_per_trial = 10
  c.reference_optimizer = "adamw"
  c.budgets = [CHINCHILLA_STEPS * k for k in (1, 2, 4, 8)]
  c.seeds = [0]
  c.strategy = "coordinate_descent"
  c.threshold = 3e-3
  c.trial_budget = 40
  c.divergence = dict(loss_threshold=6.0, after_steps=2000, after_fraction=1.0)
  c.speedup = dict(gamma="fit", num_bootstrap=1000)
  lrs = [1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2, 3.2e-2]
  wds = [0.0, 0.1, 0.2]
  warmups = [500, 1000, 2000]
  adam = dict(grid={"learning_rate": lrs, "weight_decay": wds, "b1": [0.9, 0.95, 0.98],
                    "b2": [0.95, 0.98, 0.99], "warmup_steps": warmups, "grad_clip": [1.0, 2.0]})
  c.optimizers = {
      "adamw": dict(baseline=dict(learning_rate=8e-3, weight_decay=0.1, b1=0.9, b2=0.98,
                                  warmup_steps=1000, grad_clip=1.0), **adam),
      "nadamw": dict(baseline=dict(learning_rate=4e-3, weight_decay=0.1, b1=0.98, b2=0.98,
                                   warmup_steps=1000, grad_clip=1.0), **adam),
      "c_adamw": dict(baseline=dict(learning_rate=8e-3, weight_decay=0.1, b1=0.9, b2=0.98,
                                    warmup_steps=1000, grad_clip=1.0), **adam),
      "mars": dict(baseline=dict(learning_rate=8e-3, weight_decay=0.1, b1=0.95, b2=0.99,
                                 warmup_steps=1000, grad_clip=1.0), **adam),
      # Adam-mini's head counts (q/k blocks) come from the model: the trainer passes them.
      "adam_mini": dict(baseline=dict(learning_rate=8e-3, weight_decay=0.1, b1=0.9, b2=0.98,
                                      warmup_steps=1000, grad_clip=1.0), **adam),
      "lion": dict(baseline=dict(learning_rate=1e-3, weight_decay=0.5, b1=0.9, b2=0.98,
                                 warmup_steps=1000),
                   grid={"learning_rate": [2.5e-4, 5e-4, 1e-3, 2e-3], "weight_decay": [0.1, 0.5, 1.0],
                         "b1": [0.9, 0.95], "b2": [0.98, 0.99], "warmup_steps": warmups}),
      "muon": dict(baseline=dict(learning_rate=1.6e-2, adam_learning_rate=4e-3, beta=0.98,
                                 weight_decay=0.1, warmup_steps=0),
                   grid={"learning_rate": [4e-3, 8e-3, 1.6e-2, 3.2e-2],
                         "adam_learning_rate": [2e-3, 4e-3, 8e-3], "beta": [0.9, 0.95, 0.98],
                         "weight_decay": wds},
                   overrides={"optimizer": {"schedule": {"name": "linear",
                                                         "final_fraction": 0.0}}}),
      # NorMuon: the authors' recommended groups (README of github.com/zichongli5/NorMuon,
      # NorMuonWithAuxAdam): lr 0.02, momentum 0.95, beta2 0.95, weight decay 0.01 on
      # both groups, AdamW lr 3e-4, betas (0.9, 0.95), eps 1e-10 (the factory's defaults);
      # "same values that work for Muon are a good starting point", so Muon's grids.
      "normuon": dict(baseline=dict(learning_rate=2e-2, adam_learning_rate=3e-4, beta=0.95,
                                    beta2=0.95, weight_decay=0.01),
                      grid={"learning_rate": [4e-3, 8e-3, 1.6e-2, 3.2e-2],
                            "adam_learning_rate": [3e-4, 1e-3, 2e-3, 4e-3, 8e-3],
                            "beta": [0.9, 0.95, 0.98], "beta2": [0.9, 0.95, 0.98],
                            "weight_decay": [0.0, 0.01, 0.1]}),
      # AdaMuon: the authors' GPT-2 small run (github.com/Chongjie-Si/AdaMuon,
      # gpt2/config/small.py, models/train.py, models/model.py): one lr 6e-4 for both
      # groups (RMS-aligned), weight decay 0.1, momentum 0.95, AdamW betas (0.9, 0.95),
      # 2000 warmup steps, grad clip 1.0. Their schedule is warmup-then-constant; the
      # study's WSD schedule is kept.
      "adamuon": dict(baseline=dict(learning_rate=6e-4, weight_decay=0.1, beta=0.95,
                                    adam_b1=0.9, adam_b2=0.95, warmup_steps=2000,
                                    grad_clip=1.0),
                      grid={"learning_rate": [6e-4, 1e-3, 2e-3, 4e-3, 8e-3],
                            "weight_decay": wds, "beta": [0.9, 0.95, 0.98],
                            "warmup_steps": warmups}),
      "scion": dict(baseline=dict(learning_rate=8e-3, beta=0.95, weight_decay=0.0, warmup_steps=1000),
                    grid={"learning_rate": lrs, "beta": [0.9, 0.95, 0.98],
                          "warmup_steps": warmups}),
      "soap": dict(baseline=dict(learning_rate=8e-3, b1=0.95, b2=0.99, shampoo_beta=0.95,
                                 precondition_frequency=10, block_size=512, weight_decay=0.1,
                                 warmup_steps=1000),
                   grid={"learning_rate": lrs, "b1": [0.9, 0.95], "b2": [0.95, 0.99],
                         "shampoo_beta": [0.9, 0.95, 0.98], "precondition_frequency": [5, 10, 20],
                         "weight_decay": wds}),
      "kron": dict(baseline=dict(learning_rate=1e-3, weight_decay=0.5, preconditioner_lr=0.2,
                                 min_update_probability=0.1, flat_start_steps=2000,
                                 warmup_steps=1000),
                   grid={"learning_rate": [2.5e-4, 5e-4, 1e-3, 2e-3], "weight_decay": [0.1, 0.5, 1.0],
                         "preconditioner_lr": [0.1, 0.2, 0.4], "warmup_steps": warmups}),
      "sophia": dict(baseline=dict(learning_rate=4e-3, b1=0.95, b2=0.99, rho=0.04, weight_decay=0.1,
                                   warmup_steps=1000),
                     grid={"learning_rate": lrs, "rho": [0.02, 0.04, 0.08], "b2": [0.99, 0.995],
                           "weight_decay": wds}),
      # Dion (Ahn et al. 2025) at the authors' recommended GPT settings
      # (github.com/microsoft/dion configs/dion_160m.yaml: lr 0.02, mu 0.95,
      # weight_decay 0.01, ortho_fraction 0.5, no warmup, linear warmdown over the
      # last 20% -- this preset's WSD; scalar AdamW betas (0.95, 0.98), no decay,
      # same lr: the factory's defaults). Wen et al. did not tune Dion.
      "dion": dict(baseline=dict(learning_rate=2e-2, mu=0.95, rank_fraction=0.5,
                                 weight_decay=0.01, warmup_steps=0),
                   grid={"learning_rate": [5e-3, 1e-2, 2e-2, 4e-2], "mu": [0.9, 0.95, 0.98],
                         "rank_fraction": [0.25, 0.5, 1.0], "weight_decay": [0.0, 0.01, 0.1]}),
  }
  return c
