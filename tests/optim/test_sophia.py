"""Sophia-G / Sophia-H against NumPy references and optax.contrib.sophia."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optbench_jax.optim as O
from optbench_jax.optim.sophia import hutchinson_diagonal
from optbench_jax.optim import testing


def reference_sophia(params, grads, h_estimates, lr, b1, b2, rho, eps, wd, k):
  """Liu et al. (2023) Alg. 3; ``h_estimates[t]`` is h^ for step t (used when (t-1) % k == 0)."""
  p = testing.to_numpy(params)
  m = jax.tree.map(np.zeros_like, p)
  h = jax.tree.map(np.zeros_like, p)
  out, clipped = [], []
  for t, (g, est) in enumerate(zip(testing.to_numpy(grads), h_estimates), start=1):
    m = jax.tree.map(lambda mi, gi: b1 * mi + (1 - b1) * gi, m, g)
    if (t - 1) % k == 0:
      h = jax.tree.map(lambda hi, ei: b2 * hi + (1 - b2) * ei, h, est)
    ratio = jax.tree.map(lambda mi, hi: mi / np.maximum(rho * hi, eps), m, h)
    clipped.append(np.mean(np.concatenate([np.abs(r).ravel() > 1 for r in jax.tree.leaves(ratio)])))
    u = jax.tree.map(lambda r: np.clip(r, -1, 1), ratio)
    p = jax.tree.map(lambda pi, ui: pi - lr * (ui + wd * pi), p, u)
    out.append(p)
  reference_sophia.clipped = clipped
  return out


def test_sophia_g_matches_reference():
  params = testing.make_params()
  grads = testing.make_grads(params, 14)
  hess = testing.make_grads(params, 14, seed=7)
  bs = 16
  tx = O.sophia(1e-2, b1=0.9, b2=0.95, rho=0.05, eps=1e-12, weight_decay=0.1,
                update_interval=3, batch_size=bs)
  update = jax.jit(tx.update)
  state, p, traj = tx.init(params), params, []
  for g, hg in zip(grads, hess):
    u, state = update(g, state, p, hessian_grads=hg)
    p = optax.apply_updates(p, u)
    traj.append(p)
  estimates = [jax.tree.map(lambda x: bs * x**2, hg) for hg in testing.to_numpy(hess)]
  expected = reference_sophia(params, grads, estimates, 1e-2, 0.9, 0.95, 0.05, 1e-12, 0.1, 3)
  testing.assert_trajectory_close(traj, expected, rtol=1e-5, atol=1e-6)
  # some coordinates clipped, some not: both branches of the clip are exercised
  assert 0 < reference_sophia.clipped[-1] < 1, reference_sophia.clipped


def quadratic(hessian):
  """A tree objective 0.5 x^T H x + b.x per leaf, with a known Hessian."""
  def obj(params):
    return sum(0.5 * x.ravel() @ (hessian[k] @ x.ravel()) + jnp.sum(x)
               for k, x in params.items())
  return obj


def test_sophia_h_matches_reference_on_diagonal_quadratic():
  """For diagonal H, z * (H z) = diag(H) exactly whatever the Rademacher probe."""
  rng = np.random.default_rng(0)
  params = {"a": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32),
            "b": jnp.asarray(rng.normal(size=(4,)), jnp.float32)}
  diag = {k: rng.uniform(0.5, 3.0, size=v.size) for k, v in params.items()}
  obj = quadratic({k: jnp.asarray(np.diag(d), jnp.float32) for k, d in diag.items()})
  tx = O.sophia(5e-2, b1=0.9, b2=0.9, rho=0.5, eps=1e-12, weight_decay=0.0,
                update_interval=2, estimator="hutchinson")
  update = jax.jit(lambda g, s, p: tx.update(g, s, p, obj_fn=obj))
  state, p, traj, grads = tx.init(params), params, [], []
  for _ in range(10):
    g = jax.grad(obj)(p)
    grads.append(g)
    u, state = update(g, state, p)
    p = optax.apply_updates(p, u)
    traj.append(p)
  estimates = [{k: d.reshape(params[k].shape) for k, d in diag.items()}] * 10
  expected = reference_sophia(params, grads, estimates, 5e-2, 0.9, 0.9, 0.5, 1e-12, 0.0, 2)
  testing.assert_trajectory_close(traj, expected, rtol=1e-5, atol=1e-6)


def test_hutchinson_estimator_is_unbiased_and_matches_optax_probe():
  rng = np.random.default_rng(1)
  a = rng.normal(size=(5, 5))
  hess = a @ a.T
  params = {"x": jnp.asarray(rng.normal(size=(5,)), jnp.float32)}
  obj = quadratic({"x": jnp.asarray(hess, jnp.float32)})
  ours = hutchinson_diagonal(obj, params, jax.random.PRNGKey(3))["x"]
  theirs, _ = optax.contrib.hutchinson_estimator_diag_hessian(jax.random.PRNGKey(0)).update(
      None, optax.contrib.HutchinsonState(key=jax.random.PRNGKey(0)), params, obj_fn=obj)
  key, subkey = jax.random.split(jax.random.PRNGKey(0))
  np.testing.assert_allclose(hutchinson_diagonal(obj, params, subkey)["x"], theirs["x"],
                             rtol=1e-6)
  mean = jax.vmap(lambda k: hutchinson_diagonal(obj, params, k)["x"])(
      jax.random.split(jax.random.PRNGKey(5), 4000)).mean(0)
  np.testing.assert_allclose(mean, np.diag(hess), rtol=0.1, atol=0.1 * np.abs(hess).max())
  del ours, key


def test_matches_optax_sophia_where_conventions_coincide():
  """b1 = 0 (no bias-correction difference), k = 1, b2 = 0: our update at step t
  (fresh h) equals optax's at step t + 1 (it uses the h computed one step earlier)."""
  rng = np.random.default_rng(2)
  a = rng.normal(size=(4, 4))
  obj = quadratic({"x": jnp.asarray(a @ a.T, jnp.float32)})
  seq_p = [{"x": jnp.asarray(rng.normal(size=(4,)), jnp.float32)} for _ in range(6)]
  seq_g = [{"x": jnp.asarray(rng.normal(size=(4,)), jnp.float32)} for _ in range(6)]
  ours = O.sophia(1.0, b1=0.0, b2=0.0, rho=0.3, eps=1e-8, weight_decay=0.0,
                  update_interval=1, estimator="hutchinson", seed=0)
  theirs = optax.contrib.sophia(1.0, b1=0.0, b2=0.0, gamma=0.3, eps=1e-8, weight_decay=0.0,
                                update_interval=1)
  ours_update = jax.jit(lambda g, s, p: ours.update(g, s, p, obj_fn=obj))
  theirs_update = jax.jit(lambda g, s, p: theirs.update(g, s, p, obj_fn=obj))
  s_ours, s_theirs = ours.init(seq_p[0]), theirs.init(seq_p[0])
  _, s_theirs = theirs_update(seq_g[0], s_theirs, seq_p[0])
  for t in range(5):
    u_ours, s_ours = ours_update(seq_g[t], s_ours, seq_p[t])
    u_theirs, s_theirs = theirs_update(seq_g[t], s_theirs, seq_p[t + 1])
    np.testing.assert_allclose(u_ours["x"], u_theirs["x"], rtol=1e-5, atol=1e-7)


def test_hessian_is_only_read_on_refresh_steps():
  params = testing.make_params()
  grads = testing.make_grads(params, 4)
  tx = O.sophia(1e-2, update_interval=2, batch_size=8)
  junk = jax.tree.map(lambda g: g * 1e3, grads[0])
  state = tx.init(params)
  _, s1 = tx.update(grads[0], state, params, hessian_grads=grads[1])
  _, s2 = tx.update(grads[1], s1, params, hessian_grads=junk)   # count 1: not a refresh
  testing.assert_trajectory_close([s2[0].hessian], [s1[0].hessian], 0, 0)
  _, s3 = tx.update(grads[2], s2, params, hessian_grads=junk)   # count 2: refresh
  assert not np.allclose(np.asarray(s3[0].hessian["dense"]["kernel"]),
                         np.asarray(s2[0].hessian["dense"]["kernel"]))


def test_sophia_h_trains_mlp():
  """Sophia-H on the MLP loss (``testing.trains_mlp`` passes it as ``obj_fn``, as the
  trainer's step does); the contract trains Sophia-G, the default."""
  testing.trains_mlp(O.sophia(3e-2, rho=0.05, weight_decay=0.0, update_interval=5,
                              estimator="hutchinson"), steps=200, max_ratio=0.2)


def test_missing_extra_arguments_raise():
  params = testing.make_params()
  g = testing.make_grads(params, 1)[0]
  tx = O.sophia(1e-2)
  with pytest.raises(ValueError, match="hessian_grads"):
    tx.update(g, tx.init(params), params)
  with pytest.raises(ValueError, match="same tree structure"):
    tx.update(g, tx.init(params), params, hessian_grads={"dense": g["dense"]})
  tx = O.sophia(1e-2, estimator="hutchinson")
  with pytest.raises(ValueError, match="obj_fn"):
    tx.update(g, tx.init(params), params)


@pytest.mark.parametrize("bad, match", [
    (dict(update_interval=0), "update_interval"),
    (dict(rho=0.0), "rho"),
    (dict(eps=-1.0), "eps"),
    (dict(b2=1.0), "b2"),
    (dict(estimator="newton"), "estimator"),
    (dict(batch_size=0), "batch_size"),
    (dict(weight_decay=-0.1), "weight_decay"),
])
def test_bad_hyperparameters(bad, match):
  with pytest.raises(ValueError, match=match):
    O.sophia(1e-3, **bad)


