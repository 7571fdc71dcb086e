"""Logical-axis sharding rules (MaxText style): model dimensions -> mesh axes.

Sharding is data, not code: every parameter carries logical axis names (see
``layers.py``) and this table maps them to the four mesh axes
``('data', 'fsdp', 'tensor', 'expert')``. Changing the parallelism strategy is
editing ``DEFAULT_RULES`` or the mesh shape in the config.

Parameters: ``embed`` is sharded over ``fsdp`` (ZeRO-3 style: gathered per
layer inside the scan), ``mlp`` / ``heads`` / ``kv_heads`` / ``vocab`` over
``tensor`` (Megatron column/row split), ``exp`` over ``expert``; stacked
``layers`` and norms are replicated.
Activations use their own names (``batch``, ``seq``, ``act_*``) so a
parameter's ``embed`` (sharded over fsdp) never shards the hidden dimension of
an activation: the batch of activations is split over ``data x fsdp x expert``
(the expert-parallel devices also act as data-parallel ones outside the MoE
layers, as in MaxText) and their head / mlp / vocab dimension over ``tensor``.

Divisibility: a dimension whose size is not divisible by the product of its
mesh axes falls back to fewer axes (the longest prefix of the rule's axes
that divides it; replication if none does). This keeps, e.g., a 3-dim norm
or an 8-expert router usable on any mesh; the fallback is silent by design
and only costs memory. ``param_shardings`` therefore always succeeds.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor", "expert")
BATCH_MESH_AXES = ("data", "fsdp", "expert")

DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    # activations (MoE expert buffers first: there `expert` shards experts, and
    # the batch falls back to data x fsdp through its second rule)
    ("act_exp", "expert"),
    ("batch", BATCH_MESH_AXES),
    ("batch", ("data", "fsdp")),
    ("seq", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
    # parameters
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("vocab", "tensor"),
    ("exp", "expert"),
    ("layers", None),
    ("norm", None),
)


def platform_of(mesh=None) -> str:
  """'cpu' | 'gpu' | 'tpu' of the mesh's devices (an abstract mesh or none: the default backend)."""
  if isinstance(mesh, jax.sharding.Mesh) and mesh.devices.size:
    return mesh.devices.flat[0].platform
  return jax.default_backend()


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, expert: int = 1,
              devices: Sequence[Any] | None = None) -> Mesh:
  """A ``('data', 'fsdp', 'tensor', 'expert')`` mesh with Auto axis types (GSPMD propagation).

  One size may be -1 (fill with the remaining devices). Raises ValueError when
  the sizes do not multiply to the device count.
  """
  devices = list(jax.devices() if devices is None else devices)
  sizes = [int(data), int(fsdp), int(tensor), int(expert)]
  if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f"mesh sizes must be positive with at most one -1, got "
                     f"{dict(zip(MESH_AXES, sizes))}")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} cannot fill {len(devices)} devices")
    sizes[sizes.index(-1)] = len(devices) // known
  if math.prod(sizes) != len(devices):
    raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, "
                     f"{len(devices)} available")
  return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES,
              axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def _as_tuple(axes) -> tuple[str, ...]:
  if axes is None:
    return ()
  return tuple(axes) if isinstance(axes, (tuple, list)) else (axes,)


def mesh_spec(logical: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
              rules=DEFAULT_RULES) -> P:
  """The mesh PartitionSpec for an array of ``shape`` with logical axis names ``logical``.

  Applies the rules, then the divisibility fallback described in the module
  docstring; mesh axes of size 1 are dropped.
  """
  if len(logical) != len(shape):
    raise ValueError(f"logical axes {tuple(logical)} do not match shape {tuple(shape)}")
  resolved = nn.logical_to_mesh_axes(tuple(logical), rules)
  out = []
  for size, axes in zip(shape, resolved):
    kept, prod = [], 1
    for axis in _as_tuple(axes):
      n = mesh.shape[axis]
      if n == 1:
        continue
      if size % (prod * n):
        break
      kept.append(axis)
      prod *= n
    out.append(None if not kept else (kept[0] if len(kept) == 1 else tuple(kept)))
  return P(*out)


def constrain(x: jax.Array, logical: Sequence[str | None], mesh: Mesh | None,
              rules=DEFAULT_RULES) -> jax.Array:
  """``with_sharding_constraint`` by logical names; a no-op without a mesh."""
  if mesh is None:
    return x
  return jax.lax.with_sharding_constraint(
      x, NamedSharding(mesh, mesh_spec(logical, x.shape, mesh, rules)))


def param_shardings(model_cfg, mesh: Mesh, rules=DEFAULT_RULES) -> Any:
  """Pytree of ``NamedSharding`` for the parameters of ``model_cfg`` (nothing allocated)."""
  from optbench_jax import models  # local import: models imports this module
  shapes = models.abstract_params(model_cfg)
  specs = models.logical_axes(model_cfg)
  return jax.tree.map(
      lambda s, spec: NamedSharding(mesh, mesh_spec(tuple(spec), s.shape, mesh, rules)),
      shapes, specs, is_leaf=lambda x: isinstance(x, P))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Sharding of a ``[B, S]`` token batch: B over data x fsdp x expert, S replicated.

  The global batch must be divisible by data * fsdp * expert (the trainer checks).
  """
  axes = tuple(a for a in BATCH_MESH_AXES if mesh.shape[a] > 1)
  return NamedSharding(mesh, P(axes if axes else None, None))


@contextlib.contextmanager
def rules_context(mesh: Mesh, rules=DEFAULT_RULES):
  """Installs ``mesh`` and the logical rules for code that uses Flax's own
  ``nn.with_logical_constraint``. The models here do not need it: they take the
  mesh from ``build_model(cfg, mesh)`` and constrain explicitly."""
  with jax.sharding.use_mesh(mesh), nn.logical_axis_rules(rules):
    yield
