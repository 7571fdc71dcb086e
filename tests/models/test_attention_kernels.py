"""model.attention_impl: resolution per backend, the trainer's early refusal, and the splash
kernel (Pallas interpret mode on CPU) against XLA attention: forward, gradients, GQA/MQA,
causality. The whole-model and mesh checks are in test_attention_kernels_model.py.

Tolerance: float32 throughout; the kernel is exact attention with an online
softmax, so it differs from XLA's only in summation order: outputs and
gradients agree to atol 2e-5 / rtol 1e-4.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base
from optbench_jax import models as M
from optbench_jax.models import attention_kernels as K
from optbench_jax.train import assembly
from optbench_jax.config import ConfigError

ATOL, RTOL = 2e-5, 1e-4
TINY = dict(num_layers=2, d_model=64, num_heads=4, num_kv_heads=2, ffn_dim=128, vocab_size=128)


def _qkv(b, s, h, hkv, hd, seed=0):
  keys = jax.random.split(jax.random.key(seed), 3)
  return (jax.random.normal(keys[0], (b, s, h, hd)),
          jax.random.normal(keys[1], (b, s, hkv, hd)),
          jax.random.normal(keys[2], (b, s, hkv, hd)))


def _xla(q, k, v):
  return jax.nn.dot_product_attention(q, k, v, is_causal=True)


def _loss(attn):
  # A non-uniform cotangent, so every output element's gradient path is exercised.
  return lambda q, k, v: jnp.sum(attn(q, k, v) * jnp.cos(jnp.arange(q.shape[-1])))


# GQA over 2 x 2 blocks (one fully masked, skipped by the kernel), and one-kv-head MQA.
@pytest.mark.parametrize("heads,kv_heads,seq,block", [(4, 2, 256, 128), (2, 1, 128, 128)])
def test_splash_matches_xla_forward_and_grads(heads, kv_heads, seq, block):
  q, k, v = _qkv(1, seq, heads, kv_heads, 16)
  splash = lambda q, k, v: K.splash_attention(q, k, v, interpret=True, block=block)
  np.testing.assert_allclose(jax.jit(splash)(q, k, v), _xla(q, k, v), atol=ATOL, rtol=RTOL)
  grads = jax.jit(jax.grad(_loss(splash), argnums=(0, 1, 2)))(q, k, v)
  expected = jax.grad(_loss(_xla), argnums=(0, 1, 2))(q, k, v)
  for got, want in zip(grads, expected):
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=RTOL)


def test_splash_is_causal():
  # Changing the last position's k, v must not change any earlier output.
  q, k, v = _qkv(1, 128, 2, 2, 16)
  splash = jax.jit(lambda q, k, v: K.splash_attention(q, k, v, interpret=True))
  out = splash(q, k, v)
  out2 = splash(q, k.at[:, -1].add(3.0), v.at[:, -1].add(3.0))
  np.testing.assert_array_equal(out[:, :-1], out2[:, :-1])
  assert not np.allclose(out[:, -1], out2[:, -1])


def test_resolve_per_backend():
  assert K.resolve("auto", "cpu", "float32", 64) == "blocked"
  assert K.resolve("blocked", "gpu", "bfloat16", 64) == "blocked"   # plain XLA: every backend
  assert K.resolve("auto", "gpu", "bfloat16", 64) == "cudnn"
  assert K.resolve("auto", "gpu", "float32", 64) == "xla"      # cuDNN flash has no float32
  assert K.resolve("auto", "gpu", "bfloat16", 12) == "xla"     # head_dim not a multiple of 8
  assert K.resolve("auto", "tpu", "bfloat16", 64) == "splash"
  assert K.resolve("splash", "cpu", "float32", 64) == "splash"   # interpret mode
  assert K.resolve("xla", "gpu", "bfloat16", 64) == "xla"
  for impl, platform, dtype, hd, match in [
      ("cudnn", "cpu", "bfloat16", 64, "needs a GPU"),
      ("cudnn", "tpu", "bfloat16", 64, "needs a GPU"),
      ("cudnn", "gpu", "float32", 64, "bfloat16 or float16"),
      ("cudnn", "gpu", "bfloat16", 160, "multiple of 8"),
      ("splash", "gpu", "bfloat16", 64, "Pallas TPU kernel")]:
    with pytest.raises(ValueError, match=rf"model.attention_impl='{impl}': .*{match}"):
      K.resolve(impl, platform, dtype, hd)


def test_bad_value_names_the_key():
  with pytest.raises(ValueError, match=r"model.attention_impl='flash': must be one of"):
    M.ModelSpec.from_config(dict(TINY, attention_impl="flash"))


def _config(**model):
  c = base.base_config()
  c.model.update(TINY, **model)
  c.data.update(seq_len=128, global_batch_size=8, synthetic_vocab_size=128)
  c.mesh.update(data=1)
  return c


def test_trainer_refuses_before_compiling():
  cpu = jax.devices()[:1]
  with pytest.raises(ConfigError, match=r"config.model.attention_impl='cudnn': .*needs a GPU"):
    assembly.build(_config(attention_impl="cudnn"), cpu)
  bad_seq = _config(attention_impl="splash")
  bad_seq.data.seq_len = 96
  with pytest.raises(ConfigError, match=r"multiple of 128, got 96"):
    assembly.build(bad_seq, cpu)
  assert assembly.build(_config(attention_impl="splash"), cpu).attention_impl == "splash"
  assert assembly.build(_config(), cpu).attention_impl == "blocked"   # auto on CPU
