"""Optimizer-state shardings derived from the parameters' shardings.

Each state leaf is placed by the parameter a state leaf belongs to
(the one whose key path ends the leaf's path, or ends it up to trailing list
indices, as in ``factors[<param path>][i]``):

* same shape as the parameter (Adam moments, momentum buffers, ...): the
  parameter's sharding;
* another shape (SOAP's L/R statistics and eigenbases, Kron's Q factors,
  Adam-mini's per-block v, ...): by the ``factor_sharding`` policy
  (``config.mesh.factor_sharding``), a memory / communication trade-off:

  - ``"matched"`` (default): each sharded parameter dimension hands its mesh
    axes to a leaf dimension of the same size (the same position within the
    leading dimensions the two shapes share, else the first free one). SOAP's
    ``L`` of a ``(layers, in, out)`` kernel sharded ``(None, fsdp, tensor)`` is
    ``(layers, in, in)`` sharded ``(None, fsdp, None)``, its ``R``
    ``(layers, out, out)`` is ``(None, tensor, None)``.
  - ``"full"``: as matched, then a mesh axis that found no equal-sized
    dimension goes to the last free dimension its size divides: ``L`` becomes
    ``(None, fsdp, tensor)``, ``R`` ``(None, tensor, fsdp)``, 1/(fsdp*tensor) per
    device. Least memory, but every step gathers them back to apply them
    (``benchmarks/preconditioners.py --hlo`` measures both).
  - ``"replicated"``: whole on every device (least traffic, most memory).

  Dimensions nothing fits (odd merged or blocked SOAP dims) stay replicated;
* everything else (step counters, PRNG keys, scalars) is replicated.

Correctness does not depend on these choices (GSPMD inserts whatever
communication the update needs); memory and traffic do.
Both the trainer (``train/state.py``) and the contract's sharded check
(``sharding_check``) place optimizer state by this rule.
"""

from __future__ import annotations

import math
from typing import Any

import jax
from jax.sharding import NamedSharding, PartitionSpec as P

from optbench_jax.optim import labels

FACTOR_SHARDINGS = ("matched", "full", "replicated")


def _is_index(entry) -> bool:
  return isinstance(entry, jax.tree_util.SequenceKey)


def _owning_parameter(path, by_path: dict) -> tuple[tuple[int, ...], P] | None:
  """(shape, spec) of the parameter whose path ends ``path`` (up to trailing indices)."""
  end = len(path)
  while True:
    names = labels.path_keys(path[:end])
    for start in range(end):
      match = by_path.get(names[start:])
      if match is not None:
        return match
    if end == 0 or not _is_index(path[end - 1]):
      return None
    end -= 1


def derived_spec(leaf_shape: tuple[int, ...], param_shape: tuple[int, ...],
                 param_spec: P, axis_sizes: dict[str, int] | None = None) -> P:
  """Spec for a state leaf of another shape than its parameter (see module doc).

  Each sharded parameter dimension gives its mesh axes to a free leaf
  dimension of the same size: its own position if that lies in the leading
  dimensions both shapes share (stacked layers, experts), else the first.
  With ``axis_sizes`` (mesh axis -> size), axes left over then go to the last
  free leaf dimension their size divides.
  """
  out: list[Any] = [None] * len(leaf_shape)
  leftover: list[Any] = []
  spec = tuple(param_spec) + (None,) * (len(param_shape) - len(param_spec))
  shared_prefix = 0    # leading dims the leaf shares with the parameter (stack, experts)
  while (shared_prefix < min(len(leaf_shape), len(param_shape))
         and leaf_shape[shared_prefix] == param_shape[shared_prefix]):
    shared_prefix += 1
  for dim, axes in enumerate(spec):
    if axes is None:
      continue
    size = param_shape[dim]
    candidates = ([dim] if dim < shared_prefix else []) + list(range(len(leaf_shape)))
    for i in candidates:
      if out[i] is None and leaf_shape[i] == size:
        out[i] = axes
        break
    else:
      leftover.append(axes)
  for axes in leftover if axis_sizes else ():
    ways = math.prod(axis_sizes[a] for a in ((axes,) if isinstance(axes, str) else axes))
    for i in reversed(range(len(leaf_shape))):
      if out[i] is None and leaf_shape[i] > 1 and leaf_shape[i] % ways == 0:
        out[i] = axes
        break
  return P(*out)


def derive_opt_state_shardings(opt_state: Any, params: Any, param_shardings: Any,
                               mesh, factor_sharding: str = "matched") -> Any:
  """Optimizer-state shardings derived from the parameters' (see the module doc)."""
  if factor_sharding not in FACTOR_SHARDINGS:
    raise ValueError(f"factor_sharding must be one of {FACTOR_SHARDINGS}, got {factor_sharding!r}")
  by_path = {}
  for (path, leaf), sharding in zip(jax.tree_util.tree_flatten_with_path(params)[0],
                                    jax.tree.leaves(param_shardings)):
    by_path[labels.path_keys(path)] = (tuple(leaf.shape), sharding.spec)
  replicated = NamedSharding(mesh, P())
  axis_sizes = ({name: int(size) for name, size in mesh.shape.items()}
                if factor_sharding == "full" else None)

  def pick(path, leaf):
    owner = _owning_parameter(path, by_path)
    if owner is None or not leaf.shape:
      return replicated
    shape, spec = owner
    if tuple(leaf.shape) == shape:
      return NamedSharding(mesh, spec)
    if factor_sharding == "replicated":
      return replicated
    return NamedSharding(mesh, derived_spec(tuple(leaf.shape), shape, spec, axis_sizes))

  return jax.tree_util.tree_map_with_path(pick, opt_state)


def mirrored_leaves(opt_state: Any, params: Any) -> Any:
  """A tree like ``opt_state`` of bools: the leaf has its parameter's shape (the rule above).

  These leaves take the parameter's sharding under every ``factor_sharding`` policy.
  """
  by_path = {labels.path_keys(path): (tuple(leaf.shape), None)
             for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}

  def mirrors(path, leaf):
    owner = _owning_parameter(path, by_path)
    return owner is not None and bool(leaf.shape) and tuple(leaf.shape) == owner[0]

  return jax.tree_util.tree_map_with_path(mirrors, opt_state)
