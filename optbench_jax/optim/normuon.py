"""NorMuon (Li, Liu, Liang, Chen & Zhao 2025, arXiv:2510.05491): Muon normalised per neuron.

Muon's orthogonalised update has very unequal per-neuron norms; NorMuon keeps
a second-moment EMA per output neuron and divides it out. For a hidden matrix
leaf with gradient g (Flax kernel ``(fan_in, fan_out)``: the output neurons are
the columns, the rows of the PyTorch ``(out, in)`` weight):

    m_t = b m_{t-1} + (1 - b) g_t                        (EMA momentum, m_0 = 0)
    d_t = (1 - b) g_t + b m_t  (Nesterov)  or  m_t
    O_t = NS5(d_t)                                       (linalg.newton_schulz)
    v_t = b2 v_{t-1} + (1 - b2) mean_{fan_in}(O_t * O_t)  (one entry per neuron, v_0 = 0)
    O^_t = O_t / (sqrt(v_t) + eps)
    u_t = s_t O^_t
    p_t = p_{t-1} - lr_t (u_t + wd p_{t-1})

with the rescale ``s_t`` chosen by ``rescale``:

* ``"muon"`` (default; the authors' code, github.com/zichongli5/NorMuon
  ``normuon.py``, which their README recommends): ``s_t = sqrt(max(1,
  fan_out / fan_in)) ||O_t||_F / (||O^_t||_F + eps)`` -- the update keeps
  Muon's Frobenius norm and width scale, so Muon's learning rate carries over.
* ``"rms"`` (the paper's Algorithm 1, Moonlight's rule): ``s_t = 0.2
  sqrt(fan_in fan_out) / (||O^_t||_F + eps)`` -- update RMS 0.2, so one
  learning rate can serve the AdamW branch as well.

As in the code, ``v`` has no bias correction (the renormalisation removes
any uniform factor; only the effective eps changes) and eps is 1e-10. Leading
batch axes (stacked layers, experts) are matrices of their own; >2-D kernels
are treated as ``(prod(leading), last)`` like Muon. Deviation: NS runs in
float32 by default (the code uses bfloat16; ``ns_dtype="bfloat16"`` matches it).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optbench_jax.optim import hyperparams
from optbench_jax.optim import labels
from optbench_jax.optim.matrix import (check_common, ema_momentum, fan_in_out, matrix_optimizer,
                                       orthogonalize)
from optbench_jax.optim.muon import muon_scale
from optbench_jax.optim import width_rules

RESCALES = ("muon", "rms")
RMS_TARGET = 0.2  # Moonlight's AdamW-matching update RMS


class ScaleByNorMuonState(NamedTuple):
  """NorMuon's state: momentum (like the parameter) and per-neuron second moments.

  ``nu`` of a ``(*batch, *fan_in_dims, fan_out)`` leaf is ``(*batch, 1, fan_out)``.
  """
  momentum: optax.Updates
  nu: optax.Updates


def scale_by_normuon(beta: float = 0.95, beta2: float = 0.95, nesterov: bool = True,
                     eps: float = 1e-10, rescale: str = "muon", ns_steps: int = 5,
                     ns_coefficients="classic", ns_eps: float = 1e-7, ns_dtype="float32",
                     batch_axes: labels.BatchAxesSpec = None, mu_dtype: Any = None
                     ) -> optax.GradientTransformation:
  """The NorMuon direction ``u`` of every matrix leaf (see the module docstring)."""
  hyperparams.check_beta("beta", beta)
  hyperparams.check_beta("beta2", beta2)
  hyperparams.check_positive("eps", eps)
  hyperparams.check_choice("rescale", rescale, RESCALES)
  axes_of = labels.batch_axes_fn(batch_axes)

  def nu_shape(path, p):
    n_batch = axes_of(path, p)
    _, fan_out = fan_in_out(p.shape, n_batch)
    return p.shape[:n_batch] + (1, fan_out)

  def init_fn(params):
    return ScaleByNorMuonState(
        momentum=optax.tree.zeros_like(params, dtype=mu_dtype),
        nu=jax.tree_util.tree_map_with_path(
            lambda path, p: jnp.zeros(nu_shape(path, p), jnp.float32), params))

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
      ortho = orthogonalize(direction, n_batch, ns_steps, ns_coefficients, ns_eps, ns_dtype)
      o = ortho.reshape(g.shape[:n_batch] + (fan_in, fan_out)).astype(jnp.float32)
      v = beta2 * v + (1 - beta2) * jnp.mean(jnp.square(o), axis=-2, keepdims=True)
      o_hat = o / (jnp.sqrt(v) + eps)
      hat_norm = jnp.sqrt(jnp.sum(jnp.square(o_hat), axis=(-2, -1), keepdims=True))
      if rescale == "muon":
        norm = jnp.sqrt(jnp.sum(jnp.square(o), axis=(-2, -1), keepdims=True))
        s = muon_scale(fan_in, fan_out) * norm / (hat_norm + eps)
      else:
        s = RMS_TARGET * math.sqrt(fan_in * fan_out) / (hat_norm + eps)
      out.append((s * o_hat).reshape(g.shape).astype(g.dtype))
      new_momenta.append(m)
      new_nus.append(v)
    return treedef.unflatten(out), ScaleByNorMuonState(
        momentum=treedef.unflatten(new_momenta), nu=treedef.unflatten(new_nus))

  return optax.GradientTransformation(init_fn, update_fn)


def normuon(learning_rate: Any = 0.02, beta: float = 0.95, beta2: float = 0.95,
            nesterov: bool = True, eps: float = 1e-10, rescale: str = "muon",
            ns_steps: int = 5, ns_coefficients="classic", ns_eps: float = 1e-7,
            ns_dtype="float32", weight_decay: Any = 0.01,
            adam_learning_rate: Any = None, adam_b1: float = 0.9, adam_b2: float = 0.95,
            adam_eps: float = 1e-10, adam_weight_decay: Any = None, adam_mask: Any = None,
            mu_dtype: Any = None, batch_axes: labels.BatchAxesSpec = None
            ) -> optax.GradientTransformationExtraArgs:
  """NorMuon on hidden matrices, AdamW on embeddings, head and vectors.

  Defaults are the authors' recommended groups (README of
  github.com/zichongli5/NorMuon, ``NorMuonWithAuxAdam``): lr 0.02, momentum
  0.95, beta2 0.95, weight decay 0.01 on both groups, AdamW betas (0.9, 0.95)
  and eps 1e-10 (their AdamW lr is 3e-4; here it defaults to ``learning_rate``
  as in ``muon``).

  Args:
    learning_rate: NorMuon's learning rate (scalar or schedule, >= 0).
    beta: momentum in [0, 1). beta2: per-neuron second-moment decay in [0, 1).
    nesterov: use (1 - beta) g + beta m (True).
    eps: > 0, added to sqrt(v) and to the norm in the rescale (1e-10).
    rescale: ``"muon"`` (code) or ``"rms"`` (paper Alg. 1); see the module doc.
    ns_steps, ns_coefficients, ns_eps, ns_dtype: Newton-Schulz settings.
    weight_decay: decoupled decay on the NorMuon matrices (0.01).
    adam_learning_rate: AdamW branch learning rate; None = ``learning_rate``.
    adam_b1, adam_b2, adam_eps: AdamW branch moments (0.9, 0.95, 1e-10).
    adam_weight_decay: AdamW branch decay; None = ``weight_decay`` (the code
      uses one value for both groups), on the leaves of ``adam_mask`` (default
      ``labels.weight_decay_mask``: an untied head, never embeddings/vectors).
    mu_dtype: dtype of the momentum (default: the parameter's).
    batch_axes: leading batch axes of stacked leaves (see ``labels``).
  """
  check_common(learning_rate, beta, adam_b1, adam_b2, adam_eps, ns_steps,
               ns_coefficients, ns_eps, weight_decay)
  axes = labels.batch_axes_fn(batch_axes)
  return matrix_optimizer(
      scale_by_normuon(beta, beta2, nesterov, eps, rescale, ns_steps, ns_coefficients,
                       ns_eps, ns_dtype, axes, mu_dtype),
      axes, learning_rate, weight_decay, adam_learning_rate, adam_b1, adam_b2, adam_eps,
      adam_weight_decay, adam_mask, mu_dtype)


# How the learning rate moves with width (width_rules): an orthogonal step, kept at Muon's
# Frobenius norm ("muon") or at RMS 0.2 ("rms", so spectral norm 0.2 sqrt(max side)).
width_rules.declare(normuon, width_rules.Rules(
    "orthogonal",
    lambda fan_in, fan_out, hparams: (muon_scale(fan_in, fan_out)
                                      if hparams.get("rescale", "muon") == "muon"
                                      else 0.2 * math.sqrt(max(fan_in, fan_out))),
    ("spectral", "rms_match"), ("weight_decay", "adam_weight_decay")))
