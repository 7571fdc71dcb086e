"""SOAP: Adam in the eigenbasis of Shampoo's preconditioner (Vyas et al. 2024).

"SOAP: Improving and Stabilizing Shampoo using Adam", arXiv:2409.11321. For a
weight matrix with gradient G_t (t counts calls of ``update``, starting at 1):

    L_t = sb L_{t-1} + (1 - sb) G_t G_t^T        R_t = sb R_{t-1} + (1 - sb) G_t^T G_t
    t = 1:  Q_L, Q_R = eigh(L_1), eigh(R_1) (descending eigenvalues); update = 0
    t > 1:  s = t - 1 (Adam steps taken)
            G'  = Q_L^T G_t Q_R                    (rotate the gradient)
            m_s = b1 m_{s-1} + (1 - b1) G_t        (first moment, original space)
            v_s = b2 v_{s-1} + (1 - b2) G'^2       (second moment, rotated space)
            u   = Q_L [ (Q_L^T m_s Q_R) / (sqrt(v_s) + eps) ] Q_R^T * sqrt(1 - b2^s) / (1 - b1^s)
            every ``precondition_frequency`` Adam steps (s % f == 0), after the update:
            Q_L, Q_R <- power iteration + QR on L_t, R_t, columns re-sorted by the
            estimated eigenvalues, and v permuted along each axis to match.
    p <- p - lr (u + wd p)          (decoupled weight decay; none at t = 1)

This follows the authors' reference code (github.com/nikhilvyas/SOAP): the
first call only builds the basis (so the current gradient never enters its own
projection), ``m`` lives in the original space and is projected every step,
and bias correction is the step-size form ``sqrt(1 - b2^s) / (1 - b1^s)`` with
``eps`` added to ``sqrt(v)`` before it. With every rotation the identity this
is exactly AdamW (up to where ``eps`` sits) on the gradients from t = 2 on.

Tensors with more than two non-batch dimensions get one factor per dimension
(the paper's code does the same). Options:

* ``max_precond_dim``: a dimension (or block) larger than this gets no factor
  (its rotation is the identity). ``0`` turns every rotation off.
* ``merge_small_dims``: adjacent non-batch dimensions are merged while their
  product stays <= ``max_precond_dim`` (the paper code's ``merge_dims``).
* ``block_size``: each dimension larger than this is split into blocks of
  ``block_size`` (zero-padded at the end), and every block of the matrix gets
  its own factors -- the blocking Wen et al. (2025) tuned (512).
* ``batch_axes``: leading axes of stacked layers / experts; every matrix of
  the stack has its own factors (see ``labels.py``).
* Vectors (fewer than two non-batch dims) always run plain Adam in the
  original space (the paper code's default ``precondition_1d=False``).
  Embeddings (and an untied head) are rotated like any matrix, as in the
  paper's code, unless ``rotate_embeddings=False`` sends them to plain Adam;
  a vocabulary dimension above ``max_precond_dim`` is never rotated anyway.

Factors and bases are float32 whatever the parameter dtype.
"""

from __future__ import annotations

import dataclasses
import string
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optbench_jax.optim import hyperparams
from optbench_jax.optim import labels as labels_lib
from optbench_jax.optim import linalg
from optbench_jax.optim.scaling import decay_and_scale
from optbench_jax.optim import width_rules


class ScaleBySoapState(NamedTuple):
  """``count``: calls of update so far; ``mu``: first moment (original space,
  parameter shape); ``nu``: second moment in the rotated, blocked layout;
  ``factors`` / ``bases``: per parameter, a tuple with one entry per rotated
  dimension -- the Kronecker factor (L, R, ...) and its eigenbasis."""
  count: jax.Array
  mu: Any
  nu: Any
  factors: Any
  bases: Any


@dataclasses.dataclass(frozen=True)
class _Layout:
  """How one parameter maps to its blocked working tensor (all static)."""
  shape: tuple[int, ...]          # the parameter's shape
  n_batch: int                    # leading batch axes of the parameter
  core: tuple[int, ...]           # non-batch dims after merging
  blocks: tuple[int, ...]         # block size per core dim
  n_blocks: tuple[int, ...]       # number of blocks per core dim
  rotated: tuple[bool, ...]       # per core dim: has a factor
  adam_only: bool                 # plain Adam, no factors at all

  @property
  def blocked(self) -> bool:
    return any(n > 1 for n in self.n_blocks)

  @property
  def work_shape(self) -> tuple[int, ...]:
    if self.adam_only:
      return self.shape
    if not self.blocked:
      return self.shape[:self.n_batch] + self.core
    return self.shape[:self.n_batch] + self.n_blocks + self.blocks

  @property
  def work_batch(self) -> int:
    return self.n_batch + (len(self.core) if self.blocked else 0)

  def to_work(self, x: jax.Array) -> jax.Array:
    """(*batch, *dims) -> (*batch, *n_blocks, *blocks), zero-padding the last block."""
    if self.adam_only:
      return x
    batch = self.shape[:self.n_batch]
    x = x.reshape(batch + self.core)
    if not self.blocked:
      return x
    pad = [(0, 0)] * self.n_batch + [(0, nb * b - d) for d, b, nb in
                                     zip(self.core, self.blocks, self.n_blocks)]
    if any(p for _, p in pad):
      x = jnp.pad(x, pad)
    interleaved = tuple(v for nb, b in zip(self.n_blocks, self.blocks) for v in (nb, b))
    x = x.reshape(batch + interleaved)
    k = len(self.core)
    perm = (list(range(self.n_batch)) + [self.n_batch + 2 * i for i in range(k)]
            + [self.n_batch + 2 * i + 1 for i in range(k)])
    return x.transpose(perm)

  def from_work(self, x: jax.Array) -> jax.Array:
    """Inverse of ``to_work`` (drops the padding)."""
    if self.adam_only or not self.blocked:
      return x.reshape(self.shape)
    k, nb = len(self.core), self.n_batch
    perm = list(range(nb))
    for i in range(k):
      perm += [nb + i, nb + k + i]
    batch = self.shape[:nb]
    x = x.transpose(perm).reshape(batch + tuple(n * b for n, b in zip(self.n_blocks,
                                                                      self.blocks)))
    x = x[tuple([slice(None)] * nb + [slice(0, d) for d in self.core])]
    return x.reshape(self.shape)


def _merge_dims(dims: tuple[int, ...], limit: int) -> tuple[int, ...]:
  merged: list[int] = []
  for d in dims:
    if merged and merged[-1] * d <= limit:
      merged[-1] *= d
    else:
      merged.append(d)
  return tuple(merged)


def _layout(shape, n_batch, adam_only, max_precond_dim, merge_small_dims, block_size):
  core = tuple(shape[n_batch:])
  if len(core) < 2:
    adam_only = True
  if adam_only:
    return _Layout(tuple(shape), n_batch, core, core, (1,) * len(core),
                   (False,) * len(core), True)
  if merge_small_dims:
    core = _merge_dims(core, max_precond_dim)
  if block_size:
    blocks = tuple(min(d, block_size) for d in core)
  else:
    blocks = core
  n_blocks = tuple(-(-d // b) for d, b in zip(core, blocks))
  rotated = tuple(b <= max_precond_dim for b in blocks)
  return _Layout(tuple(shape), n_batch, core, blocks, n_blocks, rotated, False)


def _letters(k: int) -> str:
  return string.ascii_lowercase[:k]


def _gram(w: jax.Array, axis: int, k: int) -> jax.Array:
  """Contract a (..., *blocks) tensor with itself over every block axis but ``axis``."""
  idx = _letters(k)
  other = idx.replace(idx[axis], "Z")
  return jnp.einsum(f"...{idx},...{other}->...{idx[axis]}Z", w, w)


def _rotate(w: jax.Array, bases: dict[int, jax.Array], k: int, back: bool) -> jax.Array:
  """Applies Q_j^T (or Q_j when ``back``) along each rotated block axis j."""
  idx = _letters(k)
  for axis, q in bases.items():
    lower, upper = idx[axis], "Z"
    src, dst = (upper, lower) if back else (lower, upper)
    out = idx.replace(lower, dst)
    inp = idx.replace(lower, src)
    w = jnp.einsum(f"...{inp},...{lower}{upper}->...{out}", w, q)
  return w


def _permute_axis(x: jax.Array, order: jax.Array, axis: int, k: int) -> jax.Array:
  """Permutes block axis ``axis`` (of the k trailing ones) of x by ``order`` (..., n)."""
  lead = order.shape[:-1]
  index = order.reshape(lead + (1,) * axis + order.shape[-1:] + (1,) * (k - axis - 1))
  index = jnp.broadcast_to(index, x.shape[:-k] + tuple(
      order.shape[-1] if i == axis else 1 for i in range(k)))
  return jnp.take_along_axis(x, index, axis=x.ndim - k + axis)


def scale_by_soap(b1: float = 0.95, b2: float = 0.95, shampoo_beta: float | None = None,
                  eps: float = 1e-8, precondition_frequency: int = 10,
                  max_precond_dim: int = 10000, merge_small_dims: bool = False,
                  block_size: int | None = None, rotate_embeddings: bool = True,
                  batch_axes: labels_lib.BatchAxesSpec = None
                  ) -> optax.GradientTransformationExtraArgs:
  """The SOAP direction ``u`` (see the module docstring); arguments as :func:`soap`."""
  _check(b1, b2, shampoo_beta, eps, precondition_frequency, max_precond_dim, block_size)
  sb = b2 if shampoo_beta is None else shampoo_beta

  def layouts(params):
    axes = jax.tree.leaves(labels_lib.resolve_batch_axes(params, batch_axes))
    labels = jax.tree.leaves(labels_lib.label_params(params, batch_axes))
    leaves = jax.tree.leaves(params)
    return [_layout(p.shape, n, (not rotate_embeddings and lab in (labels_lib.EMBEDDING,
                                                                   labels_lib.HEAD)),
                    max_precond_dim, merge_small_dims, block_size)
            for p, n, lab in zip(leaves, axes, labels)]

  def init_fn(params):
    leaves, treedef = jax.tree.flatten(params)
    lays = layouts(params)
    factors, bases, nus = [], [], []
    for p, lay in zip(leaves, lays):
      nus.append(jnp.zeros(lay.work_shape, jnp.float32))
      batch = lay.work_shape[:lay.work_batch]
      factors.append(tuple(jnp.zeros(batch + (b, b), jnp.float32)
                           for b, r in zip(lay.blocks, lay.rotated) if r))
      bases.append(tuple(jnp.broadcast_to(jnp.eye(b, dtype=jnp.float32), batch + (b, b))
                         for b, r in zip(lay.blocks, lay.rotated) if r))
    return ScaleBySoapState(
        count=jnp.zeros([], jnp.int32),
        mu=jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params),
        nu=treedef.unflatten(nus), factors=treedef.unflatten(factors),
        bases=treedef.unflatten(bases))

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    leaves, treedef = jax.tree.flatten(updates)
    lays = layouts(updates)
    grads = [g.astype(jnp.float32) for g in leaves]
    works = [lay.to_work(g) for lay, g in zip(lays, grads)]
    mus = treedef.flatten_up_to(state.mu)
    nus = treedef.flatten_up_to(state.nu)
    old_bases = treedef.flatten_up_to(state.bases)

    def axes_of(lay):
      return [j for j, r in enumerate(lay.rotated) if r]

    factors = []
    for lay, w, f in zip(lays, works, treedef.flatten_up_to(state.factors)):
      k = len(lay.core)
      factors.append(tuple(sb * fj + (1 - sb) * _gram(w, j, k)
                           for j, fj in zip(axes_of(lay), f)))

    def first_step(_):
      bases, previous = [], None
      for f in factors:
        qs = []
        for fj in f:
          fj = linalg.serialize_after(previous, fj)
          previous = linalg.eigenbasis_init(fj)
          qs.append(previous)
        bases.append(tuple(qs))
      zeros = [jnp.zeros_like(g) for g in grads]
      return zeros, mus, nus, bases

    def adam_step(_):
      steps = state.count.astype(jnp.float32)  # Adam steps taken, including this one
      scale = jnp.sqrt(1 - b2**steps) / (1 - b1**steps)
      out, new_mus, new_nus = [], [], []
      for lay, g, w, m, v, q in zip(lays, grads, works, mus, nus, old_bases):
        k = len(lay.core)
        qs = dict(zip(axes_of(lay), q))
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * jnp.square(_rotate(w, qs, k, back=False))
        m_rot = _rotate(lay.to_work(m), qs, k, back=False)
        u = _rotate(m_rot / (jnp.sqrt(v) + eps), qs, k, back=True)
        out.append(lay.from_work(u) * scale)
        new_mus.append(m)
        new_nus.append(v)
      return out, new_mus, new_nus, old_bases

    def refresh(bases, nus):
      new_bases, new_nus, previous = [], [], None
      for lay, f, q, v in zip(lays, factors, bases, nus):
        qs = []
        for j, fj, qj in zip(axes_of(lay), f, q):
          fj = linalg.serialize_after(previous, fj)
          qj, order = linalg.eigenbasis_refresh(fj, qj)
          previous = qj
          v = _permute_axis(v, order, j, len(lay.core))
          qs.append(qj)
        new_bases.append(tuple(qs))
        new_nus.append(v)
      return new_bases, new_nus

    def adam_then_refresh(_):
      out, new_mus, new_nus, bases = adam_step(None)
      bases, new_nus = refresh(bases, new_nus)
      return out, new_mus, new_nus, bases

    # One switch, so only the taken branch runs: build / Adam / Adam + refresh.
    first = state.count == 0
    do_refresh = state.count % precondition_frequency == 0
    branch = jnp.where(first, 0, jnp.where(do_refresh, 2, 1))
    out, new_mus, new_nus, bases = jax.lax.switch(
        branch, (first_step, adam_step, adam_then_refresh), None)

    out = [u.astype(g.dtype) for u, g in zip(out, leaves)]
    new_state = ScaleBySoapState(
        count=optax.safe_increment(state.count),
        mu=treedef.unflatten(new_mus), nu=treedef.unflatten(new_nus),
        factors=treedef.unflatten(factors), bases=treedef.unflatten(bases))
    return treedef.unflatten(out), new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)



def _check(b1, b2, shampoo_beta, eps, precondition_frequency, max_precond_dim, block_size):
  hyperparams.check_beta("b1", b1)
  hyperparams.check_beta("b2", b2)
  if shampoo_beta is not None:
    hyperparams.check_beta("shampoo_beta", shampoo_beta)
  hyperparams.check_positive("eps", eps)
  hyperparams.check_int_at_least("precondition_frequency", precondition_frequency, 1)
  hyperparams.check_int_at_least("max_precond_dim", max_precond_dim, 0)
  if block_size is not None:
    hyperparams.check_int_at_least("block_size", block_size, 1)


def _skip_first_step(weight_decay: Any) -> Any:
  """Weight decay as a schedule that is 0 on the first call (SOAP's no-op step)."""
  def schedule(count):
    value = weight_decay(count) if callable(weight_decay) else weight_decay
    return jnp.where(count == 0, 0.0, value)
  return schedule


def soap(learning_rate: Any, b1: float = 0.95, b2: float = 0.95,
         shampoo_beta: float | None = None, eps: float = 1e-8, weight_decay: Any = 0.01,
         mask: Any = None, precondition_frequency: int = 10, max_precond_dim: int = 10000,
         merge_small_dims: bool = False, block_size: int | None = None,
         rotate_embeddings: bool = True, batch_axes: labels_lib.BatchAxesSpec = None
         ) -> optax.GradientTransformationExtraArgs:
  """SOAP (Vyas et al. 2024) with decoupled weight decay.

  Defaults are the reference code's (lr is required; betas (0.95, 0.95), eps
  1e-8, weight decay 0.01, precondition every 10 Adam steps, max_precond_dim
  10000). Semenov et al. (2025) use lr 1e-3, betas (0.9, 0.999); Wen et al.
  (2025) betas (0.95, 0.99), shampoo_beta 0.9-0.98, block_size 512.

  Args:
    learning_rate: scalar or schedule, >= 0.
    b1, b2: Adam moment decay rates in [0, 1).
    shampoo_beta: EMA rate of the Kronecker factors in [0, 1); None = ``b2``.
    eps: > 0, added to sqrt(v) in the rotated basis.
    weight_decay: >= 0 (scalar or schedule), multiplied by the learning rate;
      not applied on the first (basis-building) call.
    mask: which leaves are decayed (see ``labels.weight_decay_mask``).
    precondition_frequency: >= 1; Adam steps between eigenbasis refreshes.
    max_precond_dim: >= 0; dimensions (or blocks) above it are not rotated.
    merge_small_dims: merge adjacent non-batch dims up to ``max_precond_dim``.
    block_size: None or >= 1; split larger dims into blocks with own factors.
    rotate_embeddings: False sends embedding / head leaves to plain Adam.
    batch_axes: leading stacked axes per leaf (int, pytree or callable).
  """
  return optax.chain(
      scale_by_soap(b1, b2, shampoo_beta, eps, precondition_frequency, max_precond_dim,
                    merge_small_dims, block_size, rotate_embeddings, batch_axes),
      decay_and_scale(learning_rate, _skip_first_step_checked(weight_decay), mask),
  )


def _skip_first_step_checked(weight_decay: Any) -> Any:
  hyperparams.check_non_negative("weight_decay", weight_decay)
  if isinstance(weight_decay, (int, float)) and weight_decay == 0:
    return 0.0
  return _skip_first_step(weight_decay)


# How each factory's learning rate moves with width (width_rules).
width_rules.declare(soap, width_rules.ELEMENTWISE)
