"""Pieces shared by the matrix optimizers (Muon, D-Muon, NorMuon, AdaMuon, Conda, Scion,
Dion, SPlus, Kron).

A matrix optimizer acts on hidden weight matrices and sends embeddings, the
head and vectors to an AdamW branch. What every one of them needs, once:

* the geometry of a kernel leaf: :func:`fan_in_out` (Flax kernels are
  ``(..., fan_in, fan_out)``; leading ``batch_axes`` are stacked layers or
  experts, each a matrix of its own; >2-D kernels are ``(prod(leading), last)``);
* the per-matrix maps: :func:`orthogonalize` (Newton-Schulz of every matrix
  of a leaf) and :func:`ema_momentum` (the lerp momentum of NorMuon/AdaMuon);
* random draws that belong to a matrix, not to a leaf
  (:func:`matrix_offsets`, :func:`normal_per_matrix`): matrix j in tree order
  (a stack counted matrix by matrix) draws from ``fold_in(key, j)``, so a
  stacked ``(L, in, out)`` leaf draws the same numbers as L separate leaves in
  its place (Kron's probes, Dion's Q_0 and sketches);
* the split into the two branches: :func:`matrix_routing` (the
  ``optax.partition`` labels), :func:`matrices_with_adamw` (matrix branch +
  AdamW branch) and :func:`matrix_optimizer`, the factory tail of a
  Muon-family optimizer (direction, ``p -= lr (u + wd p)``, AdamW with the
  matrix branch's rate and decay unless given its own).

Batch axes are normalised by ``labels.batch_axes_fn`` (one owner).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import optax

from optbench_jax.optim import hyperparams
from optbench_jax.optim import labels
from optbench_jax.optim import linalg
from optbench_jax.optim.adam import adamw
from optbench_jax.optim.scaling import decay_and_scale

# optax.partition keys of the two branches (they name the optimizer state's sub-trees).
MUON = "muon"
ADAM = "adam"


def fan_in_out(shape: tuple[int, ...], n_batch: int) -> tuple[int, int]:
  """(fan_in, fan_out) of a Flax kernel: all non-batch dims but the last, and the last."""
  matrix = shape[n_batch:]
  if len(matrix) < 2:
    raise ValueError(f"a matrix needs >= 2 non-batch dims, got shape {shape} "
                     f"with {n_batch} batch axes")
  return math.prod(matrix[:-1]), matrix[-1]


def orthogonalize(x: jax.Array, n_batch: int, ns_steps: int = 5,
                  ns_coefficients="classic", ns_eps: float = 1e-7,
                  ns_dtype="float32") -> jax.Array:
  """NS of every matrix in a kernel leaf, >2-D kernels flattened to (fan_in, fan_out)."""
  fan_in, fan_out = fan_in_out(x.shape, n_batch)
  flat = x.reshape(x.shape[:n_batch] + (fan_in, fan_out))
  out = linalg.newton_schulz(flat, ns_steps, ns_coefficients, ns_eps, ns_dtype)
  return out.reshape(x.shape)


def ema_momentum(g: jax.Array, m: jax.Array, beta, nesterov: bool
                 ) -> tuple[jax.Array, jax.Array]:
  """(direction, new momentum) of the EMA form (modded-nanogpt's ``lerp``).

  ``m_t = beta m_{t-1} + (1 - beta) g_t`` in ``m.dtype``; the direction is
  ``(1 - beta) g_t + beta m_t`` (Nesterov) or ``m_t``, in float32. NorMuon's
  and AdaMuon's reference code use this form; Muon's ``buf = mu buf + g`` is
  the same direction up to a scale factor (which NS removes).
  """
  g32 = g.astype(jnp.float32)
  m = (beta * m.astype(jnp.float32) + (1 - beta) * g32).astype(m.dtype)
  m32 = m.astype(jnp.float32)
  return ((1 - beta) * g32 + beta * m32 if nesterov else m32), m


def matrix_offsets(batch_shapes: Sequence[tuple[int, ...]]) -> list[int]:
  """The number of the first matrix of each leaf, counting a stack matrix by matrix.

  ``batch_shapes``: the leading batch shape of every leaf, in tree order
  (``()`` for a leaf that is one matrix or one vector).
  """
  offsets, total = [], 0
  for batch in batch_shapes:
    offsets.append(total)
    total += math.prod(batch)
  return offsets


def normal_per_matrix(key: jax.Array, first: int, batch_shape: tuple[int, ...],
                      shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
  """Standard normal draws of ``shape`` for each matrix of a stack, ``batch_shape + shape``.

  Matrix ``first + j`` (j the flat index in the stack) draws from
  ``fold_in(key, first + j)``: the numbers do not depend on whether the
  matrices are stacked in one leaf or are leaves of their own (see the
  module docstring).
  """
  count = math.prod(batch_shape)
  keys = jax.vmap(lambda j: jax.random.fold_in(key, j))(first + jnp.arange(count))
  draws = jax.vmap(lambda k: jax.random.normal(k, shape, dtype))(keys)
  return draws.reshape(tuple(batch_shape) + tuple(shape))


def matrix_routing(batch_axes: labels.BatchAxesSpec) -> Callable[[Any], Any]:
  """params -> ``MUON`` for hidden matrices, ``ADAM`` for embeddings, head and vectors.

  The ``optax.partition`` labels of every Muon-family optimizer (Muon, D-Muon,
  NorMuon, AdaMuon, Conda).
  """
  axes = labels.batch_axes_fn(batch_axes)
  return lambda params: jax.tree.map(
      lambda label: MUON if label == labels.MATRIX else ADAM,
      labels.label_params(params, axes))


def check_common(learning_rate, beta, adam_b1, adam_b2, adam_eps, ns_steps,
                 ns_coefficients, ns_eps, weight_decay):
  """Construction-time checks shared by the Newton-Schulz factories (Muon, NorMuon, AdaMuon)."""
  hyperparams.check_learning_rate("learning_rate", learning_rate)
  hyperparams.check_beta("beta", beta)
  hyperparams.check_beta("adam_b1", adam_b1)
  hyperparams.check_beta("adam_b2", adam_b2)
  hyperparams.check_positive("adam_eps", adam_eps)
  hyperparams.check_positive("ns_eps", ns_eps)
  hyperparams.check_non_negative("weight_decay", weight_decay)
  linalg.newton_schulz_schedule(ns_coefficients, ns_steps)


def matrices_with_adamw(matrix_tx: optax.GradientTransformation, batch_axes,
                        adam_learning_rate: Any, adam_b1: float, adam_b2: float,
                        adam_eps: float, adam_weight_decay: Any, adam_mask: Any,
                        mu_dtype: Any = None) -> optax.GradientTransformationExtraArgs:
  """``matrix_tx`` on hidden matrices, AdamW on embeddings, head and vectors.

  ``matrix_tx`` is the whole matrix branch (direction, decay, learning rate).
  The AdamW branch decays the leaves of ``adam_mask`` (default
  ``labels.weight_decay_mask``: an untied head, never embeddings or vectors).
  """
  hyperparams.check_learning_rate("adam_learning_rate", adam_learning_rate)
  hyperparams.check_non_negative("adam_weight_decay", adam_weight_decay)
  axes = labels.batch_axes_fn(batch_axes)
  if adam_mask is None:
    adam_mask = lambda params: labels.weight_decay_mask(params, axes)
  return optax.partition(
      {MUON: matrix_tx,
       ADAM: adamw(adam_learning_rate, adam_b1, adam_b2, adam_eps, mu_dtype=mu_dtype,
                   weight_decay=adam_weight_decay, mask=adam_mask)},
      matrix_routing(axes))


def matrix_optimizer(direction: optax.GradientTransformation, batch_axes,
                     learning_rate: Any, weight_decay: Any, adam_learning_rate: Any,
                     adam_b1: float, adam_b2: float, adam_eps: float,
                     adam_weight_decay: Any, adam_mask: Any, mu_dtype: Any = None
                     ) -> optax.GradientTransformationExtraArgs:
  """The factory tail of a Muon-family optimizer.

  Hidden matrices: ``p -= lr (u + wd p)`` with ``u`` from ``direction``;
  embeddings, head and vectors: AdamW. ``adam_learning_rate`` None = the
  matrix branch's ``learning_rate``; ``adam_weight_decay`` None = its
  ``weight_decay`` (NorMuon's and AdaMuon's code use one value for both groups).
  """
  return matrices_with_adamw(
      optax.chain(direction, decay_and_scale(learning_rate, weight_decay)),
      batch_axes, learning_rate if adam_learning_rate is None else adam_learning_rate,
      adam_b1, adam_b2, adam_eps,
      weight_decay if adam_weight_decay is None else adam_weight_decay, adam_mask, mu_dtype)
