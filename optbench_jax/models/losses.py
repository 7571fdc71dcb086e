"""Language-model loss: token cross-entropy with an optional output z-loss.

  lse_t = logsumexp(logits_t)                     (float32, max-shifted)
  ce_t  = lse_t - logits_t[target_t]
  loss  = sum_t m_t ce_t / sum_t m_t  +  z_loss * sum_t m_t lse_t^2 / sum_t m_t

The z-loss (PaLM, Chowdhery et al. 2022, coefficient 1e-4 there) keeps the
softmax normaliser near 1 and stabilises low-precision training. ``mask``
weights tokens (padding / document masking); None means all ones.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def lm_loss(logits: jax.Array, targets: jax.Array, mask: jax.Array | None = None,
            z_loss: float = 0.0):
  """Mean masked cross-entropy (+ z-loss). logits [..., V]; targets int [...].

  Returns (loss, metrics) with metrics ``cross_entropy`` (masked mean, without
  the z-loss), ``z_loss`` (the added term), ``accuracy`` (top-1, masked mean)
  and ``num_tokens`` (sum of the mask), all float32 scalars.
  """
  if logits.shape[:-1] != targets.shape:
    raise ValueError(f"logits {logits.shape} and targets {targets.shape} disagree")
  logits = logits.astype(jnp.float32)
  weights = jnp.ones(targets.shape, jnp.float32) if mask is None else mask.astype(jnp.float32)
  lse = jax.nn.logsumexp(logits, axis=-1)
  target_logit = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
  num_tokens = jnp.sum(weights)
  denom = jnp.maximum(num_tokens, 1.0)
  cross_entropy = jnp.sum((lse - target_logit) * weights) / denom
  z_term = z_loss * jnp.sum(jnp.square(lse) * weights) / denom
  correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
  metrics = dict(cross_entropy=cross_entropy, z_loss=z_term,
                 accuracy=jnp.sum(correct * weights) / denom, num_tokens=num_tokens)
  return cross_entropy + z_term, metrics
