"""Conda (Wang et al. 2025, arXiv:2509.24218): column-normalised Adam in a projected basis.

Conda keeps Adam's moments but measures the second moment in the orthogonal
basis of the momentum's singular vectors on the matrix's smaller side, which
it refreshes by an SVD every ``update_proj_gap`` steps. For a hidden matrix
leaf with gradient g (Flax kernel ``(fan_in, fan_out)``) and step t >= 1:

    m_t = b1 m_{t-1} + (1 - b1) g_t                          (original basis)
    Q_t = singular vectors of m_t on the smaller side         if (t - 1) % T == 0,
          else Q_{t-1}                                       ((k, k), k = min(fan_in, fan_out))
    P(x) = Q_t^T x   if fan_in <= fan_out   else   x Q_t     (projection)
    B(y) = Q_t y     if fan_in <= fan_out   else   y Q_t^T   (back-projection)
    v_t = b2 v_{t-1} + (1 - b2) P(g_t)^2                      (projected basis, element-wise)
    u_t = scale sqrt(1 - b2^t) / (1 - b1^t) B(P(m_t) / (sqrt(v_t) + eps))
    p_t = p_{t-1} - lr_t (u_t + wd p_{t-1})

``fan_in <= fan_out`` projects from the left with the left singular vectors
(the PyTorch ``(out, in)`` weight's right ones), otherwise from the right.
Embeddings, the head and vectors get AdamW, as in the authors' runs (their
Conda group is the attention and MLP linears only).

Follows the authors' code (github.com/jie040109/Conda, ``conda_torch/conda.py``
and ``projector.py``, ``proj_type="std"``): the basis is computed from m_t
after this step's momentum update, ``v`` is not rotated when the basis
changes, bias correction is folded into the step size with eps added to the
uncorrected sqrt(v), and the defaults are their LLaMA settings (lr 0.01,
betas (0.9, 0.99), scale 0.25, T = 2000, weight decay 0). Deviations: the
code projects from the right when the PyTorch weight is square, and the paper
says the left side for m <= n; we follow the code. The code decays after the
step (``p <- (p - lr u)(1 - lr wd)``); here the decay is the shared
``p - lr (u + wd p)`` (they differ by lr^2 wd u). Singular vectors are defined
up to sign, which cancels in ``B(P(m) / sqrt(v))``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optbench_jax.optim import hyperparams
from optbench_jax.optim import labels
from optbench_jax.optim import linalg
from optbench_jax.optim.matrix import fan_in_out, matrices_with_adamw
from optbench_jax.optim.scaling import decay_and_scale
from optbench_jax.optim import width_rules


class ScaleByCondaState(NamedTuple):
  """Conda's state.

  ``mu`` (original basis) and ``nu`` (projected basis) are shaped like the
  parameter; ``basis`` of a ``(*batch, fan_in, fan_out)`` matrix leaf is
  ``(*batch, k, k)`` float32, k = min(fan_in, fan_out).
  """
  count: jax.Array
  mu: optax.Updates
  nu: optax.Updates
  basis: optax.Updates


def _left(fan_in: int, fan_out: int) -> bool:
  """Project along fan_in (from the left) when it is the smaller side (ties too)."""
  return fan_in <= fan_out


def _basis(m: jax.Array, left: bool) -> jax.Array:
  """Orthogonal (k, k) singular-vector basis of every matrix of ``m`` on its smaller side."""
  u, _, vh = jnp.linalg.svd(m, full_matrices=False)
  return u if left else jnp.swapaxes(vh, -1, -2)


def _project(x: jax.Array, q: jax.Array, left: bool) -> jax.Array:
  return jnp.swapaxes(q, -1, -2) @ x if left else x @ q


def _project_back(y: jax.Array, q: jax.Array, left: bool) -> jax.Array:
  return q @ y if left else y @ jnp.swapaxes(q, -1, -2)


def scale_by_conda(b1: float = 0.9, b2: float = 0.99, eps: float = 1e-8,
                   scale: float = 0.25, update_proj_gap: int = 2000,
                   batch_axes: labels.BatchAxesSpec = None, mu_dtype: Any = None
                   ) -> optax.GradientTransformation:
  """The Conda direction ``u`` of every matrix leaf (see the module docstring)."""
  hyperparams.check_beta("b1", b1)
  hyperparams.check_beta("b2", b2)
  hyperparams.check_positive("eps", eps)
  hyperparams.check_positive("scale", scale)
  hyperparams.check_int_at_least("update_proj_gap", update_proj_gap, 1)
  axes_of = labels.batch_axes_fn(batch_axes)

  def geometry(path, x):
    """(n_batch, fan_in, fan_out, matrix view shape) of a leaf."""
    n_batch = axes_of(path, x)
    fan_in, fan_out = fan_in_out(x.shape, n_batch)
    return n_batch, fan_in, fan_out, x.shape[:n_batch] + (fan_in, fan_out)

  def init_fn(params):
    def eye(path, p):
      n_batch, fan_in, fan_out, _ = geometry(path, p)
      k = min(fan_in, fan_out)
      return jnp.broadcast_to(jnp.eye(k, dtype=jnp.float32), p.shape[:n_batch] + (k, k))
    return ScaleByCondaState(count=jnp.zeros([], jnp.int32),
                             mu=optax.tree.zeros_like(params, dtype=mu_dtype),
                             nu=optax.tree.zeros_like(params),
                             basis=jax.tree_util.tree_map_with_path(eye, params))

  def update_fn(updates, state, params=None):
    del params
    leaves, treedef = jax.tree_util.tree_flatten_with_path(updates)
    shapes = [geometry(path, g) for path, g in leaves]
    mus, new_mus = treedef.flatten_up_to(state.mu), []
    for (_, g), m in zip(leaves, mus):
      m32 = b1 * m.astype(jnp.float32) + (1 - b1) * g.astype(jnp.float32)
      new_mus.append(m32.astype(m.dtype))
    mats = [m.astype(jnp.float32).reshape(view)
            for m, (_, _, _, view) in zip(new_mus, shapes)]

    def refresh(_):
      bases, previous = [], None
      for m, (_, fan_in, fan_out, _) in zip(mats, shapes):
        previous = _basis(linalg.serialize_after(previous, m), _left(fan_in, fan_out))
        bases.append(previous)
      return bases

    old_bases = treedef.flatten_up_to(state.basis)
    bases = jax.lax.cond(state.count % update_proj_gap == 0, refresh,
                         lambda _: old_bases, None)

    t = optax.safe_increment(state.count).astype(jnp.float32)
    step_size = scale * jnp.sqrt(1 - b2**t) / (1 - b1**t)
    out, new_nus = [], []
    for (_, g), m, v, q, (_, fan_in, fan_out, view) in zip(
        leaves, mats, treedef.flatten_up_to(state.nu), bases, shapes):
      left = _left(fan_in, fan_out)
      g_proj = _project(g.astype(jnp.float32).reshape(view), q, left)
      v32 = b2 * v.astype(jnp.float32).reshape(view) + (1 - b2) * jnp.square(g_proj)
      normalised = _project(m, q, left) / (jnp.sqrt(v32) + eps)
      u = step_size * _project_back(normalised, q, left)
      out.append(u.reshape(g.shape).astype(g.dtype))
      new_nus.append(v32.reshape(g.shape).astype(v.dtype))
    return treedef.unflatten(out), ScaleByCondaState(
        count=optax.safe_increment(state.count), mu=treedef.unflatten(new_mus),
        nu=treedef.unflatten(new_nus), basis=treedef.unflatten(bases))

  return optax.GradientTransformation(init_fn, update_fn)


def conda(learning_rate: Any = 0.01, b1: float = 0.9, b2: float = 0.99, eps: float = 1e-8,
          scale: float = 0.25, update_proj_gap: int = 2000, weight_decay: Any = 0.0,
          adam_learning_rate: Any = None, adam_b1: float | None = None,
          adam_b2: float | None = None, adam_eps: float | None = None,
          adam_weight_decay: Any = None, adam_mask: Any = None, mu_dtype: Any = None,
          batch_axes: labels.BatchAxesSpec = None) -> optax.GradientTransformationExtraArgs:
  """Conda on hidden matrices, AdamW on embeddings, head and vectors.

  The authors run one optimizer (their non-matrix group is plain Adam with the
  same lr, betas, eps and decay), so every ``adam_*`` argument defaults to
  None = the matching Conda value.

  Args:
    learning_rate: Conda's learning rate (scalar or schedule, >= 0; 0.01).
    b1, b2: moment decay rates in [0, 1) (0.9, 0.99). eps: > 0 (1e-8).
    scale: > 0, multiplies the back-projected update (0.25).
    update_proj_gap: integer >= 1, steps between SVD refreshes (2000).
    weight_decay: decoupled decay on the Conda matrices (0.0).
    adam_learning_rate, adam_b1, adam_b2, adam_eps, adam_weight_decay: the
      AdamW branch; None = the Conda value. Decay applies to the leaves of
      ``adam_mask`` (default ``labels.weight_decay_mask``: an untied head).
    mu_dtype: dtype of the first moment (default: the parameter's).
    batch_axes: leading batch axes of stacked leaves (see ``labels``).
  """
  hyperparams.check_learning_rate("learning_rate", learning_rate)
  hyperparams.check_non_negative("weight_decay", weight_decay)
  axes = labels.batch_axes_fn(batch_axes)
  direction = scale_by_conda(b1, b2, eps, scale, update_proj_gap, axes, mu_dtype)
  pick = lambda value, default: default if value is None else value
  adam_b1, adam_b2, adam_eps = pick(adam_b1, b1), pick(adam_b2, b2), pick(adam_eps, eps)
  hyperparams.check_beta("adam_b1", adam_b1)
  hyperparams.check_beta("adam_b2", adam_b2)
  hyperparams.check_positive("adam_eps", adam_eps)
  return matrices_with_adamw(
      optax.chain(direction, decay_and_scale(learning_rate, weight_decay)),
      axes, pick(adam_learning_rate, learning_rate), adam_b1, adam_b2, adam_eps,
      pick(adam_weight_decay, weight_decay), adam_mask, mu_dtype)


# How each factory's learning rate moves with width (width_rules).
width_rules.declare(conda, width_rules.Rules("elementwise", width_rules.ELEMENTWISE.norm, ("mup",),
                                         ("weight_decay", "adam_weight_decay")))
