"""Semenov, Pagliardini & Jaggi (2025), "Benchmarking Optimizers for LLM Pretraining": 124M.

  python -m trainers.sweep --config=configs/sweeps/semenov2025_124m.py --workdir=runs/semenov124m

The 124M Llama (configs/124m.py: seq 512, batch 256, warmup 2000, paper_cosine,
clip 0.5, wd 0.1) at their four budgets, 16k/32k/64k/128k steps = 2.1B to
16.8B tokens. Baselines are the paper's best 124M settings (REFERENCE.md
Sec. 1A); the grid sweeps the learning rate around each (x0.5, x1, x2), as
their final sweeps did. Their longer-run finding (larger beta2 for long runs)
is left to a dedicated grid.
"""

import ml_collections


def around(lr):
  return [lr / 2, lr, lr * 2]


def get_config():
  c = ml_collections.ConfigDict()
  c.name = "semenov2025_124m"
  c.base_config = "configs/124m.py"
  c.overrides = {}
  c.evals_per_trial = 16
  c.reference_optimizer = "adamw"
  c.budgets = [16_000, 32_000, 64_000, 128_000]
  c.seeds = [0]
  c.strategy = "grid"
  c.divergence = dict(loss_threshold=6.0, after_steps=2000, after_fraction=1.0)
  c.speedup = dict(gamma="fit", num_bootstrap=1000)
  c.optimizers = {
      "adamw": dict(baseline=dict(b1=0.8, b2=0.999), grid={"learning_rate": around(1e-3)}),
      "adopt": dict(baseline=dict(b1=0.9, b2=0.999), grid={"learning_rate": around(1e-3)}),
      # alpha and b3 warm up over the whole run: set per budget in a dedicated sweep;
      # here the factory defaults apply.
      "ademamix": dict(baseline=dict(b1=0.9, b2=0.999, b3=0.999, alpha=8.0),
                       grid={"learning_rate": around(1e-3)}),
      "lion": dict(baseline=dict(b1=0.9, b2=0.99), grid={"learning_rate": around(1e-3)}),
      "signum": dict(baseline=dict(momentum=0.9), grid={"learning_rate": around(1e-3)}),
      "mars": dict(baseline=dict(b1=0.95, b2=0.99, learning_rate_1d=1e-3, b1_1d=0.8, b2_1d=0.999),
                   grid={"learning_rate": around(3e-3)}),
      "prodigy": dict(baseline=dict(b1=0.9, b2=0.999, use_bias_correction=True),
                      grid={"learning_rate": around(1.0)}),
      "schedule_free_adamw": dict(baseline=dict(b1=0.9, b2=0.9999),
                                  grid={"learning_rate": around(1e-3)},
                                  overrides={"optimizer": {"schedule": {"name": "constant"}}}),
      # Their rho=0.04 multiplies a Hessian scaled by sophia_bs x seq_len = 245,760 tokens of
      # one micro-batch's sampled gradient / acc_steps: 0.234 x the Bartlett scale we use
      # (batch_size = tokens per step, whole batch), so their 0.04 is our 0.0094.
      "sophia": dict(baseline=dict(b1=0.9, b2=0.999, rho=0.0094),
                     grid={"learning_rate": around(1e-3)}),
      "soap": dict(baseline=dict(b1=0.9, b2=0.999, precondition_frequency=10),
                   grid={"learning_rate": around(1e-3)}),
      # Their Muon decays no Muon matrix and decays the AdamW branch (embedding and norms)
      # by 0.1 (all parameters in one group): reproduced here. Our default elsewhere is the
      # uniform rule (matrices decayed, embeddings/norms not; BUILD_NOTES protocol table).
      "muon": dict(baseline=dict(beta=0.95, nesterov=True, ns_steps=5, adam_learning_rate=1e-3,
                                 adam_b1=0.8, adam_b2=0.999, adam_weight_decay=0.1),
                   grid={"learning_rate": around(1e-2)},
                   overrides={"optimizer": {"weight_decay": 0.0}}),
      "d_muon": dict(baseline=dict(beta=0.95, adam_b1=0.8, adam_b2=0.999),
                     grid={"learning_rate": around(1e-3)}),
  }
  return c
