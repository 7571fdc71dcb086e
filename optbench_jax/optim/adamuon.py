"""AdaMuon (Si, Zhang & Shen 2025, arXiv:2507.11005): Muon with an element-wise second moment.

For a hidden matrix leaf with gradient g (Flax kernel ``(fan_in, fan_out)``):

    m_t = b m_{t-1} + (1 - b) g_t                      (EMA momentum, m_0 = 0)
    d_t = (1 - b) g_t + b m_t  (Nesterov)  or  m_t
    O_t = NS5(sign(d_t))                               (sign-stabilised orthogonal update)
    v_t = b2 v_{t-1} + (1 - b2) O_t * O_t               (element-wise, v_0 = 0, no bias correction)
    O^_t = O_t / (sqrt(v_t) + eps)
    u_t = 0.2 sqrt(fan_in fan_out) O^_t / (||O^_t||_F + eps)   (RMS-aligned: RMS(u) = 0.2)
    p_t = p_{t-1} - lr_t (u_t + wd p_{t-1})

The RMS alignment matches AdamW's update RMS, so AdaMuon and its AdamW branch
share one learning rate (the paper reuses AdamW's schedule).

Follows the authors' GPT-2 code (github.com/Chongjie-Si/AdaMuon,
``gpt2/models/optimizers/adamuon.py``, the code of the paper's experiments):
the sign is taken of the Nesterov momentum, ``v`` decays with the momentum
coefficient (``beta2=None`` = ``beta``), there is no bias correction, and eps
is 1e-8 in both places. The repository's earlier ``adamuon.py`` (July 2025)
has no sign, a separate ``beta2`` (0.999) and a bias-corrected ``v``;
``sign_momentum=False, beta2=0.999`` gives it (bias correction cancels in the
RMS alignment up to eps). Leading batch axes (stacked layers, experts) are
matrices of their own; >2-D kernels are ``(prod(leading), last)`` as in Muon.
Deviation: NS in float32 by default (the code uses bfloat16).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optbench_jax.optim import hyperparams
from optbench_jax.optim import labels
from optbench_jax.optim import width_rules
from optbench_jax.optim.matrix import (check_common, ema_momentum, fan_in_out, matrix_optimizer,
                                       orthogonalize)

RMS_TARGET = 0.2  # Moonlight's AdamW-matching update RMS


class ScaleByAdaMuonState(NamedTuple):
  """AdaMuon's state: momentum and the second moment of O, both like the parameter."""
  momentum: optax.Updates
  nu: optax.Updates


def scale_by_adamuon(beta: float = 0.95, beta2: float | None = None, nesterov: bool = True,
                     sign_momentum: bool = True, eps: float = 1e-8, ns_steps: int = 5,
                     ns_coefficients="classic", ns_eps: float = 1e-7, ns_dtype="float32",
                     batch_axes: labels.BatchAxesSpec = None, mu_dtype: Any = None
                     ) -> optax.GradientTransformation:
  """The AdaMuon direction ``u`` of every matrix leaf (see the module docstring)."""
  hyperparams.check_beta("beta", beta)
  if beta2 is not None:
    hyperparams.check_beta("beta2", beta2)
  hyperparams.check_positive("eps", eps)
  b2 = beta if beta2 is None else beta2
  axes_of = labels.batch_axes_fn(batch_axes)

  def init_fn(params):
    return ScaleByAdaMuonState(momentum=optax.tree.zeros_like(params, dtype=mu_dtype),
                               nu=optax.tree.zeros_like(params))

  def update_fn(updates, state, params=None):
    del params
    leaves, treedef = jax.tree_util.tree_flatten_with_path(updates)
    momenta = treedef.flatten_up_to(state.momentum)
    nus = treedef.flatten_up_to(state.nu)
    out, new_momenta, new_nus = [], [], []
    for (path, g), m, v in zip(leaves, momenta, nus):
      n_batch = axes_of(path, g)
      fan_in, fan_out = fan_in_out(g.shape, n_batch)
      direction, m = ema_momentum(g, m, beta, nesterov)
      if sign_momentum:
        direction = jnp.sign(direction)
      o = orthogonalize(direction, n_batch, ns_steps, ns_coefficients, ns_eps, ns_dtype)
      o = o.astype(jnp.float32)
      v32 = b2 * v.astype(jnp.float32) + (1 - b2) * jnp.square(o)
      o_hat = (o / (jnp.sqrt(v32) + eps)).reshape(g.shape[:n_batch] + (fan_in, fan_out))
      hat_norm = jnp.sqrt(jnp.sum(jnp.square(o_hat), axis=(-2, -1), keepdims=True))
      u = RMS_TARGET * math.sqrt(fan_in * fan_out) * o_hat / (hat_norm + eps)
      out.append(u.reshape(g.shape).astype(g.dtype))
      new_momenta.append(m)
      new_nus.append(v32.astype(v.dtype))
    return treedef.unflatten(out), ScaleByAdaMuonState(
        momentum=treedef.unflatten(new_momenta), nu=treedef.unflatten(new_nus))

  return optax.GradientTransformation(init_fn, update_fn)


def adamuon(learning_rate: Any = 6e-4, beta: float = 0.95, beta2: float | None = None,
            nesterov: bool = True, sign_momentum: bool = True, eps: float = 1e-8,
            ns_steps: int = 5, ns_coefficients="classic", ns_eps: float = 1e-7,
            ns_dtype="float32", weight_decay: Any = 0.1,
            adam_learning_rate: Any = None, adam_b1: float = 0.9, adam_b2: float = 0.95,
            adam_eps: float = 1e-8, adam_weight_decay: Any = None, adam_mask: Any = None,
            mu_dtype: Any = None, batch_axes: labels.BatchAxesSpec = None
            ) -> optax.GradientTransformationExtraArgs:
  """AdaMuon on hidden matrices, AdamW on embeddings, head and vectors.

  Defaults are the authors' GPT-2 small setting (``gpt2/config/small.py`` and
  ``gpt2/models/model.py`` of github.com/Chongjie-Si/AdaMuon): one learning
  rate 6e-4 and weight decay 0.1 for both groups, momentum 0.95, AdamW betas
  (0.9, 0.95), eps 1e-8.

  Args:
    learning_rate: AdaMuon's learning rate (scalar or schedule, >= 0).
    beta: momentum in [0, 1). beta2: decay of v in [0, 1); None = ``beta``
      (the code). nesterov: (1 - beta) g + beta m (True).
    sign_momentum: orthogonalise sign(d) (True, the paper) or d.
    eps: > 0, added to sqrt(v) and to ||O^||_F (1e-8).
    ns_steps, ns_coefficients, ns_eps, ns_dtype: Newton-Schulz settings.
    weight_decay: decoupled decay on the AdaMuon matrices (0.1).
    adam_learning_rate: AdamW branch learning rate; None = ``learning_rate``.
    adam_b1, adam_b2, adam_eps: AdamW branch moments (0.9, 0.95, 1e-8).
    adam_weight_decay: AdamW branch decay; None = ``weight_decay`` (the code
      decays embeddings and head with the same value), on the leaves of
      ``adam_mask`` (default ``labels.weight_decay_mask``: an untied head).
    mu_dtype: dtype of the momentum (default: the parameter's).
    batch_axes: leading batch axes of stacked leaves (see ``labels``).
  """
  check_common(learning_rate, beta, adam_b1, adam_b2, adam_eps, ns_steps,
               ns_coefficients, ns_eps, weight_decay)
  axes = labels.batch_axes_fn(batch_axes)
  return matrix_optimizer(
      scale_by_adamuon(beta, beta2, nesterov, sign_momentum, eps, ns_steps, ns_coefficients,
                       ns_eps, ns_dtype, axes, mu_dtype),
      axes, learning_rate, weight_decay, adam_learning_rate, adam_b1, adam_b2, adam_eps,
      adam_weight_decay, adam_mask, mu_dtype)


# How the learning rate moves with width (width_rules): an orthogonal step aligned to RMS 0.2,
# so of spectral norm 0.2 sqrt(max side).
width_rules.declare(adamuon, width_rules.orthogonal(
    lambda fan_in, fan_out: 0.2 * math.sqrt(max(fan_in, fan_out)), "adamuon"))
