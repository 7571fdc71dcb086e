"""AdamW / NAdamW against a NumPy reference and against optax."""

import numpy as np
import optax
import pytest

import optbench_jax.optim as O
from optbench_jax.optim import testing


def reference_adamw(params, grads, lr, b1, b2, eps, wd, nesterov=False):
  p = testing.to_numpy(params)
  m = {k: {kk: np.zeros_like(v) for kk, v in d.items()} for k, d in p.items()}
  v = {k: {kk: np.zeros_like(x) for kk, x in d.items()} for k, d in p.items()}
  out = []
  for t, g in enumerate(testing.to_numpy(grads), start=1):
    new = {}
    for k in p:
      new[k] = {}
      for kk in p[k]:
        gi = g[k][kk]
        m[k][kk] = b1 * m[k][kk] + (1 - b1) * gi
        v[k][kk] = b2 * v[k][kk] + (1 - b2) * gi**2
        if nesterov:
          m_hat = b1 * m[k][kk] / (1 - b1**(t + 1)) + (1 - b1) * gi / (1 - b1**t)
        else:
          m_hat = m[k][kk] / (1 - b1**t)
        v_hat = v[k][kk] / (1 - b2**t)
        u = m_hat / (np.sqrt(v_hat) + eps)
        new[k][kk] = p[k][kk] - lr * (u + wd * p[k][kk])
    p = new
    out.append(p)
  return out


@pytest.mark.parametrize("nesterov", [False, True])
def test_matches_reference_and_optax(nesterov):
  params = testing.make_params()
  grads = testing.make_grads(params, 20)
  kwargs = dict(learning_rate=1e-2, b1=0.8, b2=0.99, eps=1e-8, weight_decay=0.1)
  ours = O.nadamw(**kwargs) if nesterov else O.adamw(**kwargs)
  theirs = optax.nadamw(**kwargs) if nesterov else optax.adamw(**kwargs)
  traj = testing.run_trajectory(ours, params, grads)
  testing.assert_trajectory_close(traj, testing.run_trajectory(theirs, params, grads), 0, 0)
  expected = reference_adamw(params, grads, 1e-2, 0.8, 0.99, 1e-8, 0.1, nesterov)
  testing.assert_trajectory_close(traj, expected, rtol=1e-6, atol=1e-6)


def test_weight_decay_schedule_and_mask():
  params = testing.make_params()
  mask = O.weight_decay_mask(params, testing.BATCH_AXES)
  assert mask == {"dense": {"kernel": True}, "norm": {"scale": False},
                  "layers": {"kernel": True}}
  tx = O.adamw(1e-2, weight_decay=lambda step: 0.1, mask=mask)
  ref = optax.adamw(1e-2, weight_decay=0.1, mask=mask)
  grads = testing.make_grads(params, 5)
  testing.assert_trajectory_close(testing.run_trajectory(tx, params, grads),
                                  testing.run_trajectory(ref, params, grads), 0, 0)


@pytest.mark.parametrize("bad, match", [
    (dict(learning_rate=-1e-3), "learning_rate"),
    (dict(learning_rate=float("nan")), "learning_rate"),
    (dict(learning_rate=1e-3, b1=1.0), "b1"),
    (dict(learning_rate=1e-3, b2=-0.1), "b2"),
    (dict(learning_rate=1e-3, eps=0.0), "eps"),
    (dict(learning_rate=1e-3, weight_decay=-0.1), "weight_decay"),
])
def test_bad_hyperparameters(bad, match):
  with pytest.raises(ValueError, match=match):
    O.adamw(**bad)
