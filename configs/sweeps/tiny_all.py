"""Every registered optimizer on the tiny model, CPU, about 30 minutes on 2 cores.

  python -m trainers.sweep --config=configs/sweeps/tiny_all.py --workdir=runs/tiny_all --parallel=2 \
      --trial_timeout_s=600
  python -m optbench_jax.bench.report runs/tiny_all

Per optimizer: a 3-point learning-rate grid at 50 steps (the other
hyperparameters at the paper settings of REFERENCE.md, Semenov et al. 2025,
with tiny-model learning rates), extended by up to 3 more learning rates
beyond whichever edge the best one sits at (``edge_extension``), then the
best point at 100 steps (transfer): 4 to 7 trials per optimizer (Muon and
NorMuon, AdamH and MuonH sweep their Adam-branch learning rate too). The second budget is what
the AdamW L(D) fit needs;
gamma is fixed to the synthetic corpus's entropy floor, so two budgets
suffice. One seed: the speedup interval is degenerate (add seeds for one).
A smoke-scale comparison: 50-100 steps of a 164k-parameter model rank
optimizers by early progress, not by what they do at scale.
"""

import ml_collections

ADAM_LRS = [1e-3, 3e-3, 1e-2]
SIGN_LRS = [1e-4, 3e-4, 1e-3]      # sign updates have unit-size entries: ~10x smaller lr


def get_config():
  c = ml_collections.ConfigDict()
  c.name = "tiny_all"
  c.base_config = "configs/tiny.py"
  c.overrides = {
      "optimizer": {"schedule": {"warmup_steps": 5}},
      "train": {"log_every": 5, "eval_batches": 4, "checkpoint_every": 50},
      "data": {"synthetic_val_tokens": 40_000},
  }
  c.evals_per_trial = 5
  c.reference_optimizer = "adamw"
  c.budgets = [50, 100]
  c.tune_budgets = [50]
  c.seeds = [0]
  c.strategy = "grid"
  # At 50-100 steps the largest stable lr tends to win; a best lr at a grid edge
  # is followed past it (half a decade per step) instead of being reported as is.
  c.edge_extension = {"learning_rate": 3, "adam_learning_rate": 3}
  # ln(512) = 6.24 at init: a run still above 6.0 after 60% of its steps has not learned.
  c.divergence = dict(loss_threshold=6.0, after_steps=2000, after_fraction=0.6)
  c.speedup = dict(gamma="loss_floor", num_bootstrap=200)
  adam = dict(b1=0.9, b2=0.99)
  c.optimizers = {
      "adamw": dict(baseline=adam, grid={"learning_rate": ADAM_LRS}),
      "nadamw": dict(baseline=adam, grid={"learning_rate": ADAM_LRS}),
      "adopt": dict(baseline=dict(b1=0.9, b2=0.999), grid={"learning_rate": ADAM_LRS}),
      "ademamix": dict(baseline=dict(b1=0.9, b2=0.999, b3=0.999, alpha=8.0),
                       grid={"learning_rate": ADAM_LRS}),
      "lion": dict(baseline=dict(b1=0.9, b2=0.99), grid={"learning_rate": SIGN_LRS}),
      "signum": dict(baseline=dict(momentum=0.9), grid={"learning_rate": SIGN_LRS}),
      "mars": dict(baseline=dict(b1=0.95, b2=0.99), grid={"learning_rate": ADAM_LRS}),
      "c_adamw": dict(baseline=adam, grid={"learning_rate": ADAM_LRS}),
      "c_lion": dict(baseline=dict(b1=0.9, b2=0.99), grid={"learning_rate": SIGN_LRS}),
      # Adam-mini's head counts (q/k blocks) come from the model: the trainer passes them.
      "adam_mini": dict(baseline=dict(b1=0.9, b2=0.99),
                        grid={"learning_rate": ADAM_LRS}),
      "prodigy": dict(baseline=dict(b1=0.9, b2=0.999), grid={"learning_rate": [0.5, 1.0, 2.0]}),
      "schedule_free_adamw": dict(baseline=dict(b1=0.9, b2=0.999),
                                  grid={"learning_rate": ADAM_LRS},
                                  overrides={"optimizer": {"schedule": {"name": "constant"}}}),
      # Muon's embeddings, head and vectors train with AdamW at adam_learning_rate: a
      # second learning rate, tuned on its own 3-point grid (9 grid points in all). Held
      # at 3e-3 while AdamW's best lr was 3.3e-2, Muon came last (3.34 vs 2.42 at 50 steps).
      "muon": dict(baseline=dict(beta=0.95),
                   grid={"learning_rate": [3e-3, 1e-2, 3e-2],
                         "adam_learning_rate": [3e-3, 1e-2, 3e-2]}),
      "d_muon": dict(baseline=dict(beta=0.95), grid={"learning_rate": ADAM_LRS}),
      # NorMuon keeps Muon's update norm and lr scale (the authors' code), so it gets
      # Muon's two grids; betas at the authors' defaults (0.95, 0.95).
      "normuon": dict(baseline=dict(beta=0.95, beta2=0.95),
                      grid={"learning_rate": [3e-3, 1e-2, 3e-2],
                            "adam_learning_rate": [3e-3, 1e-2, 3e-2]}),
      # AdaMuon's update RMS is AdamW's (0.2): one lr for both branches, as in the paper.
      "adamuon": dict(baseline=dict(beta=0.95), grid={"learning_rate": ADAM_LRS}),
      # Conda: the authors' betas (0.9, 0.99) and scale 0.25; their SVD gap of 2000 is
      # 10% of a 20k-step LLaMA run, here 10 steps of 50-100. The 0.25 scale makes
      # the matrix steps 4x smaller than AdamW's at the same lr: grid one notch up.
      "conda": dict(baseline=dict(b1=0.9, b2=0.99, scale=0.25, update_proj_gap=10),
                    grid={"learning_rate": [3e-3, 1e-2, 3e-2]}),
      "scion": dict(baseline=dict(beta=0.9), grid={"learning_rate": ADAM_LRS}),
      "soap": dict(baseline=dict(b1=0.9, b2=0.99, precondition_frequency=10),
                   grid={"learning_rate": ADAM_LRS}),
      # init_scale=None: Q's initial scale from the first gradient (psgd_jax); with the
      # default 1.0 Kron barely moves in 50 steps (every trial stopped at ln(512)).
      "kron": dict(baseline=dict(b1=0.9, init_scale=None),
                   grid={"learning_rate": [3e-4, 1e-3, 3e-3]}),
      "sophia": dict(baseline=dict(b1=0.9, b2=0.99, rho=0.04),
                     grid={"learning_rate": [3e-4, 1e-3, 3e-3]}),
      # Dion (microsoft/dion configs/dion_160m.yaml): mu 0.95, rank 1/2; its AdamW
      # branch takes the same lr (adam_learning_rate=None), as in the reference.
      "dion": dict(baseline=dict(mu=0.95, rank_fraction=0.5),
                   grid={"learning_rate": [3e-3, 1e-2, 3e-2]}),
      # SPlus (kvfrans/splus experiments: b1 0.9, b2 0.95, lr ~0.1-1). The paper's
      # EMA (0.999) and refresh interval (100) are 10% and 1% of its 10k-step runs;
      # at 50-100 steps 0.999 would average back to the initialisation and 100 would
      # keep the first step's basis, so both are scaled to the budget.
      "splus": dict(baseline=dict(b1=0.9, b2=0.95, ema_rate=0.9, inverse_every=10),
                    grid={"learning_rate": [0.1, 0.3, 1.0]}),
      # Hyperball: learning_rate is the sphere's step relative to each matrix's norm (the
      # authors' 130M runs: 0.02, Adam 0.008, betas (0.9, 0.98)); embeddings and norms train
      # with Adam at adam_learning_rate, tuned on Muon's grid.
      "adamh": dict(baseline=dict(b1=0.9, b2=0.98),
                    grid={"learning_rate": [0.01, 0.03, 0.1],
                          "adam_learning_rate": [3e-3, 1e-2, 3e-2]}),
      "muonh": dict(baseline=dict(beta=0.95, b1=0.9, b2=0.98),
                    grid={"learning_rate": [0.01, 0.03, 0.1],
                          "adam_learning_rate": [3e-3, 1e-2, 3e-2]}),
  }
  return c
