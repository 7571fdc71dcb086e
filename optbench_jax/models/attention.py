"""Causal multi-head attention with rotary position embeddings and grouped-query heads.

RoPE (Su et al., 2021) in the *rotate-half* layout of Llama / GPT-NeoX / the
Semenov et al. code: the head dimension is split into halves (x1, x2) and
pair i = (x1[i], x2[i]) is rotated by angle p * theta^(-2i/hd):
  rope(x)_p = x * cos(p w) + rotate_half(x) * sin(p w),  rotate_half(x) = (-x2, x1).
The rotation is computed in float32 and cast back. The score q_m . k_n then
depends only on m - n (tested).

The attention itself is chosen by ``attention_impl`` (config
``model.attention_impl``) and dispatched by ``attention_kernels.attention``:
``xla`` (``jax.nn.dot_product_attention(is_causal=True)``, GQA native),
``blocked`` (``blocked_attention``: XLA ops that skip the masked half; what
``auto`` picks on CPU), or a fused kernel (cuDNN flash on GPU, Pallas splash
on TPU).

``report_max_logits=True`` (the trainer sets it for QK-clip, Kimi Team 2025,
arXiv 2507.20534) also returns, per query head h, the largest pre-softmax logit
of the call:
  S_h = max over batch b and causal pairs j <= i of  q^h_{b,i} . k^{g(h)}_{b,j} / sqrt(hd),
with q, k after RoPE, in float32, and g(h) = h // (H / Hkv) the kv head of q
head h (GQA). The scores are recomputed by an einsum next to the fused
attention (which does not expose them): one transient [B, H, S, S] float32
tensor per layer, forward only (``stop_gradient``: no backward cost). Off by
default, so the default model is unchanged.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from optbench_jax.models import attention_kernels, layers, sharding


def rope_tables(positions, head_dim: int, theta: float = 10000.0):
  """cos(p w), sin(p w) [S, 1, hd] in float32 for the positions [S] (rotate-half layout).

  Concrete positions (the model's arange(S)) give numpy constants. Computed
  inside the jitted step instead, XLA:CPU fuses the cos and sin into every
  loop that reads them and so re-evaluates them once per batch element and
  head, in each of RoPE's consumers (BUILD_NOTES, CPU throughput). Traced positions
  fall back to jnp.
  """
  try:
    positions, xp = np.asarray(positions), np
  except jax.errors.TracerArrayConversionError:
    xp = jnp
  inv_freq = theta ** (-xp.arange(0, head_dim, 2, dtype=xp.float32) / head_dim)
  angles = positions.astype(xp.float32)[:, None] * inv_freq[None, :].astype(xp.float32)
  angles = xp.concatenate([angles, angles], axis=-1)[:, None, :]
  return xp.cos(angles), xp.sin(angles)


@functools.lru_cache(maxsize=64)
def arange_tables(length: int, head_dim: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
  """``rope_tables`` of positions 0..length-1, built once per shape (read-only arrays):
  the tables every layer's q and k share."""
  tables = rope_tables(np.arange(length), head_dim, theta)
  for table in tables:
    table.setflags(write=False)
  return tables


def apply_rope(x: jax.Array, positions=None, theta: float = 10000.0,
               tables: tuple | None = None) -> jax.Array:
  """Rotates ``x`` [..., S, N, hd] by the positions [S] (rotate-half RoPE), or by the
  given ``tables`` = ``rope_tables(positions, hd, theta)``."""
  cos, sin = rope_tables(positions, x.shape[-1], theta) if tables is None else tables
  x32 = x.astype(jnp.float32)
  x1, x2 = jnp.split(x32, 2, axis=-1)
  rotated = jnp.concatenate([-x2, x1], axis=-1)
  return (x32 * cos + rotated * sin).astype(x.dtype)


class CausalSelfAttention(nn.Module):
  """q/k/v/o projections (no biases), RoPE on q and k, causal softmax attention."""
  num_heads: int
  num_kv_heads: int
  head_dim: int
  rope_theta: float
  init_std: float
  out_std: float
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  mesh: object = None
  rules: tuple = sharding.DEFAULT_RULES
  report_max_logits: bool = False
  attention_impl: str = "xla"   # resolved ModelSpec.attention_impl: xla | blocked | cudnn | splash
  # q is multiplied by this after RoPE, so the scores are query_multiplier q.k / sqrt(hd)
  # (µP's q.k / hd: 1 / sqrt(hd); models/parametrization.py). 1.0 is left out of the program.
  query_multiplier: float = 1.0

  @nn.compact
  def __call__(self, x):
    """x [B, S, d] -> y [B, S, d], or (y, S [H]) with ``report_max_logits``."""
    b, s, d = x.shape
    h, hkv, hd = self.num_heads, self.num_kv_heads, self.head_dim
    proj = lambda n, axes, std, name: layers.dense(n, std, axes, self.dtype, self.param_dtype,
                                                   name)
    x = x.reshape(b * s, d)  # projections on tokens: 2-D matmuls (layers.token_axes)
    q = proj(h * hd, ("embed", "heads"), self.init_std, "q_proj")(x).reshape(b, s, h, hd)
    k = proj(hkv * hd, ("embed", "kv_heads"), self.init_std, "k_proj")(x).reshape(b, s, hkv, hd)
    v = proj(hkv * hd, ("embed", "kv_heads"), self.init_std, "v_proj")(x).reshape(b, s, hkv, hd)
    q = sharding.constrain(q, ("batch", "seq", "act_heads", None), self.mesh, self.rules)
    k = sharding.constrain(k, ("batch", "seq", "act_kv_heads", None), self.mesh, self.rules)
    v = sharding.constrain(v, ("batch", "seq", "act_kv_heads", None), self.mesh, self.rules)
    tables = arange_tables(s, hd, float(self.rope_theta))
    q = apply_rope(q, tables=tables)
    k = apply_rope(k, tables=tables)
    if self.query_multiplier != 1.0:
      q = q * jnp.asarray(self.query_multiplier, q.dtype)
    impl = attention_kernels.resolve(self.attention_impl, sharding.platform_of(self.mesh),
                                     self.dtype, hd)
    out = attention_kernels.attention(q, k, v, impl, self.mesh, self.rules)
    out = sharding.constrain(out, ("batch", "seq", "act_heads", None), self.mesh, self.rules)
    y = proj(d, ("heads", "embed"), self.out_std, "o_proj")(out.reshape(b * s, h * hd))
    y = y.reshape(b, s, d)
    if not self.report_max_logits:
      return y
    return y, max_logits(q, k)


def max_logits(q: jax.Array, k: jax.Array) -> jax.Array:
  """S [H]: each query head's largest causal logit q_i . k_j / sqrt(hd) (float32, no grad).

  q [B, S, H, hd], k [B, S, Hkv, hd] (after RoPE); q head h reads kv head
  h // (H / Hkv), as in ``jax.nn.dot_product_attention``.
  """
  b, s, h, hd = q.shape
  hkv = k.shape[2]
  q = jax.lax.stop_gradient(q).astype(jnp.float32).reshape(b, s, hkv, h // hkv, hd)
  k = jax.lax.stop_gradient(k).astype(jnp.float32)
  scores = jnp.einsum("bqgrd,bkgd->bgrqk", q, k) / jnp.sqrt(jnp.float32(hd))
  causal = jnp.tril(jnp.ones((s, s), bool))
  scores = jnp.where(causal, scores, -jnp.inf)
  return jnp.max(scores, axis=(0, 3, 4)).reshape(h)
