"""QK-clip (Kimi K2, arXiv 2507.20534): the clip math against NumPy, and the config check."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optbench_jax import config as config_lib
from optbench_jax.train import qk_clip

L, D, HD = 2, 16, 4


def _rope(x, theta=10000.0):  # x [B, S, N, hd], rotate-half pairs (i, i + hd/2)
  s, hd = x.shape[1], x.shape[-1]
  w = theta ** (-np.arange(0, hd, 2) / hd)
  z = (x[..., :hd // 2] + 1j * x[..., hd // 2:]) * np.exp(1j * np.arange(s)[:, None, None] * w)
  return np.concatenate([z.real, z.imag], -1)


def max_logits_np(x, wq, wk, h, hkv):
  """S [H] = max over b, j <= i of rope(x Wq)^h_i . rope(x Wk)^{h // (H/Hkv)}_j / sqrt(hd)."""
  b, s, _ = x.shape
  q = _rope((x @ wq).reshape(b, s, h, HD))
  k = _rope((x @ wk).reshape(b, s, hkv, HD))
  out = np.empty(h)
  for head in range(h):
    scores = np.einsum("bid,bjd->bij", q[:, :, head], k[:, :, head // (h // hkv)])
    out[head] = np.where(np.tril(np.ones((s, s), bool)), scores, -np.inf).max() / math.sqrt(HD)
  return out


def clip_np(wq, wk, s, tau, h, hkv):
  """The K2 rule per head; GQA: kv head g x sqrt(min_{h in g} gamma_h), q head h x gamma_h / that."""
  wq, wk = wq.copy(), wk.copy()
  group = h // hkv
  for layer in range(wq.shape[0]):
    gamma = [min(1.0, tau / v) if v > tau else 1.0 for v in s[layer]]
    for g in range(hkv):
      c = math.sqrt(min(gamma[g * group:(g + 1) * group]))
      wk[layer, :, g * HD:(g + 1) * HD] *= c
      for head in range(g * group, (g + 1) * group):
        wq[layer, :, head * HD:(head + 1) * HD] *= gamma[head] / c
  return wq, wk


@pytest.mark.parametrize("h,hkv", [(4, 4), (4, 2), (4, 1)], ids=["mha", "gqa", "mqa"])
def test_clip_scales_each_head_to_tau_and_leaves_the_rest(h, hkv):
  rng = np.random.default_rng(0)
  wq = rng.normal(size=(L, D, h * HD)) * rng.uniform(0.2, 2.0, size=(1, 1, h * HD))
  wk = rng.normal(size=(L, D, hkv * HD))
  x = rng.normal(size=(L, 3, 7, D))            # each layer's (normed) attention input
  s = np.stack([max_logits_np(x[l], wq[l], wk[l], h, hkv) for l in range(L)])
  tau = float(np.median(s))                     # about half the heads are clipped
  other = rng.normal(size=(3,)).astype(np.float32)
  params = {"layers": {"attn": {"q_proj": {"kernel": jnp.asarray(wq, jnp.float32)},
                                "k_proj": {"kernel": jnp.asarray(wk, jnp.float32)},
                                "v_proj": {"kernel": jnp.asarray(wk, jnp.float32)}}},
            "final_norm": {"scale": jnp.asarray(other)}}
  clipped = jax.jit(qk_clip.clip, static_argnums=(2, 3, 4))(
      params, jnp.asarray(s, jnp.float32), tau, h, hkv)

  want_q, want_k = clip_np(wq, wk, s, tau, h, hkv)
  got_q = np.asarray(clipped["layers"]["attn"]["q_proj"]["kernel"], np.float64)
  got_k = np.asarray(clipped["layers"]["attn"]["k_proj"]["kernel"], np.float64)
  np.testing.assert_allclose(got_q, want_q, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got_k, want_k, rtol=1e-5, atol=1e-6)
  # Everything else is untouched, bit for bit.
  np.testing.assert_array_equal(clipped["layers"]["attn"]["v_proj"]["kernel"],
                                params["layers"]["attn"]["v_proj"]["kernel"])
  np.testing.assert_array_equal(clipped["final_norm"]["scale"], other)

  after = np.stack([max_logits_np(x[l], got_q[l], got_k[l], h, hkv) for l in range(L)])
  over = s > tau
  assert 0 < over.sum() < over.size
  np.testing.assert_allclose(after[over], tau, rtol=1e-4)        # clipped heads: exactly tau
  np.testing.assert_allclose(after[~over], s[~over], rtol=1e-4)  # the others keep their logits
  assert int(qk_clip.clipped_heads(jnp.asarray(s), tau)) == over.sum()
  if hkv == h:   # MHA: a head with S <= tau keeps its weights exactly (factor 1.0)
    for layer, head in zip(*np.nonzero(~over)):
      cols = slice(head * HD, (head + 1) * HD)
      np.testing.assert_array_equal(got_q[layer, :, cols], np.float32(wq[layer, :, cols]))
      np.testing.assert_array_equal(got_k[layer, :, cols], np.float32(wk[layer, :, cols]))


def test_nothing_over_tau_is_the_identity():
  rng = np.random.default_rng(1)
  params = {"layers": {"attn": {
      "q_proj": {"kernel": jnp.asarray(rng.normal(size=(L, D, 4 * HD)), jnp.bfloat16)},
      "k_proj": {"kernel": jnp.asarray(rng.normal(size=(L, D, 2 * HD)), jnp.bfloat16)}}}}
  s = jnp.asarray([[1.0, 2.0, -3.0, jnp.nan], [0.0, 5.0, 4.9, 1.0]])
  out = qk_clip.clip(params, s, 5.0, 4, 2)
  for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(params)):
    assert a.dtype == jnp.bfloat16
    np.testing.assert_array_equal(a, b)


def test_clip_needs_the_attention_kernels():
  with pytest.raises(ValueError, match="q_proj"):
    qk_clip.clip({"w": jnp.ones((2, 3))}, jnp.ones((1, 2)), 1.0, 2, 2)
  with pytest.raises(ValueError, match="heads"):
    qk_clip.clip({"w": jnp.ones((2, 3))}, jnp.ones((1, 3)), 1.0, 2, 2)


@pytest.mark.parametrize("bad", [-1.0, "100", True])
def test_config_rejects_a_bad_tau(bad):
  with pytest.raises(config_lib.ConfigError, match="qk_clip_tau must be a number >= 0"):
    config_lib.resolve({"optimizer": {"qk_clip_tau": bad}})
  config_lib.resolve({"optimizer": {"qk_clip_tau": 100.0}})
