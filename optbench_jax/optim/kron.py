"""PSGD Kron: a Kronecker-factored preconditioner fitted by PSGD (Xi-Lin Li).

Li, "Preconditioned Stochastic Gradient Descent" (IEEE TNNLS 2018) and the
Kron preconditioner of github.com/lixilinx/psgd_torch, in the form of Evan
Walters' psgd_jax ``kron`` that Wen et al. (2025) benchmark. For a parameter
with non-batch dims (n_1, ..., n_k) the preconditioner is

    P = Q^T Q,   Q = Q_1 (x) ... (x) Q_k

with each Q_i upper triangular (n_i x n_i), or diagonal when n_i >
``max_size_triangular`` or the parameter is a vector. ``Q_i`` acts on axis i
of a tensor ("Q X" below applies every factor along its axis). Per step t:

    m_t = b1 m_{t-1} + (1 - b1) g_t,   m^ = m_t / (1 - b1^t)
    with probability p(t), fit Q on m^ (the "gradient whitening" criterion
    E[Q^T Q m m^T Q^T Q] = I, so P -> E[m m^T]^{-1/2}): draw V ~ N(0, I),
        A = Q m^,   B = Q^{-T} V                      (triangular solves)
        for each dim i, with X_(i) X_(i)^T the Gram over all other axes:
          T1 = A_(i) A_(i)^T,   T2 = B_(i) B_(i)^T
          triangular: Q_i <- Q_i - lr_P / ||T1 + T2||_lb * triu(T1 - T2) Q_i
          diagonal:   q_i <- q_i - lr_P / max|T1 + T2| * (T1 - T2) * q_i
    u = P m^ (applied per dim), then u <- u / max(1, RMS(u) / 1.1)
    p <- p - lr (u + wd p)

``||.||_lb`` is a cheap lower bound of the spectral norm (for the symmetric
PSD ``S = T1 + T2``: ``||S x|| / ||x||`` with x the largest column of S), which
keeps the normalised step below ``lr_P`` in the spectral norm. ``p(t)`` is
psgd_jax's schedule: 1 for ``flat_start_steps``, then ``exp(-decay (t - flat))``
floored at ``min_prob``. The decision is one draw per step for the whole tree,
under ``lax.cond``, so skipped steps cost no factor update.

Deviations from psgd_jax, and why:
* the preconditioner is fitted on the bias-corrected momentum (psgd_jax fits
  on the raw EMA, which is (1 - b1^t) too small early on; newer psgd_jax
  versions debias too);
* the trust region is the per-matrix RMS clip at 1.1 of psgd_torch's Kron
  instead of psgd_jax's global-norm + element-wise clip;
* no random factor re-balancing (it only matters for low-precision factors;
  factors here are float32);
* the PRNG key lives in the state (seeded by ``seed``), so a run is
  reproducible and a checkpoint resumes the same random stream.

Stacked leaves (``batch_axes``) get one set of factors per matrix, and one
probe per matrix: matrix j in tree order (a stack counted matrix by matrix)
draws V from ``fold_in(probe_key, j)`` (``matrix.normal_per_matrix``), so a
stacked ``(L, m, n)`` leaf follows exactly the trajectory of L separate
``(m, n)`` leaves in its place, as in psgd_torch where every layer is a
parameter of its own.
"""

from __future__ import annotations

import dataclasses
import math
import string
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optbench_jax.optim import hyperparams
from optbench_jax.optim import labels as labels_lib
from optbench_jax.optim import matrix
from optbench_jax.optim.scaling import decay_and_scale
from optbench_jax.optim import width_rules

_TINY = 1e-30


class ScaleByKronState(NamedTuple):
  """``count``: steps taken; ``key``: PRNG key (uint32[2]) for the update draw
  and probes; ``mu``: momentum; ``factors``: per parameter, a tuple with one
  factor per non-batch dim -- (..., n, n) upper triangular or (..., n) diagonal."""
  count: jax.Array
  key: jax.Array
  mu: Any
  factors: Any



def update_probability_schedule(flat_start_steps: int = 500, min_prob: float = 0.03,
                                decay: float = 0.001, max_prob: float = 1.0
                                ) -> Callable[[jax.Array], jax.Array]:
  """psgd_jax's ``precond_update_prob_schedule``: flat at ``max_prob``, then exp anneal.

  ``p(t) = clip(max_prob * exp(-decay (t - flat_start_steps)), min_prob, max_prob)``.
  """
  hyperparams.check_int_at_least("flat_start_steps", flat_start_steps, 0)
  _check_probability("min_prob", min_prob)
  _check_probability("max_prob", max_prob)
  hyperparams.check_non_negative("decay", decay)
  low, high = (hyperparams._concrete_float(v) for v in (min_prob, max_prob))  # pylint: disable=protected-access
  if low is not None and high is not None and low > high:
    raise ValueError(f"min_prob ({min_prob}) must be <= max_prob ({max_prob})")

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    p = max_prob * jnp.exp(-decay * (step - flat_start_steps))
    return jnp.clip(p, min_prob, max_prob)

  return schedule


def _check_probability(name: str, value: Any) -> None:
  x = hyperparams._concrete_float(value)  # pylint: disable=protected-access
  if x is not None and not 0.0 < x <= 1.0:
    raise ValueError(f"{name} must be a probability in (0, 1], got {value!r}")


@dataclasses.dataclass(frozen=True)
class _Layout:
  n_batch: int
  dims: tuple[int, ...]
  triangular: tuple[bool, ...]


def _layout(shape, n_batch, max_size_triangular) -> _Layout:
  dims = tuple(shape[n_batch:])
  triangular = tuple(len(dims) >= 2 and 1 < d <= max_size_triangular for d in dims)
  return _Layout(n_batch, dims, triangular)


def _along(x: jax.Array, axis: int, fn) -> jax.Array:
  """Applies ``fn`` to x viewed as (n_axis, rest) and restores the layout."""
  moved = jnp.moveaxis(x, axis, 0)
  out = fn(moved.reshape(moved.shape[0], -1)).reshape(moved.shape)
  return jnp.moveaxis(out, 0, axis)


def apply_factors(qs, x: jax.Array, transpose: bool = False) -> jax.Array:
  """Q x (or Q^T x) with each factor acting along its own axis of ``x``."""
  for axis, q in enumerate(qs):
    if q.ndim == 1:
      x = x * q.reshape((-1,) + (1,) * (x.ndim - axis - 1))
    else:
      mat = q.T if transpose else q
      x = _along(x, axis, lambda y, mat=mat: mat @ y)
  return x


def solve_factors_transposed(qs, v: jax.Array) -> jax.Array:
  """Q^{-T} v: a triangular solve (or a division) along each axis."""
  for axis, q in enumerate(qs):
    if q.ndim == 1:
      v = v / q.reshape((-1,) + (1,) * (v.ndim - axis - 1))
    else:
      v = _along(v, axis, lambda y, q=q: jax.scipy.linalg.solve_triangular(
          q, y, trans="T", lower=False))
  return v


def _gram(x: jax.Array, axis: int, diagonal: bool) -> jax.Array:
  """X_(i) X_(i)^T over every axis but ``axis`` (only its diagonal when ``diagonal``)."""
  idx = string.ascii_lowercase[:x.ndim]
  if diagonal:
    return jnp.einsum(f"{idx},{idx}->{idx[axis]}", x, x)
  other = idx.replace(idx[axis], "Z")
  return jnp.einsum(f"{idx},{other}->{idx[axis]}Z", x, x)


def spectral_norm_lower_bound(s: jax.Array) -> jax.Array:
  """``||S x|| / ||x||`` for x the largest column of the symmetric matrix S (<= ||S||_2)."""
  scale = jnp.max(jnp.abs(s))
  safe = s / jnp.maximum(scale, _TINY)
  x = safe[:, jnp.argmax(jnp.sum(safe * safe, axis=0))]
  bound = jnp.linalg.norm(safe @ x) / jnp.maximum(jnp.linalg.norm(x), _TINY)
  return scale * bound


def update_factors(qs, g: jax.Array, v: jax.Array, lr: Any) -> tuple:
  """One PSGD fit of the factors on gradient ``g`` with probe ``v`` (one matrix/tensor)."""
  a = apply_factors(qs, g)
  b = solve_factors_transposed(qs, v)
  new = []
  for axis, q in enumerate(qs):
    diagonal = q.ndim == 1
    t1, t2 = _gram(a, axis, diagonal), _gram(b, axis, diagonal)
    if diagonal:
      step = lr / jnp.maximum(jnp.max(jnp.abs(t1 + t2)), _TINY)
      new.append(q - step * (t1 - t2) * q)
    else:
      step = lr / jnp.maximum(spectral_norm_lower_bound(t1 + t2), _TINY)
      new.append(q - step * jnp.triu(t1 - t2) @ q)
  return tuple(new)


def precondition(qs, g: jax.Array) -> jax.Array:
  """P g = Q^T Q g, per axis."""
  return apply_factors(qs, apply_factors(qs, g), transpose=True)


def _batched(fn, n_batch: int):
  for _ in range(n_batch):
    fn = jax.vmap(fn)
  return fn


def _clip_rms(u: jax.Array, n_batch: int, limit: float) -> jax.Array:
  axes = tuple(range(n_batch, u.ndim))
  if not axes:
    return jnp.clip(u, -limit, limit)
  rms = jnp.sqrt(jnp.mean(jnp.square(u), axis=axes, keepdims=True))
  return u / jnp.maximum(1.0, rms / limit)


def _scale_factors_on_first_step(qs, m: jax.Array, n_batch: int, first: jax.Array) -> tuple:
  """Multiplies the factors of one leaf by s^(1/k), s = (mean |m|^4)^(-1/8), when ``first``."""
  if not qs:
    return qs
  axes = tuple(range(n_batch, m.ndim))
  s = jnp.mean(jnp.square(jnp.square(m)), axis=axes) ** (-1.0 / 8.0)
  s = jnp.where(jnp.isfinite(s), s, 1.0) ** (1.0 / len(qs))
  s = jnp.where(first, s, 1.0)
  return tuple(q * s.reshape(s.shape + (1,) * (q.ndim - n_batch)) for q in qs)


def scale_by_kron(b1: float = 0.9, preconditioner_lr: float = 0.1,
                  preconditioner_update_probability: Any = None,
                  flat_start_steps: int = 500, min_update_probability: float = 0.03,
                  update_probability_decay: float = 0.001,
                  max_size_triangular: int = 8192, init_scale: float | None = 1.0,
                  clip_update_rms: float = 1.1, seed: int = 0,
                  batch_axes: labels_lib.BatchAxesSpec = None
                  ) -> optax.GradientTransformationExtraArgs:
  """The PSGD-Kron direction ``u`` (see the module docstring); arguments as :func:`kron`."""
  hyperparams.check_beta("b1", b1)
  hyperparams.check_positive("preconditioner_lr", preconditioner_lr)
  hyperparams.check_int_at_least("max_size_triangular", max_size_triangular, 0)
  if init_scale is not None:
    hyperparams.check_positive("init_scale", init_scale)
  hyperparams.check_positive("clip_update_rms", clip_update_rms)
  hyperparams.check_int_at_least("seed", seed, 0)
  if preconditioner_update_probability is None:
    probability = update_probability_schedule(flat_start_steps, min_update_probability,
                                              update_probability_decay)
  elif callable(preconditioner_update_probability):
    probability = preconditioner_update_probability
  else:
    _check_probability("preconditioner_update_probability",
                       preconditioner_update_probability)
    probability = lambda _: preconditioner_update_probability  # pylint: disable=unnecessary-lambda-assignment

  def layouts(tree):
    axes = jax.tree.leaves(labels_lib.resolve_batch_axes(tree, batch_axes))
    return [_layout(x.shape, n, max_size_triangular)
            for x, n in zip(jax.tree.leaves(tree), axes)]

  def init_fn(params):
    leaves, treedef = jax.tree.flatten(params)
    factors = []
    for p, lay in zip(leaves, layouts(params)):
      batch = p.shape[:lay.n_batch]
      scale = (1.0 if init_scale is None else init_scale) ** (1.0 / max(len(lay.dims), 1))
      factors.append(tuple(
          jnp.broadcast_to(scale * jnp.eye(d, dtype=jnp.float32), batch + (d, d)) if tri
          else jnp.full(batch + (d,), scale, jnp.float32)
          for d, tri in zip(lay.dims, lay.triangular)))
    return ScaleByKronState(
        count=jnp.zeros([], jnp.int32), key=jax.random.PRNGKey(seed),
        mu=jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params),
        factors=treedef.unflatten(factors))

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    leaves, treedef = jax.tree.flatten(updates)
    lays = layouts(updates)
    count = optax.safe_increment(state.count)
    mus = [b1 * m + (1 - b1) * g.astype(jnp.float32)
           for m, g in zip(treedef.flatten_up_to(state.mu), leaves)]
    debias = 1 - b1 ** count.astype(jnp.float32)
    momenta = [m / debias for m in mus]
    factors = treedef.flatten_up_to(state.factors)

    if init_scale is None:
      # psgd_jax / kron_torch: on the first step Q = s^(1/k) I per dim with
      # s = (mean |g|^4)^(-1/8), so P g = s^2 g starts at roughly unit scale.
      factors = [_scale_factors_on_first_step(qs, m, lay.n_batch, state.count == 0)
                 for qs, m, lay in zip(factors, momenta, lays)]
    key, draw_key, probe_key = jax.random.split(state.key, 3)
    do_update = jax.random.uniform(draw_key) < probability(count)

    fit_one = lambda qs, g, v: update_factors(qs, g, v, preconditioner_lr)  # pylint: disable=unnecessary-lambda-assignment
    offsets = matrix.matrix_offsets([m.shape[:lay.n_batch] for lay, m in zip(lays, momenta)])
    new_factors = []
    for first, lay, m, qs in zip(offsets, lays, momenta, factors):
      if not qs:
        new_factors.append(qs)
        continue
      probe = matrix.normal_per_matrix(probe_key, first, m.shape[:lay.n_batch],
                                       m.shape[lay.n_batch:])
      fit = _batched(fit_one, lay.n_batch)
      # One cond per leaf: a single cond around every leaf's triangular solves
      # deadlocks XLA:CPU's concurrent thunk executor (jax 0.10.2, seen on 2 cores).
      new_factors.append(jax.lax.cond(do_update, lambda q, m=m, v=probe, fit=fit: fit(q, m, v),
                                      lambda q: q, tuple(qs)))
    factors = new_factors
    out = []
    for lay, m, qs, g in zip(lays, momenta, factors, leaves):
      u = _batched(precondition, lay.n_batch)(qs, m) if qs else m
      out.append(_clip_rms(u, lay.n_batch, clip_update_rms).astype(g.dtype))
    new_state = ScaleByKronState(count=count, key=key, mu=treedef.unflatten(mus),
                                 factors=treedef.unflatten([tuple(f) for f in factors]))
    return treedef.unflatten(out), new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def kron(learning_rate: Any, b1: float = 0.9, weight_decay: Any = 0.0, mask: Any = None,
         preconditioner_lr: float = 0.1, preconditioner_update_probability: Any = None,
         flat_start_steps: int = 500, min_update_probability: float = 0.03,
         update_probability_decay: float = 0.001, max_size_triangular: int = 8192,
         init_scale: float | None = 1.0, clip_update_rms: float = 1.1, seed: int = 0,
         batch_axes: labels_lib.BatchAxesSpec = None
         ) -> optax.GradientTransformationExtraArgs:
  """PSGD Kron with decoupled weight decay (see the module docstring).

  Wen et al. (2025) tuned lr 1e-3 (130M) -> 5e-4 (1.2B), weight decay 0.5,
  preconditioner lr 0.2, update probability annealed to 0.1 after a flat
  start of 2000 steps.

  Args:
    learning_rate: scalar or schedule, >= 0.
    b1: momentum EMA rate in [0, 1).
    weight_decay: >= 0 (scalar or schedule), multiplied by the learning rate.
    mask: which leaves are decayed (see ``labels.weight_decay_mask``).
    preconditioner_lr: > 0, step size of the factor fit (0.1-0.2).
    preconditioner_update_probability: None (the annealing schedule below), a
      probability in (0, 1], or a schedule ``step -> probability``.
    flat_start_steps, min_update_probability, update_probability_decay: the
      schedule's flat start (>= 0 steps), floor in (0, 1], and decay rate.
    max_size_triangular: >= 0; dims above it get a diagonal factor.
    init_scale: > 0, Q starts at init_scale * I (split over the dims); None = derive it
      from the first gradient as psgd_jax does: Q = s^(1/k) I, s = (mean |g|^4)^(-1/8).
    clip_update_rms: > 0, the per-matrix RMS limit of the preconditioned update.
    seed: >= 0, seeds the PRNG key kept in the state.
    batch_axes: leading stacked axes per leaf (int, pytree or callable).
  """
  return optax.chain(
      scale_by_kron(b1, preconditioner_lr, preconditioner_update_probability,
                    flat_start_steps, min_update_probability, update_probability_decay,
                    max_size_triangular, init_scale, clip_update_rms, seed, batch_axes),
      decay_and_scale(learning_rate, weight_decay, mask),
  )


def _kron_update_norm(fan_in: int, fan_out: int, hparams) -> float:
  """Spectral norm of Kron's unit step: whitened (orthogonal, P -> E[m m^T]^(-1/2)) when both
  sides have triangular factors; a diagonal factor on either side normalises element-wise."""
  dense = max(fan_in, fan_out) <= hparams.get("max_size_triangular", 8192)
  return 1.0 if dense else math.sqrt(fan_in * fan_out)


# How the learning rate moves with width (width_rules).
width_rules.declare(kron, width_rules.Rules("whitening", _kron_update_norm, ("mup",)))
