"""QK-clip (the "Clip" of MuonClip; Kimi Team, "Kimi K2: Open Agentic Intelligence", 2025,
arXiv 2507.20534, Sec. 2.1 and Algorithm 1), as a parameter update after the optimizer step.

After ``params = params + updates``, every attention head h whose largest
pre-softmax logit in this step's forward pass exceeded ``tau``,

    S_h = max_{b, j <= i} q^h_{b,i} . k^h_{b,j} / sqrt(hd)  >  tau,

has its query and key projections shrunk so that its logits scale by

    gamma_h = min(1, tau / S_h)

(with the step's inputs its S_h becomes exactly tau). Heads with S_h <= tau
have gamma_h = 1. Multi-head attention (the paper's alpha = 1/2): W_q^h *=
sqrt(gamma_h), W_k^h *= sqrt(gamma_h).

Grouped-query attention (an extension; K2 uses MLA, whose shared rotary key it
leaves unscaled and compensates in q^R, which is the same idea): the G = H /
Hkv query heads of kv group g share W_k^g, so scale

    W_k^g *= c_g = sqrt(min_{h in g} gamma_h),    W_q^h *= gamma_h / c_g,

and every head's logits q^h . k^g scale by exactly gamma_h: the most clipped
head of the group gets sqrt(gamma_h) on both sides (the MHA rule; G = 1 is
MHA), the others keep their logits or are clipped to tau with a larger share
on q. A group with no clipped head is untouched.

Only the parameters change, never the optimizer state, so it composes with any
optimizer (an optimizer carrying its own copy of the iterate, such as
schedule-free's z sequence, keeps that copy unclipped). The kernels keep their
shape and sharding: the per-head factor is repeated over the head's hd columns
and multiplied in, no reshape of the sharded axis. Kernels are
``layers/attn/{q,k}_proj/kernel`` of shape (L, d, H hd) and (L, d, Hkv hd)
(``models`` tree doc); column h hd + c belongs to head h.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from optbench_jax.optim import labels

Q_PATH = ("layers", "attn", "q_proj", "kernel")
K_PATH = ("layers", "attn", "k_proj", "kernel")


def head_scales(max_logits: jax.Array, tau: float, num_kv_heads: int
                ) -> tuple[jax.Array, jax.Array]:
  """(q scale [L, H], k scale [L, Hkv]) for the max logits S [L, H]; see the module doc."""
  s = max_logits.astype(jnp.float32)
  layers, h = s.shape
  # S > tau > 0 (a NaN S compares False): the division is safe where it is used.
  gamma = jnp.where(s > tau, tau / jnp.where(s > tau, s, 1.0), 1.0)
  grouped = gamma.reshape(layers, num_kv_heads, h // num_kv_heads)
  k_scale = jnp.sqrt(jnp.min(grouped, axis=-1))
  q_scale = (grouped / k_scale[..., None]).reshape(layers, h)
  return q_scale, k_scale


def clip(params: Any, max_logits: jax.Array, tau: float, num_heads: int, num_kv_heads: int
         ) -> Any:
  """``params`` with the q/k kernels of every head with S_h > tau rescaled (module doc)."""
  if max_logits.shape[-1] != num_heads:
    raise ValueError(f"max_logits has {max_logits.shape[-1]} heads, the model {num_heads}")
  q_scale, k_scale = head_scales(max_logits, tau, num_kv_heads)
  found = set()

  def scale(path, kernel):
    keys = labels.path_keys(path)
    if keys not in (Q_PATH, K_PATH):
      return kernel
    found.add(keys)
    per_head = q_scale if keys == Q_PATH else k_scale
    head_dim = kernel.shape[-1] // per_head.shape[-1]
    columns = jnp.repeat(per_head, head_dim, axis=-1)          # [L, heads hd]
    return (kernel.astype(jnp.float32) * columns[:, None, :]).astype(kernel.dtype)

  clipped = jax.tree_util.tree_map_with_path(scale, params)
  if found != {Q_PATH, K_PATH}:
    raise ValueError(f"QK-clip needs the kernels {'/'.join(Q_PATH)} and {'/'.join(K_PATH)} "
                     f"in the parameter tree")
  return clipped


def clipped_heads(max_logits: jax.Array, tau: float) -> jax.Array:
  """How many (layer, head) pairs have S_h > tau (int32)."""
  return jnp.sum(max_logits > tau).astype(jnp.int32)
