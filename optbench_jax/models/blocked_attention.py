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
The gradient is JAX's autodiff of these blocks. The saved softmax outputs are
the same fraction of the full [B, H, S, S].

Why it exists: on CPU, XLA materialises the full masked [B, H, S, S] scores,
and a PyTorch peer's fused CPU attention (which skips the masked blocks) was
~3.7x faster for the fwd+bwd of 4 layers of our small benchmark shape
(BUILD_NOTES.md, "CPU throughput, second pass"). On GPU and TPU the fused
kernels (cuDNN, splash) do the same skipping in one kernel, and ``auto`` picks
those there.

GQA: query head h reads kv head h // (H / Hkv), as in XLA's attention.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

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
  # Heads first. A kv head's G query heads are stacked along the rows of one
  # 4-D matmul: q block [B, Hkv, G c, hd] against k [B, Hkv, e, hd].
  qh = (q * scale).reshape(b, s, hkv, groups, hd).transpose(0, 2, 3, 1, 4)
  kh, vh = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
  diagonal = jnp.tril(jnp.ones((block, block), bool))
  outputs = []
  for i in range(s // block):
    end = (i + 1) * block
    rows = qh[:, :, :, i * block:end].reshape(b, hkv, groups * block, hd)
    scores = jnp.einsum("bgqd,bgkd->bgqk", rows, kh[:, :, :end],
                        preferred_element_type=jnp.float32)
    visible = jnp.concatenate([jnp.ones((block, i * block), bool), diagonal], axis=1)
    visible = jnp.tile(visible, (groups, 1))
    probs = jax.nn.softmax(jnp.where(visible, scores, -jnp.inf), axis=-1)
    out = jnp.einsum("bgqk,bgkd->bgqd", probs.astype(v.dtype), vh[:, :, :end])
    outputs.append(out.reshape(b, hkv, groups, block, hd))
  out = jnp.concatenate(outputs, axis=3)                  # [B, Hkv, G, S, hd]
  return out.transpose(0, 3, 1, 2, 4).reshape(b, s, h, hd).astype(q.dtype)
