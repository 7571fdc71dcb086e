"""AdEMAMix against a NumPy reference (with the paper's warmups) and optax.contrib.ademamix."""

import math

import jax
import numpy as np
import optax
import pytest

import optbench_jax.optim as O
from optbench_jax.optim import testing


def paper_alpha(t, alpha, warmup):
  return alpha if not warmup else alpha * min(t / warmup, 1.0)


def paper_b3(t, b_start, b_end, warmup):
  """Linear in half-life: f(b) = ln(.5)/ln(b) - 1 interpolated, then inverted."""
  if not warmup or t >= warmup:
    return b_end
  f = lambda b: math.log(0.5) / math.log(b) - 1
  a = t / warmup
  return 0.5 ** (1.0 / ((1 - a) * f(b_start) + a * f(b_end) + 1))


def reference_ademamix(params, grads, lr, b1, b2, b3, alpha, eps, wd, t_alpha=None, t_b3=None):
  flat, treedef = jax.tree.flatten(testing.to_numpy(params))
  m1 = [np.zeros_like(x) for x in flat]
  m2 = [np.zeros_like(x) for x in flat]
  v = [np.zeros_like(x) for x in flat]
  out = []
  for t, g_tree in enumerate(testing.to_numpy(grads), start=1):
    a_t, b3_t = paper_alpha(t, alpha, t_alpha), paper_b3(t, b1, b3, t_b3)
    for i, g in enumerate(jax.tree.leaves(g_tree)):
      m1[i] = b1 * m1[i] + (1 - b1) * g
      m2[i] = b3_t * m2[i] + (1 - b3_t) * g
      v[i] = b2 * v[i] + (1 - b2) * g**2
      u = (m1[i] / (1 - b1**t) + a_t * m2[i]) / (np.sqrt(v[i] / (1 - b2**t)) + eps)
      flat[i] = flat[i] - lr * (u + wd * flat[i])
    out.append(treedef.unflatten(list(flat)))
  return out


def test_no_warmup_matches_reference_and_optax():
  params = testing.make_params()
  grads = testing.make_grads(params, 20)
  kwargs = dict(learning_rate=1e-2, b1=0.8, b2=0.99, b3=0.995, alpha=8.0, weight_decay=0.1)
  traj = testing.run_trajectory(O.ademamix(**kwargs), params, grads)
  testing.assert_trajectory_close(
      traj, testing.run_trajectory(optax.contrib.ademamix(**kwargs), params, grads), 0, 0)
  testing.assert_trajectory_close(
      traj, reference_ademamix(params, grads, 1e-2, 0.8, 0.99, 0.995, 8.0, 1e-8, 0.1))


def test_warmups_match_reference():
  params = testing.make_params()
  grads = testing.make_grads(params, 25)
  tx = O.ademamix(1e-2, b1=0.9, b2=0.999, b3=0.999, alpha=8.0, weight_decay=0.1,
                  alpha_warmup_steps=15, b3_warmup_steps=20)
  traj = testing.run_trajectory(tx, params, grads)
  expected = reference_ademamix(params, grads, 1e-2, 0.9, 0.999, 0.999, 8.0, 1e-8, 0.1,
                                t_alpha=15, t_b3=20)
  # b3_t is a float32 number just below 1, so 1 - b3_t carries ~1e-4 relative
  # rounding that the slow EMA accumulates: a slightly wider absolute tolerance.
  testing.assert_trajectory_close(traj, expected, rtol=2e-6, atol=5e-6)
  # The warmups change the trajectory (the test can fail).
  no_warmup = reference_ademamix(params, grads, 1e-2, 0.9, 0.999, 0.999, 8.0, 1e-8, 0.1)
  assert not np.allclose(traj[5]["dense"]["kernel"], no_warmup[5]["dense"]["kernel"], rtol=1e-3)


def test_half_life_interpolation_endpoints_and_midpoint():
  from optbench_jax.optim.ademamix import half_life_interpolation
  assert abs(float(half_life_interpolation(0.9, 0.999, 0.0)) - 0.9) < 1e-6
  assert abs(float(half_life_interpolation(0.9, 0.999, 1.0)) - 0.999) < 1e-6
  half = lambda b: math.log(0.5) / math.log(b)
  mid = float(half_life_interpolation(0.9, 0.999, 0.5))
  assert abs(half(mid) - 0.5 * (half(0.9) + half(0.999))) < 1e-2 * half(mid)


@pytest.mark.parametrize("bad, match", [
    (dict(learning_rate=-1e-3), "learning_rate"),
    (dict(learning_rate=1e-3, b1=1.0), "b1"),
    (dict(learning_rate=1e-3, b2=-0.1), "b2"),
    (dict(learning_rate=1e-3, b3=1.0), "b3"),
    (dict(learning_rate=1e-3, alpha=-1.0), "alpha"),
    (dict(learning_rate=1e-3, eps=0.0), "eps"),
    (dict(learning_rate=1e-3, weight_decay=-0.1), "weight_decay"),
    (dict(learning_rate=1e-3, alpha_warmup_steps=-5), "alpha_warmup_steps"),
    (dict(learning_rate=1e-3, b3_warmup_steps=float("nan")), "b3_warmup_steps"),
])
def test_bad_hyperparameters(bad, match):
  with pytest.raises(ValueError, match=match):
    O.ademamix(**bad)
