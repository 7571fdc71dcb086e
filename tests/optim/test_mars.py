"""MARS (AdamW and Lion variants) against a NumPy reference from the paper's equations."""

import jax
import numpy as np
import pytest

import optbench_jax.optim as O
from optbench_jax.optim import testing

# make_params leaves in tree order: dense/kernel (matrix), layers/kernel (3 stacked
# matrices), norm/scale (vector).
N_BATCH = [0, 1, None]


def clip_per_matrix(c, n_batch):
  axes = tuple(range(n_batch, c.ndim))
  norm = np.sqrt(np.sum(c**2, axis=axes, keepdims=True))
  return c / np.maximum(norm, 1.0)


def reference_mars(params, grads, lr, b1, b2, eps, gamma, wd, variant, lr_1d, b1_1d, b2_1d):
  flat, treedef = jax.tree.flatten(testing.to_numpy(params))
  m = [np.zeros_like(x) for x in flat]
  v = [np.zeros_like(x) for x in flat]
  prev = [None] * len(flat)
  out = []
  for t, g_tree in enumerate(testing.to_numpy(grads), start=1):
    for i, g in enumerate(jax.tree.leaves(g_tree)):
      if N_BATCH[i] is None:  # vector: AdamW with the 1-D betas and learning rate
        m[i] = b1_1d * m[i] + (1 - b1_1d) * g
        v[i] = b2_1d * v[i] + (1 - b2_1d) * g**2
        u = (m[i] / (1 - b1_1d**t)) / (np.sqrt(v[i] / (1 - b2_1d**t)) + eps)
        flat[i] = flat[i] - lr_1d * (u + wd * flat[i])
        continue
      g_prev = g if prev[i] is None else prev[i]  # x_0 = x_1: no correction at step 1
      c = clip_per_matrix(g + gamma * b1 / (1 - b1) * (g - g_prev), N_BATCH[i])
      prev[i] = g
      m[i] = b1 * m[i] + (1 - b1) * c
      if variant == "lion":
        u = np.sign(m[i])
      else:
        v[i] = b2 * v[i] + (1 - b2) * c**2
        u = (m[i] / (1 - b1**t)) / (np.sqrt(v[i] / (1 - b2**t)) + eps)
      flat[i] = flat[i] - lr * (u + wd * flat[i])
    out.append(treedef.unflatten(list(flat)))
  return out


@pytest.mark.parametrize("variant", ["adamw", "lion"])
def test_matches_reference(variant):
  params = testing.make_params()
  # Gradients of norm ~ 0.3 per matrix so that both sides of the unit-norm clip occur.
  grads = [jax.tree.map(lambda g: 0.15 * g, g) for g in testing.make_grads(params, 20)]
  grads[3] = jax.tree.map(lambda g: 10.0 * g, grads[3])
  tx = O.mars(3e-3, b1=0.95, b2=0.99, gamma=0.025, variant=variant, weight_decay=0.1,
              learning_rate_1d=1e-3, b1_1d=0.8, b2_1d=0.999, batch_axes=testing.BATCH_AXES)
  traj = testing.run_trajectory(tx, params, grads)
  expected = reference_mars(params, grads, 3e-3, 0.95, 0.99, 1e-8, 0.025, 0.1, variant,
                            1e-3, 0.8, 0.999)
  testing.assert_trajectory_close(traj, expected)


def test_single_learning_rate_and_gamma_zero_is_adamw_on_clipped_gradients():
  params = testing.make_params()
  grads = [jax.tree.map(lambda g: 0.05 * g, g) for g in testing.make_grads(params, 20)]  # no clip
  tx = O.mars(1e-2, b1=0.9, b2=0.99, gamma=0.0, weight_decay=0.1, b1_1d=0.9, b2_1d=0.99,
              batch_axes=testing.BATCH_AXES)
  ref = O.adamw(1e-2, b1=0.9, b2=0.99, weight_decay=0.1)
  testing.assert_trajectory_close(testing.run_trajectory(tx, params, grads),
                                  testing.run_trajectory(ref, params, grads))


def test_state_has_previous_gradient_for_matrices_only():
  params = testing.make_params()
  state = O.mars(1e-3, batch_axes=testing.BATCH_AXES).init(params)[0]
  assert state.prev_grad["layers"]["kernel"].shape == (3, 5, 4)
  assert state.prev_grad["norm"]["scale"].shape == ()
  lion_state = O.mars(1e-3, variant="lion").init(params)[0]
  assert lion_state.nu["dense"]["kernel"].shape == ()  # MARS-Lion keeps no v for matrices


@pytest.mark.parametrize("bad, match", [
    (dict(learning_rate=-1e-3), "learning_rate"),
    (dict(learning_rate=1e-3, learning_rate_1d=-1.0), "learning_rate_1d"),
    (dict(learning_rate=1e-3, b1=1.0), "b1"),
    (dict(learning_rate=1e-3, b2_1d=1.0), "b2_1d"),
    (dict(learning_rate=1e-3, gamma=-0.1), "gamma"),
    (dict(learning_rate=1e-3, eps=0.0), "eps"),
    (dict(learning_rate=1e-3, variant="shampoo"), "variant"),
    (dict(learning_rate=1e-3, weight_decay=-0.1), "weight_decay"),
    (dict(learning_rate=1e-3, learning_rate_1d=1e-3, weight_decay=-0.1), "weight_decay"),
])
def test_bad_hyperparameters(bad, match):
  with pytest.raises(ValueError, match=match):
    O.mars(**bad)


def test_impossible_batch_axes_fail_at_init():
  with pytest.raises(ValueError, match="batch_axes"):
    O.mars(1e-3, batch_axes=4).init(testing.make_params())
