"""SOAP against a float64 NumPy reference written from the paper's equations."""


import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optbench_jax.optim as O
from optbench_jax.optim.soap import scale_by_soap
from optbench_jax.optim import testing


def square_params(seed=0):
  """Square matrices, so every factor is full rank after one step (a unique basis)."""
  rng = np.random.default_rng(seed)
  return {"dense": {"kernel": jnp.asarray(rng.normal(size=(5, 5)), jnp.float32)},
          "norm": {"scale": jnp.asarray(1 + 0.1 * rng.normal(size=(6,)), jnp.float32)},
          "layers": {"kernel": jnp.asarray(rng.normal(size=(2, 4, 4)), jnp.float32)}}


SQUARE_AXES = {"dense": {"kernel": 0}, "norm": {"scale": 0}, "layers": {"kernel": 1}}


def eigh_descending(a):
  _, vectors = np.linalg.eigh(a)
  return vectors[:, ::-1]


def qr_refresh(factor, q, v, axis):
  estimates = np.diag(q.T @ factor @ q)
  order = np.argsort(-estimates, kind="stable")
  q = q[:, order]
  v = np.take(v, order, axis=axis)
  return np.linalg.qr(factor @ q)[0], v


class ReferenceMatrix:
  """SOAP on one matrix (Vyas et al. 2024, Alg. 3 + the reference code's schedule)."""

  def __init__(self, shape, b1, b2, sb, eps, freq, rotate):
    self.b1, self.b2, self.sb, self.eps, self.freq = b1, b2, sb, eps, freq
    self.rotate = rotate
    self.m = np.zeros(shape)
    self.v = np.zeros(shape)
    self.factors = [np.zeros((n, n)) for n in shape]
    self.q = [np.eye(n) for n in shape]
    self.t = 0

  def step(self, g):
    self.t += 1
    if self.rotate:
      self.factors[0] = self.sb * self.factors[0] + (1 - self.sb) * g @ g.T
      self.factors[1] = self.sb * self.factors[1] + (1 - self.sb) * g.T @ g
    if self.t == 1:
      if self.rotate:
        self.q = [eigh_descending(f) for f in self.factors]
      return np.zeros_like(g)
    s = self.t - 1
    ql, qr = self.q
    self.m = self.b1 * self.m + (1 - self.b1) * g
    self.v = self.b2 * self.v + (1 - self.b2) * (ql.T @ g @ qr) ** 2
    u = ql @ ((ql.T @ self.m @ qr) / (np.sqrt(self.v) + self.eps)) @ qr.T
    u *= np.sqrt(1 - self.b2**s) / (1 - self.b1**s)
    if self.rotate and s % self.freq == 0:
      self.q[0], self.v = qr_refresh(self.factors[0], self.q[0], self.v, 0)
      self.q[1], self.v = qr_refresh(self.factors[1], self.q[1], self.v, 1)
    return u


def reference_soap(params, grads, lr, b1, b2, sb, eps, wd, freq, rotate=True):
  p = testing.to_numpy(params)
  dense = ReferenceMatrix((5, 5), b1, b2, sb, eps, freq, rotate)
  stack = [ReferenceMatrix((4, 4), b1, b2, sb, eps, freq, rotate) for _ in range(2)]
  vector = ReferenceMatrix((6, 1), b1, b2, sb, eps, freq, rotate=False)
  out = []
  for t, g in enumerate(testing.to_numpy(grads), start=1):
    decay = wd if t > 1 else 0.0
    u_dense = dense.step(g["dense"]["kernel"])
    u_stack = np.stack([r.step(gi) for r, gi in zip(stack, g["layers"]["kernel"])])
    u_vec = vector.step(g["norm"]["scale"][:, None])[:, 0]
    p = {"dense": {"kernel": p["dense"]["kernel"] - lr * (u_dense + decay * p["dense"]["kernel"])},
         "norm": {"scale": p["norm"]["scale"] - lr * u_vec},
         "layers": {"kernel": p["layers"]["kernel"]
                    - lr * (u_stack + decay * p["layers"]["kernel"])}}
    out.append(p)
  return out


def test_matches_reference_with_refreshes():
  params = square_params()
  grads = testing.make_grads(params, 9)
  mask = O.weight_decay_mask(params, SQUARE_AXES)
  tx = O.soap(1e-2, b1=0.9, b2=0.95, shampoo_beta=0.8, eps=1e-8, weight_decay=0.1,
              mask=mask, precondition_frequency=2, batch_axes=SQUARE_AXES)
  traj = testing.run_trajectory(tx, params, grads)
  expected = reference_soap(params, grads, 1e-2, 0.9, 0.95, 0.8, 1e-8, 0.1, freq=2)
  testing.assert_trajectory_close(traj, expected, rtol=2e-4, atol=2e-5)


def test_first_update_is_zero_and_builds_the_eigenbasis():
  params = square_params()
  g = testing.make_grads(params, 1)[0]
  tx = O.soap(1e-2, weight_decay=0.5, batch_axes=SQUARE_AXES)
  state = tx.init(params)
  updates, state = tx.update(g, state, params)
  for leaf in jax.tree.leaves(updates):
    assert not np.any(np.asarray(leaf))
  soap_state = state[0]
  gd = np.asarray(g["dense"]["kernel"], np.float64)
  left = (1 - 0.95) * gd @ gd.T  # shampoo_beta defaults to b2 = 0.95
  ql = np.asarray(soap_state.bases["dense"]["kernel"][0], np.float64)
  np.testing.assert_allclose(np.asarray(soap_state.factors["dense"]["kernel"][0]), left,
                             rtol=1e-5, atol=1e-6)
  rotated = ql.T @ left @ ql
  assert np.max(np.abs(rotated - np.diag(np.diag(rotated)))) < 1e-5
  assert np.all(np.diff(np.diag(rotated)) <= 1e-6)
  assert not np.any(np.asarray(soap_state.mu["dense"]["kernel"]))


@pytest.mark.parametrize("how", ["max_precond_dim", "vectors_only"])
def test_identity_rotation_is_adamw(how):
  """Frozen identity rotation: exactly AdamW on the gradients from step 2 on."""
  if how == "max_precond_dim":
    params = testing.make_params()
    tx = O.soap(1e-2, b1=0.9, b2=0.99, weight_decay=0.1, max_precond_dim=0,
                batch_axes=testing.BATCH_AXES)
  else:
    rng = np.random.default_rng(0)
    params = {"a": jnp.asarray(rng.normal(size=(7,)), jnp.float32),
              "b": jnp.asarray(rng.normal(size=(3,)), jnp.float32)}
    tx = O.soap(1e-2, b1=0.9, b2=0.99, weight_decay=0.1)
  grads = testing.make_grads(params, 12)
  traj = testing.run_trajectory(tx, params, grads)
  testing.assert_trajectory_close(traj[:1], [params], 0, 0)
  expected = testing.run_trajectory(optax.adamw(1e-2, b1=0.9, b2=0.99, eps=1e-8,
                                                weight_decay=0.1), params, grads[1:])
  testing.assert_trajectory_close(traj[1:], expected, rtol=1e-5, atol=1e-6)


def test_blocks_are_independent_preconditioners():
  rng = np.random.default_rng(4)
  w = rng.normal(size=(8, 8))
  grads = [rng.normal(size=(8, 8)) for _ in range(7)]
  kwargs = dict(b1=0.9, b2=0.95, weight_decay=0.0, precondition_frequency=2)
  blocked = testing.run_trajectory(O.soap(1e-2, block_size=4, **kwargs),
                                   {"w": jnp.asarray(w, jnp.float32)},
                                   [{"w": jnp.asarray(g, jnp.float32)} for g in grads])
  split = lambda x: {f"{i}{j}": jnp.asarray(x[4 * i:4 * i + 4, 4 * j:4 * j + 4], jnp.float32)
                     for i in range(2) for j in range(2)}
  separate = testing.run_trajectory(O.soap(1e-2, **kwargs), split(w), [split(g) for g in grads])
  for b, s in zip(blocked, separate):
    np.testing.assert_allclose(np.asarray(split(np.asarray(b["w"]))["01"]), s["01"],
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(split(np.asarray(b["w"]))["10"]), s["10"],
                               rtol=1e-4, atol=1e-5)


def test_state_shapes_blocking_merging_and_large_dims():
  params = {"w": jnp.zeros((6, 10)), "t": jnp.zeros((2, 3, 4, 5)), "v": jnp.zeros((7,)),
            "embed": {"embedding": jnp.zeros((12, 4))}}
  axes = {"w": 0, "t": 1, "v": 0, "embed": {"embedding": 0}}
  state = scale_by_soap(block_size=4, max_precond_dim=8, merge_small_dims=True,
                                 batch_axes=axes).init(params)
  shapes = jax.tree.map(lambda x: x.shape, state)
  # (6, 10) in blocks of 4 -> 2 x 3 blocks (padded to 8 x 12), two factors each.
  assert shapes.nu["w"] == (2, 3, 4, 4)
  assert shapes.factors["w"] == ((2, 3, 4, 4), (2, 3, 4, 4))
  # (3, 4, 5) per stacked matrix: 3 and 4 would merge to 12 > 8, so no merge; 4,5 -> 20 > 8.
  assert shapes.factors["t"] == ((2, 1, 1, 2, 3, 3), (2, 1, 1, 2, 4, 4), (2, 1, 1, 2, 4, 4))
  assert shapes.factors["v"] == ()
  state = scale_by_soap(max_precond_dim=8, merge_small_dims=True,
                                 rotate_embeddings=False, batch_axes=axes).init(params)
  shapes = jax.tree.map(lambda x: x.shape, state)
  assert shapes.factors["embed"]["embedding"] == ()
  # (6, 10): 10 > max_precond_dim -> only the left factor
  assert shapes.factors["w"] == ((6, 6),)
  # merge: (3, 4, 5) -> 3*... 3*4=12 > 8 so stays; check a mergeable case
  merged = scale_by_soap(max_precond_dim=16, merge_small_dims=True).init(
      {"x": jnp.zeros((2, 3, 5))})
  assert jax.tree.map(lambda x: x.shape, merged).factors["x"] == ((6, 6), (5, 5))


def test_padded_blocks_update_only_real_entries():
  params = {"w": jnp.asarray(np.random.default_rng(0).normal(size=(6, 10)), jnp.float32)}
  grads = testing.make_grads(params, 5)
  traj = testing.run_trajectory(O.soap(1e-2, block_size=4, weight_decay=0.0), params, grads)
  assert traj[-1]["w"].shape == (6, 10)
  assert np.all(np.isfinite(np.asarray(traj[-1]["w"])))
  assert np.any(np.asarray(traj[-1]["w"]) != np.asarray(params["w"]))


@pytest.mark.parametrize("bad, match", [
    (dict(precondition_frequency=0), "precondition_frequency"),
    (dict(precondition_frequency=2.5), "precondition_frequency"),
    (dict(max_precond_dim=-1), "max_precond_dim"),
    (dict(block_size=0), "block_size"),
    (dict(shampoo_beta=1.0), "shampoo_beta"),
    (dict(b2=1.5), "b2"),
    (dict(eps=0.0), "eps"),
    (dict(weight_decay=-1.0), "weight_decay"),
])
def test_bad_hyperparameters(bad, match):
  with pytest.raises(ValueError, match=match):
    O.soap(1e-3, **bad)


def run_sharded_with_factor_specs(tx, params, specs, factor_specs, n_steps=3, **extra_args):
  """Like a trainer: state in/out shardings fixed -- moments like their parameter,
  the given Kronecker factors as ``factor_specs`` (a function (path, leaf) -> spec
  or None), the rest replicated. Returns (final params, final state, expected final
  params, state shardings)."""
  from optbench_jax.optim import sharding_check  # pylint: disable=import-outside-toplevel
  run = sharding_check.check_sharded_matches_unsharded(
      tx, params, specs, n_steps=n_steps, rtol=1e-4, atol=1e-5, pin_state="all",
      state_specs=factor_specs, **extra_args)
  return run.params, run.state, run.expected, run.state_shardings


def stack_factor_spec(path, leaf):
  """Factors/bases of the stacked 'layers' leaf: sharded along the stack axis."""
  from jax.sharding import PartitionSpec as P  # pylint: disable=import-outside-toplevel
  names = jax.tree_util.keystr(path)
  if ("factors" in names or "bases" in names) and "layers" in names and leaf.ndim == 3:
    return P("fsdp", None, None)
  if ("factors" in names or "bases" in names) and "dense" in names and leaf.ndim == 2:
    return P("tensor", None)
  return None


def test_sharded_matches_unsharded_with_sharded_factors():
  """FSDP x tensor mesh (4 x 2); stacked factors sharded along the stack axis,
  the dense matrix's factors along a row axis; moments sharded like parameters."""
  from jax.sharding import PartitionSpec as P  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(5)
  params = {"layers": {"kernel": jnp.asarray(rng.normal(size=(4, 8, 8)), jnp.float32)},
            "dense": {"kernel": jnp.asarray(rng.normal(size=(8, 8)), jnp.float32)},
            "norm": {"scale": jnp.ones((8,), jnp.float32)}}
  axes = {"layers": {"kernel": 1}, "dense": {"kernel": 0}, "norm": {"scale": 0}}
  specs = {"layers": {"kernel": P("fsdp", None, "tensor")},
           "dense": {"kernel": P("fsdp", "tensor")}, "norm": {"scale": P()}}
  tx = O.soap(1e-2, b1=0.9, b2=0.95, weight_decay=0.1, precondition_frequency=1,
              batch_axes=axes)
  p, state, expected, state_sh = run_sharded_with_factor_specs(tx, params, specs,
                                                               stack_factor_spec)
  testing.assert_trajectory_close([p], [expected], rtol=1e-4, atol=1e-5)
  for leaf, want in zip(jax.tree.leaves(state), jax.tree.leaves(state_sh)):
    assert leaf.sharding.is_equivalent_to(want, leaf.ndim), (leaf.sharding, want)
  assert state[0].factors["layers"]["kernel"][0].sharding.spec[0] == "fsdp"
  assert state[0].mu["layers"]["kernel"].sharding.spec == P("fsdp", None, "tensor")
