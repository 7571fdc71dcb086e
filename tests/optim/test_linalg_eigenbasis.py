"""Eigenbasis kernels (SOAP) against float64 NumPy references."""

import jax.numpy as jnp
import numpy as np

from optbench_jax.optim import linalg


def random_factor(rng, n, batch=(), rank=None):
  """A symmetric PSD matrix G G^T with well separated eigenvalues (float64)."""
  g = rng.normal(size=batch + (n, rank or 2 * n))
  return g @ np.swapaxes(g, -1, -2) / g.shape[-1]


def check_orthogonal(q, atol=1e-5):
  eye = np.eye(q.shape[-1])
  np.testing.assert_allclose(np.swapaxes(q, -1, -2) @ q, np.broadcast_to(eye, q.shape),
                             atol=atol)


def test_init_is_sorted_orthogonal_eigenbasis_with_batch_axes():
  rng = np.random.default_rng(0)
  factor = random_factor(rng, 7, batch=(3, 2))
  q = np.asarray(linalg.eigenbasis_init(jnp.asarray(factor, jnp.float32)), np.float64)
  assert q.shape == (3, 2, 7, 7)
  check_orthogonal(q)
  rotated = np.swapaxes(q, -1, -2) @ factor @ q
  diag = np.diagonal(rotated, axis1=-2, axis2=-1)
  off = rotated - diag[..., None] * np.eye(7)
  assert np.max(np.abs(off)) < 1e-4 * np.max(np.abs(diag))
  assert np.all(np.diff(diag, axis=-1) <= 1e-6), "eigenvalues must be descending"
  expected = np.sort(np.linalg.eigvalsh(factor), axis=-1)[..., ::-1]
  np.testing.assert_allclose(diag, expected, rtol=1e-4, atol=1e-5)


def reference_refresh(factor, q):
  estimates = np.einsum("...ij,...ik,...kj->...j", q, factor, q)
  order = np.argsort(-estimates, axis=-1, kind="stable")
  sorted_q = np.take_along_axis(q, order[..., None, :], axis=-1)
  q_new, _ = np.linalg.qr(factor @ sorted_q)
  return q_new, order


def test_refresh_matches_reference_step():
  rng = np.random.default_rng(1)
  factor = random_factor(rng, 6, batch=(2,))
  q0, _ = np.linalg.qr(rng.normal(size=(2, 6, 6)))
  q, order = linalg.eigenbasis_refresh(jnp.asarray(factor, jnp.float32),
                                       jnp.asarray(q0, jnp.float32))
  q_ref, order_ref = reference_refresh(factor, q0)
  np.testing.assert_array_equal(np.asarray(order), order_ref)
  # QR is unique up to column signs; compare sign-aligned columns.
  q = np.asarray(q, np.float64)
  signs = np.sign(np.sum(q * q_ref, axis=-2, keepdims=True))
  np.testing.assert_allclose(q * signs, q_ref, atol=2e-5)
  check_orthogonal(q)


def test_repeated_refresh_converges_to_sorted_eigenbasis():
  rng = np.random.default_rng(2)
  n = 8
  basis, _ = np.linalg.qr(rng.normal(size=(n, n)))
  eigenvalues = 2.0 ** -np.arange(n)  # gaps so power iteration converges fast
  factor = basis @ np.diag(eigenvalues) @ basis.T
  q, _ = np.linalg.qr(rng.normal(size=(n, n)))
  q = jnp.asarray(q, jnp.float32)
  f32 = jnp.asarray(factor, jnp.float32)
  errors = []
  for _ in range(40):
    q, _ = linalg.eigenbasis_refresh(f32, q)
    qn = np.asarray(q, np.float64)
    rotated = qn.T @ factor @ qn
    errors.append(np.linalg.norm(rotated - np.diag(np.diag(rotated))) / np.linalg.norm(factor))
  check_orthogonal(np.asarray(q, np.float64))
  assert errors[-1] < 1e-4 and errors[-1] < 0.01 * errors[0], errors[::8]
  diag = np.diag(np.asarray(q, np.float64).T @ factor @ np.asarray(q, np.float64))
  np.testing.assert_allclose(diag, eigenvalues, rtol=1e-3, atol=1e-6)


def test_refresh_resorts_a_permuted_basis():
  rng = np.random.default_rng(3)
  factor = random_factor(rng, 5)
  exact = np.asarray(linalg.eigenbasis_init(jnp.asarray(factor, jnp.float32)))
  perm = np.array([3, 0, 4, 1, 2])
  q, order = linalg.eigenbasis_refresh(jnp.asarray(factor, jnp.float32),
                                       jnp.asarray(exact[:, perm]))
  # the estimated eigenvalues of the permuted columns sort them back
  np.testing.assert_array_equal(perm[np.asarray(order)], np.arange(5))
  diag = np.diag(np.asarray(q, np.float64).T @ factor @ np.asarray(q, np.float64))
  assert np.all(np.diff(diag) <= 1e-6)


def test_stacked_decompositions_are_distributed_not_gathered():
  """``distribute=True``, compiled HLO on the (fsdp=4, tensor=2) mesh: an (8, 64, 64)
  stack of factors sharded along its rows moves to the stack axis by all-to-all, each
  device decomposes its share, no collective is as large as the stack (without
  ``distribute`` the whole stack is all-gathered), and the results equal the unsharded
  ones."""
  import math  # pylint: disable=import-outside-toplevel
  import re  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=import-outside-toplevel
  from optbench_jax.optim import sharding_check  # pylint: disable=import-outside-toplevel

  rng = np.random.default_rng(5)
  factor = jnp.asarray(random_factor(rng, 64, batch=(8,)), jnp.float32)
  q0 = linalg.eigenbasis_init(factor)
  init = lambda f: linalg.eigenbasis_init(f, distribute=True)  # pylint: disable=unnecessary-lambda-assignment
  refresh = lambda f, q: linalg.eigenbasis_refresh(f, q, distribute=True)[0]  # pylint: disable=unnecessary-lambda-assignment
  mesh = sharding_check.make_mesh()
  rows = NamedSharding(mesh, P(None, "fsdp", None))
  stack = 8 * 64 * 64
  for fn, args, expected in (
      (init, (factor,), q0),
      (refresh, (factor, q0), linalg.eigenbasis_refresh(factor, q0)[0])):
    with jax.set_mesh(mesh):
      placed = [jax.device_put(a, rows) for a in args]
      step = jax.jit(fn, in_shardings=(rows,) * len(args), out_shardings=rows)
      compiled = step.lower(*placed).compile()
      got = step(*placed)
    ops = sharding_check.collectives(compiled.as_text())
    assert any(op == "all-to-all" for op, _ in ops), ops
    for op, shape in ops:
      for dims in re.findall(r"f32\[([\d,]+)\]", shape):
        assert math.prod(int(d) for d in dims.split(",")) < stack, (op, shape)
    # Eigenvectors are defined up to sign: compare |Q^T Q_expected| with the identity.
    overlap = np.abs(np.swapaxes(np.asarray(got), -1, -2) @ np.asarray(expected))
    np.testing.assert_allclose(overlap, np.broadcast_to(np.eye(64), overlap.shape), atol=2e-3)
