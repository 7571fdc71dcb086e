"""Parameter labelling: which leaves are matrices, embeddings, the head, or vectors.

Matrix optimizers (Muon, SOAP, ...) act on hidden weight matrices only and send
the rest to an AdamW branch; weight decay skips embeddings, norms and biases.
Both decisions are made here, once, from the parameter tree.

Labels (strings, so they plug into ``optax.partition`` / ``optax.multi_transform``):

* ``"embedding"`` -- a leaf whose path names an embedding (``embed``, ``wte``,
  ``tok_embeddings``, ``embedding``). With tied embeddings this is also the head.
* ``"head"``      -- an untied output projection: a path key exactly ``lm_head``,
  ``head`` or ``unembed``.
* ``"vector"``    -- norms, biases, scales, and anything with fewer than two
  dimensions once the batch axes are removed.
* ``"matrix"``    -- everything else: hidden weight matrices.

Stacked (scanned) layers and MoE experts carry leading *batch axes*: a
``(L, d_in, d_out)`` kernel is L matrices, and a ``(L, d)`` norm scale is L
vectors. Batch axes are explicit, never guessed from the shape: pass
``batch_axes`` as an int (same for every leaf), a pytree of ints matching the
parameters, or a callable ``(path, leaf) -> int``. Flax kernels are
``(..., fan_in, fan_out)``; a matrix with more than two non-batch dimensions is
treated as ``(prod(leading), last)`` by the matrix optimizers.
"""

from __future__ import annotations

from typing import Any, Callable, Union

import jax

MATRIX = "matrix"
EMBEDDING = "embedding"
HEAD = "head"
VECTOR = "vector"
LABELS = (MATRIX, EMBEDDING, HEAD, VECTOR)

EMBEDDING_NAMES = ("embed", "wte", "tok_embeddings", "embedding")
HEAD_NAMES = ("lm_head", "head", "unembed")
VECTOR_NAMES = ("norm", "bias", "scale", "ln")

BatchAxesSpec = Union[None, int, Any, Callable[[tuple, Any], int]]


def path_keys(path) -> tuple[str, ...]:
  """The key names along a pytree path (dict keys, attribute names, sequence indices)."""
  return tuple(str(getattr(entry, "key", getattr(entry, "name", getattr(entry, "idx", entry))))
               for entry in path)


def path_names(path) -> tuple[str, ...]:
  """The lower-case key names along a pytree path."""
  return tuple(key.lower() for key in path_keys(path))


def resolve_batch_axes(params: Any, batch_axes: BatchAxesSpec = None) -> Any:
  """Returns a pytree of ints (number of leading batch axes) matching ``params``."""
  if batch_axes is None:
    return jax.tree.map(lambda _: 0, params)
  if isinstance(batch_axes, int):
    return jax.tree.map(lambda _: batch_axes, params)
  if callable(batch_axes):
    return jax.tree_util.tree_map_with_path(lambda p, x: int(batch_axes(p, x)), params)
  return jax.tree.map(lambda _, b: int(b), params, batch_axes)


def batch_axes_fn(batch_axes: BatchAxesSpec = None) -> Callable[[tuple, Any], int]:
  """Any ``batch_axes`` form (None, int, pytree, callable) as ``(path, leaf) -> int``.

  :func:`resolve_batch_axes` needs the whole parameter tree; this form answers
  for one leaf at a time, so it also works on the masked sub-trees
  ``optax.partition`` hands to each branch (a pytree of ints no longer matches
  their structure). Pytrees are looked up by key path.
  """
  if batch_axes is None or isinstance(batch_axes, int):
    n = int(batch_axes or 0)
    return lambda path, leaf: n
  if callable(batch_axes):
    return lambda path, leaf: int(batch_axes(path, leaf))
  table = {jax.tree_util.keystr(path): int(n)
           for path, n in jax.tree_util.tree_leaves_with_path(batch_axes)}

  def lookup(path, leaf):
    del leaf
    key = jax.tree_util.keystr(path)
    if key not in table:
      raise ValueError(f"batch_axes has no entry for parameter {key}")
    return table[key]
  return lookup


def _label_leaf(path, leaf, n_batch: int) -> str:
  ndim = len(getattr(leaf, "shape", ()))
  if n_batch < 0 or n_batch > ndim:
    raise ValueError(
        f"batch_axes={n_batch} is impossible for parameter "
        f"{'/'.join(path_names(path))} of shape {getattr(leaf, 'shape', ())}")
  names = path_names(path)
  def named(candidates):
    return any(c in part for part in names for c in candidates)
  if ndim - n_batch < 2:
    return VECTOR
  if named(EMBEDDING_NAMES):
    return EMBEDDING
  if any(part in HEAD_NAMES for part in names):
    return HEAD
  if any(part in VECTOR_NAMES or part.endswith(("_norm", "norm")) for part in names):
    return VECTOR
  return MATRIX


def label_params(params: Any, batch_axes: BatchAxesSpec = None) -> Any:
  """Labels every leaf of ``params`` as matrix / embedding / head / vector."""
  axes = resolve_batch_axes(params, batch_axes)
  return jax.tree_util.tree_map_with_path(
      lambda p, x, b: _label_leaf(p, x, b), params, axes)


def weight_decay_mask(params: Any, batch_axes: BatchAxesSpec = None,
                      decay_embeddings: bool = False) -> Any:
  """True where weight decay applies: hidden matrices and an untied head.

  Embeddings (and so a tied embedding/head), norms and biases are not decayed,
  as in both benchmark studies; ``decay_embeddings=True`` decays embeddings too.
  """
  decayed = (MATRIX, HEAD, EMBEDDING) if decay_embeddings else (MATRIX, HEAD)
  return jax.tree.map(lambda label: label in decayed, label_params(params, batch_axes))


def default_mask(batch_axes: BatchAxesSpec = None) -> Callable[[Any], Any]:
  """``weight_decay_mask`` as a callable, the form optax ``mask=`` arguments take."""
  return lambda params: weight_decay_mask(params, batch_axes)
