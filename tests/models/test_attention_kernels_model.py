"""model.attention_impl='splash' in a whole model (Pallas interpret mode on CPU) == XLA attention:
loss, every parameter gradient, QK-clip's max logits, full remat, and under a mesh (shard_map:
heads split over tensor, or kept whole when the kv heads cannot follow).

Tolerance: float32; loss rtol 1e-5, gradients atol 2e-5 / rtol 1e-4 (summation order only).
"""

import jax
import numpy as np
import pytest

from optbench_jax import models as M
from optbench_jax.models import sharding

ATOL, RTOL = 2e-5, 1e-4
TINY = dict(num_layers=2, d_model=64, num_heads=4, num_kv_heads=2, ffn_dim=128, vocab_size=128)


def _loss_and_grads(cfg, params, tokens, mesh=None, report_max_logits=False):
  model = M.build_model(cfg, mesh, report_max_logits=report_max_logits)

  def loss(p):
    logits, aux = model.apply({"params": p}, tokens)
    return M.losses.lm_loss(logits, tokens)[0], aux
  (value, aux), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
  return value, grads, aux


def _assert_close(a, b, rtol=RTOL, atol=ATOL):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=atol), a, b)


def test_tiny_model_splash_equals_xla():
  """A whole 2-layer GQA model: loss, every parameter gradient and the QK-clip max logits."""
  params = M.init_params(TINY, jax.random.key(0))
  tokens = jax.random.randint(jax.random.key(1), (2, 128), 0, 128)
  l0, g0, a0 = _loss_and_grads(dict(TINY, attention_impl="xla"), params, tokens,
                               report_max_logits=True)
  l1, g1, a1 = _loss_and_grads(dict(TINY, attention_impl="splash"), params, tokens,
                               report_max_logits=True)
  np.testing.assert_allclose(l1, l0, rtol=1e-5)
  _assert_close(g1, g0)
  np.testing.assert_allclose(a1["attn_max_logits"], a0["attn_max_logits"], rtol=1e-6)


@pytest.mark.parametrize("mesh_shape,extra", [
    (dict(data=2, fsdp=2, tensor=2), dict()),   # heads and kv heads split over tensor
    # kv heads (2) cannot split over tensor=4: heads kept whole; and with full remat.
    (dict(data=2, tensor=4), dict(remat="full")),
])
def test_splash_under_a_mesh_equals_unsharded_xla(mesh_shape, extra):
  cfg = dict(TINY, num_layers=1, **extra)
  params = M.init_params(cfg, jax.random.key(0))
  tokens = jax.random.randint(jax.random.key(1), (4, 128), 0, 128)
  l0, g0, _ = _loss_and_grads(dict(cfg, attention_impl="xla"), params, tokens)
  mesh = sharding.make_mesh(**mesh_shape)
  splash = dict(cfg, attention_impl="splash")
  p = jax.device_put(params, sharding.param_shardings(splash, mesh))
  t = jax.device_put(tokens, sharding.batch_sharding(mesh))
  l1, g1, _ = _loss_and_grads(splash, p, t, mesh)
  np.testing.assert_allclose(l1, l0, rtol=1e-5)
  _assert_close(g1, g0)
