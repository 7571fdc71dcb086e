"""Your optimizer against AdamW and Muon on the tiny model: ``tiny_all``'s settings for the three.

  python -m optbench_jax.optim.check examples.my_optimizer:rms_adamw --tree=small
  python -m trainers.sweep --config=examples/sweep_my_optimizer.py --workdir=runs/mine --parallel=2
  python -m optbench_jax.bench.report runs/mine

The optimizer is named by its import path; the sweep checks it against the
optimizer contract before launching anything.
"""

import importlib.util
import os

import ml_collections

MINE = "examples.my_optimizer:rms_adamw"


def _tiny_all():
  path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "configs", "sweeps", "tiny_all.py")
  spec = importlib.util.spec_from_file_location("_tiny_all", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def get_config():
  c = _tiny_all()
  c.name = "my_optimizer_vs_adamw_muon"
  optimizers = {name: c.optimizers[name] for name in ("adamw", "muon")}
  # A unit-RMS update is a sign-like step size: a smaller learning-rate grid than Adam's.
  optimizers[MINE] = dict(baseline=dict(b1=0.9, b2=0.99),
                          grid={"learning_rate": [3e-4, 1e-3, 3e-3]})
  # An import path holds dots, which ConfigDict keys refuse unless asked.
  c.optimizers = ml_collections.ConfigDict(optimizers, allow_dotted_keys=True)
  return c
