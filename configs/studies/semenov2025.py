"""Semenov, Pagliardini & Jaggi (2025), "Benchmarking Optimizers for LLM Pretraining".

  python -m trainers.study --config=configs/studies/semenov2025.py --workdir=gs://BUCKET/semenov \\
      --executor=ray --config.overrides.data.path=...

Their sizes, dense and MoE (configs/124m.py, 210m.py, 720m.py at 1M tokens per
step, moe_520m.py: 8 experts, top-2), each tuned at every duration (they tune
per size, no transfer), with the 124M sweep's baselines and learning-rate grids
(x0.5, x1, x2 around their best: configs/sweeps/semenov2025_124m.py). Durations
4.2B, 8.4B and 16.8B tokens (32k-128k steps at 124M; the 2.1B run of 124M
would not outlast the 720M's 2000 warmup steps). Their batch-size study is
the 124M at 128, 256 and 512 sequences. Their cosine schedule shares little
more than the warmup between durations, so every trial trains from scratch.
"""

from configs.sweeps import semenov2025_124m


def get_config():
  c = semenov2025_124m.get_config()
  c.name = "semenov2025"
  del c["budgets"]
  c.models = {"124m": {"preset": "configs/124m.py", "batch_sizes": [128, 256, 512]},
              "210m": {"preset": "configs/210m.py"},
              "720m": {"preset": "configs/720m.py"},
              "moe_520m": {"preset": "configs/moe_520m.py"}}
  c.budgets = {"tokens": [4.2e9, 8.4e9, 16.8e9]}
  c.param_count = "total"
  c.batch_sizes = []
  c.plan = dict(tune=["124m", "210m", "720m", "moe_520m"], transfer="same",
                strategy=c.strategy, threshold=3e-3, trial_budget=0)
  del c["strategy"]
  c.share_stable_phase = True
  c.speedup = dict(gamma="fit", num_bootstrap=1000)
  c.extrapolate = [1.3e9, 7e9]
  return c
