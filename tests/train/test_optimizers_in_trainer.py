"""Every registered optimizer runs 3 steps of the trainer's own step on a tiny model."""

import jax
import numpy as np
import pytest

from optbench_jax import models
from optbench_jax import optim as O
from optbench_jax import train
from optbench_jax.train import optimizer as optimizer_lib
from optbench_jax.train import step as step_lib
from tests.train import tiny


@pytest.mark.parametrize("name", O.registry.builtin_names())
def test_optimizer_runs_three_trainer_steps(name, tmp_path):
  config = tiny.micro_config(tmp_path, steps=3)
  config.optimizer.update(name=name, learning_rate=1e-3)
  config.optimizer.hparams = {}
  if name == "sophia":
    config.optimizer.hparams = dict(update_interval=2)
  if name == "schedule_free_adamw":      # it applies its own warmup, with no decay
    config.optimizer.schedule.name = "constant"
  run = train.build(config, tiny.one_device())
  state, train_step, batch_sharding = run.create_state(seed=0), run.train_step, run.batch_sharding
  rng = np.random.default_rng(0)
  first_params = jax.device_get(state.params)
  losses = []
  for _ in range(3):
    tokens = rng.integers(0, 128, size=(16, 17), dtype=np.int32)
    batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}
    state, metrics = train_step(state, jax.device_put(batch, batch_sharding))
    losses.append(float(metrics.compute()["loss"]))
  assert int(state.step) == 3
  assert np.all(np.isfinite(losses)), losses
  moved = [not np.array_equal(a, b) for a, b in
           zip(jax.tree.leaves(first_params), jax.tree.leaves(jax.device_get(state.params)))]
  assert any(moved), f"{name} did not change the parameters"
  evaluated = optimizer_lib.eval_params(state.opt_state, state.params)
  assert jax.tree.structure(evaluated) == jax.tree.structure(state.params)


def test_sophia_gets_the_tokens_per_step_as_its_batch_size(tmp_path, monkeypatch):
  """Sophia-G's estimate is scaled by the tokens the sampled-label loss averages over."""
  config = tiny.micro_config(tmp_path, steps=3)
  config.optimizer.update(name="sophia", learning_rate=1e-3)
  config.optimizer.hparams = {}
  seen = tiny.spy_on_factory(monkeypatch, "sophia")
  train.build(config, tiny.one_device())
  assert seen["batch_size"] == config.data.global_batch_size * config.data.seq_len


def _train_sophia(tmp_path, monkeypatch, steps: int, **hparams) -> list[int]:
  """Runs Sophia through the trainer's build; returns the steps whose sampled-label
  gradient (the Hessian estimate's input) was computed."""
  computed = []
  real = step_lib.make_sampled_label_loss

  def counting(model):
    loss_fn = real(model)

    def wrapped(params, batch, key):
      jax.debug.callback(lambda: computed.append(len(seen_steps)))
      return loss_fn(params, batch, key)
    return wrapped

  monkeypatch.setattr(step_lib, "make_sampled_label_loss", counting)
  config = tiny.micro_config(tmp_path, steps=steps)
  config.optimizer.update(name="sophia", learning_rate=1e-3)
  config.optimizer.hparams = dict(hparams)
  run = train.build(config, tiny.one_device())
  state, seen_steps = run.create_state(seed=0), []
  rng = np.random.default_rng(0)
  for _ in range(steps):
    tokens = rng.integers(0, 128, size=(16, 17), dtype=np.int32)
    batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}
    state, metrics = run.train_step(state, jax.device_put(batch, run.batch_sharding))
    jax.effects_barrier()
    seen_steps.append(float(metrics.compute()["loss"]))
  assert np.all(np.isfinite(seen_steps))
  return computed


@pytest.mark.parametrize("interval,expected", [(2, [0, 2, 4]), (3, [0, 3])])
def test_sophia_interval_decides_when_the_trainer_computes_hessian_grads(
    interval, expected, tmp_path, monkeypatch):
  """The update interval lives in Sophia alone: it calls the trainer's callback on refresh steps."""
  assert _train_sophia(tmp_path, monkeypatch, 5, update_interval=interval) == expected


def test_sophia_h_trains_in_the_trainer(tmp_path, monkeypatch):
  """Sophia-H takes Hessian-vector products of the trainer's obj_fn; no sampled labels."""
  assert _train_sophia(tmp_path, monkeypatch, 3, estimator="hutchinson",
                       update_interval=2) == []
