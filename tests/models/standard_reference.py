"""The standard parametrization's reference: init params, first logits and a 5-step loss curve.

Recorded once, before parametrizations existed, into
``tests/models/data/standard_reference.npz``; ``test_parametrization`` recomputes
it and asserts bit-for-bit equality, so ``model.parametrization='standard'`` is
today's model (same parameter tree, values, forward pass and compiled step).

Re-record only for a deliberate change of the standard model:
``XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m tests.models.standard_reference``.
"""

import os
import tempfile

import jax
import numpy as np

from optbench_jax import models
from optbench_jax.train import assembly
from tests.train import tiny

PATH = os.path.join(os.path.dirname(__file__), "data", "standard_reference.npz")
STEPS = 5
LOGIT_ROWS = 2   # sequences of the first batch whose logits are stored


def micro_configs() -> dict:
  """``{name: trainer config}``: the dense micro model of the trainer tests and an MoE one."""
  dense = tiny.micro_config(tempfile.gettempdir(), steps=STEPS)
  moe = tiny.micro_config(tempfile.gettempdir(), steps=STEPS)
  moe.model.update(kind="moe", num_experts=4, experts_top_k=2)
  return dict(dense=dense, moe=moe)


def batches(config, steps: int = STEPS) -> list[dict]:
  """``steps`` fixed batches of random tokens (inputs, targets = inputs shifted by one)."""
  rng = np.random.default_rng(0)
  shape = (config.data.global_batch_size, config.data.seq_len + 1)
  tokens = [rng.integers(0, config.model.vocab_size, shape, dtype=np.int32) for _ in range(steps)]
  return [dict(inputs=t[:, :-1], targets=t[:, 1:]) for t in tokens]


def compute(name: str, config) -> dict[str, np.ndarray]:
  """``{key: array}``: ``{name}/param/<path>``, ``{name}/logits``, ``{name}/losses``."""
  run = assembly.build(config, devices=tiny.one_device())
  state = run.create_state()
  out = {f"{name}/param/{jax.tree_util.keystr(path)}": np.asarray(leaf)
         for path, leaf in jax.tree_util.tree_flatten_with_path(state.params)[0]}
  data = batches(config)
  logits, _ = models.build_model(run.model_spec).apply(
      {"params": state.params}, data[0]["inputs"][:LOGIT_ROWS])
  out[f"{name}/logits"] = np.asarray(logits)
  losses = []
  for batch in data:
    state, metrics = run.train_step(state, jax.device_put(batch, run.batch_sharding))
    losses.append(float(metrics.compute()["loss"]))
  out[f"{name}/losses"] = np.asarray(losses, np.float64)
  return out


def compute_all() -> dict[str, np.ndarray]:
  out = {}
  for name, config in micro_configs().items():
    out.update(compute(name, config))
  return out


if __name__ == "__main__":
  os.makedirs(os.path.dirname(PATH), exist_ok=True)
  np.savez_compressed(PATH, **compute_all())
  print(f"wrote {PATH}")
