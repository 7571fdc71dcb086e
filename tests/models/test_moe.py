"""MoE layer: routing, aux losses, dropless vs a per-token loop, capacity path, expert parallelism."""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optbench_jax import models as M
from optbench_jax.models import moe

E, K, D, F = 8, 2, 16, 32
LAYER = dict(num_experts=E, top_k=K, hidden_dim=F, capacity_factor=0.0, aux_loss_coef=0.1,
             z_loss_coef=0.01, num_layers=4, init_std=0.3, out_std=0.3)


@functools.lru_cache(maxsize=None)
def _layer():
  module = moe.MoE(**LAYER)
  x = jax.random.normal(jax.random.key(0), (3, 10, D))
  params = nn.unbox(jax.jit(module.init)(jax.random.key(1), x)["params"])
  return module, params, x


def _np(params):
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  return (p["router"]["kernel"], p["experts"]["gate_proj"]["kernel"],
          p["experts"]["up_proj"]["kernel"], p["experts"]["down_proj"]["kernel"])


def reference_moe(params, x, capacity=None):
  """Per-token loop from the equations; optional per-sequence capacity in GShard priority order."""
  wr, wg, wu, wd = _np(params)
  x = np.asarray(x, np.float64)
  b, s, _ = x.shape
  y = np.zeros_like(x)
  dropped = 0
  for i in range(b):
    logits = x[i] @ wr
    top = np.argsort(-logits, axis=-1, kind="stable")[:, :K]
    used = np.zeros(E, int)
    keep = np.ones((s, K), bool)
    if capacity is not None:
      for j in range(K):  # all first choices, then all second choices
        for t in range(s):
          e = top[t, j]
          keep[t, j] = used[e] < capacity
          used[e] += 1
    for t in range(s):
      sel = logits[t, top[t]]
      w = np.exp(sel - sel.max())
      w /= w.sum()
      for j, e in enumerate(top[t]):
        if not keep[t, j]:
          dropped += 1
          continue
        g, u = x[i, t] @ wg[e], x[i, t] @ wu[e]
        y[i, t] += w[j] * ((g / (1 + np.exp(-g)) * u) @ wd[e])
  return y, dropped / (b * s * K)


def test_dropless_matches_per_token_loop():
  module, params, x = _layer()
  y, aux = jax.jit(module.apply)({"params": params}, x)
  ref, _ = reference_moe(params, x)
  np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5)
  assert float(aux["moe_dropped_fraction"]) == 0.0


def test_aux_losses_match_numpy():
  module, params, x = _layer()
  _, aux = jax.jit(module.apply)({"params": params}, x)
  wr = _np(params)[0]
  logits = np.asarray(x, np.float64).reshape(-1, D) @ wr
  top = np.argsort(-logits, axis=-1)[:, :K]
  frac = np.bincount(top.reshape(-1), minlength=E) / top.size
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  balance = E * np.sum(frac * probs.mean(0))
  lse = np.log(np.exp(logits).sum(-1))
  np.testing.assert_allclose(aux["moe_aux_loss"], 0.1 / 4 * balance, rtol=1e-5)
  np.testing.assert_allclose(aux["router_z_loss"], 0.01 / 4 * np.mean(lse ** 2), rtol=1e-5)
  np.testing.assert_allclose(aux["moe_max_load"], E * frac.max(), rtol=1e-6)
  # Uniform routing gives a load-balance loss of exactly 1.
  uniform = jnp.zeros((E * 4, E)).at[jnp.arange(E * 4), jnp.arange(E * 4) % E].set(1.0)
  ids = jnp.arange(E * 4)[:, None] % E
  assert abs(float(moe.load_balance_loss(uniform * 0, ids)) - 1.0) < 1e-6


def test_capacity_path():
  module, params, x = _layer()
  dropless, _ = jax.jit(module.apply)({"params": params}, x)
  big = moe.MoE(**dict(LAYER, capacity_factor=float(E)))  # capacity >= every assignment
  y, aux = jax.jit(big.apply)({"params": params}, x)
  np.testing.assert_allclose(y, dropless, rtol=1e-5, atol=1e-6)
  assert float(aux["moe_dropped_fraction"]) == 0.0
  small = moe.MoE(**dict(LAYER, capacity_factor=0.5))
  y, aux = jax.jit(small.apply)({"params": params}, x)
  capacity = math.ceil(0.5 * 10 * K / E)
  ref, dropped = reference_moe(params, x, capacity=capacity)
  assert dropped > 0
  np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(aux["moe_dropped_fraction"], dropped, rtol=1e-6)


MOE_MODEL = dict(kind="moe", num_layers=2, d_model=32, num_heads=4, ffn_dim=32, vocab_size=128,
                 num_experts=8, experts_top_k=2)


def test_moe_model_tree_counts_and_batch_axes():
  p = M.abstract_params(MOE_MODEL)
  assert p["layers"]["moe"]["experts"]["gate_proj"]["kernel"].shape == (2, 8, 32, 32)
  assert p["layers"]["moe"]["router"]["kernel"].shape == (2, 32, 8)
  assert "mlp" not in p["layers"]
  axes = M.param_batch_axes(p)
  assert axes["layers"]["moe"]["experts"]["down_proj"]["kernel"] == 2
  assert axes["layers"]["moe"]["router"]["kernel"] == 1
  counts = M.count_params(MOE_MODEL)
  per_expert_stack = 2 * 8 * 3 * 32 * 32
  assert counts["total"] - counts["active"] == per_expert_stack * (8 - 2) // 8


@pytest.mark.parametrize("mesh_shape", [dict(data=2, expert=4), dict(fsdp=2, tensor=2, expert=2),
                                        dict(data=4, fsdp=2)])
def test_expert_parallel_matches_single_device(mesh_shape):
  """shard_map expert parallelism: same outputs and gradients as the one-device dropless path."""
  keys = jax.random.split(jax.random.key(3), 6)
  x = jax.random.normal(keys[0], (8, 6, D))
  ids = jax.random.randint(keys[1], (8, 6, K), 0, E)  # duplicates allowed: still exact
  w = jax.random.uniform(keys[2], (8, 6, K))
  weights = [0.3 * jax.random.normal(k, shape) for k, shape in
             zip(keys[3:], [(E, D, F), (E, D, F), (E, F, D)])]
  probe = jax.random.normal(jax.random.key(4), x.shape)

  def single(x, w, *ws):
    y = moe.dropless_experts(x.reshape(-1, D), ids.reshape(-1, K), w.reshape(-1, K), *ws)
    return jnp.sum(y.reshape(x.shape) * probe)

  mesh = M.sharding.make_mesh(**{"data": 1, **mesh_shape})

  def parallel(x, w, *ws):
    return jnp.sum(moe.expert_parallel_experts(x, ids, w, *ws, mesh) * probe)

  grad = lambda f: jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2, 3, 4)))
  v0, g0 = grad(single)(x, w, *weights)
  v1, g1 = grad(parallel)(x, w, *weights)
  np.testing.assert_allclose(v1, v0, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), g1, g0)


def test_moe_model_with_expert_mesh_matches_single_device():
  cfg = MOE_MODEL
  params = M.init_params(cfg, jax.random.key(0))
  tokens = jax.random.randint(jax.random.key(1), (8, 16), 0, 128)
  l0, aux0 = jax.jit(M.build_model(cfg).apply)({"params": params}, tokens)
  mesh = M.sharding.make_mesh(data=2, fsdp=1, tensor=1, expert=4)
  shardings = M.sharding.param_shardings(cfg, mesh)
  assert shardings["layers"]["moe"]["experts"]["up_proj"]["kernel"].spec[1] == "expert"
  p = jax.device_put(params, shardings)
  t = jax.device_put(tokens, M.sharding.batch_sharding(mesh))
  l1, aux1 = jax.jit(M.build_model(cfg, mesh).apply)({"params": p}, t)
  np.testing.assert_allclose(l1, l0, rtol=1e-5, atol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), aux1, aux0)


def test_expert_count_must_divide_expert_axis():
  cfg = dict(MOE_MODEL, num_experts=6)
  mesh = M.sharding.make_mesh(data=2, expert=4)
  params = M.abstract_params(cfg)
  with pytest.raises(ValueError, match="num_experts=6"):
    jax.eval_shape(M.build_model(cfg, mesh).apply, {"params": params},
                   jax.ShapeDtypeStruct((8, 16), jnp.int32))
