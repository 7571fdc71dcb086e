"""LM loss against a NumPy reference: masking, z-loss, numerical stability."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optbench_jax.models import losses


def _reference(logits, targets, mask, z):
  logits = np.asarray(logits, np.float64)
  m = logits.max(-1, keepdims=True)
  lse = (m + np.log(np.exp(logits - m).sum(-1, keepdims=True)))[..., 0]
  ce = lse - np.take_along_axis(logits, np.asarray(targets)[..., None], -1)[..., 0]
  return (np.sum(ce * mask) + z * np.sum(lse ** 2 * mask)) / np.sum(mask)


def test_matches_reference_with_mask_and_z_loss():
  logits = 3 * jax.random.normal(jax.random.key(0), (2, 5, 11))
  targets = jax.random.randint(jax.random.key(1), (2, 5), 0, 11)
  mask = np.array([[1, 1, 1, 0, 0], [1, 0, 1, 1, 1]], np.float32)
  loss, metrics = jax.jit(losses.lm_loss)(logits, targets, mask, 1e-2)
  np.testing.assert_allclose(loss, _reference(logits, targets, mask, 1e-2), rtol=1e-5)
  np.testing.assert_allclose(metrics["cross_entropy"], _reference(logits, targets, mask, 0.0),
                             rtol=1e-5)
  assert float(metrics["num_tokens"]) == 7.0
  plain, _ = losses.lm_loss(logits, targets)
  np.testing.assert_allclose(plain, _reference(logits, targets, np.ones((2, 5)), 0.0), rtol=1e-5)


def test_stable_for_huge_logits_and_bf16_input():
  logits = jnp.array([[[1e4, 1e4 - 1.0, -1e4]]], jnp.float32)
  loss, _ = losses.lm_loss(logits, jnp.array([[1]]))
  # -log(e^-1 / (1 + e^-1)); float32 spacing at 1e4 is ~1e-3
  np.testing.assert_allclose(loss, np.log1p(np.e), atol=2e-3)
  small = jnp.array([[[2.0, 1.0, -3.0]]])
  low, _ = losses.lm_loss(small.astype(jnp.bfloat16), jnp.array([[1]]))
  assert low.dtype == jnp.float32
  np.testing.assert_allclose(low, losses.lm_loss(small, jnp.array([[1]]))[0], rtol=1e-6)


def test_shape_mismatch():
  with pytest.raises(ValueError, match="disagree"):
    losses.lm_loss(jnp.zeros((2, 3, 4)), jnp.zeros((2, 4), jnp.int32))
