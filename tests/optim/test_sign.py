"""Lion and Signum against NumPy references and optax.lion / optax.signum."""

import jax
import numpy as np
import optax
import pytest

import optbench_jax.optim as O
from optbench_jax.optim import testing


def reference_lion(params, grads, lr, b1, b2, wd):
  flat, treedef = jax.tree.flatten(testing.to_numpy(params))
  m = [np.zeros_like(x) for x in flat]
  out = []
  for g_tree in testing.to_numpy(grads):
    for i, g in enumerate(jax.tree.leaves(g_tree)):
      u = np.sign(b1 * m[i] + (1 - b1) * g)
      m[i] = b2 * m[i] + (1 - b2) * g
      flat[i] = flat[i] - lr * (u + wd * flat[i])
    out.append(treedef.unflatten(list(flat)))
  return out


def reference_signum(params, grads, lr, momentum, nesterov, wd):
  """Sum-form heavy ball (torch SGD buffer) starting at zero; the update is its sign."""
  flat, treedef = jax.tree.flatten(testing.to_numpy(params))
  buf = [np.zeros_like(x) for x in flat]
  out = []
  for g_tree in testing.to_numpy(grads):
    for i, g in enumerate(jax.tree.leaves(g_tree)):
      buf[i] = momentum * buf[i] + g
      u = np.sign(g + momentum * buf[i]) if nesterov else np.sign(buf[i])
      flat[i] = flat[i] - lr * (u + wd * flat[i])
    out.append(treedef.unflatten(list(flat)))
  return out


def test_lion_matches_reference_and_optax():
  params = testing.make_params()
  grads = testing.make_grads(params, 20)
  kwargs = dict(learning_rate=1e-2, b1=0.8, b2=0.95, weight_decay=0.1)
  traj = testing.run_trajectory(O.lion(**kwargs), params, grads)
  testing.assert_trajectory_close(
      traj, testing.run_trajectory(optax.lion(**kwargs), params, grads), 0, 0)
  testing.assert_trajectory_close(traj, reference_lion(params, grads, 1e-2, 0.8, 0.95, 0.1))


@pytest.mark.parametrize("nesterov", [False, True])
def test_signum_matches_reference(nesterov):
  params = testing.make_params()
  grads = testing.make_grads(params, 20)
  traj = testing.run_trajectory(O.signum(1e-2, momentum=0.9, nesterov=nesterov,
                                         weight_decay=0.1), params, grads)
  testing.assert_trajectory_close(
      traj, reference_signum(params, grads, 1e-2, 0.9, nesterov, 0.1))


def test_signum_matches_optax_and_starts_at_zero():
  params = testing.make_params()
  grads = testing.make_grads(params, 20)
  traj = testing.run_trajectory(O.signum(1e-2, momentum=0.9), params, grads)
  testing.assert_trajectory_close(
      traj, testing.run_trajectory(optax.signum(1e-2, beta=0.9), params, grads), 0, 0)
  # Momentum starts at zero: the first step is exactly -lr * sign(g_1).
  np.testing.assert_allclose(
      traj[0]["dense"]["kernel"],
      params["dense"]["kernel"] - 1e-2 * np.sign(grads[0]["dense"]["kernel"]), rtol=1e-6)


@pytest.mark.parametrize("build, bad, match", [
    (O.lion, dict(learning_rate=-1e-3), "learning_rate"),
    (O.lion, dict(learning_rate=1e-3, b1=1.0), "b1"),
    (O.lion, dict(learning_rate=1e-3, b2=-0.5), "b2"),
    (O.lion, dict(learning_rate=1e-3, weight_decay=-1.0), "weight_decay"),
    (O.signum, dict(learning_rate=float("inf")), "learning_rate"),
    (O.signum, dict(learning_rate=1e-3, momentum=1.0), "momentum"),
    (O.signum, dict(learning_rate=1e-3, weight_decay=-1.0), "weight_decay"),
])
def test_bad_hyperparameters(build, bad, match):
  with pytest.raises(ValueError, match=match):
    build(**bad)
