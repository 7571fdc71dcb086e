"""ADOPT against a NumPy reference from the paper's equations and optax.contrib.adopt."""

import jax
import numpy as np
import optax
import pytest

import optbench_jax.optim as O
from optbench_jax.optim import testing


def reference_adopt(params, grads, lr, b1, b2, eps, wd, nesterov=False):
  flat, treedef = jax.tree.flatten(testing.to_numpy(params))
  m = [np.zeros_like(x) for x in flat]
  v = [np.zeros_like(x) for x in flat]
  out = []
  for t, g_tree in enumerate(testing.to_numpy(grads)):  # t = earlier steps
    for i, g in enumerate(jax.tree.leaves(g_tree)):
      if t == 0:  # step 1 only initialises v (and decays the weights)
        v[i] = g**2
        flat[i] = flat[i] - lr * wd * flat[i]
        continue
      n = np.clip(g / np.maximum(np.sqrt(v[i]), eps), -t**0.25, t**0.25)
      m[i] = b1 * m[i] + (1 - b1) * n
      u = b1 * m[i] + (1 - b1) * n if nesterov else m[i]
      flat[i] = flat[i] - lr * (u + wd * flat[i])
      v[i] = b2 * v[i] + (1 - b2) * g**2
    out.append(treedef.unflatten(list(flat)))
  return out


@pytest.mark.parametrize("nesterov", [False, True])
def test_matches_reference_and_optax(nesterov):
  params = testing.make_params()
  grads = testing.make_grads(params, 20)
  kwargs = dict(learning_rate=1e-2, b1=0.8, b2=0.99, eps=1e-6)
  traj = testing.run_trajectory(O.adopt(**kwargs, weight_decay=0.0, nesterov=nesterov),
                                params, grads)
  theirs = testing.run_trajectory(optax.contrib.adopt(**kwargs, nesterov=nesterov), params, grads)
  testing.assert_trajectory_close(traj, theirs, 0, 0)
  testing.assert_trajectory_close(
      traj, reference_adopt(params, grads, 1e-2, 0.8, 0.99, 1e-6, 0.0, nesterov))


def test_weight_decay_matches_reference():
  params = testing.make_params()
  grads = testing.make_grads(params, 20)
  traj = testing.run_trajectory(O.adopt(1e-2, b1=0.9, b2=0.999, weight_decay=0.1), params, grads)
  testing.assert_trajectory_close(
      traj, reference_adopt(params, grads, 1e-2, 0.9, 0.999, 1e-6, 0.1))
  # The first step is weight decay only (the ADOPT update is zero).
  np.testing.assert_allclose(traj[0]["dense"]["kernel"], params["dense"]["kernel"] * (1 - 1e-3),
                             rtol=1e-6)


@pytest.mark.parametrize("bad, match", [
    (dict(learning_rate=-1e-3), "learning_rate"),
    (dict(learning_rate=float("nan")), "learning_rate"),
    (dict(learning_rate=1e-3, b1=1.0), "b1"),
    (dict(learning_rate=1e-3, b2=1.5), "b2"),
    (dict(learning_rate=1e-3, eps=0.0), "eps"),
    (dict(learning_rate=1e-3, weight_decay=-0.1), "weight_decay"),
])
def test_bad_hyperparameters(bad, match):
  with pytest.raises(ValueError, match=match):
    O.adopt(**bad)
