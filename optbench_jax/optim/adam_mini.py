"""Adam-mini (Zhang et al. 2024, "Adam-mini: Use Fewer Learning Rates To Gain
More", arXiv:2406.16793).

Adam with one second-moment scalar per *block* of parameters instead of one per
parameter. For step t >= 1, with B(i) the block of coordinate i:

    m_t   = b1 m_{t-1} + (1 - b1) g_t                        (full size)
    v_t,B = b2 v_{t-1},B + (1 - b2) mean_{i in B} g_t,i^2     (one scalar per block)
    u_t   = (m_t / (1 - b1^t)) / (sqrt(v_t,B / (1 - b2^t)) + eps)
    p_t   = p_{t-1} - lr_t (u_t + wd p_{t-1})

Blocks (the paper's partition by Hessian structure; Flax kernels are (in, out)):

* query / key projections (path name ``q_proj``/``k_proj``/``wq``/``wk``/
  ``query``/``key``): one block per attention head -- the output axis is split
  into (heads, head_dim); keys use ``num_kv_heads`` (grouped-query attention).
* embeddings (label ``embedding``): one block per token row.
* every other matrix, including an untied head: one block per output neuron
  (per column of the (in, out) kernel); the head's columns are tokens.
* vectors (norm scales, biases): one block per tensor. (Decision: the paper
  leaves these to the "rest" partition; they are <0.1% of the parameters and a
  single scalar keeps the state minimal.)

Stacked layers / experts keep their batch axes in v: a ``(L, d, H*hd)`` query
kernel has a ``(L, H)`` v. The second moment is always float32 (it is tiny).
For the 124M model v holds ~0.1M numbers instead of 124M (see BUILD_NOTES).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optbench_jax.optim import hyperparams, labels
from optbench_jax.optim.scaling import decay_and_scale
from optbench_jax.optim import width_rules

QUERY_NAMES = ("q_proj", "wq", "query")
KEY_NAMES = ("k_proj", "wk", "key")


class ScaleByAdamMiniState(NamedTuple):
  count: jax.Array  # int32 scalar: steps taken so far
  mu: Any           # first moment, full size
  nu: Any           # second moment, one float32 per block


class _Blocks(NamedTuple):
  """How a leaf is cut into blocks: reshape to ``shape``, then average ``axes``."""
  shape: tuple
  axes: tuple


def _blocks(path, leaf, n_batch: int, label: str, num_heads, num_kv_heads) -> _Blocks:
  shape = tuple(leaf.shape)
  names = labels.path_names(path)
  inner = tuple(range(n_batch, len(shape)))
  if label == labels.VECTOR:
    return _Blocks(shape, inner)
  if label == labels.EMBEDDING:  # one block per token row
    return _Blocks(shape, inner[1:])
  heads = None
  if any(n in QUERY_NAMES for n in names):
    heads = num_heads
  elif any(n in KEY_NAMES for n in names):
    heads = num_kv_heads if num_kv_heads is not None else num_heads
  if heads is None and any(n in QUERY_NAMES + KEY_NAMES for n in names):
    raise ValueError(
        f"adam_mini: {'/'.join(names)} is a query/key projection; pass num_heads "
        "(and num_kv_heads for grouped-query attention) to split it per head")
  if heads is not None:
    if shape[-1] % heads:
      raise ValueError(f"adam_mini: {'/'.join(names)} has output size {shape[-1]}, "
                       f"not divisible into {heads} heads (num_heads/num_kv_heads)")
    split = shape[:-1] + (heads, shape[-1] // heads)
    # Average over the input axes and head_dim, keep the head axis.
    return _Blocks(split, tuple(range(n_batch, len(shape) - 1)) + (len(shape),))
  return _Blocks(shape, inner[:-1])  # one block per output neuron


def _block_tree(tree: Any, batch_axes, num_heads, num_kv_heads) -> Any:
  axes = labels.resolve_batch_axes(tree, batch_axes)
  leaf_labels = labels.label_params(tree, axes)
  return jax.tree_util.tree_map_with_path(
      lambda p, x, b, label: _blocks(p, x, b, label, num_heads, num_kv_heads),
      tree, axes, leaf_labels)


def _block_shape(spec: _Blocks) -> tuple:
  return tuple(d for i, d in enumerate(spec.shape) if i not in spec.axes)


def scale_by_adam_mini(b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-8,
                       num_heads: int | None = None, num_kv_heads: int | None = None,
                       mu_dtype: Any = None, batch_axes: labels.BatchAxesSpec = None
                       ) -> optax.GradientTransformation:
  """The Adam-mini direction (to be scaled by ``-learning_rate``)."""
  mu_dtype = None if mu_dtype is None else jnp.dtype(mu_dtype)
  is_spec = lambda x: isinstance(x, _Blocks)

  def init_fn(params):
    specs = _block_tree(params, batch_axes, num_heads, num_kv_heads)
    nu = jax.tree.map(lambda s: jnp.zeros(_block_shape(s), jnp.float32), specs, is_leaf=is_spec)
    return ScaleByAdamMiniState(count=jnp.zeros([], jnp.int32),
                                mu=optax.tree.zeros_like(params, dtype=mu_dtype), nu=nu)

  def update_fn(updates, state, params=None):
    del params
    specs = _block_tree(updates, batch_axes, num_heads, num_kv_heads)
    count = optax.safe_increment(state.count)
    mu = optax.tree.update_moment(updates, state.mu, b1, 1)

    def block_moment(g, v, spec):
      g2 = jnp.square(g.astype(jnp.float32)).reshape(spec.shape)
      return b2 * v + (1.0 - b2) * jnp.mean(g2, axis=spec.axes)

    nu = jax.tree.map(block_moment, updates, state.nu, specs)
    bc1 = 1.0 - b1 ** count
    bc2 = 1.0 - b2 ** count

    def direction(m, v, spec):
      denom = jnp.sqrt(jnp.expand_dims(v, spec.axes) / bc2) + eps
      return ((m.reshape(spec.shape) / bc1) / denom).reshape(m.shape).astype(m.dtype)

    out = jax.tree.map(direction, mu, nu, specs)
    return out, ScaleByAdamMiniState(count=count, mu=optax.tree.cast(mu, mu_dtype), nu=nu)

  return optax.GradientTransformation(init_fn, update_fn)


def adam_mini(learning_rate: Any, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
              weight_decay: Any = 0.0, mask: Any = None, num_heads: int | None = None,
              num_kv_heads: int | None = None, mu_dtype: Any = None,
              batch_axes: labels.BatchAxesSpec = None) -> optax.GradientTransformationExtraArgs:
  """Adam-mini: AdamW with one second-moment scalar per block.

  Args:
    learning_rate: scalar or schedule, >= 0.
    b1, b2: moment rates in [0, 1).
    eps: > 0, added to sqrt(v^).
    weight_decay: >= 0, scalar or schedule, multiplied by the learning rate.
    mask: which leaves are decayed (see ``labels.weight_decay_mask``).
    num_heads: attention heads (needed when the tree has query/key projections).
      Static: with ``optax.inject_hyperparams`` list it in ``static_args``.
    num_kv_heads: key heads for grouped-query attention (default ``num_heads``).
    mu_dtype: dtype of the first moment (default: the parameter's).
    batch_axes: leading batch axes of stacked layers / experts (see ``labels``).
  """
  hyperparams.check_beta("b1", b1)
  hyperparams.check_beta("b2", b2)
  hyperparams.check_positive("eps", eps)
  for name, value in (("num_heads", num_heads), ("num_kv_heads", num_kv_heads)):
    if value is not None and not isinstance(value, jax.core.Tracer):
      hyperparams.check_int_at_least(name, value, 1)
  return optax.chain(
      scale_by_adam_mini(b1, b2, eps, num_heads, num_kv_heads, mu_dtype, batch_axes),
      decay_and_scale(learning_rate, weight_decay, mask),
  )


# How each factory's learning rate moves with width (width_rules).
width_rules.declare(adam_mini, width_rules.ELEMENTWISE)
