"""RoPE: rotate-half layout, norm preservation, relative-position property."""

import jax
import jax.numpy as jnp
import numpy as np

from optbench_jax.models import attention


def test_rope_matches_complex_rotation_and_preserves_norm():
  x = jax.random.normal(jax.random.key(0), (5, 2, 8))
  pos = jnp.arange(5) * 3
  got = attention.apply_rope(x, pos, theta=100.0)
  w = 100.0 ** (-np.arange(0, 8, 2) / 8)
  xn = np.asarray(x, np.float64)
  z = (xn[..., :4] + 1j * xn[..., 4:]) * np.exp(1j * np.asarray(pos)[:, None, None] * w)
  np.testing.assert_allclose(got, np.concatenate([z.real, z.imag], -1), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(jnp.linalg.norm(got, axis=-1), jnp.linalg.norm(x, axis=-1),
                             rtol=1e-5)
  np.testing.assert_array_equal(attention.apply_rope(x, jnp.zeros(5, jnp.int32)), x)


def test_rope_scores_depend_only_on_relative_position():
  q = jax.random.normal(jax.random.key(1), (1, 1, 16))
  k = jax.random.normal(jax.random.key(2), (1, 1, 16))
  def score(m, n):
    qm = attention.apply_rope(q, jnp.array([m]))
    kn = attention.apply_rope(k, jnp.array([n]))
    return float(jnp.sum(qm * kn))
  base = score(7, 3)
  for shift in (1, 10, 100):
    np.testing.assert_allclose(score(7 + shift, 3 + shift), base, rtol=1e-4)
  assert abs(score(8, 3) - base) > 1e-3


def test_rope_tables_are_constants_for_static_positions_and_match_traced_ones():
  x = jax.random.normal(jax.random.key(3), (2, 64, 2, 16))
  cos, sin = attention.rope_tables(np.arange(64), 16)
  assert isinstance(cos, np.ndarray) and cos.dtype == np.float32 and cos.shape == (64, 1, 16)
  static = attention.apply_rope(x, np.arange(64))
  traced = jax.jit(attention.apply_rope)(x, jnp.arange(64))
  np.testing.assert_allclose(static, traced, rtol=1e-5, atol=1e-5)
  hlo = jax.jit(lambda x: attention.apply_rope(x, np.arange(64))).lower(x).as_text()
  assert "cosine" not in hlo and "sine" not in hlo
  shared = attention.arange_tables(64, 16, 10000.0)   # the model's: once per shape
  assert attention.arange_tables(64, 16, 10000.0) is shared
  np.testing.assert_array_equal(shared[0], cos)
  np.testing.assert_array_equal(attention.apply_rope(x, tables=shared), static)
