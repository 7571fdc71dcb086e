"""Schedule-free AdamW against a NumPy reference and optax.contrib.schedule_free_adamw."""

import jax
import numpy as np
import optax
import pytest

import optbench_jax.optim as O
from optbench_jax.optim import testing


def reference_sf_adamw(params, grads, lr, b1, b2, eps, wd, power=2.0, warmup=0):
  """The paper's y / z / x recursion; z-steps read the warmup at t-1, weights at t (optax)."""
  schedule = lambda step: lr * min(step / warmup, 1.0) if warmup else lr
  y, treedef = jax.tree.flatten(testing.to_numpy(params))
  z = [a.copy() for a in y]
  x = [a.copy() for a in y]
  v = [np.zeros_like(a) for a in y]
  max_lr, weight_sum = 0.0, 0.0
  out = []
  for t, g_tree in enumerate(testing.to_numpy(grads), start=1):
    max_lr = max(max_lr, schedule(t))
    weight = max_lr**power
    weight_sum += weight
    c = weight / weight_sum if weight_sum > 0 else 0.0
    for i, g in enumerate(jax.tree.leaves(g_tree)):
      v[i] = b2 * v[i] + (1 - b2) * g**2
      u = g / (np.sqrt(v[i] / (1 - b2**t)) + eps)
      z[i] = z[i] - schedule(t - 1) * (u + wd * y[i])
      x[i] = (1 - c) * x[i] + c * z[i]
      y[i] = b1 * x[i] + (1 - b1) * z[i]
    out.append((treedef.unflatten(list(y)), treedef.unflatten(list(x))))
  return out


@pytest.mark.parametrize("warmup", [None, 5])
def test_matches_reference_and_optax(warmup):
  params = testing.make_params()
  grads = testing.make_grads(params, 20)
  kwargs = dict(learning_rate=1e-2, warmup_steps=warmup, b1=0.9, b2=0.99, weight_decay=0.1)
  ours = O.schedule_free_adamw(**kwargs)
  traj = testing.run_trajectory(ours, params, grads)
  testing.assert_trajectory_close(
      traj, testing.run_trajectory(optax.contrib.schedule_free_adamw(**kwargs), params, grads))
  expected = reference_sf_adamw(params, grads, 1e-2, 0.9, 0.99, 1e-8, 0.1, warmup=warmup or 0)
  testing.assert_trajectory_close(traj, [y for y, _ in expected], rtol=1e-5, atol=2e-6)


def test_eval_params_is_the_average_x():
  params = testing.make_params()
  grads = testing.make_grads(params, 20)
  tx = O.schedule_free_adamw(1e-2, b1=0.9, b2=0.99)
  state, y = tx.init(params), params
  update = jax.jit(tx.update)
  for g in grads:
    u, state = update(g, state, y)
    y = optax.apply_updates(y, u)
  expected_x = reference_sf_adamw(params, grads, 1e-2, 0.9, 0.99, 1e-8, 0.0)[-1][1]
  testing.assert_trajectory_close([O.schedule_free_eval_params(state, y)], [expected_x],
                                  rtol=1e-5, atol=2e-6)
  theirs = optax.contrib.schedule_free_eval_params(state, y)
  testing.assert_trajectory_close([O.schedule_free_eval_params(state, y)], [theirs], 1e-7, 1e-7)
  # Also through a chain (gradient clipping first) and inject_hyperparams.
  wrapped = optax.chain(optax.clip_by_global_norm(1.0), optax.inject_hyperparams(
      O.schedule_free_adamw)(learning_rate=1e-2))
  wrapped_state = wrapped.init(params)
  assert jax.tree.map(np.shape, O.schedule_free_eval_params(wrapped_state, params)) == \
      jax.tree.map(np.shape, params)
  with pytest.raises(ValueError, match="ScheduleFreeState"):
    O.schedule_free_eval_params(O.adamw(1e-3).init(params), params)


def test_mask_skips_decay():
  params = testing.make_params()
  grads = testing.make_grads(params, 5)
  mask = O.weight_decay_mask(params, testing.BATCH_AXES)
  masked = testing.run_trajectory(O.schedule_free_adamw(1e-2, weight_decay=0.5, mask=mask),
                                  params, grads)
  plain = testing.run_trajectory(O.schedule_free_adamw(1e-2), params, grads)
  np.testing.assert_allclose(masked[-1]["norm"]["scale"], plain[-1]["norm"]["scale"], rtol=1e-6)
  assert not np.allclose(masked[-1]["dense"]["kernel"], plain[-1]["dense"]["kernel"])


@pytest.mark.parametrize("bad, match", [
    (dict(learning_rate=-1.0), "learning_rate"),
    (dict(b1=0.0), "b1"),
    (dict(b1=1.0), "b1"),
    (dict(b2=1.0), "b2"),
    (dict(eps=0.0), "eps"),
    (dict(weight_decay=-0.1), "weight_decay"),
    (dict(warmup_steps=-1), "warmup_steps"),
    (dict(weight_lr_power=-2.0), "weight_lr_power"),
])
def test_bad_hyperparameters(bad, match):
  with pytest.raises(ValueError, match=match):
    O.schedule_free_adamw(**bad)
