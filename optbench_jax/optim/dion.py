"""Dion: distributed orthonormalized updates (Ahn et al. 2025, arXiv:2504.05295).

Dion acts on hidden weight matrices; embeddings, the LM head and vectors go to
AdamW, as in the authors' training code (github.com/microsoft/dion,
``train.py`` with ``scalar_opt: adamw``: betas (0.95, 0.98), no weight decay,
the base learning rate). For a matrix with gradient G_t (Flax kernel
``(fan_in, fan_out)``, taken in its tall orientation B: the kernel itself
when fan_in > fan_out, else its transpose, i.e. the reference code's
``(out, in)`` weight transposed when it is wide):

    B_t       = M_{t-1} + G_t                          (momentum, M_0 = 0)
    P         = orth(B_t Q_{t-1})                      (one power iteration: P is tall x r)
    R         = B_t^T P                                (short x r)
    M_t       = B_t - (1 - mu) P R^T                   (error feedback)
    Q_t       = R / (||R_{:,j}|| + eps)                (column-normalised)
    u_t       = sqrt(fan_out / fan_in) P Q_t^T         (orthonormal rank-r update)
    p_t       = p_{t-1} - lr_t (u_t + wd p_{t-1})

with rank ``r = rank_multiple_of * ceil(rank_fraction * min(fan_in, fan_out) /
rank_multiple_of)`` (at most the short side), ``Q_0`` standard normal (drawn
from ``seed``), and ``power_iters`` repetitions of the P, R pair (R feeding the
next iteration unnormalised). An all-zero B leaves Q unchanged and gives a
zero update (the reference's ``fix_all_zero_or_nan``). Leading batch axes
(stacked layers, experts) are independent matrices, with random draws of
their own: matrix j in tree order (a stack counted matrix by matrix) draws
its Q_0 from ``fold_in(key(seed), j)`` and its sketches from ``fold_in(step
key, j)`` (``matrix.normal_per_matrix``), so a stacked ``(L, m, n)`` leaf
follows exactly the trajectory of L separate ``(m, n)`` leaves in its place.

``orth`` (``qr_method``) is, as in the reference code:

* ``"rcqr"`` (default): randomized Cholesky QR -- R_1 from a Householder QR of
  the sketch S P (S: k x tall Gaussian with variance 1/k, k = oversample * r
  rounded up to a multiple of 128, redrawn every step), Q = P R_1^{-1}, then
  one Cholesky QR pass on Q. Householder QR when P is not tall (r = tall side).
* ``"cqr"``: Cholesky QR, Q = P chol(P^T P)^{-T}, falling back to rcqr when
  the factor is not finite (ill-conditioned P).
* ``"qr"``: Householder QR of P.

All three give P's QR factor (unique up to column signs, which the update does
not depend on), so they differ only in rounding. The sketch, the Gram matrices
and the power-iteration products contract over the matrix dimensions, so on a
mesh where the matrix is sharded (fsdp x tensor) every matmul runs on the
shards and only r x dim factors and r x r Gram matrices are reduced; nothing
gathers a whole matrix (Householder QR gathers P, an r x dim factor).

Deviations from the reference code: Q and the power iteration are float32
(the reference keeps Q in the parameter dtype; its QR steps run in float32);
no ``cqr_warmup_steps`` (its async ``dion.py`` ignores it too); the sketch is
drawn from a key folded from ``seed``, the step count and the matrix, where the
reference advances one generator.

On CPU, the QR / Cholesky / triangular-solve calls of different leaves are
chained by a data dependency (``linalg.serialize_after``): two batched LAPACK calls that
XLA:CPU runs concurrently can deadlock its 2-thread pool (BUILD_NOTES.md).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optbench_jax.optim import hyperparams
from optbench_jax.optim import labels
from optbench_jax.optim.adam import adamw
from optbench_jax.optim import matrix
from optbench_jax.optim.matrix import ADAM, fan_in_out
from optbench_jax.optim.scaling import decay_and_scale
from optbench_jax.optim.linalg import serialize_after as _after
from optbench_jax.optim import width_rules

DION = "dion"
QR_METHODS = ("rcqr", "cqr", "qr")


class ScaleByDionState(NamedTuple):
  """``count``: calls of update so far (keys the rcqr sketch); ``momentum``: the
  error-feedback momentum M (parameter shape); ``q``: the right factor Q of
  every matrix, float32 ``(*batch, short side, rank)``."""
  count: jax.Array
  momentum: optax.Updates
  q: optax.Updates


def rank_of(short: int, rank_fraction: float, rank_multiple_of: int = 1) -> int:
  """r = rank_fraction * short, rounded up to a multiple, at most ``short``."""
  r = rank_multiple_of * math.ceil(rank_fraction * short / rank_multiple_of)
  return max(1, min(r, short))


def _tall(shape: tuple[int, ...], n_batch: int) -> tuple[int, int, bool]:
  """(tall side, short side, transposed): B = kernel^T when fan_out >= fan_in."""
  fan_in, fan_out = fan_in_out(shape, n_batch)
  transposed = fan_out >= fan_in  # the reference's (out, in) weight, taken as is
  return (fan_out, fan_in, True) if transposed else (fan_in, fan_out, False)


def _to_tall(x: jax.Array, n_batch: int) -> jax.Array:
  fan_in, fan_out = fan_in_out(x.shape, n_batch)
  x = x.reshape(x.shape[:n_batch] + (fan_in, fan_out))
  return jnp.swapaxes(x, -1, -2) if _tall(x.shape, n_batch)[2] else x


def _from_tall(b: jax.Array, shape: tuple[int, ...], n_batch: int) -> jax.Array:
  if _tall(shape, n_batch)[2]:
    b = jnp.swapaxes(b, -1, -2)
  return b.reshape(shape)


def _solve_upper_right(r: jax.Array, x: jax.Array) -> jax.Array:
  """x R^{-1} for upper-triangular R (batched).

  By the r x r inverse and a matmul rather than a triangular solve with x:
  XLA partitions a triangular solve only over batch dims, so a row-sharded x
  would be gathered; the matmul keeps x's rows where they are.
  """
  eye = jnp.broadcast_to(jnp.eye(r.shape[-1], dtype=r.dtype), r.shape)
  inverse = jax.lax.linalg.triangular_solve(r, eye, left_side=True, lower=False)
  return jnp.einsum("...mr,...rs->...ms", x, inverse)


def _cholesky_qr(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(x R^{-1}, R) with R^T R = x^T x (R upper): one Cholesky QR pass."""
  gram = jnp.einsum("...ir,...is->...rs", x, x)
  upper = jnp.swapaxes(jnp.linalg.cholesky(gram, symmetrize_input=True), -1, -2)
  return _solve_upper_right(upper, x), upper


def _rcqr(p: jax.Array, key: jax.Array, oversample: float, previous, first: int = 0
          ) -> jax.Array:
  """Randomized Cholesky QR of a tall p (..., m, r), as the reference's ``orthogonalize``.

  The sketch of the matrix numbered ``first + j`` (j its flat index in p's
  batch) is drawn from ``fold_in(key, first + j)``.
  """
  m, r = p.shape[-2:]
  k = 128 * math.ceil(oversample * r / 128)
  sketch = matrix.normal_per_matrix(key, first, p.shape[:-2], (k, m)) / math.sqrt(k)
  sp = _after(previous, jnp.einsum("...km,...mr->...kr", sketch, p))
  upper = jnp.linalg.qr(sp, mode="r")[..., :r, :]
  q = _solve_upper_right(upper, p)
  return _cholesky_qr(q)[0]


def orthogonalize(p: jax.Array, method: str, key: jax.Array, oversample: float = 1.25,
                  previous: jax.Array | None = None, first: int = 0) -> jax.Array:
  """Orthonormal basis of the columns of every (..., m, r) matrix of ``p`` (float32).

  ``method``: ``"rcqr"``, ``"cqr"`` or ``"qr"`` (see the module doc); ``key``
  draws the rcqr sketches (matrix ``first + j`` of p's batch from ``fold_in(key,
  first + j)``); ``previous``: an array the first LAPACK call waits for.
  """
  m, r = p.shape[-2:]
  if method == "qr" or m <= r:
    return jnp.linalg.qr(_after(previous, p))[0]
  if method == "rcqr":
    return _rcqr(p, key, oversample, previous, first)
  q, upper = _cholesky_qr(_after(previous, p))
  return jax.lax.cond(jnp.all(jnp.isfinite(upper)), lambda: q,
                      lambda: _rcqr(p, key, oversample, upper, first))


def _dion_matrix(b, q, mu, power_iters, method, key, oversample, eps, previous, first):
  """One Dion step on tall B (..., m, n) with Q (..., n, r): (P, new Q, new B).

  ``first``: the number of B's first matrix (keys its sketches, see ``_rcqr``).
  """
  q_in = q
  for i in range(power_iters):
    p = orthogonalize(jnp.einsum("...mn,...nr->...mr", b, q), method,
                      jax.random.fold_in(key, i), oversample, previous, first)
    previous = p
    q = jnp.einsum("...mn,...mr->...nr", b, p)
  # All-zero B: P = 0 and Q kept (P, R would be NaN or zero otherwise).
  zero = jnp.all(b == 0, axis=(-2, -1), keepdims=True)
  p = jnp.where(zero, 0.0, jnp.nan_to_num(p))
  r = jnp.where(zero, q_in, jnp.nan_to_num(q))
  b = b - (1 - mu) * jnp.einsum("...mr,...nr->...mn", p, r)
  q_new = r / (jnp.linalg.norm(r, axis=-2, keepdims=True) + eps)
  return p, q_new, b


def scale_by_dion(mu: float = 0.95, rank_fraction: float = 1.0, rank_multiple_of: int = 1,
                  power_iters: int = 1, qr_method: str = "rcqr", oversample: float = 1.25,
                  eps: float = 1e-8, seed: int = 0, batch_axes: labels.BatchAxesSpec = None,
                  mu_dtype: Any = None) -> optax.GradientTransformation:
  """u = sqrt(fan_out / fan_in) P Q^T per matrix (see the module doc).

  Every leaf it sees must be a matrix (``optax.partition`` routes the rest
  elsewhere); ``batch_axes`` says how many leading axes are stacked matrices.
  """
  _check_dion(mu, rank_fraction, rank_multiple_of, power_iters, qr_method, oversample, eps)
  axes_of = labels.batch_axes_fn(batch_axes)

  def init_fn(params):
    base = jax.random.key(seed)

    def init_q(first, path, p):
      n_batch = axes_of(path, p)
      _, short, _ = _tall(p.shape, n_batch)
      rank = rank_of(short, rank_fraction, rank_multiple_of)
      return matrix.normal_per_matrix(base, first, p.shape[:n_batch], (short, rank))

    paths, treedef = jax.tree_util.tree_flatten_with_path(params)
    offsets = matrix.matrix_offsets([p.shape[:axes_of(path, p)] for path, p in paths])
    qs = [init_q(first, path, p) for first, (path, p) in zip(offsets, paths)]
    return ScaleByDionState(count=jnp.zeros([], jnp.int32),
                            momentum=optax.tree.zeros_like(params, dtype=mu_dtype),
                            q=treedef.unflatten(qs))

  def update_fn(updates, state, params=None):
    del params
    paths, treedef = jax.tree_util.tree_flatten_with_path(updates)
    step_key = jax.random.fold_in(jax.random.key(seed), state.count)
    offsets = matrix.matrix_offsets([g.shape[:axes_of(path, g)] for path, g in paths])
    out, momenta, qs, previous = [], [], [], None
    for first, (path, g), m, q in zip(offsets, paths, treedef.flatten_up_to(state.momentum),
                                      treedef.flatten_up_to(state.q)):
      n_batch = axes_of(path, g)
      fan_in, fan_out = fan_in_out(g.shape, n_batch)
      b = _to_tall(m.astype(jnp.float32) + g.astype(jnp.float32), n_batch)
      p, q_new, b = _dion_matrix(b, q, mu, power_iters, qr_method, step_key, oversample, eps,
                                 previous, first)
      previous = q_new
      u = math.sqrt(fan_out / fan_in) * jnp.einsum("...mr,...nr->...mn", p, q_new)
      out.append(_from_tall(u, g.shape, n_batch).astype(g.dtype))
      momenta.append(_from_tall(b, g.shape, n_batch).astype(m.dtype))
      qs.append(q_new)
    return treedef.unflatten(out), ScaleByDionState(
        count=optax.safe_increment(state.count), momentum=treedef.unflatten(momenta),
        q=treedef.unflatten(qs))

  return optax.GradientTransformation(init_fn, update_fn)


def _check_dion(mu, rank_fraction, rank_multiple_of, power_iters, qr_method, oversample, eps):
  hyperparams.check_beta("mu", mu)
  hyperparams.check_fraction("rank_fraction", rank_fraction)
  hyperparams.check_int_at_least("rank_multiple_of", rank_multiple_of, 1)
  hyperparams.check_int_at_least("power_iters", power_iters, 1)
  hyperparams.check_choice("qr_method", qr_method, QR_METHODS)
  hyperparams.check_positive("oversample", oversample)
  if isinstance(oversample, (int, float)) and oversample < 1.0:
    raise ValueError(f"oversample must be >= 1 (the sketch needs >= r rows), got {oversample!r}")
  hyperparams.check_positive("eps", eps)


def dion(learning_rate: Any = 0.01, mu: float = 0.95, rank_fraction: float = 1.0,
         rank_multiple_of: int = 1, power_iters: int = 1, qr_method: str = "rcqr",
         oversample: float = 1.25, eps: float = 1e-8, weight_decay: Any = 0.01,
         seed: int = 0, adam_learning_rate: Any = None, adam_b1: float = 0.95,
         adam_b2: float = 0.98, adam_eps: float = 1e-8, adam_weight_decay: Any = 0.0,
         adam_mask: Any = None, mu_dtype: Any = None,
         batch_axes: labels.BatchAxesSpec = None) -> optax.GradientTransformationExtraArgs:
  """Dion on hidden matrices, AdamW on embeddings, head and vectors.

  Defaults are the reference code's (``Dion(lr=0.01, mu=0.95, rank_fraction=1.0,
  weight_decay=0.01, power_iters=1, qr_method="rcqr", rcqr_oversample=1.25,
  epsilon=1e-8)``; its scalar AdamW group: betas (0.95, 0.98), no decay). Its
  160M GPT config uses lr 0.02, rank_fraction 0.5, weight_decay 0.01.

  Args:
    learning_rate: Dion's learning rate (scalar or schedule, >= 0); the update
      is scaled by sqrt(fan_out / fan_in) on top.
    mu: error-feedback momentum in [0, 1) (0.95).
    rank_fraction: r / min(fan_in, fan_out) in (0, 1] (1.0 = full rank).
    rank_multiple_of: round r up to a multiple of this (>= 1).
    power_iters: power iterations per step (>= 1).
    qr_method: ``"rcqr"``, ``"cqr"`` or ``"qr"`` (see the module doc).
    oversample: rcqr sketch rows per rank (>= 1, 1.25).
    eps: > 0, added to the column norms of R.
    weight_decay: decoupled decay on the Dion matrices (>= 0), times the lr.
    seed: draws Q_0 and the rcqr sketches.
    adam_learning_rate: AdamW branch learning rate; None = ``learning_rate``
      (the reference's setting for AdamW).
    adam_b1, adam_b2, adam_eps: AdamW branch moments (0.95, 0.98, 1e-8).
    adam_weight_decay: AdamW branch decay (0.0), on the leaves of ``adam_mask``
      (default ``labels.weight_decay_mask``).
    mu_dtype: dtype of the momenta (default: the parameter's).
    batch_axes: leading batch axes of stacked leaves (see ``labels``).
  """
  hyperparams.check_learning_rate("learning_rate", learning_rate)
  hyperparams.check_non_negative("weight_decay", weight_decay)
  _check_dion(mu, rank_fraction, rank_multiple_of, power_iters, qr_method, oversample, eps)
  if adam_learning_rate is not None:
    hyperparams.check_learning_rate("adam_learning_rate", adam_learning_rate)
  hyperparams.check_beta("adam_b1", adam_b1)
  hyperparams.check_beta("adam_b2", adam_b2)
  hyperparams.check_positive("adam_eps", adam_eps)
  hyperparams.check_non_negative("adam_weight_decay", adam_weight_decay)
  axes = labels.batch_axes_fn(batch_axes)
  if adam_learning_rate is None:
    adam_learning_rate = learning_rate
  if adam_mask is None:
    adam_mask = lambda params: labels.weight_decay_mask(params, axes)
  routing = lambda params: jax.tree.map(
      lambda label: DION if label == labels.MATRIX else ADAM, labels.label_params(params, axes))
  return optax.partition(
      {DION: optax.chain(
          scale_by_dion(mu, rank_fraction, rank_multiple_of, power_iters, qr_method,
                        oversample, eps, seed, axes, mu_dtype),
          decay_and_scale(learning_rate, weight_decay)),
       ADAM: adamw(adam_learning_rate, adam_b1, adam_b2, adam_eps, mu_dtype=mu_dtype,
                   weight_decay=adam_weight_decay, mask=adam_mask)},
      routing)


# Floats that fix a shape (the rank; the sketch's rows per rank): under
# ``optax.inject_hyperparams`` they must be ``static_args``, like the integer
# arguments (``contract.static_arguments`` reads this).
dion.static_args = ("rank_fraction", "oversample")


# How each factory's learning rate moves with width (width_rules).
width_rules.declare(dion, width_rules.orthogonal(lambda fan_in, fan_out: math.sqrt(fan_out / fan_in), "dion"))
