"""Every registered optimizer runs 3 steps of the trainer's own step on a tiny model."""

import jax
import numpy as np
import pytest

from optbench_jax import models
from optbench_jax import optim as O
from optbench_jax.train import mesh as mesh_lib
from optbench_jax.train import optimizer as optimizer_lib
from optbench_jax.train import state as state_lib
from optbench_jax.train import step as step_lib
from tests.train import tiny


@pytest.mark.parametrize("name", O.names())
def test_optimizer_runs_three_trainer_steps(name, tmp_path):
  config = tiny.micro_config(tmp_path, steps=3)
  config.optimizer.update(name=name, learning_rate=1e-3)
  config.optimizer.hparams = {}
  if name == "sophia":
    config.optimizer.hparams = dict(update_interval=2)
  mesh = mesh_lib.make_mesh(config.mesh, tiny.one_device())
  abstract_params = models.abstract_params(config.model)
  optimizer = optimizer_lib.build(config, abstract_params,
                                  models.param_batch_axes(abstract_params))
  abstract = state_lib.abstract_state(config.model, optimizer.tx)
  shardings = state_lib.state_shardings(config.model, abstract, mesh)
  state = state_lib.create_sharded_state(config.model, optimizer.tx, shardings, seed=0)
  batch_sharding = models.sharding.batch_sharding(mesh)
  model = models.build_model(config.model, mesh=mesh)
  train_step = step_lib.make_train_step(model, optimizer, config, mesh, shardings,
                                        batch_sharding)
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
  evaluated = optimizer_lib.eval_params(optimizer, state.opt_state, state.params)
  assert jax.tree.structure(evaluated) == jax.tree.structure(state.params)


def test_sophia_gets_the_tokens_per_step_as_its_batch_size(tmp_path, monkeypatch):
  """Sophia-G's estimate is scaled by the tokens the sampled-label loss averages over."""
  config = tiny.micro_config(tmp_path, steps=3)
  config.optimizer.update(name="sophia", learning_rate=1e-3)
  config.optimizer.hparams = {}
  seen = {}
  real_create = O.create

  def spy(name, **kwargs):
    seen.update(kwargs)
    return real_create(name, **kwargs)

  monkeypatch.setattr(optimizer_lib.O, "create", spy)
  abstract_params = models.abstract_params(config.model)
  optimizer_lib.build(config, abstract_params, models.param_batch_axes(abstract_params))
  assert seen["batch_size"] == config.data.global_batch_size * config.data.seq_len
