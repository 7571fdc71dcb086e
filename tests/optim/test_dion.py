"""Dion against a float64 NumPy reference from the paper's Algorithm 1, and on a sharded mesh."""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

import optbench_jax.optim as O
from optbench_jax.optim.dion import ScaleByDionState, rank_of
from optbench_jax.optim import testing
from optbench_jax.optim import sharding_check
from optbench_jax.optim import state_sharding
from tests.optim.test_muon import transformer_tree


def reference_dion_matrix(kernel, grads, q0, lr, mu, wd, eps=1e-8, power_iters=1):
  """Dion on one Flax kernel (fan_in, fan_out), float64, written in the paper's
  (out, in) weight convention X = kernel^T (Ahn et al. 2025, Alg. 1 + the
  reference code's transposition rule: work on X^T when X is wide)."""
  x = np.asarray(kernel, np.float64).T
  m_buf = np.zeros_like(x)
  q = np.asarray(q0, np.float64)
  transpose = x.shape[0] < x.shape[1]
  out = []
  for g in grads:
    m_buf = m_buf + np.asarray(g, np.float64).T
    b = m_buf.T if transpose else m_buf
    r = q
    for _ in range(power_iters):
      p = np.linalg.qr(b @ r)[0]
      r = b.T @ p
    m_buf = m_buf - (1 - mu) * ((r @ p.T) if transpose else (p @ r.T))
    q = r / (np.linalg.norm(r, axis=0, keepdims=True) + eps)
    x = x * (1 - lr * wd)
    scale = math.sqrt(x.shape[0] / x.shape[1])
    x = x - lr * scale * ((q @ p.T) if transpose else (p @ q.T))
    out.append(x.T)
  return out


def reference_adamw(p, grads, lr, b1, b2, eps, wd=0.0):
  p = np.asarray(p, np.float64)
  m, v = np.zeros_like(p), np.zeros_like(p)
  out = []
  for t, g in enumerate(grads, start=1):
    g = np.asarray(g, np.float64)
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    u = (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
    p = p - lr * (u + wd * p)
    out.append(p)
  return out


def dion_state(state):
  """The ScaleByDionState inside the partitioned optimizer state."""
  found = [s for s in jax.tree.leaves(state, is_leaf=lambda s: isinstance(
      s, ScaleByDionState)) if isinstance(s, ScaleByDionState)]
  assert len(found) == 1
  return found[0]


def tree_params(seed=0):
  rng = np.random.default_rng(seed)
  f = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32)
  return {"wide": {"kernel": f(6, 10)}, "tall": {"kernel": f(10, 6)},
          "square": {"kernel": f(8, 8)}, "norm": {"scale": 1.0 + 0.1 * f(6)}}


@pytest.mark.parametrize("qr_method, rank_fraction, power_iters", [
    ("rcqr", 0.5, 1), ("cqr", 0.5, 2), ("qr", 1.0, 1)])
def test_matches_reference(qr_method, rank_fraction, power_iters):
  params = tree_params()
  grads = testing.make_grads(params, 20)
  lr, mu, wd = 0.02, 0.9, 0.1
  tx = O.dion(lr, mu=mu, rank_fraction=rank_fraction, qr_method=qr_method, weight_decay=wd,
              power_iters=power_iters, adam_learning_rate=3e-3)
  traj = testing.run_trajectory(tx, params, grads)
  q0 = dion_state(tx.init(params)).q
  expected = []
  refs = {name: reference_dion_matrix(params[name]["kernel"], [g[name]["kernel"] for g in grads],
                                      q0[name]["kernel"], lr, mu, wd, power_iters=power_iters)
          for name in ("wide", "tall", "square")}
  norm = reference_adamw(params["norm"]["scale"], [g["norm"]["scale"] for g in grads],
                         3e-3, 0.95, 0.98, 1e-8)
  for t in range(len(grads)):
    step = {name: {"kernel": refs[name][t]} for name in refs}
    step["norm"] = {"scale": norm[t]}
    expected.append(step)
  testing.assert_trajectory_close(traj, expected, rtol=2e-4, atol=2e-5)


def test_rank_and_state_shapes():
  assert rank_of(768, 0.25) == 192
  assert rank_of(10, 0.25, rank_multiple_of=4) == 4   # ceil(2.5 / 4) * 4
  assert rank_of(6, 1.0, rank_multiple_of=4) == 6     # at most the short side
  params = {"up": {"kernel": jnp.zeros((3, 16, 40))}, "down": {"kernel": jnp.zeros((40, 16))}}
  state = dion_state(O.dion(rank_fraction=0.25, batch_axes=lambda path, leaf: leaf.ndim - 2)
                     .init(params))
  # Q lives on the short side: (batch..., min(fan_in, fan_out), r).
  assert state.q["up"]["kernel"].shape == (3, 16, 4)
  assert state.q["down"]["kernel"].shape == (16, 4)
  assert state.q["up"]["kernel"].dtype == jnp.float32


def test_first_update_has_rank_r_and_zero_gradient_is_a_no_op():
  rng = np.random.default_rng(2)
  params = {"w": {"kernel": jnp.asarray(rng.normal(size=(12, 20)), jnp.float32)}}
  tx = O.dion(1.0, rank_fraction=0.25, weight_decay=0.0)
  state = tx.init(params)
  g = {"w": {"kernel": jnp.asarray(rng.normal(size=(12, 20)), jnp.float32)}}
  u, state = tx.update(g, state, params)
  # u = -sqrt(fan_out / fan_in) P Q^T, P orthonormal, Q's columns unit: rank r and
  # ||P Q^T||_F^2 = trace(Q^T Q) = r (r = ceil(0.25 * 12) = 3).
  pq = np.asarray(u["w"]["kernel"]) / -math.sqrt(20 / 12)
  s = np.linalg.svd(pq, compute_uv=False)
  assert s[2] > 0.1 and np.all(s[3:] < 1e-5), s
  np.testing.assert_allclose(np.sum(pq**2), 3.0, rtol=1e-5)
  zero = jax.tree.map(jnp.zeros_like, g)
  fresh = tx.init(params)
  u0, after = tx.update(zero, fresh, params)
  assert float(jnp.max(jnp.abs(u0["w"]["kernel"]))) == 0.0
  q_before, q_after = dion_state(fresh).q["w"]["kernel"], dion_state(after).q["w"]["kernel"]
  assert bool(jnp.all(jnp.isfinite(q_after)))
  np.testing.assert_allclose(q_after, q_before / jnp.linalg.norm(q_before, axis=0), rtol=1e-6)


def test_non_matrix_leaves_follow_adamw_exactly():
  params, batch_axes, _ = transformer_tree(layers=4)
  grads = testing.make_grads(params, 5)
  kw = dict(adam_learning_rate=3e-3, adam_b1=0.8, adam_b2=0.99, adam_eps=1e-8,
            adam_weight_decay=0.1)
  traj = testing.run_trajectory(O.dion(0.02, batch_axes=batch_axes, **kw), params, grads)
  pick = lambda t: {"embed": t["embed"], "final_norm": t["final_norm"],
                    "lm_head": t["lm_head"], "norm": t["layers"]["attn_norm"]}
  mask = {"embed": {"embedding": False}, "final_norm": {"scale": False},
          "lm_head": {"kernel": True}, "norm": {"scale": False}}
  expected = testing.run_trajectory(
      optax.adamw(3e-3, b1=0.8, b2=0.99, eps=1e-8, weight_decay=0.1, mask=mask),
      pick(params), [pick(g) for g in grads])
  testing.assert_trajectory_close([pick(t) for t in traj], expected, rtol=1e-7, atol=0)


def test_low_rank_trains_mlp():
  """Rank 1/2, the paper's point (the contract trains the full-rank default)."""
  testing.trains_mlp(O.dion(0.05, rank_fraction=0.5, adam_learning_rate=1e-2),
                     steps=150, max_ratio=0.3)


def run_sharded(tx, params, specs, n_steps=3):
  """Like the trainer: state in/out shardings derived from the parameters'
  (``train.state``, policy matched: Q sharded like its matrix side). Returns
  (final params, expected unsharded params, compiled step)."""
  mesh = sharding_check.make_mesh()
  shardings = sharding_check.param_shardings(mesh, specs)
  state_sh = state_sharding.derive_opt_state_shardings(jax.eval_shape(tx.init, params), params,
                                                  shardings, mesh)
  grads = testing.make_grads(params, n_steps, seed=7)

  def step(p, s, g):
    updates, s = tx.update(g, s, p)
    return optax.apply_updates(p, updates), s

  with jax.set_mesh(mesh):
    p = jax.device_put(params, shardings)
    state = jax.jit(tx.init, out_shardings=state_sh)(p)
    update = jax.jit(step, in_shardings=(shardings, state_sh, shardings),
                     out_shardings=(shardings, state_sh))
    compiled = update.lower(p, state, p).compile()
    for g in grads:
      p, state = update(p, state, jax.device_put(g, shardings))
  expected = testing.run_trajectory(tx, params, grads)[-1]
  for leaf, want in zip(jax.tree.leaves(p), jax.tree.leaves(shardings)):
    assert leaf.sharding.is_equivalent_to(want, leaf.ndim)
  return p, expected, compiled


def test_sharded_matches_unsharded():
  params, batch_axes, specs = transformer_tree(layers=4)
  tx = O.create("dion", learning_rate=0.01, weight_decay=0.1, rank_fraction=0.5,
                qr_method="cqr", batch_axes=batch_axes)
  p, expected, _ = run_sharded(tx, params, specs)
  testing.assert_trajectory_close([p], [expected], rtol=1e-4, atol=1e-5)


def _elements(shape: str) -> int:
  return max((math.prod(int(d) for d in dims.split(",") if d)
              for dims in re.findall(r"f32\[([\d,]*)\]", shape)), default=0)


def test_sharded_step_reduces_only_low_rank_factors():
  """Compiled HLO on the (fsdp 4, tensor 2) mesh, kernels (L, in, out) sharded
  (None, fsdp, tensor) / (None, tensor, fsdp): only all-reduces, none larger than
  a rank-r factor (L x dim x r); no all-gather / all-to-all of any matrix."""
  rng = np.random.default_rng(4)
  layers, d, ffn, rank_fraction = 4, 64, 128, 0.25
  params = {"up": {"kernel": jnp.asarray(rng.normal(size=(layers, d, ffn)), jnp.float32)},
            "down": {"kernel": jnp.asarray(rng.normal(size=(layers, ffn, d)), jnp.float32)}}
  specs = {"up": {"kernel": P(None, "fsdp", "tensor")},
           "down": {"kernel": P(None, "tensor", "fsdp")}}
  tx = O.dion(0.01, rank_fraction=rank_fraction, batch_axes=1)
  p, expected, compiled = run_sharded(tx, params, specs)
  testing.assert_trajectory_close([p], [expected], rtol=1e-4, atol=1e-5)
  ops = sharding_check.collectives(compiled.as_text())
  assert ops and {op for op, _ in ops} == {"all-reduce"}, ops
  r = rank_of(d, rank_fraction)
  rcqr_rows = 128 * math.ceil(1.25 * r / 128)
  largest = layers * max(ffn, rcqr_rows) * r
  for op, shape in ops:
    assert _elements(shape) <= largest < layers * d * ffn, (op, shape)


@pytest.mark.parametrize("bad, match", [
    (dict(learning_rate=-1.0), "learning_rate"),
    (dict(adam_learning_rate=-1.0), "adam_learning_rate"),
    (dict(mu=1.0), "mu"),
    (dict(rank_fraction=0.0), "rank_fraction"),
    (dict(rank_fraction=1.5), "rank_fraction"),
    (dict(rank_multiple_of=0), "rank_multiple_of"),
    (dict(power_iters=0), "power_iters"),
    (dict(qr_method="svd"), "qr_method"),
    (dict(oversample=0.5), "oversample"),
    (dict(eps=0.0), "eps"),
    (dict(weight_decay=-0.1), "weight_decay"),
    (dict(adam_b2=1.0), "adam_b2"),
])
def test_bad_hyperparameters(bad, match):
  with pytest.raises(ValueError, match=match):
    O.dion(**bad)
