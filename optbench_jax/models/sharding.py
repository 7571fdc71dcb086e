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
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

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


def axis_sizes(requested: Mapping[str, int], device_count: int) -> dict[str, int]:
  """``{axis: size}`` for every mesh axis with the -1 (fill) axis filled; raises ValueError
  naming the axis or the device count when the sizes cannot cover ``device_count`` devices."""
  sizes = {axis: int(requested.get(axis, 1)) for axis in MESH_AXES}
  bad = [axis for axis, size in sizes.items() if size == 0 or size < -1]
  if bad:
    raise ValueError(f"mesh.{bad[0]} must be a positive size or -1, got {sizes[bad[0]]}")
  fill = [axis for axis, size in sizes.items() if size == -1]
  if len(fill) > 1:
    raise ValueError(f"at most one mesh axis may be -1 (fill), got {fill} (mesh sizes must be "
                     f"positive with at most one -1)")
  fixed = math.prod(size for size in sizes.values() if size != -1)
  shape = " x ".join(f"{a}={s}" for a, s in sizes.items())
  if fixed > device_count or device_count % fixed:
    raise ValueError(
        f"mesh {shape} needs {fixed} devices{' times the fill axis' if fill else ''}, "
        f"but {device_count} device(s) are available")
  if fill:
    sizes[fill[0]] = device_count // fixed
  elif fixed != device_count:
    raise ValueError(
        f"mesh {shape} has {fixed} devices but {device_count} are available; the product "
        f"must equal the device count (set one axis to -1 to fill)")
  return sizes


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, expert: int = 1,
              devices: Sequence[Any] | None = None) -> Mesh:
  """The ``('data', 'fsdp', 'tensor', 'expert')`` mesh over ``devices`` (default: all) with
  Auto axis types (GSPMD propagation). One size may be -1 (fill with the remaining devices);
  ValueError when the sizes do not cover the devices (:func:`axis_sizes`)."""
  devices = list(jax.devices() if devices is None else devices)
  sizes = axis_sizes(dict(data=data, fsdp=fsdp, tensor=tensor, expert=expert), len(devices))
  return jax.make_mesh(tuple(sizes[a] for a in MESH_AXES), MESH_AXES,
                       axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices)


def abstract_mesh(sizes: Mapping[str, int]) -> jax.sharding.AbstractMesh:
  """A device-free mesh of ``sizes`` (every axis given), for dry runs of larger machines."""
  return jax.sharding.AbstractMesh(tuple(int(sizes[a]) for a in MESH_AXES), MESH_AXES,
                                   axis_types=(AxisType.Auto,) * len(MESH_AXES))


def batch_shards(mesh) -> int:
  """Devices a batch is split over: the product of the batch mesh axes."""
  return math.prod(int(mesh.shape[a]) for a in BATCH_MESH_AXES)


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
