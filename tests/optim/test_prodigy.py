"""Prodigy against a NumPy reference from the paper's equations and optax.contrib.prodigy."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optbench_jax.optim as O
from optbench_jax.optim import testing


def reference_prodigy(params, grads, lr, b1, b2, eps, d0, wd, bias_correction=True,
                      safeguard_warmup=False, coef=1.0):
  flat, treedef = jax.tree.flatten(testing.to_numpy(params))
  x0 = [x.copy() for x in flat]
  m = [np.zeros_like(x) for x in flat]
  v = [np.zeros_like(x) for x in flat]
  s = [np.zeros_like(x) for x in flat]
  b3, d, r = np.sqrt(b2), d0, 0.0
  out = []
  for t, g_tree in enumerate(testing.to_numpy(grads), start=1):
    g = jax.tree.leaves(g_tree)
    eta = lr(t - 1) if callable(lr) else lr
    bc = np.sqrt(1 - b2**t) / (1 - b1**t) if bias_correction else 1.0
    d_lr = d * eta * bc
    r = b3 * r + (d / d0) * d_lr * sum(np.sum(gi * (a - b)) for gi, a, b in zip(g, x0, flat))
    for i, gi in enumerate(g):
      m[i] = b1 * m[i] + (1 - b1) * d * gi
      v[i] = b2 * v[i] + (1 - b2) * (d * gi) ** 2
      s[i] = b3 * s[i] + ((d if safeguard_warmup else d_lr) / d0) * d * gi
    d_new = max(d, coef * r / sum(np.sum(np.abs(si)) for si in s))
    for i in range(len(flat)):
      flat[i] = flat[i] - d_lr * (m[i] / (np.sqrt(v[i]) + d_new * eps) + wd * flat[i])
    d = d_new
    out.append(treedef.unflatten(list(flat)))
  return out


def test_matches_reference_and_optax():
  params = testing.make_params()
  grads = testing.make_grads(params, 25)
  traj = testing.run_trajectory(O.prodigy(1.0, b1=0.9, b2=0.999, weight_decay=0.1), params, grads)
  theirs = optax.contrib.prodigy(1.0, betas=(0.9, 0.999), weight_decay=0.1)
  testing.assert_trajectory_close(traj, testing.run_trajectory(theirs, params, grads))
  expected = reference_prodigy(params, grads, 1.0, 0.9, 0.999, 1e-8, 1e-6, 0.1)
  testing.assert_trajectory_close(traj, expected)


def test_step_size_estimate_grows():
  """On f(x) = |x|^2 / 2 (gradient x) d rises from d0 by >= two orders of magnitude, monotonically."""
  params = testing.make_params()
  tx = O.prodigy(1.0)
  state, update = tx.init(params), jax.jit(tx.update)
  estimates = []
  for _ in range(20):
    u, state = update(params, state, params)
    params = optax.apply_updates(params, u)
    estimates.append(float(state[0].estim_lr))
  assert all(b >= a for a, b in zip(estimates, estimates[1:]))
  assert estimates[-1] > 100 * 1e-6


def test_schedule_and_safeguard_match_optax():
  params = testing.make_params()
  grads = testing.make_grads(params, 20)
  schedule = optax.linear_schedule(1.0, 0.2, 20)
  ours = O.prodigy(schedule, b1=0.8, b2=0.99, safeguard_warmup=True, estim_lr_coef=0.5)
  theirs = optax.contrib.prodigy(schedule, betas=(0.8, 0.99), safeguard_warmup=True,
                                 estim_lr_coef=0.5)
  traj = testing.run_trajectory(ours, params, grads)
  testing.assert_trajectory_close(traj, testing.run_trajectory(theirs, params, grads))
  testing.assert_trajectory_close(
      traj, reference_prodigy(params, grads, schedule, 0.8, 0.99, 1e-8, 1e-6, 0.0,
                              safeguard_warmup=True, coef=0.5))


def test_without_bias_correction_matches_reference():
  params = testing.make_params()
  grads = testing.make_grads(params, 20)
  traj = testing.run_trajectory(O.prodigy(1.0, use_bias_correction=False), params, grads)
  testing.assert_trajectory_close(
      traj, reference_prodigy(params, grads, 1.0, 0.9, 0.999, 1e-8, 1e-6, 0.0, False))


def test_weight_decay_mask():
  params = testing.make_params()
  grads = testing.make_grads(params, 5)
  mask = O.weight_decay_mask(params, testing.BATCH_AXES)
  masked = testing.run_trajectory(O.prodigy(1.0, weight_decay=0.5, mask=mask), params, grads)
  plain = testing.run_trajectory(O.prodigy(1.0, weight_decay=0.0), params, grads)
  decayed = testing.run_trajectory(O.prodigy(1.0, weight_decay=0.5), params, grads)
  np.testing.assert_allclose(masked[-1]["norm"]["scale"], plain[-1]["norm"]["scale"], rtol=1e-6)
  np.testing.assert_allclose(masked[-1]["dense"]["kernel"], decayed[-1]["dense"]["kernel"],
                             rtol=1e-6)


@pytest.mark.parametrize("bad, match", [
    (dict(learning_rate=-1.0), "learning_rate"),
    (dict(b1=1.0), "b1"),
    (dict(b2=-0.1), "b2"),
    (dict(beta3=1.0), "beta3"),
    (dict(eps=0.0), "eps"),
    (dict(estim_lr0=0.0), "estim_lr0"),
    (dict(estim_lr_coef=-1.0), "estim_lr_coef"),
    (dict(weight_decay=-0.1), "weight_decay"),
])
def test_bad_hyperparameters(bad, match):
  with pytest.raises(ValueError, match=match):
    O.prodigy(**bad)


def test_zero_learning_rate_at_start_keeps_d_finite():
  """A warmup that starts at lr 0 must not turn the d estimate into 0/0 = NaN."""
  params = testing.make_params()
  grads = testing.make_grads(params, 6)
  tx = O.prodigy(learning_rate=O.schedules.cosine(1.0, total_steps=10, warmup_steps=2))
  traj = testing.run_trajectory(tx, params, grads)
  for p in traj:
    for leaf in jax.tree.leaves(p):
      assert bool(jnp.all(jnp.isfinite(leaf)))
  assert not all(bool(jnp.all(a == b)) for a, b in zip(jax.tree.leaves(traj[-1]),
                                                       jax.tree.leaves(params)))
