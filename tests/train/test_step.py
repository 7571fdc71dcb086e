"""train/step.py: the step's norms are those of the gradient and of the applied update."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optbench_jax import train
from optbench_jax.train import step as step_lib
from tests.train import tiny


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_norms_are_of_the_gradient_and_of_the_update_the_optimizer_returned(tmp_path, optimizer):
  config = tiny.micro_config(tmp_path)
  config.optimizer.name = optimizer
  config.optimizer.learning_rate = 3e-2
  config.optimizer.schedule.update(name="constant", warmup_steps=0)   # a non-zero first step
  run = train.build(config, tiny.one_device())
  state = run.create_state(seed=0)
  tokens = np.random.default_rng(0).integers(0, 128, size=(16, 17), dtype=np.int32)
  batch = {"inputs": jnp.asarray(tokens[:, :-1]), "targets": jnp.asarray(tokens[:, 1:])}
  # The expected values, computed directly (the step's state is donated: copy first).
  params, opt_state = jax.tree.map(jnp.copy, (state.params, state.opt_state))
  loss_fn = step_lib.make_loss_fn(run.model, config.model.z_loss)
  grads = jax.grad(lambda p: loss_fn(p, batch)[0])(params)
  updates, _ = run.optimizer.tx.update(grads, opt_state, params)

  new_state, metrics = run.train_step(state, batch)
  values = metrics.compute()
  np.testing.assert_allclose(values["grad_norm"], optax.tree.norm(grads), rtol=1e-5)
  np.testing.assert_allclose(values["update_norm"], optax.tree.norm(updates), rtol=1e-4)
  applied = jax.tree.map(lambda a, b: np.asarray(a, np.float64) - np.asarray(b, np.float64),
                         new_state.params, params)
  np.testing.assert_allclose(values["update_norm"], optax.tree.norm(applied), rtol=1e-5)
  assert float(values["update_norm"]) > 0
