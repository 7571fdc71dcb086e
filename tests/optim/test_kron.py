"""PSGD Kron against NumPy references written from Li's equations."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optbench_jax.optim as O
from optbench_jax.optim.kron import (precondition, scale_by_kron, update_factors,
                                     update_probability_schedule)
from optbench_jax.optim import testing


def np_lower_bound(s):
  x = s[:, np.argmax(np.sum(s * s, axis=0))]
  return np.linalg.norm(s @ x) / np.linalg.norm(x)


def np_fit(q1, q2, g, v, lr):
  """One PSGD whitening fit of Q = Q1 (x) Q2 on a matrix gradient g with probe v."""
  a = q1 @ g @ q2.T
  b = np.linalg.inv(q1).T @ v @ np.linalg.inv(q2)
  new = []
  for q, t1, t2 in ((q1, a @ a.T, b @ b.T), (q2, a.T @ a, b.T @ b)):
    if q.ndim == 1 or q1.ndim == 1:
      raise AssertionError
    new.append(q - lr / np_lower_bound(t1 + t2) * np.triu(t1 - t2) @ q)
  return new


def np_fit_diag(q, g, v, lr):
  a, b = q * g, v / q
  t1, t2 = a * a, b * b
  return q - lr / np.max(np.abs(t1 + t2)) * (t1 - t2) * q


def random_triangular(rng, n):
  return np.triu(rng.normal(size=(n, n)) * 0.3) + np.eye(n)


def test_factor_update_matches_reference():
  rng = np.random.default_rng(0)
  q1, q2 = random_triangular(rng, 5), random_triangular(rng, 4)
  g, v = rng.normal(size=(5, 4)), rng.normal(size=(5, 4))
  new = update_factors(tuple(jnp.asarray(q, jnp.float32) for q in (q1, q2)),
                       jnp.asarray(g, jnp.float32), jnp.asarray(v, jnp.float32), 0.1)
  for got, want in zip(new, np_fit(q1, q2, g, v, 0.1)):
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-5)
    assert np.allclose(np.tril(np.asarray(got), -1), 0), "factor must stay upper triangular"
  qd = 1 + 0.1 * rng.random(6)
  gd, vd = rng.normal(size=6), rng.normal(size=6)
  (got,) = update_factors((jnp.asarray(qd, jnp.float32),), jnp.asarray(gd, jnp.float32),
                          jnp.asarray(vd, jnp.float32), 0.2)
  np.testing.assert_allclose(np.asarray(got), np_fit_diag(qd, gd, vd, 0.2), rtol=1e-5)


def reference_kron(params, grads, seed, lr, b1, plr):
  """Full optimizer with update probability 1, reproducing the state's PRNG stream."""
  p = testing.to_numpy(params)
  w, s = p["w"], p["s"]
  m = {"w": np.zeros_like(w), "s": np.zeros_like(s)}
  q1, q2, qs = np.eye(w.shape[0]), np.eye(w.shape[1]), np.ones(s.shape)
  key = jax.random.PRNGKey(seed)
  out = []
  for t, g in enumerate(testing.to_numpy(grads), start=1):
    key, _, probe_key = jax.random.split(key, 3)
    # leaves flatten in key order: "s" (index 0), "w" (index 1)
    v_s = np.asarray(jax.random.normal(jax.random.fold_in(probe_key, 0), s.shape), np.float64)
    v_w = np.asarray(jax.random.normal(jax.random.fold_in(probe_key, 1), w.shape), np.float64)
    m = {k: b1 * m[k] + (1 - b1) * g[k] for k in m}
    mh = {k: m[k] / (1 - b1**t) for k in m}
    q1, q2 = np_fit(q1, q2, mh["w"], v_w, plr)
    qs = np_fit_diag(qs, mh["s"], v_s, plr)
    u_w = (q1.T @ q1) @ mh["w"] @ (q2.T @ q2)
    u_s = qs**2 * mh["s"]
    u_w /= max(1.0, np.sqrt(np.mean(u_w**2)) / 1.1)
    u_s /= max(1.0, np.sqrt(np.mean(u_s**2)) / 1.1)
    w, s = w - lr * u_w, s - lr * u_s
    out.append({"s": s, "w": w})
  return out


def small_params(seed=0):
  rng = np.random.default_rng(seed)
  return {"w": jnp.asarray(rng.normal(size=(5, 3)), jnp.float32),
          "s": jnp.asarray(rng.normal(size=(4,)), jnp.float32)}


def test_trajectory_matches_reference():
  params = small_params()
  grads = testing.make_grads(params, 8)
  tx = O.kron(1e-2, b1=0.9, preconditioner_lr=0.2, preconditioner_update_probability=1.0,
              seed=3)
  expected = reference_kron(params, grads, 3, 1e-2, 0.9, 0.2)
  testing.assert_trajectory_close(testing.run_trajectory(tx, params, grads), expected,
                                  rtol=2e-4, atol=2e-5)


def test_preconditioner_whitens_gradient_covariance():
  """PSGD's fixed point: P E[g g^T] P = I, i.e. P = C^{-1/2} for gradient covariance C."""
  c1 = np.diag([4.0, 1.0, 0.25]) + 0.1
  c2 = np.array([[2.0, 0.5], [0.5, 0.5]])
  # g = L1 Z L2^T has covariance C1 (x) C2 for Cholesky factors L1, L2
  l1, l2 = (jnp.asarray(np.linalg.cholesky(c), jnp.float32) for c in (c1, c2))

  def fit(lr):
    def body(qs, key):
      kz, kv = jax.random.split(key)
      g = l1 @ jax.random.normal(kz, (3, 2)) @ l2.T
      return update_factors(qs, g, jax.random.normal(kv, (3, 2)), lr), None
    return body

  qs = (jnp.eye(3), jnp.eye(2))
  keys = jax.random.split(jax.random.PRNGKey(0), 6000)
  qs, _ = jax.lax.scan(fit(0.05), qs, keys[:3000])   # fit, then anneal to average the noise
  qs, _ = jax.lax.scan(fit(0.003), qs, keys[3000:])
  p1, p2 = (np.asarray(q, np.float64).T @ np.asarray(q, np.float64) for q in qs)
  p = np.kron(p1, p2)
  whitened = p @ np.kron(c1, c2) @ p
  assert np.linalg.norm(whitened - np.eye(6)) / np.sqrt(6) < 0.1, whitened
  cov = np.kron(c1, c2)
  w, vecs = np.linalg.eigh(cov)
  inv_sqrt = vecs @ np.diag(w ** -0.5) @ vecs.T
  assert np.linalg.norm(p - inv_sqrt) / np.linalg.norm(inv_sqrt) < 0.1


def test_same_seed_reproduces_and_other_seed_differs():
  params = small_params()
  grads = testing.make_grads(params, 6)
  build = lambda seed: O.kron(1e-2, preconditioner_update_probability=0.5, seed=seed)
  a = testing.run_trajectory(build(0), params, grads)
  b = testing.run_trajectory(build(0), params, grads)
  c = testing.run_trajectory(build(1), params, grads)
  testing.assert_trajectory_close(a, b, 0, 0)
  assert any(not np.array_equal(np.asarray(x), np.asarray(y))
             for x, y in zip(jax.tree.leaves(a[-1]), jax.tree.leaves(c[-1])))


def test_update_probability_gates_the_fit():
  params = small_params()
  grads = testing.make_grads(params, 5)
  tx = scale_by_kron(preconditioner_update_probability=1e-9)
  state = tx.init(params)
  for g in grads:
    _, state = jax.jit(tx.update)(g, state)
  np.testing.assert_array_equal(np.asarray(state.factors["w"][0]), np.eye(5))
  schedule = update_probability_schedule(flat_start_steps=10, min_prob=0.05, decay=0.1)
  np.testing.assert_allclose([float(schedule(t)) for t in (0, 10, 20, 1000)],
                             [1.0, 1.0, np.exp(-1.0), 0.05], rtol=1e-6)


def test_stacked_leaf_equals_loop_and_state_shapes():
  rng = np.random.default_rng(2)
  stack = jnp.asarray(rng.normal(size=(3, 4, 6)), jnp.float32)
  grads = [jnp.asarray(rng.normal(size=(3, 4, 6)), jnp.float32) for _ in range(3)]
  tx = scale_by_kron(preconditioner_update_probability=1.0, batch_axes=1)
  state = tx.init({"k": stack})
  assert [f.shape for f in state.factors["k"]] == [(3, 4, 4), (3, 6, 6)]
  big = scale_by_kron(max_size_triangular=5).init({"k": stack[0]})
  assert [f.shape for f in big.factors["k"]] == [(4, 4), (6,)]
  outs = []
  for g in grads:
    u, state = jax.jit(tx.update)({"k": g}, state)
    outs.append(u["k"])
  # one probe per matrix: matrix i of the stack draws from fold_in(probe_key, i),
  # as a separate (4, 6) leaf in its place would
  key = jax.random.PRNGKey(0)
  m = jnp.zeros((3, 4, 6))
  qs = [(jnp.eye(4), jnp.eye(6)) for _ in range(3)]
  for t, g in enumerate(grads, start=1):
    key, _, probe_key = jax.random.split(key, 3)
    probe = [jax.random.normal(jax.random.fold_in(probe_key, i), (4, 6)) for i in range(3)]
    m = 0.9 * m + 0.1 * g
    mh = m / (1 - 0.9**t)
    for i in range(3):
      qs[i] = update_factors(qs[i], mh[i], probe[i], 0.1)
      u = precondition(qs[i], mh[i])
      u = u / jnp.maximum(1.0, jnp.sqrt(jnp.mean(u**2)) / 1.1)
      np.testing.assert_allclose(np.asarray(outs[t - 1][i]), np.asarray(u), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("bad, match", [
    (dict(preconditioner_update_probability=0.0), "preconditioner_update_probability"),
    (dict(preconditioner_update_probability=1.5), "preconditioner_update_probability"),
    (dict(min_update_probability=0.0), "min_prob"),
    (dict(flat_start_steps=-1), "flat_start_steps"),
    (dict(preconditioner_lr=0.0), "preconditioner_lr"),
    (dict(b1=1.0), "b1"),
    (dict(max_size_triangular=-1), "max_size_triangular"),
    (dict(clip_update_rms=0.0), "clip_update_rms"),
    (dict(seed=-1), "seed"),
])
def test_bad_hyperparameters(bad, match):
  with pytest.raises(ValueError, match=match):
    O.kron(1e-3, **bad)


def test_sharded_matches_unsharded_with_sharded_factors():
  from jax.sharding import PartitionSpec as P  # pylint: disable=import-outside-toplevel
  from tests.optim.test_soap import run_sharded_with_factor_specs, stack_factor_spec  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(5)
  params = {"layers": {"kernel": jnp.asarray(rng.normal(size=(4, 8, 6)), jnp.float32)},
            "dense": {"kernel": jnp.asarray(rng.normal(size=(8, 4)), jnp.float32)},
            "norm": {"scale": jnp.ones((8,), jnp.float32)}}
  axes = {"layers": {"kernel": 1}, "dense": {"kernel": 0}, "norm": {"scale": 0}}
  specs = {"layers": {"kernel": P("fsdp", None, "tensor")},
           "dense": {"kernel": P("fsdp", "tensor")}, "norm": {"scale": P()}}
  tx = O.kron(1e-2, weight_decay=0.1, preconditioner_update_probability=0.7, batch_axes=axes)
  spec = lambda path, leaf: stack_factor_spec(path, leaf)
  p, state, expected, state_sh = run_sharded_with_factor_specs(tx, params, specs, spec)
  testing.assert_trajectory_close([p], [expected], rtol=1e-4, atol=1e-5)
  for leaf, want in zip(jax.tree.leaves(state), jax.tree.leaves(state_sh)):
    assert leaf.sharding.is_equivalent_to(want, leaf.ndim), (leaf.sharding, want)
  assert state[0].factors["layers"]["kernel"][0].sharding.spec[0] == "fsdp"


def test_init_scale_from_the_first_gradient():
  """init_scale=None: after step 1 each factor is s^(1/k) x its unit start, s = (mean |g|^4)^(-1/8)."""
  params = {"w": jnp.zeros((6, 5), jnp.float32)}
  g = {"w": jnp.asarray(np.random.default_rng(3).normal(size=(6, 5)) * 0.01, jnp.float32)}
  tx = O.kron(learning_rate=1e-3, init_scale=None, preconditioner_update_probability=1e-9)
  state = tx.init(params)
  _, state = jax.jit(tx.update)(g, state, params)
  kron_state = next(s for s in jax.tree.leaves(state, is_leaf=lambda x: hasattr(x, "factors"))
                    if hasattr(s, "factors"))
  expected = np.mean(np.asarray(g["w"], np.float64) ** 4) ** (-1 / 8)
  for q in kron_state.factors["w"]:
    np.testing.assert_allclose(np.asarray(q), expected ** 0.5 * np.eye(q.shape[0]), rtol=1e-5)
  _, state2 = jax.jit(tx.update)(g, state, params)
  kron_state2 = next(s for s in jax.tree.leaves(state2, is_leaf=lambda x: hasattr(x, "factors"))
                     if hasattr(s, "factors"))
  for q1, q2 in zip(kron_state.factors["w"], kron_state2.factors["w"]):
    np.testing.assert_allclose(np.asarray(q2), np.asarray(q1), rtol=1e-6)
