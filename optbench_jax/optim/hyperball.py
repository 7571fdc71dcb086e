"""Hyperball (Wen, Dang, Lyu, Ma & Liang 2026, "Fantastic Pretraining Optimizers and Where to
Find Them II: Hyperball Optimization", arXiv 2606.16899): AdamH and MuonH.

Hyperball wraps a base optimizer's direction. It fixes the Frobenius norm of every weight
matrix and of its step, so the learning rate sets how fast each matrix turns (its angular
rate) and the sphere replaces weight decay. For a matrix W (each matrix of a stacked leaf on
its own) with base direction U_t (Adam's or Muon's update, before the learning rate):

    R       = ||W_0||_F                          (or a configured ``radius``)
    W_{t+1} = R Normalize(W_t - lr_t R Normalize(U_t)),     Normalize(X) = X / ||X||_F

* ``adamh``: U = Adam's m^ / (sqrt(v^) + eps) on hidden matrices and an untied head.
* ``muonh``: U = NS5(Nesterov momentum) (Muon's direction; its width scale cancels) on
  hidden matrices; an untied head takes AdamH.
* Both: embeddings (so a tied head), norms and biases take Adam at ``adam_learning_rate``
  with the same betas and eps, decayed only on the leaves of ``mask`` (the run's weight-decay
  mask holds none of them unless it decays embeddings).

The reference code is Levanter's (marin-community/marin ``lib/levanter/src/levanter/optim/
adamh.py``, ``muonh.py``): routing, shared betas, no decay, the 1e-10 guards and Muon's
``buf = mu buf + g`` follow it. Where it differs from the paper or from it here:

* The code uses the current norm ||W_t||_F where the paper writes R. The two are equal in
  exact arithmetic; R is kept in the state (the paper), so rounding of low-precision
  parameters cannot make the radius drift, and a configured radius works.
* The code clips the gradient of each optimizer group to norm 1 on its own; here the
  trainer's one global clip (``optimizer.grad_clip``) applies.
* The code's stacked leaves have one layer axis; here ``batch_axes`` says how many leading
  axes are stacked layers or experts, and each matrix has its own radius.
* The code's ``tangent_projection`` option (off by default) is not implemented.

The step is computed as a sum of O(lr) terms, not as the difference W_{t+1} - W_t of two
nearly equal matrices: with r = ||W||, w = W / r, u = U / ||U||, b = lr R / r, c = <w, u>,
n = ||w - b u|| = sqrt(1 - 2 b c + b^2),

    W_{t+1} - W_t = R ((2 b c - b^2) / (n (1 + n)) w - (b / n) u) + (R - r) w

(= R (w - b u) / n - W). The last term corrects the norm's rounding; on the sphere nothing
moves at lr = 0 and a small rate's step is proportional to it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optbench_jax.optim import hyperparams
from optbench_jax.optim import labels
from optbench_jax.optim import linalg
from optbench_jax.optim.adam import adamw
from optbench_jax.optim.muon import scale_by_muon
from optbench_jax.optim import width_rules

EPS = 1e-10  # the code's guard on ||U|| and ||W'||

# optax.partition keys (they name the optimizer state's sub-trees).
HYPERBALL = "hyperball"
ADAMH = "adamh"
MUONH = "muonh"
ADAM = "adam"


class HyperballState(NamedTuple):
  """The wrapper's state: a step count (for a schedule), the radii and the base's state.

  ``radius`` of a leaf with batch shape B (its leading ``batch_axes``) has shape B.
  """
  count: jax.Array
  radius: optax.Updates
  base: optax.OptState


def _norms(x: jax.Array, n_batch: int) -> jax.Array:
  """Frobenius norm of every matrix of a leaf, in float32, keeping the matrix dims as 1."""
  axes = tuple(range(n_batch, x.ndim))
  return jnp.sqrt(jnp.sum(jnp.square(x.astype(jnp.float32)), axis=axes, keepdims=True))


def sphere_step(w: jax.Array, u: jax.Array, radius: jax.Array, lr, n_batch: int,
                eps: float = EPS) -> jax.Array:
  """``R Normalize(W - lr R Normalize(U)) - W`` per matrix, in float32 (module docstring).

  ``radius``: R with shape ``w.shape[:n_batch]``. Degenerate matrices follow the
  formula with Normalize(0) = 0: R = 0 keeps W at 0, U = 0 only projects W onto the sphere.
  """
  w32, u32 = w.astype(jnp.float32), u.astype(jnp.float32)
  big_r = radius.reshape(radius.shape + (1,) * (w.ndim - n_batch))
  r, u_norm = _norms(w32, n_batch), _norms(u32, n_batch)
  r_safe, u_safe = jnp.maximum(r, eps), jnp.maximum(u_norm, eps)
  # ||w|| and ||u||: exactly 1, or 0 for a zero matrix (x / x is exact in floating point).
  w_len, u_len = r / r_safe, u_norm / u_safe
  b = lr * big_r / r_safe
  c = jnp.sum(w32 * u32, axis=tuple(range(n_batch, w.ndim)), keepdims=True) / (r_safe * u_safe)
  n2 = jnp.maximum(w_len * w_len - 2 * b * c + b * b * u_len * u_len, 0.0)
  n = jnp.maximum(jnp.sqrt(n2), eps)
  # 1 / n - 1 = (1 - n^2) / (n (1 + n)) with 1 - n^2 written out: no cancellation.
  shrink = (1 - w_len * w_len + 2 * b * c - b * b * u_len * u_len) / (n * (1 + n))
  return big_r * (shrink * w32 / r_safe - (b / n) * u32 / u_safe) + (big_r - r) * w32 / r_safe


def hyperball(base: optax.GradientTransformation, learning_rate: Any,
              batch_axes: labels.BatchAxesSpec = None, radius: float | None = None,
              eps: float = EPS) -> optax.GradientTransformationExtraArgs:
  """Hyperball around ``base``: every leaf it sees moves on its sphere (module docstring).

  Args:
    base: the base optimizer's direction U, without learning rate or weight decay
      (``optax.scale_by_adam()``, ``muon.scale_by_muon(...)``), subtracted as optax does.
      Its extra arguments are passed through.
    learning_rate: lr_t, the step's length relative to the radius (scalar or schedule, >= 0).
    batch_axes: leading axes of stacked layers / experts (see ``labels``); every matrix
      of a leaf has its own radius.
    radius: R for every matrix; None (default) = each matrix's norm at ``init``.
    eps: guard on the norms (the code's 1e-10).

  Every leaf it sees is one matrix per batch index (``optax.partition`` routes the
  rest elsewhere); ``update`` needs ``params``.
  """
  hyperparams.check_learning_rate("learning_rate", learning_rate)
  if radius is not None:
    hyperparams.check_positive("radius", radius)
  hyperparams.check_positive("eps", eps)
  base = optax.with_extra_args_support(base)
  axes_of = labels.batch_axes_fn(batch_axes)

  def init_fn(params):
    def leaf_radius(path, p):
      n_batch = axes_of(path, p)
      if radius is None:
        return _norms(p, n_batch).reshape(p.shape[:n_batch])
      return jnp.full(p.shape[:n_batch], radius, jnp.float32)
    return HyperballState(count=jnp.zeros([], jnp.int32),
                          radius=jax.tree_util.tree_map_with_path(leaf_radius, params),
                          base=base.init(params))

  def update_fn(updates, state, params=None, **extra_args):
    if params is None:
      raise ValueError("hyperball needs params: it projects them onto their sphere")
    direction, base_state = base.update(updates, state.base, params, **extra_args)
    lr = learning_rate(state.count) if callable(learning_rate) else learning_rate

    def leaf_step(path, u, p, big_r):
      return sphere_step(p, u, big_r, lr, axes_of(path, p), eps).astype(p.dtype)

    steps = jax.tree_util.tree_map_with_path(leaf_step, direction, params, state.radius)
    return steps, HyperballState(count=optax.safe_increment(state.count),
                                 radius=state.radius, base=base_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def routing(batch_axes, groups: dict[str, str]):
  """params -> partition key, from ``labels.label_params`` via ``groups`` (label -> key)."""
  return lambda params: jax.tree.map(groups.__getitem__,
                                     labels.label_params(params, batch_axes))


def _adam_branch(adam_learning_rate, b1, b2, eps, weight_decay, mask, axes, mu_dtype):
  hyperparams.check_learning_rate("adam_learning_rate", adam_learning_rate)
  if mask is None:
    mask = lambda params: labels.weight_decay_mask(params, axes)
  return adamw(adam_learning_rate, b1, b2, eps, mu_dtype=mu_dtype,
               weight_decay=weight_decay, mask=mask)


def adamh(learning_rate: Any = 0.02, b1: float = 0.9, b2: float = 0.98, eps: float = 1e-8,
          adam_learning_rate: Any = 0.008, weight_decay: Any = 0.0, mask: Any = None,
          radius: float | None = None, mu_dtype: Any = None,
          batch_axes: labels.BatchAxesSpec = None) -> optax.GradientTransformationExtraArgs:
  """AdamH: Hyperball around Adam on hidden matrices and an untied head, Adam on the rest.

  Defaults are the 130M settings of the authors' Marin runs (lr 0.02, Adam lr 0.008,
  betas (0.9, 0.98)); eps is Levanter's default.

  Args:
    learning_rate: the sphere's rate lr_t (scalar or schedule, >= 0).
    b1, b2, eps: Adam's moments and eps, for both branches (as the code).
    adam_learning_rate: rate of embeddings, norms and biases (scalar or schedule).
    weight_decay: decoupled decay of the Adam branch's leaves in ``mask``; never on the
      sphere (default 0.0, the code's).
    mask: decayed leaves (default ``labels.weight_decay_mask``: none of the Adam branch's).
    radius: every matrix's R; None = its initial norm (the paper).
    mu_dtype: dtype of Adam's first moment (default: the parameter's).
    batch_axes: leading batch axes of stacked leaves (see ``labels``).
  """
  axes = labels.batch_axes_fn(batch_axes)
  groups = {labels.MATRIX: HYPERBALL, labels.HEAD: HYPERBALL,
            labels.EMBEDDING: ADAM, labels.VECTOR: ADAM}
  return optax.partition(
      {HYPERBALL: hyperball(optax.scale_by_adam(b1, b2, eps, mu_dtype=mu_dtype),
                            learning_rate, axes, radius),
       ADAM: _adam_branch(adam_learning_rate, b1, b2, eps, weight_decay, mask, axes,
                          mu_dtype)},
      routing(axes, groups))


def _unit_scale(fan_in: int, fan_out: int) -> float:
  del fan_in, fan_out
  return 1.0  # Hyperball normalises the step: Muon's width scale would cancel


def muonh(learning_rate: Any = 0.02, beta: float = 0.95, nesterov: bool = True,
          ns_steps: int = 5, ns_coefficients="classic", ns_eps: float = 1e-7,
          ns_dtype="float32", b1: float = 0.9, b2: float = 0.98, eps: float = 1e-8,
          adam_learning_rate: Any = 0.008, weight_decay: Any = 0.0, mask: Any = None,
          radius: float | None = None, mu_dtype: Any = None,
          batch_axes: labels.BatchAxesSpec = None) -> optax.GradientTransformationExtraArgs:
  """MuonH: Hyperball around Muon on hidden matrices, AdamH on an untied head, Adam on the rest.

  Defaults are the 130M settings of the authors' Marin runs (lr 0.02, Adam lr 0.008,
  momentum 0.95 Nesterov, betas (0.9, 0.98)).

  Args:
    learning_rate: the sphere's rate lr_t, for MuonH and the AdamH head (scalar or schedule).
    beta, nesterov: Muon's momentum ``buf = beta buf + g`` and ``g + beta buf`` (True).
    ns_steps, ns_coefficients, ns_eps, ns_dtype: Newton-Schulz settings (``linalg``).
    b1, b2, eps: Adam's moments and eps, for the head and the Adam branch (as the code).
    adam_learning_rate, weight_decay, mask, radius, mu_dtype, batch_axes: as in ``adamh``.
  """
  hyperparams.check_beta("beta", beta)
  hyperparams.check_positive("ns_eps", ns_eps)
  linalg.newton_schulz_schedule(ns_coefficients, ns_steps)
  axes = labels.batch_axes_fn(batch_axes)
  groups = {labels.MATRIX: MUONH, labels.HEAD: ADAMH,
            labels.EMBEDDING: ADAM, labels.VECTOR: ADAM}
  return optax.partition(
      {MUONH: hyperball(scale_by_muon(beta, nesterov, ns_steps, ns_coefficients, ns_eps,
                                      ns_dtype, axes, _unit_scale, mu_dtype),
                        learning_rate, axes, radius),
       ADAMH: hyperball(optax.scale_by_adam(b1, b2, eps, mu_dtype=mu_dtype),
                        learning_rate, axes, radius),
       ADAM: _adam_branch(adam_learning_rate, b1, b2, eps, weight_decay, mask, axes,
                          mu_dtype)},
      routing(axes, groups))


# The sphere's step is proportional to learning_rate only to first order (the contract's
# schedule check runs it at a small peak); adam_learning_rate is Adam's, proportional.
adamh.projected_learning_rates = ("learning_rate",)
muonh.projected_learning_rates = ("learning_rate",)


# How each factory's learning rate moves with width (width_rules).
width_rules.declare(adamh, width_rules.Rules("native", None, ("native",), decay_args=()))
width_rules.declare(muonh, width_rules.Rules("native", None, ("native",), decay_args=()))
