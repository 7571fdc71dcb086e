"""Muon (Jordan et al. 2024) and D-Muon (Liu et al. 2025, "Muon is Scalable").

Muon acts on hidden weight matrices only. For a matrix leaf with gradient g:

    buf_t = mu buf_{t-1} + g_t                      (momentum, buf_0 = 0)
    g'_t  = g_t + mu buf_t   (Nesterov)  or  buf_t  (nesterov=False)
    O_t   = NS5(g'_t)                               (linalg.newton_schulz)
    u_t   = s(fan_in, fan_out) O_t
    p_t   = p_{t-1} - lr_t (u_t + wd p_{t-1})

with Flax kernels ``(..., fan_in, fan_out)``: ``fan_in = shape[-2]`` (all
non-batch dims but the last, flattened, for >2-D kernels), ``fan_out =
shape[-1]``. Leading batch axes (stacked layers, MoE experts; ``batch_axes``)
are orthogonalised matrix by matrix.

* Muon: ``s = sqrt(max(1, fan_out / fan_in))`` (Keller Jordan's width rule).
  Embeddings, the LM head and vectors go to AdamW with their own
  ``adam_learning_rate`` and betas. The Semenov et al. study applies no weight
  decay to the Muon matrices (their **quirk**), hence ``weight_decay=0.0`` by
  default; set it to decay the matrices too.
* D-Muon (Moonlight): ``s = 0.2 sqrt(max(fan_in, fan_out))``, which matches
  AdamW's update RMS, so one learning rate serves both branches, and decoupled
  weight decay applies to every decayed parameter (``labels.weight_decay_mask``).

Differences from ``optax.contrib.muon`` (see tests): optax keeps an EMA with
bias correction, ``m = b m + (1-b) g``, and its Nesterov form differs from
``g + mu buf`` by step-dependent factors, so only ``nesterov=False`` runs agree
(NS is scale-invariant); optax's AdamW branch switches to NAdam when
``nesterov=True``; optax's eps is shared between NS and Adam.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import optax

from optbench_jax.optim import hyperparams
from optbench_jax.optim import labels
from optbench_jax.optim import linalg
from optbench_jax.optim.matrix import (ADAM, MUON, check_common, fan_in_out, matrix_optimizer,
                                       matrix_routing, orthogonalize)
from optbench_jax.optim.scaling import decay_and_scale
from optbench_jax.optim import width_rules


def muon_scale(fan_in: int, fan_out: int) -> float:
  """Keller Jordan's Muon scale sqrt(max(1, fan_out / fan_in))."""
  return math.sqrt(max(1.0, fan_out / fan_in))


def d_muon_scale(fan_in: int, fan_out: int) -> float:
  """Moonlight's RMS-matching scale 0.2 sqrt(max(fan_in, fan_out))."""
  return 0.2 * math.sqrt(max(fan_in, fan_out))


class ScaleByMuonState(NamedTuple):
  """Muon's state: the momentum buffer of every matrix leaf."""
  momentum: optax.Updates


def scale_by_muon(beta: float = 0.95, nesterov: bool = True, ns_steps: int = 5,
                  ns_coefficients="classic", ns_eps: float = 1e-7, ns_dtype="float32",
                  batch_axes: labels.BatchAxesSpec = None,
                  scale: Callable[[int, int], float] = muon_scale, mu_dtype: Any = None
                  ) -> optax.GradientTransformation:
  """u = scale(fan_in, fan_out) * NS(Nesterov momentum), per matrix (see module doc).

  Every leaf it sees must be a matrix (``optax.partition`` routes the rest
  elsewhere); ``batch_axes`` says how many leading axes are stacked matrices.
  """
  hyperparams.check_beta("beta", beta)
  linalg.newton_schulz_schedule(ns_coefficients, ns_steps)
  hyperparams.check_positive("ns_eps", ns_eps)
  axes_of = labels.batch_axes_fn(batch_axes)

  def init_fn(params):
    return ScaleByMuonState(momentum=optax.tree.zeros_like(params, dtype=mu_dtype))

  def update_fn(updates, state, params=None):
    del params
    momentum = jax.tree.map(lambda m, g: (beta * m + g).astype(m.dtype),
                            state.momentum, updates)
    if nesterov:
      direction = jax.tree.map(lambda g, m: g + beta * m.astype(g.dtype), updates, momentum)
    else:
      direction = jax.tree.map(lambda g, m: m.astype(g.dtype), updates, momentum)

    def leaf_update(path, d):
      n_batch = axes_of(path, d)
      fan_in, fan_out = fan_in_out(d.shape, n_batch)
      ortho = orthogonalize(d, n_batch, ns_steps, ns_coefficients, ns_eps, ns_dtype)
      return (scale(fan_in, fan_out) * ortho).astype(d.dtype)

    out = jax.tree_util.tree_map_with_path(leaf_update, direction)
    return out, ScaleByMuonState(momentum=momentum)

  return optax.GradientTransformation(init_fn, update_fn)


def muon(learning_rate: Any = 0.02, beta: float = 0.95, nesterov: bool = True,
         ns_steps: int = 5, ns_coefficients="classic", ns_eps: float = 1e-7,
         ns_dtype="float32", weight_decay: Any = 0.0,
         adam_learning_rate: Any = None, adam_b1: float = 0.9, adam_b2: float = 0.999,
         adam_eps: float = 1e-8, adam_weight_decay: Any = 0.0, adam_mask: Any = None,
         mu_dtype: Any = None, batch_axes: labels.BatchAxesSpec = None
         ) -> optax.GradientTransformationExtraArgs:
  """Muon on hidden matrices, AdamW on embeddings, head and vectors.

  Args:
    learning_rate: Muon's learning rate (scalar or schedule, >= 0).
    beta: momentum mu in [0, 1) (0.95). nesterov: use g + mu buf (True).
    ns_steps, ns_coefficients, ns_eps, ns_dtype: Newton-Schulz settings (see
      ``linalg.newton_schulz``; 5 classic steps in float32 by default).
    weight_decay: decoupled decay on the Muon matrices (default 0.0, the
      paper's setting).
    adam_learning_rate: AdamW branch learning rate; None = ``learning_rate``
      (as optax.contrib.muon). The Semenov et al. setting is 0.01 / 1e-3.
    adam_b1, adam_b2, adam_eps: AdamW branch moments (0.9, 0.999, 1e-8).
    adam_weight_decay: AdamW branch decay (0.0), on the leaves of ``adam_mask``
      (default ``labels.weight_decay_mask``: an untied head, never embeddings
      or vectors).
    mu_dtype: dtype of the momentum / first moment (default: the parameter's).
    batch_axes: leading batch axes of stacked leaves (see ``labels``).
  """
  check_common(learning_rate, beta, adam_b1, adam_b2, adam_eps, ns_steps,
               ns_coefficients, ns_eps, weight_decay)
  axes = labels.batch_axes_fn(batch_axes)
  return matrix_optimizer(
      scale_by_muon(beta, nesterov, ns_steps, ns_coefficients, ns_eps, ns_dtype, axes,
                    muon_scale, mu_dtype),
      axes, learning_rate, weight_decay, adam_learning_rate, adam_b1, adam_b2, adam_eps,
      adam_weight_decay, adam_mask, mu_dtype)


def d_muon(learning_rate: Any = 1e-3, beta: float = 0.95, nesterov: bool = True,
           ns_steps: int = 5, ns_coefficients="classic", ns_eps: float = 1e-7,
           ns_dtype="float32", weight_decay: Any = 0.1, mask: Any = None,
           adam_b1: float = 0.9, adam_b2: float = 0.999, adam_eps: float = 1e-8,
           mu_dtype: Any = None, batch_axes: labels.BatchAxesSpec = None
           ) -> optax.GradientTransformationExtraArgs:
  """D-Muon (Moonlight): Muon scaled by 0.2 sqrt(max(fan_in, fan_out)), one lr.

  Hidden matrices get Muon's direction with the RMS-matching scale, the rest
  Adam's direction; then ``p -= lr (u + wd p)`` for both, with decay on the
  leaves of ``mask`` (default ``labels.weight_decay_mask``: matrices and an
  untied head). Arguments as in ``muon``.
  """
  check_common(learning_rate, beta, adam_b1, adam_b2, adam_eps, ns_steps,
               ns_coefficients, ns_eps, weight_decay)
  axes = labels.batch_axes_fn(batch_axes)
  if mask is None:
    mask = lambda params: labels.weight_decay_mask(params, axes)
  return optax.chain(
      optax.partition(
          {MUON: scale_by_muon(beta, nesterov, ns_steps, ns_coefficients, ns_eps,
                               ns_dtype, axes, d_muon_scale, mu_dtype),
           ADAM: optax.scale_by_adam(adam_b1, adam_b2, adam_eps, mu_dtype=mu_dtype)},
          matrix_routing(axes)),
      decay_and_scale(learning_rate, weight_decay, mask))


# How each factory's learning rate moves with width (width_rules).
width_rules.declare(muon, width_rules.orthogonal(muon_scale, "muon"))
width_rules.declare(d_muon, width_rules.orthogonal(d_muon_scale, "d_muon",
                                                   ("weight_decay", "weight_decay")))
