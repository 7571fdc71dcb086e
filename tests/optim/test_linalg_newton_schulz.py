"""Newton-Schulz orthogonalisation against a float64 NumPy reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optbench_jax.optim import linalg


def reference_newton_schulz(g, coefficients, safety=1.0, eps=1e-7):
  """Float64 quintic NS on one matrix, from the update equations."""
  x = np.asarray(g, np.float64)
  tall = x.shape[0] > x.shape[1]
  if tall:
    x = x.T
  x = x / (safety * np.linalg.norm(x) + eps)
  for a, b, c in coefficients:
    gram = x @ x.T
    x = a * x + (b * gram + c * gram @ gram) @ x
  return x.T if tall else x


def well_conditioned(shape, seed=0):
  """Random matrices with singular values spread over [0.1, 1] x 3."""
  rng = np.random.default_rng(seed)
  *batch, m, n = shape
  k = min(m, n)
  out = np.empty(shape)
  for idx in np.ndindex(*batch):
    u, _ = np.linalg.qr(rng.normal(size=(m, k)))
    v, _ = np.linalg.qr(rng.normal(size=(n, k)))
    out[idx] = (u * np.linspace(0.3, 3.0, k)) @ v.T
  return out


def singular_values(x):
  return np.linalg.svd(np.asarray(x, np.float64), compute_uv=False)


@pytest.mark.parametrize("shape", [(16, 40), (40, 16), (24, 24)])
def test_classic_matches_reference_and_band(shape):
  g = well_conditioned(shape)
  out = linalg.newton_schulz(jnp.asarray(g, jnp.float32))
  ref = reference_newton_schulz(g, [linalg.CLASSIC_COEFFICIENTS] * 5)
  assert out.shape == shape and out.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-4, atol=1e-5)
  s = singular_values(out)
  # Known band of the classic quintic after 5 steps on a well-conditioned input.
  assert s.min() > 0.67 and s.max() < 1.14, s
  # Same singular vectors as the polar factor U V^T.
  u, _, vt = np.linalg.svd(g, full_matrices=False)
  polar = u @ vt
  cos = np.sum(np.asarray(out) * polar) / (np.linalg.norm(out) * np.linalg.norm(polar))
  assert cos > 0.98


def test_polar_express_matches_reference_and_is_tighter():
  g = well_conditioned((20, 48), seed=3)
  coeffs, safety = linalg.newton_schulz_schedule("polar_express", 5)
  out = linalg.newton_schulz(jnp.asarray(g, jnp.float32), coefficients="polar_express")
  ref = reference_newton_schulz(g, coeffs, safety)
  np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-4, atol=1e-5)
  s = singular_values(out)
  assert s.min() > 0.85 and s.max() < 1.13, s
  # Eight steps converge to the polar factor itself.
  s8 = singular_values(linalg.newton_schulz(jnp.asarray(g, jnp.float32), 8, "polar_express"))
  np.testing.assert_allclose(s8, 1.0, atol=2e-3)
  # The safety factor is applied to all but the last published polynomial.
  assert coeffs[0][0] == pytest.approx(8.28721201814563 / 1.01)
  assert linalg.POLAR_EXPRESS_COEFFICIENTS[-1] == (1.875, -1.25, 0.375)


def test_explicit_coefficients_and_repeat_last():
  table = ((3.0, -3.2, 1.2), (2.0, -1.5, 0.5))
  schedule, safety = linalg.newton_schulz_schedule(table, 4)
  assert schedule == (table[0], table[1], table[1], table[1]) and safety == 1.0
  g = well_conditioned((6, 9), seed=5)
  out = linalg.newton_schulz(jnp.asarray(g, jnp.float32), 4, table)
  np.testing.assert_allclose(np.asarray(out), reference_newton_schulz(g, schedule),
                             rtol=1e-4, atol=1e-5)
  single, _ = linalg.newton_schulz_schedule((3.4445, -4.775, 2.0315), 3)
  assert single == ((3.4445, -4.775, 2.0315),) * 3


def test_batch_axes_equal_loop_over_matrices():
  g = jnp.asarray(well_conditioned((2, 3, 12, 7), seed=2), jnp.float32)
  out = jax.jit(linalg.newton_schulz)(g)
  for i in range(2):
    for j in range(3):
      np.testing.assert_allclose(out[i, j], linalg.newton_schulz(g[i, j]), rtol=1e-5, atol=1e-6)


def test_bf16_option_and_dtypes():
  g = jnp.asarray(well_conditioned((16, 32), seed=4), jnp.float32)
  out = linalg.newton_schulz(g, dtype=jnp.bfloat16)
  assert out.dtype == jnp.float32
  s = singular_values(out)
  assert s.min() > 0.6 and s.max() < 1.25, s
  out16 = linalg.newton_schulz(g.astype(jnp.bfloat16))
  assert out16.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(out16, np.float32), linalg.newton_schulz(g),
                             atol=3e-2)


def test_zero_matrix_maps_to_zero():
  assert not np.any(np.asarray(linalg.newton_schulz(jnp.zeros((4, 6)))))


@pytest.mark.parametrize("kwargs, match", [
    (dict(steps=0), "ns_steps"),
    (dict(steps=2.5), "ns_steps"),
    (dict(coefficients="quartic"), "preset"),
    (dict(coefficients=(1.0, 2.0)), "triple"),
])
def test_bad_arguments_raise(kwargs, match):
  with pytest.raises(ValueError, match=match):
    linalg.newton_schulz(jnp.ones((3, 4)), **kwargs)
  with pytest.raises(ValueError, match="matrix"):
    linalg.newton_schulz(jnp.ones((3,)))
