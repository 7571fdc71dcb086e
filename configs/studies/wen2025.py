"""Wen, Hall, Ma & Liang (2025), "Fantastic Pretraining Optimizers and Where to Find Them".

  python -m trainers.study --config=configs/studies/wen2025.py --workdir=gs://BUCKET/wen2025 \\
      --executor=ray --config.models.130m.overrides.data.path=... (every size: data.path)

Their four Llama-2-style sizes (32 layers, seq 4096, batch 128, WSD with a 20%
linear decay: configs/130m.py ... configs/1_2b.py) at 1, 2, 4 and 8x Chinchilla
(20 tokens per non-embedding parameter, as they count: 130M = 32 x (3 d ffn +
4 d^2) = 134,217,728), their eleven optimizers (and Dion) with the 130M
sweep's baselines and grids (configs/sweeps/wen2025_130m.py). Their phases:

* phase I, a full coordinate descent (threshold 3e-3, an equal cap of 40
  trials per optimizer, budget and size) at 130M and 300M, every budget;
* phases II-III, the best points carried to 520M and 1.2B by fitting each
  hyperparameter as A N^B D^C + E over the tuned cells, then a reduced search
  of the learning rate around the carried value (x0.5, x1, x2; at most 3
  trials), as their phase II re-sweeps only the scale-sensitive ones.

Shorter budgets branch from the longer runs' stable phases (their WSD makes
1/2/4/8x share it), and the report extrapolates speedups to 7B.
"""

from configs.sweeps import wen2025_130m


def get_config():
  c = wen2025_130m.get_config()
  c.name = "wen2025"
  del c["budgets"]
  c.base_config = "configs/130m.py"
  c.models = {"130m": {"preset": "configs/130m.py"}, "300m": {"preset": "configs/300m.py"},
              "520m": {"preset": "configs/520m.py"}, "1_2b": {"preset": "configs/1_2b.py"}}
  c.budgets = {"chinchilla": [1, 2, 4, 8]}
  c.tokens_per_param = 20
  c.param_count = "non_embedding"
  c.batch_sizes = []
  c.plan = dict(tune=["130m", "300m"], transfer="fit", strategy=c.strategy,
                threshold=c.threshold, trial_budget=c.trial_budget,
                local_search={"learning_rate": [0.5, 1.0, 2.0]}, local_trial_budget=3)
  for key in ("strategy", "threshold", "trial_budget"):
    del c[key]
  c.share_stable_phase = True
  c.extrapolate = [7e9]
  return c
