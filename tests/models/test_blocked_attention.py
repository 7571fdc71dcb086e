"""attention_impl='blocked' (models/blocked_attention.py) == dot_product_attention(is_causal=True).

Tolerances: float32 forward rtol 1e-5 / atol 1e-6 and gradients rtol 1e-4 /
atol 1e-6 (the blocks sum the softmax over fewer, unmasked keys: only the
summation order differs); bfloat16 inputs atol 2e-2 (one bf16 rounding of
the probabilities, as XLA's attention does).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optbench_jax import models as M
from optbench_jax.models import blocked_attention as B
from optbench_jax.models import sharding

TINY = dict(num_layers=2, d_model=64, num_heads=4, num_kv_heads=2, ffn_dim=128, vocab_size=128)


def _qkv(b, s, h, hkv, hd, dtype=jnp.float32, seed=0):
  keys = jax.random.split(jax.random.key(seed), 3)
  return (jax.random.normal(keys[0], (b, s, h, hd), dtype),
          jax.random.normal(keys[1], (b, s, hkv, hd), dtype),
          jax.random.normal(keys[2], (b, s, hkv, hd), dtype))


def _reference(q, k, v):
  return jax.nn.dot_product_attention(q, k, v, is_causal=True)


def test_block_rule():
  assert [B.causal_block(s) for s in (32, 64, 100, 128, 256, 512, 1024, 4096)] == [
      32, 32, 50, 32, 64, 128, 128, 512]
  assert B.causal_block(96) == 48 and B.causal_block(30) == 30 and B.causal_block(66) == 33
  assert B.computed_fraction(256) == pytest.approx(5 / 8)
  assert B.computed_fraction(4096) == pytest.approx(9 / 16)
  assert B.computed_fraction(30) == 1.0


@pytest.mark.parametrize("s,h,hkv,block", [
    (256, 4, 4, None),    # 4 blocks of 64
    (128, 4, 2, None),    # GQA, 4 blocks of 32
    (96, 2, 1, 32),       # multi-query, 3 blocks
    (30, 2, 2, None),     # one block: plain attention
    (64, 4, 2, 16),
])
def test_forward_and_gradients_match_xla(s, h, hkv, block):
  q, k, v = _qkv(2, s, h, hkv, 16)
  cotangent = jax.random.normal(jax.random.key(7), q.shape)
  blocked = lambda q, k, v: B.blocked_causal_attention(q, k, v, block)
  np.testing.assert_allclose(jax.jit(blocked)(q, k, v), _reference(q, k, v), rtol=1e-5, atol=1e-6)
  grads = lambda fn: jax.grad(lambda *a: jnp.sum(fn(*a) * cotangent), argnums=(0, 1, 2))(q, k, v)
  for got, want in zip(jax.jit(lambda: grads(blocked))(), grads(_reference)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_causal_future_keys_do_not_leak():
  q, k, v = _qkv(1, 128, 2, 2, 16)
  out = B.blocked_causal_attention(q, k, v)
  out2 = B.blocked_causal_attention(q, k.at[:, 100:].add(3.0), v.at[:, 100:].add(3.0))
  np.testing.assert_array_equal(out[:, :100], out2[:, :100])
  assert not np.allclose(out[:, 100:], out2[:, 100:])


def test_bfloat16_inputs():
  q, k, v = _qkv(2, 128, 4, 2, 16, jnp.bfloat16)
  out = B.blocked_causal_attention(q, k, v)
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(out.astype(jnp.float32), _reference(q, k, v).astype(jnp.float32),
                             atol=2e-2)


def test_bfloat16_gradients():
  """The hand-written VJP in bf16 against XLA's attention autodiff in bf16 (both round P and dS)."""
  q, k, v = _qkv(2, 128, 4, 2, 16, jnp.bfloat16)
  cotangent = jax.random.normal(jax.random.key(7), q.shape, jnp.bfloat16)
  grads = lambda fn: jax.jit(jax.grad(
      lambda *a: jnp.sum((fn(*a) * cotangent).astype(jnp.float32)), argnums=(0, 1, 2)))(q, k, v)
  for got, want in zip(grads(B.blocked_causal_attention), grads(_reference)):
    assert got.dtype == jnp.bfloat16
    scale = float(jnp.max(jnp.abs(want.astype(jnp.float32))))
    np.testing.assert_allclose(got.astype(jnp.float32), want.astype(jnp.float32),
                               atol=3e-2 * scale)


def test_bad_input_raises_one_error():
  q, k, v = _qkv(1, 64, 4, 4, 16)
  with pytest.raises(ValueError, match="block 48 does not divide the sequence length 64"):
    B.blocked_causal_attention(q, k, v, 48)
  with pytest.raises(ValueError, match="4 query heads are not a multiple of 3 kv heads"):
    B.blocked_causal_attention(q, k[:, :, :3], v[:, :, :3])


def _loss_and_grads(cfg, params, tokens, mesh=None):
  model = M.build_model(cfg, mesh)
  loss = lambda p: M.losses.lm_loss(model.apply({"params": p}, tokens)[0], tokens)[0]
  return jax.jit(jax.value_and_grad(loss))(params)


@functools.cache
def _whole_model_xla_reference():
  """Loss and gradients of TINY with XLA attention (remat does not change the function)."""
  params = M.init_params(TINY, jax.random.key(0))
  tokens = jax.random.randint(jax.random.key(1), (4, 128), 0, TINY["vocab_size"])
  return _loss_and_grads(dict(TINY, attention_impl="xla"), params, tokens)


@pytest.mark.parametrize("remat", ["none", "full", "dots"])
def test_whole_model_matches_xla_attention(remat):
  """Also under jax.checkpoint: the custom VJP's saved probabilities recomputed or saved."""
  cfg = dict(TINY, remat=remat)
  params = M.init_params(cfg, jax.random.key(0))
  tokens = jax.random.randint(jax.random.key(1), (4, 128), 0, TINY["vocab_size"])
  l0, g0 = _whole_model_xla_reference()
  l1, g1 = _loss_and_grads(dict(cfg, attention_impl="blocked"), params, tokens)
  np.testing.assert_allclose(l1, l0, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), g1, g0)


def test_under_a_mesh_equals_unsharded_xla():
  """Batch over data x fsdp, heads and kv heads over tensor (XLA's sharding propagation)."""
  cfg = dict(TINY, num_layers=1)
  params = M.init_params(cfg, jax.random.key(0))
  tokens = jax.random.randint(jax.random.key(1), (4, 128), 0, TINY["vocab_size"])
  l0, g0 = _loss_and_grads(dict(cfg, attention_impl="xla"), params, tokens)
  mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
  blocked = dict(cfg, attention_impl="blocked")
  p = jax.device_put(params, sharding.param_shardings(blocked, mesh))
  t = jax.device_put(tokens, sharding.batch_sharding(mesh))
  l1, g1 = _loss_and_grads(blocked, p, t, mesh)
  np.testing.assert_allclose(l1, l0, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), g1, g0)
