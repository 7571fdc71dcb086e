"""The optimizer-state sharding rule (``optim/state_sharding.py``)."""

from jax.sharding import PartitionSpec as P

from optbench_jax.optim.state_sharding import derived_spec


def test_derived_spec_gives_each_sharded_dimension_to_an_equal_sized_one():
  # SOAP's L and R of a stacked (layers, in, out) kernel sharded (None, fsdp, tensor)
  assert derived_spec((2, 64, 64), (2, 64, 128), P(None, "fsdp", "tensor")) == \
      P(None, "fsdp", None)
  assert derived_spec((2, 128, 128), (2, 64, 128), P(None, "fsdp", "tensor")) == \
      P(None, "tensor", None)
  # experts keep their axis at their own position even when another dim has the same size
  assert derived_spec((4, 4, 8, 8), (4, 4, 8, 16), P(None, "expert", "fsdp", "tensor")) \
      == P(None, "expert", "fsdp", None)
  # Adam-mini's per-head v of a (layers, heads*dim, embed) kernel
  assert derived_spec((2, 64), (2, 64, 32), P(None, "tensor", "fsdp")) == \
      P(None, "tensor")
  # with the mesh's sizes, axes that found no equal-sized dim go to a dim they divide
  sizes = {"fsdp": 4, "tensor": 2, "data": 1, "expert": 1}
  assert derived_spec((2, 64, 64), (2, 64, 128), P(None, "fsdp", "tensor"), sizes) == \
      P(None, "fsdp", "tensor")
  assert derived_spec((2, 128, 128), (2, 64, 128), P(None, "fsdp", "tensor"), sizes) \
      == P(None, "tensor", "fsdp")
  assert derived_spec((2, 64), (2, 64, 32), P(None, "tensor", "fsdp"), sizes) == \
      P(None, "tensor")                                   # 2 is not divisible by fsdp=4
  # a merged or blocked dimension matches nothing and stays replicated
  assert derived_spec((96, 96), (2, 48, 128), P(None, "fsdp", "tensor")) == P(None, None)
