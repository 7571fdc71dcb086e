"""Scion (Pethick et al. 2025, "Training Deep Learning Models with Norm-Constrained LMOs").

Every leaf takes a step along the linear minimisation oracle (LMO) of a norm
ball chosen by its layer type, scaled by that group's radius rho:

    m_t = beta m_{t-1} + (1 - beta) g_t          (EMA momentum, m_0 = 0)
    u_t = rho_label * lmo_label(m_t)
    p_t = p_{t-1} - lr_t (u_t + wd p_{t-1})

LMOs in Flax orientation (kernels ``(fan_in, fan_out)``, embeddings ``(V, d)``),
following the authors' code (github.com/LIONS-EPFL/scion, ``scion.py``, whose
PyTorch weights are ``(d_out, d_in)``):

* hidden matrices, ``"spectral"``: ``NS5(m) sqrt(fan_out / fan_in)`` per matrix
  (their ``Spectral(normalized=True)``; stacked leaves per matrix).
* embedding / head, ``"sign"``: ``sign(m) / d_model`` (their ``Sign``, normalised
  by the head's fan-in; a tied embedding is the head, the paper's nanoGPT setup).
* embedding, ``"row_norm"``: each token row scaled to RMS 1 (their
  ``ColNorm(transpose=True)`` for an untied input embedding).
* head, ``"col_norm"``: each output column divided by ``sqrt(fan_in) ||col||``
  (their ``RowNorm(normalized=True)``).
* vectors (norm scales, biases), ``"rms"``: ``m / rms(m)`` over the last axis
  (their ``BiasRMS``).

Choices: the paper's momentum argument is ``1 - beta`` (their 0.1 = our 0.9).
Their default *constrained* step ``p <- (1 - lr) p - lr u`` is exactly decoupled
weight decay 1.0 on every leaf, so ``constrained=True`` selects it; the default
is the unconstrained variant with ordinary (masked) decoupled weight decay,
which matches how the other optimizers here are tuned. Default radii are the
paper's nanoGPT values: 50 for hidden matrices and 60 x 50 for the sign LMO.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optbench_jax.optim import hyperparams
from optbench_jax.optim import labels
from optbench_jax.optim import linalg
from optbench_jax.optim.matrix import fan_in_out, orthogonalize
from optbench_jax.optim.scaling import decay_and_scale
from optbench_jax.optim import width_rules

_EPS = 1e-8
EMBEDDING_LMOS = ("sign", "row_norm")
HEAD_LMOS = ("sign", "col_norm")
VECTOR_LMOS = ("rms",)


def spectral_lmo(m, n_batch, ns_steps=5, ns_coefficients="classic", ns_eps=1e-7,
                 ns_dtype="float32"):
  fan_in, fan_out = fan_in_out(m.shape, n_batch)
  ortho = orthogonalize(m, n_batch, ns_steps, ns_coefficients, ns_eps, ns_dtype)
  return ortho * math.sqrt(fan_out / fan_in)


def sign_lmo(m, d_model: int):
  return jnp.sign(m) / d_model


def rms_lmo(m, axis: int = -1):
  """Each slice along ``axis`` scaled to root-mean-square 1."""
  rms = jnp.sqrt(jnp.mean(jnp.square(m), axis=axis, keepdims=True))
  return m / (rms + _EPS)


def col_norm_lmo(m):
  """Head columns (one per output) divided by sqrt(fan_in) times their l2 norm."""
  norm = jnp.sqrt(jnp.sum(jnp.square(m), axis=-2, keepdims=True))
  return m / (math.sqrt(m.shape[-2]) * norm + _EPS)


class ScaleByScionState(NamedTuple):
  """Scion's state: the EMA momentum of every leaf."""
  momentum: optax.Updates


def scale_by_scion(beta: float = 0.9, hidden_radius: float = 50.0,
                   embedding_radius: float | None = None, head_radius: float | None = None,
                   vector_radius: float = 1.0, embedding_lmo: str = "sign",
                   head_lmo: str = "sign", ns_steps: int = 5, ns_coefficients="classic",
                   ns_eps: float = 1e-7, ns_dtype="float32",
                   batch_axes: labels.BatchAxesSpec = None, mu_dtype: Any = None
                   ) -> optax.GradientTransformation:
  """u = radius * LMO(EMA momentum), the LMO picked by ``labels`` (see module doc).

  ``embedding_radius`` / ``head_radius`` default to 60 x ``hidden_radius`` for
  the sign LMO and ``hidden_radius`` for the row / column norms.
  """
  hyperparams.check_beta("beta", beta)
  hyperparams.check_choice("embedding_lmo", embedding_lmo, EMBEDDING_LMOS)
  hyperparams.check_choice("head_lmo", head_lmo, HEAD_LMOS)
  for name, value in (("hidden_radius", hidden_radius), ("embedding_radius", embedding_radius),
                      ("head_radius", head_radius), ("vector_radius", vector_radius)):
    if value is not None:
      hyperparams.check_positive(name, value)
  linalg.newton_schulz_schedule(ns_coefficients, ns_steps)
  if embedding_radius is None:
    embedding_radius = 60.0 * hidden_radius if embedding_lmo == "sign" else hidden_radius
  if head_radius is None:
    head_radius = 60.0 * hidden_radius if head_lmo == "sign" else hidden_radius
  axes_of = labels.batch_axes_fn(batch_axes)

  def lmo(path, m, label):
    n_batch = axes_of(path, m)
    if label == labels.MATRIX:
      return hidden_radius * spectral_lmo(m, n_batch, ns_steps, ns_coefficients, ns_eps,
                                          ns_dtype)
    if label == labels.EMBEDDING:  # (..., V, d): d_model is the last dim
      if embedding_lmo == "sign":
        return embedding_radius * sign_lmo(m, m.shape[-1])
      return embedding_radius * rms_lmo(m, axis=-1)
    if label == labels.HEAD:  # (..., d, V): d_model is the fan-in
      if head_lmo == "sign":
        return head_radius * sign_lmo(m, m.shape[-2])
      return head_radius * col_norm_lmo(m)
    return vector_radius * rms_lmo(m, axis=-1)

  def init_fn(params):
    return ScaleByScionState(momentum=optax.tree.zeros_like(params, dtype=mu_dtype))

  def update_fn(updates, state, params=None):
    del params
    momentum = jax.tree.map(
        lambda m, g: (beta * m + (1 - beta) * g).astype(m.dtype), state.momentum, updates)
    leaf_labels = labels.label_params(updates, axes_of)
    out = jax.tree_util.tree_map_with_path(
        lambda path, m, g, label: lmo(path, m.astype(g.dtype), label).astype(g.dtype),
        momentum, updates, leaf_labels)
    return out, ScaleByScionState(momentum=momentum)

  return optax.GradientTransformation(init_fn, update_fn)


def scion(learning_rate: Any = 2.0**-12, beta: float = 0.9, hidden_radius: float = 50.0,
          embedding_radius: float | None = None, head_radius: float | None = None,
          vector_radius: float = 1.0, embedding_lmo: str = "sign", head_lmo: str = "sign",
          weight_decay: Any = 0.0, mask: Any = None, constrained: bool = False,
          ns_steps: int = 5, ns_coefficients="classic", ns_eps: float = 1e-7,
          ns_dtype="float32", mu_dtype: Any = None,
          batch_axes: labels.BatchAxesSpec = None) -> optax.GradientTransformationExtraArgs:
  """Scion: per-layer-type LMO steps with per-group radii.

  Args:
    learning_rate: gamma in the paper (default 2^-12, their nanoGPT value).
    beta: EMA momentum in [0, 1) (0.9 = the paper's momentum 0.1).
    hidden_radius, embedding_radius, head_radius, vector_radius: radii rho.
    embedding_lmo: ``"sign"`` (tied embeddings) or ``"row_norm"``.
    head_lmo: ``"sign"`` or ``"col_norm"``.
    weight_decay: decoupled decay on the leaves of ``mask`` (default
      ``labels.weight_decay_mask``); ignored when ``constrained``.
    constrained: the paper's constrained update p <- (1 - lr) p - lr u
      (decay 1.0 on every leaf), which keeps each layer inside its radius ball.
    ns_*: Newton-Schulz settings of the spectral LMO.
    batch_axes: leading batch axes of stacked leaves (see ``labels``).
  """
  hyperparams.check_learning_rate("learning_rate", learning_rate)
  hyperparams.check_non_negative("weight_decay", weight_decay)
  hyperparams.check_positive("ns_eps", ns_eps)
  axes = labels.batch_axes_fn(batch_axes)
  if constrained:
    weight_decay, mask = 1.0, None
  elif mask is None:
    mask = lambda params: labels.weight_decay_mask(params, axes)
  return optax.chain(
      scale_by_scion(beta, hidden_radius, embedding_radius, head_radius, vector_radius,
                     embedding_lmo, head_lmo, ns_steps, ns_coefficients, ns_eps, ns_dtype,
                     axes, mu_dtype),
      decay_and_scale(learning_rate, weight_decay, mask))


# How each factory's learning rate moves with width (width_rules).
width_rules.declare(scion, width_rules.NATIVE)
