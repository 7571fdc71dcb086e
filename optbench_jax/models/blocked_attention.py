"""Exact causal attention over query blocks, in plain XLA: the masked half is never computed.

``model.attention_impl='blocked'`` (and ``auto`` on CPU). The sequence is cut
into n query blocks of c rows (c = ``causal_block(S)``). Query block i only
attends to the keys it can see, [0, (i+1) c):

  P_i = softmax(mask_i(Q_i K_{<=i}^T / sqrt(hd))),   O_i = P_i V_{<=i}

where mask_i hides the keys after each query inside the diagonal c x c tile.
Every row's softmax covers all of its visible keys at once, so this is the
same function as ``jax.nn.dot_product_attention(is_causal=True)``, not an
online-softmax approximation. Only the float rounding differs (tested:
``tests/models/test_blocked_attention.py``). The score and matmul work is
(n + 1) / (2 n) of the full [S, S] computation: 5/8 with n = 4 blocks.
The gradient is a hand-written VJP over the same blocks (``_attention_bwd``,
the FlashAttention backward equations with the saved P_i). The saved softmax
outputs are the same fraction of the full [B, H, S, S]. Against JAX's
autodiff of the blocks it avoids the pads and adds of the sliced keys'
gradients, and it hands XLA:CPU plain (materialised-transpose) dots: the
whole small-shape train step got 7-10% faster (BUILD_NOTES).

Why it exists: on CPU, XLA materialises the full masked [B, H, S, S] scores,
and a PyTorch peer's fused CPU attention (which skips the masked blocks) was
~3.7x faster for the fwd+bwd of 4 layers of our small benchmark shape
(BUILD_NOTES.md, "CPU throughput, second pass"). On GPU and TPU the fused
kernels (cuDNN, splash) do the same skipping in one kernel, and ``auto`` picks
those there.

GQA: query head h reads kv head h // (H / Hkv), as in XLA's attention.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

MIN_BLOCK = 32      # smaller tiles lose more to per-dot overhead than they skip (measured)


def causal_block(seq_len: int) -> int:
  """The query block c for ``seq_len``: S/4 up to S = 512, S/8 beyond (8 blocks bound the unroll).

  Measured fwd+bwd on CPU (BUILD_NOTES.md): S = 128, 256 are fastest with 4
  blocks, S = 1024 with 4-8. Falls back to fewer blocks when they would not
  divide S or be shorter than 32 rows, and to one block (plain attention).
  """
  for n in ((4, 2) if seq_len <= 512 else (8, 4, 2)):
    if seq_len % n == 0 and seq_len // n >= MIN_BLOCK:
      return seq_len // n
  return seq_len


def computed_fraction(seq_len: int) -> float:
  """The fraction (n + 1) / (2 n) of the [S, S] scores the blocks compute (and save)."""
  n = seq_len // causal_block(seq_len)
  return (n + 1) / (2 * n)


def blocked_causal_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                             block: int | None = None) -> jax.Array:
  """Causal softmax(q k^T / sqrt(hd)) v; q [B, S, H, hd], k, v [B, S, Hkv, hd] -> [B, S, H, hd].

  ``block``: the query block c (a divisor of S; default ``causal_block(S)``).
  Scores and softmax are computed in float32 when the inputs are lower
  precision, as XLA's attention does; the output has q's dtype.
  """
  b, s, h, hd = q.shape
  hkv = k.shape[2]
  if h % hkv:
    raise ValueError(f"blocked attention: {h} query heads are not a multiple of {hkv} kv heads")
  block = causal_block(s) if block is None else block
  if s % block:
    raise ValueError(f"blocked attention: block {block} does not divide the sequence length {s}")
  groups = h // hkv
  scale = jnp.asarray(1.0 / math.sqrt(hd), q.dtype)
  # Heads first: q [B, Hkv, G, S, hd] (a kv head's G query heads next to each
  # other), k and v [B, Hkv, S, hd].
  qh = (q * scale).reshape(b, s, hkv, groups, hd).transpose(0, 2, 3, 1, 4)
  kh, vh = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
  out = _attention(qh, kh, vh, block)                     # [B, Hkv, G, S, hd]
  return out.transpose(0, 3, 1, 2, 4).reshape(b, s, h, hd).astype(q.dtype)


def _rows(x: jax.Array, i: int, block: int) -> jax.Array:
  """Query block i of x [B, Hkv, G, S, ...] as the rows of one matmul: [B, Hkv, G c, ...]."""
  part = x[:, :, :, i * block:(i + 1) * block]
  return part.reshape(part.shape[:2] + (-1,) + part.shape[4:])


def _visible(i: int, block: int, groups: int) -> np.ndarray:
  """[G c, (i + 1) c]: which keys query block i's rows see (a constant)."""
  seen = np.concatenate([np.ones((block, i * block), bool),
                         np.tril(np.ones((block, block), bool))], axis=1)
  return np.tile(seen, (groups, 1))


def _transposed(x: jax.Array) -> jax.Array:
  """x^T over the last two axes, materialised.

  The barrier keeps XLA from folding the transpose into the next dot as a
  transposed operand: XLA:CPU runs those batched dots on Eigen, slower than
  a copy plus a plain dot (measured in the whole step; BUILD_NOTES).
  """
  return jax.lax.optimization_barrier(jnp.swapaxes(x, -1, -2))


def _forward(qh, kh, vh, block):
  """Per query block i: P_i = softmax(mask_i(Q_i K_{<=i}^T)), O_i = P_i V_{<=i}."""
  b, hkv, groups, s, hd = qh.shape
  outputs, probs = [], []
  for i in range(s // block):
    end = (i + 1) * block
    scores = jnp.einsum("bgqd,bgkd->bgqk", _rows(qh, i, block), kh[:, :, :end],
                        preferred_element_type=jnp.float32)
    p = jax.nn.softmax(jnp.where(_visible(i, block, groups), scores, -jnp.inf), axis=-1)
    out = jnp.einsum("bgqk,bgkd->bgqd", p.astype(vh.dtype), vh[:, :, :end])
    outputs.append(out.reshape(b, hkv, groups, block, hd))
    probs.append(p)
  return jnp.concatenate(outputs, axis=3), probs


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _attention(qh, kh, vh, block):
  return _forward(qh, kh, vh, block)[0]


def _attention_fwd(qh, kh, vh, block):
  out, probs = _forward(qh, kh, vh, block)
  return out, (qh, kh, vh, out, probs)


def _attention_bwd(block, residuals, d_out):
  """The softmax-attention VJP per query block (Dao et al. 2022, FlashAttention, Alg. 4):

    delta = rowsum(dO * O),  dV_{<=i} += P_i^T dO_i,  dP_i = dO_i V_{<=i}^T,
    dS_i = P_i * (dP_i - delta_i),  dQ_i = dS_i K_{<=i},  dK_{<=i} += dS_i^T Q_i,

  with the saved P_i (no recomputation). dK and dV are summed per key block.
  """
  qh, kh, vh, out, probs = residuals
  b, hkv, groups, s, hd = qh.shape
  n = s // block
  delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1, keepdims=True)
  dq, dk, dv = [], [None] * n, [None] * n
  for i, p in enumerate(probs):
    end = (i + 1) * block
    do_i, q_i, delta_i = _rows(d_out, i, block), _rows(qh, i, block), _rows(delta, i, block)
    dv_i = jnp.einsum("bgkq,bgqd->bgkd", _transposed(p).astype(vh.dtype), do_i,
                      preferred_element_type=jnp.float32)
    dp = jnp.einsum("bgqd,bgkd->bgqk", do_i, vh[:, :, :end], preferred_element_type=jnp.float32)
    ds = (p * (dp - delta_i)).astype(qh.dtype)
    dq.append(jnp.einsum("bgqk,bgkd->bgqd", ds, kh[:, :, :end],
                         preferred_element_type=jnp.float32).reshape(b, hkv, groups, block, hd))
    dk_i = jnp.einsum("bgkq,bgqd->bgkd", _transposed(ds), q_i,
                      preferred_element_type=jnp.float32)
    for j in range(i + 1):
      keys = slice(j * block, (j + 1) * block)
      dv[j] = dv_i[:, :, keys] if dv[j] is None else dv[j] + dv_i[:, :, keys]
      dk[j] = dk_i[:, :, keys] if dk[j] is None else dk[j] + dk_i[:, :, keys]
  return (jnp.concatenate(dq, axis=3).astype(qh.dtype),
          jnp.concatenate(dk, axis=2).astype(kh.dtype),
          jnp.concatenate(dv, axis=2).astype(vh.dtype))


_attention.defvjp(_attention_fwd, _attention_bwd)
