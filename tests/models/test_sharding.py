"""Logical-axis sharding: rule resolution, divisibility fallback, sharded forward == unsharded."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from optbench_jax import models as M
from optbench_jax.models import sharding

CFG = dict(num_layers=2, d_model=32, num_heads=4, num_kv_heads=2, ffn_dim=64, vocab_size=128,
           tie_embeddings=False)


def test_make_mesh_fill_and_errors():
  mesh = sharding.make_mesh(data=-1, fsdp=2, tensor=2)
  assert dict(mesh.shape) == dict(data=2, fsdp=2, tensor=2, expert=1)
  with pytest.raises(ValueError, match="needs 16 devices"):
    sharding.make_mesh(data=4, fsdp=4)
  with pytest.raises(ValueError, match="at most one -1"):
    sharding.make_mesh(data=-1, fsdp=-1)


def test_mesh_spec_rules_and_fallback():
  mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
  assert sharding.mesh_spec(("layers", "embed", "mlp"), (2, 32, 64), mesh) == P(None, "fsdp",
                                                                                 "tensor")
  # 3 is not divisible by tensor=2: that dimension is replicated.
  assert sharding.mesh_spec(("embed", "mlp"), (32, 3), mesh) == P("fsdp", None)
  # batch 8 over data x fsdp (expert axis of size 1 dropped); batch 2 keeps only data.
  assert sharding.mesh_spec(("batch", "seq"), (8, 4), mesh) == P(("data", "fsdp"), None)
  assert sharding.mesh_spec(("batch", "seq"), (2, 4), mesh) == P("data", None)
  assert sharding.batch_sharding(mesh).spec == P(("data", "fsdp"), None)


def test_param_shardings_specs():
  mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
  sh = sharding.param_shardings(CFG, mesh)
  assert sh["layers"]["attn"]["q_proj"]["kernel"].spec == P(None, "fsdp", "tensor")
  assert sh["layers"]["attn"]["o_proj"]["kernel"].spec == P(None, "tensor", "fsdp")
  assert sh["layers"]["mlp"]["down_proj"]["kernel"].spec == P(None, "tensor", "fsdp")
  assert sh["embed"]["embedding"].spec == P("tensor", "fsdp")
  assert sh["lm_head"]["kernel"].spec == P("fsdp", "tensor")
  assert sh["final_norm"]["scale"].spec == P(None)


def test_sharded_forward_and_grad_match_unsharded():
  params = M.init_params(CFG, jax.random.key(0))
  tokens = jax.random.randint(jax.random.key(1), (8, 16), 0, 128)

  def loss_and_grad(model, p, t):
    loss = lambda p: M.losses.lm_loss(model.apply({"params": p}, t)[0], t)[0]
    return jax.jit(jax.value_and_grad(loss))(p)

  l0, g0 = loss_and_grad(M.build_model(CFG), params, tokens)
  mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
  shardings = sharding.param_shardings(CFG, mesh)
  p = jax.device_put(params, shardings)
  t = jax.device_put(tokens, sharding.batch_sharding(mesh))
  l1, g1 = loss_and_grad(M.build_model(CFG, mesh), p, t)
  np.testing.assert_allclose(l1, l0, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7), g1, g0)
