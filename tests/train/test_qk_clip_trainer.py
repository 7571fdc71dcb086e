"""QK-clip in the trainer's step: composes with AdamW and Muon, the max over micro-batches.

Helpers shared with test_qk_clip_run.py (tau = 0, sharding, metrics.jsonl).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optbench_jax import train
from optbench_jax.train import qk_clip
from tests.train import tiny

H, HKV = 4, 2
NEVER = 1e30     # a tau no logit reaches: the same step and model, the clip a no-op


def _config(tmp_path, tau, name="adamw", accum=1, steps=3):
  config = tiny.micro_config(tmp_path, steps=steps)         # 1 layer: S_h is exact after a clip
  config.model.update(num_heads=H, num_kv_heads=HKV)         # GQA, head_dim 8
  config.optimizer.update(name=name, learning_rate=1e-2, qk_clip_tau=tau)
  config.optimizer.hparams = {}
  config.data.grad_accum_steps = accum
  return config


def _batches(n, seed=0):
  rng = np.random.default_rng(seed)
  for _ in range(n):
    tokens = rng.integers(0, 128, size=(16, 17), dtype=np.int32)
    yield {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}


@functools.lru_cache(maxsize=None)
def _apply(model):
  return jax.jit(lambda params, inputs: model.apply({"params": params}, inputs)[1])


def _max_logits(run, params, inputs):
  return np.asarray(_apply(run.model)(params, inputs)["attn_max_logits"])


def _copy(tree):
  return jax.tree.map(jnp.copy, tree)


@pytest.mark.parametrize("name,accum", [("adamw", 2), ("muon", 1)])
def test_step_is_the_unclipped_step_then_the_clip(name, accum, tmp_path):
  """params_{t+1} = clip(params_t + update_t, S_t), S_t from params_t's forward pass (the max
  over the whole batch = over micro-batches); the optimizer state is not touched."""
  twin = train.build(_config(tmp_path, NEVER, name, accum), tiny.one_device())
  state = twin.create_state(seed=0)
  batches = list(_batches(3))
  s0 = _max_logits(twin, state.params, batches[0]["inputs"])
  # Clips 3 of the 4 heads at step 0; they then sit at tau, and the next updates push some
  # of them over it again.
  tau = float(np.quantile(s0, 0.25))
  run = train.build(_config(tmp_path, tau, name, accum), tiny.one_device())
  assert run.model.report_max_logits and not train.build(
      _config(tmp_path, 0.0), tiny.one_device()).model.report_max_logits

  clipped_later = 0
  for step, batch in enumerate(batches):
    s = _max_logits(run, state.params, batch["inputs"])
    if accum > 1:   # the micro-batches' maxima differ: a mean would not be the max
      micro = np.stack([_max_logits(run, state.params, batch["inputs"][a::accum])
                        for a in range(accum)])
      np.testing.assert_allclose(s, micro.max(0), rtol=1e-6)
      assert np.abs(micro.mean(0) - s).max() > 1e-3 * np.abs(s).max()
    twin_state, _ = twin.train_step(_copy(state), batch)
    state, metrics = run.train_step(state, batch)
    values = metrics.compute()
    assert float(values["qk_clipped_heads"]) == (s > tau).sum()
    np.testing.assert_allclose(values["max_attn_logit"], s.max(), rtol=1e-5)
    want = qk_clip.clip(twin_state.params, jnp.asarray(s), tau, H, HKV)
    for got, ref in zip(jax.tree.leaves(state.params), jax.tree.leaves(want)):
      np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-7)
    for got, ref in zip(jax.tree.leaves(state.opt_state), jax.tree.leaves(twin_state.opt_state)):
      np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-7)
    if step:
      clipped_later += int((s > tau).sum())
    else:   # warmup: lr = 0, so the step is the clip alone; on this batch S <= tau now
      assert float(values["lr"]) == 0.0 and 0 < int((s > tau).sum()) < s.size
      after = _max_logits(run, state.params, batch["inputs"])
      np.testing.assert_allclose(after[s > tau], tau, rtol=1e-5)
      np.testing.assert_allclose(after[s <= tau], s[s <= tau], rtol=1e-5)
  assert clipped_later > 0      # the clip composed with real updates, not only at lr = 0
