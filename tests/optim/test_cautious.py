"""Cautious wrapper, C-AdamW and C-Lion against NumPy references."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optbench_jax.optim as O
from optbench_jax.optim import testing


def cautious_np(u, g, eps=1e-8):
  mask = (u * g > 0).astype(np.float64)
  return u * mask / max(mask.mean(), eps)


def reference_c_adamw(params, grads, lr, b1, b2, eps, wd):
  flat, treedef = jax.tree.flatten(testing.to_numpy(params))
  m = [np.zeros_like(x) for x in flat]
  v = [np.zeros_like(x) for x in flat]
  out = []
  for t, g_tree in enumerate(testing.to_numpy(grads), start=1):
    for i, g in enumerate(jax.tree.leaves(g_tree)):
      m[i] = b1 * m[i] + (1 - b1) * g
      v[i] = b2 * v[i] + (1 - b2) * g**2
      u = (m[i] / (1 - b1**t)) / (np.sqrt(v[i] / (1 - b2**t)) + eps)
      flat[i] = flat[i] - lr * (cautious_np(u, g) + wd * flat[i])
    out.append(treedef.unflatten(list(flat)))
  return out


def reference_c_lion(params, grads, lr, b1, b2, wd):
  flat, treedef = jax.tree.flatten(testing.to_numpy(params))
  m = [np.zeros_like(x) for x in flat]
  out = []
  for g_tree in testing.to_numpy(grads):
    for i, g in enumerate(jax.tree.leaves(g_tree)):
      u = np.sign(b1 * m[i] + (1 - b1) * g)
      m[i] = b2 * m[i] + (1 - b2) * g
      flat[i] = flat[i] - lr * (cautious_np(u, g) + wd * flat[i])
    out.append(treedef.unflatten(list(flat)))
  return out


def test_c_adamw_matches_reference():
  params = testing.make_params()
  grads = testing.make_grads(params, 20)
  traj = testing.run_trajectory(O.c_adamw(1e-2, b1=0.8, b2=0.99, weight_decay=0.1), params, grads)
  testing.assert_trajectory_close(
      traj, reference_c_adamw(params, grads, 1e-2, 0.8, 0.99, 1e-8, 0.1))
  plain = testing.run_trajectory(O.adamw(1e-2, b1=0.8, b2=0.99, weight_decay=0.1), params, grads)
  assert not np.allclose(traj[-1]["dense"]["kernel"], plain[-1]["dense"]["kernel"])


def test_c_lion_matches_reference():
  params = testing.make_params()
  grads = testing.make_grads(params, 20)
  traj = testing.run_trajectory(O.c_lion(1e-2, b1=0.8, b2=0.95, weight_decay=0.1), params, grads)
  testing.assert_trajectory_close(traj, reference_c_lion(params, grads, 1e-2, 0.8, 0.95, 0.1))


def test_wrapping_a_full_optimizer_uses_the_step_sign():
  """cautious(optax.sgd(lr), inner_is_step=True) keeps coordinates where -lr*g agrees with -g:
  all of them, so it equals SGD; without the flag it would zero every coordinate."""
  params = testing.make_params()
  grads = testing.make_grads(params, 3)
  wrapped = O.cautious(optax.sgd(0.1), inner_is_step=True)
  testing.assert_trajectory_close(testing.run_trajectory(wrapped, params, grads),
                                  testing.run_trajectory(optax.sgd(0.1), params, grads), 0, 0)
  wrong = testing.run_trajectory(O.cautious(optax.sgd(0.1)), params, grads)
  testing.assert_trajectory_close(wrong, [params] * 3, 0, 0)


def test_mask_keeps_aligned_coordinates_and_rescales():
  u = jnp.array([1.0, -2.0, 3.0, -4.0])
  g = jnp.array([1.0, 1.0, 1.0, -1.0])  # aligned: 0, 2, 3
  from optbench_jax.optim.cautious import cautious_mask
  np.testing.assert_allclose(cautious_mask(u, g), [4 / 3, 0.0, 4.0, -16 / 3], rtol=1e-6)


@pytest.mark.parametrize("build, bad, match", [
    (O.c_adamw, dict(learning_rate=-1.0), "learning_rate"),
    (O.c_adamw, dict(learning_rate=1e-3, b1=1.0), "b1"),
    (O.c_adamw, dict(learning_rate=1e-3, eps=-1.0), "eps"),
    (O.c_adamw, dict(learning_rate=1e-3, cautious_eps=0.0), "cautious_eps"),
    (O.c_lion, dict(learning_rate=1e-3, b2=1.0), "b2"),
    (O.c_lion, dict(learning_rate=1e-3, weight_decay=-0.1), "weight_decay"),
])
def test_bad_hyperparameters(build, bad, match):
  with pytest.raises(ValueError, match=match):
    build(**bad)


def test_sign_source_gives_the_same_trajectory_as_masking_the_output():
  # C-AdamW reads Adam's mu for the mask (so XLA need not keep the direction for a
  # second pass); masking the Adam direction itself must give the same trajectory.
  params = testing.make_params()
  grads = testing.make_grads(params, 20)
  by_output = optax.chain(O.cautious(optax.scale_by_adam(b1=0.8, b2=0.99)),
                          optax.add_decayed_weights(0.1), optax.scale(-1e-2))
  by_mu = optax.chain(O.cautious(optax.scale_by_adam(b1=0.8, b2=0.99),
                                 sign_source=lambda state: state.mu),
                      optax.add_decayed_weights(0.1), optax.scale(-1e-2))
  testing.assert_trajectory_close(testing.run_trajectory(by_mu, params, grads),
                                  testing.run_trajectory(by_output, params, grads))
