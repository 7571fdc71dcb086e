"""SPlus: a stable whitening optimizer (Frans, Levine & Abbeel 2025, arXiv:2506.07254).

Shampoo's Kronecker factors give an eigenbasis; SPlus takes the *sign* of the
momentum in that basis (a bounded, "instant" normalisation instead of
Shampoo's inverse roots), scales the step by the matrix shape, and evaluates
with an exponential average of the parameters. For a matrix leaf (Flax kernel,
flattened to ``(fan_in, fan_out)`` like Muon's) with gradient G_t, t = 1, 2, ...:

    m_t   = b1 m_{t-1} + (1 - b1) G_t
    u_t   = Q_L sign(Q_L^T m_t Q_R) Q_R^T          (with the bases of the previous step)
    L_t   = b2 L_{t-1} + (1 - b2) G_t G_t^T        R_t = b2 R_{t-1} + (1 - b2) G_t^T G_t
    if t = 1 or t % inverse_every == 0:  Q_L, Q_R = eigenvectors(L_t + eps I, R_t + eps I)
    s     = 2 / (fan_in + fan_out)                 (hidden matrices; nonstandard_constant
                                                    for embeddings, head, vectors)
    p_t   = p_{t-1} - s lr_t (u_t + wd p_{t-1})
    e_t   = r e_{t-1} + (1 - r) p_{t-1}            (EMA of the parameters, r = ema_rate)
    eval  = e_t / (1 - r^t)                        (``state.eval_params(params)``)

Q_L = Q_R = I until the first refresh (so step 1 is sign(m_1)). A side longer
than ``max_dim`` has no factor (identity basis); vectors take sign(m) only.
Eigenvector order and signs do not change u (sign commutes with both).

This follows the code that produced the paper's numbers (github.com/kvfrans/splus,
``experiments/optimizers/splus.py`` with ``train.py --model.do_scaling 1
--model.scaling_type avg``) where it differs from the paper text or the
single-file release (``optax/splus.py``):

* the shape scale multiplies the whole step, weight decay included
  (``add_decayed_weights`` and the lr come before the scaling there), so the
  decay is multiplied by the *effective* learning rate s lr. This factory
  therefore ends with the shape scaling after ``decay_and_scale`` instead of
  ending with ``decay_and_scale``: with SPlus's lr (~0.1-1) a decay of
  ``wd lr`` per step would shrink every weight by percents per step.
* embeddings and the output head take ``nonstandard_constant`` (the release
  gives a 2-D head 2 / (m + n)); vectors too.
* the EMA averages the parameters *before* each step; the bias-corrected EMA
  is the evaluation point (the torch release averages after the step).

Kronecker factors, bases are float32; the EMA and momentum have the parameter
dtype (as the reference). The eigendecompositions of different factors are
chained by a data dependency (``linalg.serialize_after``): two batched LAPACK calls that
XLA:CPU runs concurrently can deadlock its 2-thread pool (BUILD_NOTES.md).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optbench_jax.optim import hyperparams
from optbench_jax.optim import labels
from optbench_jax.optim import linalg
from optbench_jax.optim.matrix import fan_in_out
from optbench_jax.optim.scaling import decay_and_scale
from optbench_jax.optim.linalg import serialize_after as _after
from optbench_jax.optim import width_rules


class ScaleBySPlusState(NamedTuple):
  """``count``: steps taken; ``momentum``: EMA of the gradients; ``ema``: EMA of
  the parameters (not bias-corrected); ``factors`` / ``bases``: per leaf a pair
  (left, right) of Kronecker factors and their eigenbases, None for a side
  without one, ``()`` for vectors; ``ema_rate``: r, kept to correct the EMA."""
  count: jax.Array
  momentum: Any
  ema: Any
  factors: Any
  bases: Any
  ema_rate: jax.Array

  def eval_params(self, params: Any) -> Any:
    """The bias-corrected EMA e_t / (1 - r^t) (``params`` itself before step 1)."""
    started = self.count > 0
    correction = jnp.where(started, 1.0 - self.ema_rate ** self.count.astype(jnp.float32), 1.0)
    return jax.tree.map(lambda e, p: jnp.where(started, e / correction, p).astype(p.dtype),
                        self.ema, params)


def _sides(shape: tuple[int, ...], n_batch: int, max_dim: int) -> tuple[bool, bool] | None:
  """Which sides of a matrix leaf have a factor; None for vectors."""
  if len(shape) - n_batch < 2:
    return None
  fan_in, fan_out = fan_in_out(shape, n_batch)
  return fan_in < max_dim, fan_out < max_dim


def _rotate(x: jax.Array, bases, back: bool) -> jax.Array:
  """Q_L^T x Q_R (or Q_L x Q_R^T when ``back``) on (..., fan_in, fan_out)."""
  left, right = bases
  if left is not None:
    x = jnp.einsum("...ij,...ik->...kj" if not back else "...kj,...ik->...ij", x, left)
  if right is not None:
    x = jnp.einsum("...ij,...jk->...ik" if not back else "...ik,...jk->...ij", x, right)
  return x


def scale_by_splus(b1: float = 0.9, b2: float = 0.999, ema_rate: float = 0.999,
                   eps: float = 1e-30, inverse_every: int = 100, max_dim: int = 10000,
                   batch_axes: labels.BatchAxesSpec = None) -> optax.GradientTransformation:
  """The unscaled SPlus direction u_t and the parameter EMA (see the module doc).

  ``update`` needs ``params`` (the EMA averages them).
  """
  _check(b1, b2, ema_rate, eps, inverse_every, max_dim)
  axes_of = labels.batch_axes_fn(batch_axes)

  def init_fn(params):
    def factors(path, p, fill):
      sides = _sides(p.shape, axes_of(path, p), max_dim)
      if sides is None:
        return ()
      n_batch = axes_of(path, p)
      dims = fan_in_out(p.shape, n_batch)
      return tuple(fill(p.shape[:n_batch], d) if has else None for d, has in zip(dims, sides))

    zeros = lambda batch, d: jnp.zeros(batch + (d, d), jnp.float32)
    eye = lambda batch, d: jnp.broadcast_to(jnp.eye(d, dtype=jnp.float32), batch + (d, d))
    return ScaleBySPlusState(
        count=jnp.zeros([], jnp.int32),
        momentum=optax.tree.zeros_like(params),
        ema=optax.tree.zeros_like(params),
        factors=jax.tree_util.tree_map_with_path(lambda k, p: factors(k, p, zeros), params),
        bases=jax.tree_util.tree_map_with_path(lambda k, p: factors(k, p, eye), params),
        ema_rate=jnp.asarray(ema_rate, jnp.float32))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("scale_by_splus needs params (it keeps their EMA)")
    count = optax.safe_increment(state.count)
    paths, treedef = jax.tree_util.tree_flatten_with_path(updates)
    momenta = jax.tree.map(lambda m, g: (b1 * m + (1 - b1) * g).astype(m.dtype),
                           state.momentum, updates)
    out, factors = [], []
    for (path, g), m, f, q in zip(paths, treedef.flatten_up_to(momenta),
                                  treedef.flatten_up_to(state.factors),
                                  treedef.flatten_up_to(state.bases)):
      if f == ():
        out.append(jnp.sign(m).astype(g.dtype))
        factors.append(())
        continue
      n_batch = axes_of(path, g)
      flat = lambda x: x.reshape(x.shape[:n_batch] + fan_in_out(x.shape, n_batch))
      g32 = flat(g).astype(jnp.float32)
      u = _rotate(jnp.sign(_rotate(flat(m).astype(jnp.float32), q, back=False)), q, back=True)
      out.append(u.reshape(g.shape).astype(g.dtype))
      left, right = f
      factors.append((
          None if left is None else b2 * left + (1 - b2) * jnp.einsum("...ij,...kj->...ik", g32, g32),
          None if right is None else b2 * right + (1 - b2) * jnp.einsum("...ij,...ik->...jk", g32, g32)))

    def refresh(factors):
      bases, previous = [], None
      for f in factors:
        qs = []
        for side in f:
          if side is None:
            qs.append(None)
            continue
          side = _after(previous, side + eps * jnp.eye(side.shape[-1], dtype=side.dtype))
          previous = linalg.eigenbasis_init(side)
          qs.append(previous)
        bases.append(tuple(qs))
      return bases

    old_bases = treedef.flatten_up_to(state.bases)
    bases = jax.lax.cond((count == 1) | (count % inverse_every == 0), refresh,
                         lambda _: old_bases, factors)
    ema = jax.tree.map(lambda e, p: (state.ema_rate * e + (1 - state.ema_rate) * p).astype(e.dtype),
                       state.ema, params)
    return treedef.unflatten(out), ScaleBySPlusState(
        count=count, momentum=momenta, ema=ema, factors=treedef.unflatten(factors),
        bases=treedef.unflatten(bases), ema_rate=state.ema_rate)

  return optax.GradientTransformation(init_fn, update_fn)


def shape_scale(label: str, shape: tuple[int, ...], n_batch: int, max_dim: int,
                nonstandard_constant: float) -> float:
  """2 / (fan_in + fan_out) for hidden matrices (``labels.MATRIX``) with both
  sides below ``max_dim``, ``nonstandard_constant`` for everything else."""
  if label != labels.MATRIX:
    return nonstandard_constant
  fan_in, fan_out = fan_in_out(shape, n_batch)
  if fan_in >= max_dim or fan_out >= max_dim:
    return nonstandard_constant
  return 2.0 / (fan_in + fan_out)


def scale_by_shape(max_dim: int = 10000, nonstandard_constant: float = 0.001,
                   batch_axes: labels.BatchAxesSpec = None) -> optax.GradientTransformation:
  """Multiplies every leaf by its SPlus shape scale (``shape_scale``)."""
  axes_of = labels.batch_axes_fn(batch_axes)

  def update_fn(updates, state, params=None):
    del params
    leaf_labels = labels.label_params(updates, axes_of)
    return jax.tree_util.tree_map_with_path(
        lambda path, u, label: u * shape_scale(label, u.shape, axes_of(path, u), max_dim,
                                               nonstandard_constant),
        updates, leaf_labels), state

  return optax.GradientTransformation(lambda _: optax.EmptyState(), update_fn)


def _check(b1, b2, ema_rate, eps, inverse_every, max_dim):
  hyperparams.check_beta("b1", b1)
  hyperparams.check_beta("b2", b2)
  hyperparams.check_beta("ema_rate", ema_rate)
  hyperparams.check_positive("eps", eps)
  hyperparams.check_int_at_least("inverse_every", inverse_every, 1)
  hyperparams.check_int_at_least("max_dim", max_dim, 1)


def splus(learning_rate: Any = 0.1, b1: float = 0.9, b2: float = 0.999,
          ema_rate: float = 0.999, eps: float = 1e-30, inverse_every: int = 100,
          nonstandard_constant: float = 0.001, weight_decay: Any = 0.01, mask: Any = None,
          max_dim: int = 10000, batch_axes: labels.BatchAxesSpec = None
          ) -> optax.GradientTransformationExtraArgs:
  """SPlus (Frans et al. 2025); evaluate with ``state.eval_params(params)``.

  Defaults are the authors' release (``optax/splus.py``; lr from its torch
  version). The paper's runs used b1 0.9, b2 0.95, ema_rate 0.999, weight decay
  0.1 and lr ~0.1-1 (the README suggests 0.2 for transformers).

  Args:
    learning_rate: scalar or schedule, >= 0; the step is s * lr with s the
      shape scale (2 / (fan_in + fan_out) for hidden matrices).
    b1: momentum EMA rate in [0, 1).
    b2: Kronecker-factor EMA rate in [0, 1).
    ema_rate: parameter-EMA rate in [0, 1) (the evaluation iterate).
    eps: > 0, added to the factors' diagonals before the eigendecomposition.
    inverse_every: >= 1; the eigenbases are recomputed at step 1 and every
      ``inverse_every`` steps.
    nonstandard_constant: shape scale of embeddings, head and vectors (> 0).
    weight_decay: >= 0 (scalar or schedule), multiplied by s * lr.
    mask: which leaves are decayed (see ``labels.weight_decay_mask``).
    max_dim: >= 1; sides of this size or more get no factor (and such matrices
      the nonstandard scale).
    batch_axes: leading stacked axes per leaf (int, pytree or callable).
  """
  hyperparams.check_positive("nonstandard_constant", nonstandard_constant)
  return optax.chain(
      scale_by_splus(b1, b2, ema_rate, eps, inverse_every, max_dim, batch_axes),
      decay_and_scale(learning_rate, weight_decay, mask),
      scale_by_shape(max_dim, nonstandard_constant, batch_axes))


# How each factory's learning rate moves with width (width_rules).
width_rules.declare(splus, width_rules.NATIVE)
