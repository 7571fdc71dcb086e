"""Shared linear-algebra kernels of the matrix optimizers, all jit-compiled.

* Newton-Schulz orthogonalisation (Muon, D-Muon, Scion).
* Eigenbasis of Kronecker factors: first basis by ``eigh``, refresh by one power
  iteration + QR with re-sorting (SOAP).
* ``serialize_after``: orders batched LAPACK calls (SOAP's eigh / QR, Conda's
  SVD) one after another, which the CPU backend needs.

Every kernel takes any number of leading batch axes (stacked layers, experts)
and treats the last two axes as the matrix.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

# ---------------------------------------------------------------------------
# Newton-Schulz orthogonalisation
# ---------------------------------------------------------------------------

# Keller Jordan's quintic (modded-nanogpt, Muon): maximal slope at 0, converges
# to a band around 1 rather than to 1 (singular values end in ~[0.7, 1.2]).
CLASSIC_COEFFICIENTS = (3.4445, -4.7750, 2.0315)

# Polar Express (Amsel, Persson, Musco, Gower 2025, arXiv:2505.16932): per-step
# minimax-optimal quintics for singular values in [1e-3, 1], as published in
# the authors' code (github.com/NoahAmsel/PolarExpress, polar_express/basic.py:
# optimal_composition(l=1e-3, num_iters=8, cushion=0.02407327424182761)).
# Steps past the eighth repeat the last polynomial (the limit 15/8, -10/8, 3/8).
_POLAR_EXPRESS_RAW = (
    (8.28721201814563, -23.595886519098837, 17.300387312530933),
    (4.107059111542203, -2.9478499167379106, 0.5448431082926601),
    (3.9486908534822946, -2.908902115962949, 0.5518191394370137),
    (3.3184196573706015, -2.488488024314874, 0.51004894012372),
    (2.300652019954817, -1.6689039845747493, 0.4188073119525673),
    (1.891301407787398, -1.2679958271945868, 0.37680408948524835),
    (1.8750014808534479, -1.2500016453999487, 0.3750001645474248),
    (1.875, -1.25, 0.375),
)
# The paper's safety factor for bf16 round-off: every polynomial but the last is
# evaluated at x / 1.01 (a/1.01, b/1.01^3, c/1.01^5), and the input is divided
# by 1.01 ||X||_F instead of ||X||_F, so no singular value can overshoot.
POLAR_EXPRESS_SAFETY = 1.01
POLAR_EXPRESS_COEFFICIENTS = tuple(
    (a / POLAR_EXPRESS_SAFETY, b / POLAR_EXPRESS_SAFETY**3, c / POLAR_EXPRESS_SAFETY**5)
    for a, b, c in _POLAR_EXPRESS_RAW[:-1]) + _POLAR_EXPRESS_RAW[-1:]

NEWTON_SCHULZ_PRESETS = {
    "classic": ((CLASSIC_COEFFICIENTS,), 1.0),
    "polar_express": (POLAR_EXPRESS_COEFFICIENTS, POLAR_EXPRESS_SAFETY),
}


def _is_triple(value) -> bool:
  return (isinstance(value, (tuple, list)) and len(value) == 3
          and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value))


def _coefficient_table(coefficients) -> tuple[tuple[tuple[float, float, float], ...], float]:
  """(table of (a, b, c) triples, normalisation safety factor) for ``coefficients``."""
  if isinstance(coefficients, str):
    if coefficients not in NEWTON_SCHULZ_PRESETS:
      raise ValueError(f"unknown Newton-Schulz coefficient preset {coefficients!r}; "
                       f"valid: {sorted(NEWTON_SCHULZ_PRESETS)} or (a, b, c) triples")
    table, safety = NEWTON_SCHULZ_PRESETS[coefficients]
  elif _is_triple(coefficients):
    table, safety = (tuple(coefficients),), 1.0
  elif (isinstance(coefficients, (tuple, list)) and coefficients
        and all(_is_triple(t) for t in coefficients)):
    table, safety = tuple(tuple(t) for t in coefficients), 1.0
  else:
    raise ValueError("Newton-Schulz coefficients must be a preset name, an (a, b, c) "
                     f"triple or a sequence of triples, got {coefficients!r}")
  return tuple(tuple(float(v) for v in t) for t in table), safety


def _static_steps(steps):
  """``steps`` as a Python int, or None when it is traced (inject_hyperparams)."""
  if isinstance(steps, jax.core.Tracer):
    return None
  if hasattr(steps, "dtype") and getattr(steps, "shape", None) == () and \
      jnp.issubdtype(steps.dtype, jnp.integer):
    steps = int(steps)
  if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
    raise ValueError(f"ns_steps must be an integer >= 1, got {steps!r}")
  return steps


def newton_schulz_schedule(coefficients="classic", steps: int = 5
                           ) -> tuple[tuple[tuple[float, float, float], ...], float]:
  """The ``steps`` (a, b, c) triples to apply and the normalisation safety factor.

  ``coefficients`` is a preset name (``"classic"``, ``"polar_express"``), one
  (a, b, c) triple used at every step, or a sequence of triples used in order
  (the last one repeats when ``steps`` exceeds their number). Raises
  ``ValueError`` for ``steps < 1``, an unknown preset or a malformed triple.
  A traced ``steps`` (``optax.inject_hyperparams``) returns the whole table.
  """
  table, safety = _coefficient_table(coefficients)
  steps = _static_steps(steps)
  if steps is None:
    return table, safety
  return table[:steps] + (table[-1],) * max(0, steps - len(table)), safety


def _quintic_step(x, a, b, c):
  gram = x @ jnp.swapaxes(x, -1, -2)
  return a * x + (b * gram + c * (gram @ gram)) @ x


def _batch_placement(batch_shape: tuple[int, ...], mesh) -> list[tuple[str, ...]]:
  """Mesh axes to lay each leading batch dimension over (greedy, exact division).

  GSPMD pads uneven shardings by rematerialising the whole array, which is the
  all-gather we want to avoid, so an axis is used only if it divides the dim.
  """
  remaining = [name for name in mesh.axis_names if mesh.shape[name] > 1]
  placement = []
  for size in batch_shape:
    chosen, product = [], 1
    for name in list(remaining):
      if size % (product * mesh.shape[name]) == 0:
        chosen.append(name)
        product *= mesh.shape[name]
        remaining.remove(name)
    placement.append(tuple(chosen))
  return placement


def _auto_mesh():
  """The active mesh (``jax.set_mesh``) if every axis is Auto (GSPMD), else None."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or any(t != jax.sharding.AxisType.Auto for t in mesh.axis_types):
    return None
  return mesh


def _constraint_chain(n_batch: int, ndim: int, placement) -> list:
  """Specs moving mesh axes onto the batch dims one axis at a time.

  One axis per constraint keeps every reshard a single-axis all-to-all (a
  multi-axis jump makes GSPMD gather the full stack); the matrix dims stay
  UNCONSTRAINED so the compiler keeps whatever axes are not moved.
  """
  unconstrained = jax.sharding.PartitionSpec.UNCONSTRAINED
  moves = [(dim, axis) for dim, axes in enumerate(placement) for axis in axes]
  chain = []
  for k in range(1, len(moves) + 1):
    spec = [unconstrained] * ndim
    for dim in range(n_batch):
      placed = tuple(axis for d, axis in moves[:k] if d == dim)
      if placed:
        spec[dim] = placed
    chain.append(jax.sharding.PartitionSpec(*spec))
  return chain


def _spread_over_mesh(x: jax.Array, n_batch: int):
  """Lays the batch dims of ``x`` over the active mesh; returns (x, undo)."""
  mesh = _auto_mesh() if n_batch > 0 else None
  if mesh is None:
    return x, lambda y: y
  chain = _constraint_chain(n_batch, x.ndim, _batch_placement(x.shape[:n_batch], mesh))
  if not chain:
    return x, lambda y: y
  for spec in chain:
    x = jax.lax.with_sharding_constraint(x, spec)

  def undo(y):
    # Walk the same chain backwards so the result returns to the parameters'
    # layout by single-axis all-to-alls as well.
    for spec in reversed(chain[:-1]):
      y = jax.lax.with_sharding_constraint(y, spec)
    return y
  return x, undo


def newton_schulz(x: jax.Array, steps: int = 5, coefficients="classic",
                  eps: float = 1e-7, dtype=jnp.float32, distribute: bool = True
                  ) -> jax.Array:
  """Approximate polar factor U V^T of every matrix in ``x`` (..., m, n).

  Quintic Newton-Schulz (Jordan et al. 2024, "Muon"; Amsel et al. 2025, "Polar
  Express"): with X_0 = G / (s ||G||_F + eps) (s = 1, or the preset's safety
  factor) and per-step coefficients (a_k, b_k, c_k),

      A_k = X_k X_k^T,   X_{k+1} = a_k X_k + (b_k A_k + c_k A_k^2) X_k,

  run on the wide orientation (X is transposed when m > n, so A is the smaller
  Gram matrix) and transposed back. All leading axes are batch axes: every
  matrix is normalised and iterated on its own by batched matmuls. The
  iteration runs in ``dtype`` (float32 by default, bfloat16 for speed; the
  Frobenius norm is always taken in float32) and returns ``x.dtype``.

  With ``distribute`` and an active all-Auto mesh (``jax.set_mesh``), the
  batch axes are laid over the mesh axes that divide them before iterating,
  so each device orthogonalises its share of a stacked leaf instead of the
  whole stack; without a mesh this is a no-op.

  Args:
    x: array with at least two dimensions.
    steps: number of iterations, >= 1.
    coefficients: ``"classic"`` (3.4445, -4.7750, 2.0315), ``"polar_express"``,
      an (a, b, c) triple, or a sequence of triples (one per step; the last
      repeats).
    eps: added to the Frobenius norm (a zero matrix maps to zero).
    dtype: computation dtype.
    distribute: spread stacked matrices over the active mesh.
  """
  schedule, safety = newton_schulz_schedule(coefficients, steps)
  if x.ndim < 2:
    raise ValueError(f"newton_schulz needs a matrix (..., m, n), got shape {x.shape}")
  out_dtype = x.dtype
  n_batch = x.ndim - 2
  if distribute:
    x, undo = _spread_over_mesh(x, n_batch)
  tall = x.shape[-2] > x.shape[-1]
  if tall:
    x = jnp.swapaxes(x, -1, -2)
  x32 = x.astype(jnp.float32)
  norm = jnp.sqrt(jnp.sum(jnp.square(x32), axis=(-2, -1), keepdims=True))
  x = (x32 / (safety * norm + eps)).astype(dtype)
  if _static_steps(steps) is not None:
    for a, b, c in schedule:  # unrolled: steps is static
      x = _quintic_step(x, a, b, c)
  else:
    # A traced step count (inject_hyperparams): loop, the last triple repeating.
    table = jnp.asarray(schedule, dtype)
    def body(i, x):
      a, b, c = table[jnp.minimum(i, len(schedule) - 1)]
      return _quintic_step(x, a, b, c)
    x = jax.lax.fori_loop(0, steps, body, x)
  if tall:
    x = jnp.swapaxes(x, -1, -2)
  x = x.astype(out_dtype)
  if distribute:
    x = undo(x)
  return x

# ---------------------------------------------------------------------------
# Ordering of batched LAPACK calls
# ---------------------------------------------------------------------------


def serialize_after(previous: jax.Array | None, x: jax.Array) -> jax.Array:
  """``x``, available only once ``previous`` is computed.

  Serialises the batched LAPACK calls (eigh / QR / SVD) of different leaves or
  factors. On CPU jaxlib runs each batched call as a ParallelBatchMap on the
  intra-op thread pool and blocks a pool thread while it waits; two such calls
  scheduled concurrently (e.g. the L and R refresh of a stacked SOAP leaf) can
  occupy every pool thread and deadlock (seen on 2 cores, jax 0.10.2). On
  accelerators the ordering costs nothing.
  """
  if previous is None:
    return x
  # A true data dependency (XLA does not fold 0 * y for floats, and dropped an
  # optimization_barrier here): x + 0 * sum(previous).
  return x + (0.0 * jnp.sum(previous)).astype(x.dtype)

# ---------------------------------------------------------------------------
# Eigenbasis (SOAP)
# ---------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("distribute",))
def eigenbasis_init(factor: jax.Array, distribute: bool = False) -> jax.Array:
  """Eigenvectors of the symmetric ``factor`` (..., n, n), by descending eigenvalue.

  SOAP's first basis (Vyas et al. 2024): ``Q`` with ``Q^T factor Q`` diagonal,
  columns ordered from the largest eigenvalue to the smallest. Computed in
  float32 (or the factor's wider dtype); leading axes are a batch. With
  ``distribute`` and an active all-Auto mesh, the batch (stacked layers,
  experts) is laid over the mesh axes that divide it first, as in
  :func:`newton_schulz`: each device decomposes its share of the stack instead
  of gathering and decomposing all of it. Off by default (SOAP does not use
  it): in SOAP's compiled 124M step it cut the refresh branch's traffic but
  GSPMD then moved the factors' layout for the whole step, adding more per
  step than it saved (BUILD_NOTES.md, "SOAP/Kron communication").
  """
  dtype = jnp.promote_types(factor.dtype, jnp.float32)
  factor, undo = _spread_over_mesh(factor, factor.ndim - 2 if distribute else 0)
  _, vectors = jnp.linalg.eigh(factor.astype(dtype), symmetrize_input=True)
  return undo(vectors[..., ::-1])


@functools.partial(jax.jit, static_argnames=("distribute",))
def eigenbasis_refresh(factor: jax.Array, q: jax.Array, distribute: bool = False
                       ) -> tuple[jax.Array, jax.Array]:
  """One power-iteration + QR refresh of an eigenbasis estimate, with re-sorting.

  With ``e = diag(q^T factor q)`` the current eigenvalue estimates, the columns
  of ``q`` are first sorted by descending ``e`` (``order``), then

      q_new, _ = QR(factor @ q[:, order])

  (one step of simultaneous power iteration, Vyas et al. 2024, Alg. 4). Returns
  ``(q_new, order)``; the caller permutes whatever lives in the rotated basis
  (SOAP's second moment) along this axis by ``order`` so it stays aligned with
  the columns. Leading axes of ``factor`` / ``q`` are a batch, distributed over
  the active mesh as in :func:`eigenbasis_init` when ``distribute``.
  """
  dtype = jnp.promote_types(factor.dtype, jnp.float32)
  factor, undo = _spread_over_mesh(factor, factor.ndim - 2 if distribute else 0)
  q, _ = _spread_over_mesh(q, q.ndim - 2 if distribute else 0)
  factor, q = factor.astype(dtype), q.astype(dtype)
  projected = factor @ q
  estimates = jnp.sum(q * projected, axis=-2)  # diag(q^T factor q)
  order = jnp.argsort(-estimates, axis=-1, stable=True)
  power = jnp.take_along_axis(projected, order[..., None, :], axis=-1)
  q_new, _ = jnp.linalg.qr(power)
  return undo(q_new), order
