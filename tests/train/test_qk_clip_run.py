"""QK-clip in the trainer: tau = 0 is the plain step, sharded = single device, metrics.jsonl."""

import os

import jax
import numpy as np
import optax

from optbench_jax import train
from optbench_jax.models import losses
from optbench_jax.train import metrics as metrics_lib
from tests.train import tiny
from tests.train.test_qk_clip_trainer import NEVER, _batches, _config, _copy, _max_logits


def test_tau_zero_is_the_plain_step_bit_for_bit(tmp_path):
  """With qk_clip_tau = 0 the step is loss -> grads -> tx.update -> apply_updates, unchanged."""
  run = train.build(_config(tmp_path, 0.0), tiny.one_device())
  state = run.create_state(seed=0)
  params, opt_state = _copy(state.params), _copy(state.opt_state)

  @jax.jit
  def plain(params, opt_state, batch):
    def loss_fn(p):
      logits, _ = run.model.apply({"params": p}, batch["inputs"])
      return losses.lm_loss(logits, batch["targets"])[0]
    grads = jax.grad(loss_fn)(params)
    updates, opt_state = run.optimizer.tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  for batch in _batches(3):
    state, metrics = run.train_step(state, batch)
    params, opt_state = plain(params, opt_state, batch)
  assert "max_attn_logit" not in metrics.compute()
  for got, ref in zip(jax.tree.leaves(state.params), jax.tree.leaves(params)):
    np.testing.assert_array_equal(got, ref)


def test_sharded_run_matches_single_device_and_logs_the_clip(tmp_path):
  probe = train.build(_config(tmp_path / "data", NEVER), tiny.one_device())
  first = next(iter(_batches(1)))
  tau = float(np.median(_max_logits(probe, probe.create_state(seed=0).params, first["inputs"])))
  config = _config(tmp_path / "data", tau, steps=2)
  train.run(config, str(tmp_path / "one"), devices=tiny.one_device())
  config.mesh.update(data=2, fsdp=2, tensor=2, expert=1)
  train.run(config, str(tmp_path / "eight"), devices=jax.devices()[:8])
  records = {name: [r for r in metrics_lib.read_records(
      os.path.join(tmp_path, name, "metrics.jsonl")) if "loss" in r] for name in ("one", "eight")}
  assert len(records["one"]) == len(records["eight"]) == 2
  for one, eight in zip(records["one"], records["eight"]):
    assert one["qk_clipped_heads"] == eight["qk_clipped_heads"]
    np.testing.assert_allclose(eight["max_attn_logit"], one["max_attn_logit"], rtol=1e-5)
    np.testing.assert_allclose(eight["loss"], one["loss"], rtol=2e-6)
  assert sum(r["qk_clipped_heads"] for r in records["one"]) > 0
