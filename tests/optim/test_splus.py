"""SPlus against a float64 NumPy reference from the paper's equations (and its code)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

import optbench_jax.optim as O
from optbench_jax.optim import testing
from optbench_jax.optim import sharding_check


class ReferenceLeaf:
  """SPlus on one leaf (Frans et al. 2025; kvfrans/splus experiments code): sign of
  the momentum in the eigenbasis of the Kronecker factors, bases refreshed after
  the update at step 1 and every k steps, step s * lr (u + wd p), EMA of the
  parameters before each step."""

  def __init__(self, p, scale, b1, b2, rate, k, max_dim, eps=1e-30):
    self.p = np.asarray(p, np.float64)
    self.m = np.zeros_like(self.p)
    self.e = np.zeros_like(self.p)
    self.scale, self.b1, self.b2, self.rate, self.k, self.eps = scale, b1, b2, rate, k, eps
    matrix = self.p.ndim == 2
    self.sides = [matrix and d < max_dim for d in self.p.shape] if matrix else [False, False]
    dims = self.p.shape if matrix else (1, 1)
    self.f = [np.zeros((d, d)) for d in dims]
    self.q = [np.eye(d) for d in dims]
    self.t = 0

  def step(self, g, lr, wd):
    g = np.asarray(g, np.float64)
    self.t += 1
    self.m = self.b1 * self.m + (1 - self.b1) * g
    if self.p.ndim == 2:
      ql = self.q[0] if self.sides[0] else np.eye(g.shape[0])
      qr = self.q[1] if self.sides[1] else np.eye(g.shape[1])
      u = ql @ np.sign(ql.T @ self.m @ qr) @ qr.T
      self.f[0] = self.b2 * self.f[0] + (1 - self.b2) * g @ g.T
      self.f[1] = self.b2 * self.f[1] + (1 - self.b2) * g.T @ g
      if self.t == 1 or self.t % self.k == 0:
        self.q = [np.linalg.eigh(f + self.eps * np.eye(len(f)))[1] for f in self.f]
    else:
      u = np.sign(self.m)
    self.e = self.rate * self.e + (1 - self.rate) * self.p
    self.p = self.p - self.scale * lr * (u + wd * self.p)
    return self.p

  def eval(self):
    return self.e / (1 - self.rate**self.t)


def square_tree(seed=0):
  """Square matrices (full-rank factors after one step: a unique eigenbasis), an
  embedding, a matrix with one side past max_dim=10, a vector, a stacked leaf."""
  rng = np.random.default_rng(seed)
  f = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32)
  return {"dense": {"kernel": f(5, 5)}, "embed": {"embedding": f(4, 4)},
          "wide": {"kernel": f(3, 12)}, "norm": {"scale": 1.0 + 0.1 * f(6)},
          "layers": {"kernel": f(2, 4, 4)}}


SQUARE_AXES = {"dense": {"kernel": 0}, "embed": {"embedding": 0}, "wide": {"kernel": 0},
               "norm": {"scale": 0}, "layers": {"kernel": 1}}


def test_matches_reference_with_refreshes_and_eval_params():
  params = square_tree()
  grads = testing.make_grads(params, 20)
  lr, wd, b1, b2, rate, k, c = 0.3, 0.1, 0.9, 0.95, 0.9, 5, 1e-3
  tx = O.splus(lr, b1=b1, b2=b2, ema_rate=rate, inverse_every=k, weight_decay=wd,
               nonstandard_constant=c, max_dim=10, batch_axes=SQUARE_AXES)
  # Shape scales: 2 / (fan_in + fan_out) for hidden matrices below max_dim, c otherwise.
  refs = {"dense": [ReferenceLeaf(params["dense"]["kernel"], 2 / 10, b1, b2, rate, k, 10)],
          "embed": [ReferenceLeaf(params["embed"]["embedding"], c, b1, b2, rate, k, 10)],
          "wide": [ReferenceLeaf(params["wide"]["kernel"], c, b1, b2, rate, k, 10)],
          "norm": [ReferenceLeaf(params["norm"]["scale"], c, b1, b2, rate, k, 10)],
          "layers": [ReferenceLeaf(params["layers"]["kernel"][i], 2 / 8, b1, b2, rate, k, 10)
                     for i in range(2)]}
  key = {"dense": "kernel", "embed": "embedding", "wide": "kernel", "norm": "scale",
         "layers": "kernel"}

  def ref_step(g):
    out = {}
    for name, leaves in refs.items():
      gs = np.asarray(g[name][key[name]])
      values = [leaf.step(gs[i] if name == "layers" else gs, lr, wd)
                for i, leaf in enumerate(leaves)]
      out[name] = {key[name]: np.stack(values) if name == "layers" else values[0]}
    return out

  expected = [ref_step(g) for g in grads]
  state = tx.init(params)
  update = jax.jit(tx.update)
  traj, p = [], params
  for g in grads:
    u, state = update(g, state, p)
    p = optax.apply_updates(p, u)
    traj.append(p)
  testing.assert_trajectory_close(traj, expected, rtol=1e-5, atol=1e-5)
  ev = {name: {key[name]: (np.stack([leaf.eval() for leaf in leaves]) if name == "layers"
                           else leaves[0].eval())} for name, leaves in refs.items()}
  testing.assert_trajectory_close([state[0].eval_params(p)], [ev], rtol=1e-5, atol=1e-6)


def eval_nodes(state):
  """Every state node with the evaluation-parameters hook (what the trainer looks for)."""
  has_hook = lambda x: hasattr(x, "eval_params") and hasattr(x, "_fields")
  return [x for x in jax.tree.leaves(state, is_leaf=has_hook) if has_hook(x)]


def test_eval_params_is_the_bias_corrected_ema_of_the_iterates():
  params = {"w": {"kernel": jnp.asarray(np.random.default_rng(3).normal(size=(4, 4)),
                                        jnp.float32)}}
  tx = optax.chain(optax.clip_by_global_norm(1.0), O.splus(0.5, ema_rate=0.8))
  state = tx.init(params)
  (node,) = eval_nodes(state)
  np.testing.assert_array_equal(node.eval_params(params)["w"]["kernel"], params["w"]["kernel"])
  iterates, p = [], params
  for g in testing.make_grads(params, 6):
    iterates.append(np.asarray(p["w"]["kernel"], np.float64))
    u, state = jax.jit(tx.update)(g, state, p)
    p = optax.apply_updates(p, u)
  weights = np.array([0.2 * 0.8**(5 - i) for i in range(6)])
  expected = sum(w * x for w, x in zip(weights, iterates)) / (1 - 0.8**6)
  (node,) = eval_nodes(state)
  np.testing.assert_allclose(node.eval_params(p)["w"]["kernel"], expected, rtol=1e-5, atol=1e-6)
  assert node.eval_params(p)["w"]["kernel"].dtype == jnp.float32
  # The EMA is not the current iterate.
  assert not np.allclose(expected, p["w"]["kernel"])


def test_bases_refresh_only_at_step_one_and_every_k():
  params = {"w": {"kernel": jnp.ones((4, 4), jnp.float32)}}
  tx = O.splus(0.1, inverse_every=3)
  state = tx.init(params)
  update = jax.jit(tx.update)
  changed = []
  for g in testing.make_grads(params, 7):
    before = state[0].bases["w"]["kernel"][0]
    _, state = update(g, state, params)
    changed.append(not np.allclose(before, state[0].bases["w"]["kernel"][0]))
  assert changed == [True, False, True, False, False, True, False]  # steps 1, 3, 6


def test_sharded_refreshes_on_a_transformer_layout():
  """The layout and schedule the contract's sharded check lacks: an embedding sharded
  (tensor, fsdp), an output projection sharded (tensor, fsdp), eigenbases refreshed
  every 2 steps under sharding; factors and bases sharded by matched dimensions, the
  EMA like its parameter. Square kernels (see ``contract.square_params``)."""
  rng = np.random.default_rng(5)
  f = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32)
  params = {"embed": {"embedding": f(16, 16)}, "layers": {"q": {"kernel": f(4, 16, 16)},
                                                          "o": {"kernel": f(4, 16, 16)},
                                                          "norm": {"scale": f(4, 16)}},
            "final_norm": {"scale": f(16)}}
  specs = {"embed": {"embedding": P("tensor", "fsdp")},
           "layers": {"q": {"kernel": P(None, "fsdp", "tensor")},
                      "o": {"kernel": P(None, "tensor", "fsdp")}, "norm": {"scale": P()}},
           "final_norm": {"scale": P()}}
  batch_axes = lambda path, leaf: 1 if "layers" in jax.tree_util.keystr(path) else 0
  tx = O.create("splus", learning_rate=0.2, weight_decay=0.1, inverse_every=2,
                batch_axes=batch_axes)
  run = sharding_check.check_sharded_matches_unsharded(
      tx, params, specs, n_steps=4, rtol=1e-5, atol=1e-5, pin_state="all",
      factor_sharding="matched")
  for leaf, want in zip(jax.tree.leaves(run.state), jax.tree.leaves(run.state_shardings)):
    assert leaf.sharding.is_equivalent_to(want, leaf.ndim), (leaf.sharding, want)
  assert run.state[0].ema["layers"]["q"]["kernel"].sharding.spec == P(None, "fsdp", "tensor")


@pytest.mark.parametrize("bad, match", [
    (dict(learning_rate=-1.0), "learning_rate"),
    (dict(b1=1.0), "b1"),
    (dict(b2=-0.1), "b2"),
    (dict(ema_rate=1.0), "ema_rate"),
    (dict(eps=0.0), "eps"),
    (dict(inverse_every=0), "inverse_every"),
    (dict(max_dim=0), "max_dim"),
    (dict(nonstandard_constant=0.0), "nonstandard_constant"),
    (dict(weight_decay=-1.0), "weight_decay"),
])
def test_bad_hyperparameters(bad, match):
  with pytest.raises(ValueError, match=match):
    O.splus(**bad)
