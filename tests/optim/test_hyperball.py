"""AdamH and MuonH against a float64 NumPy reference; the sphere's invariants and numerics.

The generic properties are in test_contract_builtins. The reference is written from Wen et
al. 2026 (arXiv 2606.16899), per matrix:

    W_{t+1} = R (W_t - lr_t R U^_t) / ||W_t - lr_t R U^_t||_F,   U^ = U / ||U||_F,
    R = ||W_0||_F,

with U Adam's bias-corrected m^ / (sqrt(v^) + eps) (AdamH, and MuonH's untied head) or
NS5 of Muon's Nesterov momentum (MuonH's hidden matrices), and plain Adam at
``adam_learning_rate`` on embeddings and vectors, as Levanter's adamh.py / muonh.py route them.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optbench_jax.optim as O
from optbench_jax.optim import linalg
from optbench_jax.optim import sharding_check
from optbench_jax.optim import testing
from optbench_jax.optim.hyperball import (ADAM, ADAMH, HYPERBALL, MUONH, hyperball, routing,
                                          sphere_step)
from tests.optim.test_linalg_newton_schulz import reference_newton_schulz
from tests.optim.test_muon import transformer_tree

NS5 = [linalg.CLASSIC_COEFFICIENTS] * 5
B1, B2, EPS, BETA = 0.9, 0.95, 1e-8, 0.9


def make_tree(seed=0):
  """Two matrices, a stacked (3, 6, 5) leaf, a vector, an embedding and an untied head."""
  rng = np.random.default_rng(seed)
  f = lambda *s: jnp.asarray(rng.normal(size=s) * 0.5, jnp.float32)
  params = {"embed": {"embedding": f(12, 6)}, "w1": {"kernel": f(6, 8)},
            "w2": {"kernel": f(8, 6)}, "layers": {"kernel": f(3, 6, 5)},
            "norm": {"scale": 1.0 + f(6)}, "lm_head": {"kernel": f(6, 12)}}
  batch_axes = jax.tree.map(lambda _: 0, params)
  batch_axes["layers"]["kernel"] = 1
  return params, batch_axes


class RefAdam:
  """Adam's bias-corrected direction on one array, float64."""

  def __init__(self, shape):
    self.m, self.v, self.t = np.zeros(shape), np.zeros(shape), 0

  def __call__(self, g):
    self.t += 1
    self.m = B1 * self.m + (1 - B1) * g
    self.v = B2 * self.v + (1 - B2) * g * g
    m_hat, v_hat = self.m / (1 - B1 ** self.t), self.v / (1 - B2 ** self.t)
    return m_hat / (np.sqrt(v_hat) + EPS)


class RefMuon:
  """Muon's direction NS5(g + beta buf), buf = beta buf + g, on one matrix, float64."""

  def __init__(self, shape):
    self.buf = np.zeros(shape)

  def __call__(self, g):
    self.buf = BETA * self.buf + g
    return reference_newton_schulz(g + BETA * self.buf, NS5)


def sphere(w, u, lr, radius):
  """The paper's step on one matrix."""
  x = w - lr * radius * u / np.linalg.norm(u)
  return radius * x / np.linalg.norm(x)


def reference(params, grads, lr_fn, adam_lr, kind):
  """The trajectory of adamh / muonh on make_tree's leaves, float64."""
  p = {k: np.asarray(v, np.float64) for k, v in testing.to_numpy(
      {k: list(v.values())[0] for k, v in params.items()}).items()}
  matrices = ["w1", "w2", "lm_head"] + [("layers", i) for i in range(3)]
  get = lambda tree, key: tree[key[0]][key[1]] if isinstance(key, tuple) else tree[key]
  radius = {k: np.linalg.norm(get(p, k)) for k in matrices}

  def direction(key):
    shape = get(p, key).shape
    uses_muon = kind == "muonh" and key != "lm_head"
    return RefMuon(shape) if uses_muon else RefAdam(shape)

  dirs = {k: direction(k) for k in matrices}
  adams = {k: RefAdam(p[k].shape) for k in ("embed", "norm")}
  out = []
  for t, g in enumerate(grads):
    g = {k: np.asarray(list(v.values())[0], np.float64) for k, v in g.items()}
    p = {k: v.copy() for k, v in p.items()}
    for k in matrices:
      new = sphere(get(p, k), dirs[k](get(g, k)), lr_fn(t), radius[k])
      if isinstance(k, tuple):
        p[k[0]][k[1]] = new
      else:
        p[k] = new
    for k in ("embed", "norm"):
      p[k] = p[k] - adam_lr * adams[k](g[k])
    out.append({k: {list(params[k])[0]: v} for k, v in p.items()})
  return out


@pytest.mark.parametrize("kind, scheduled", [("adamh", False), ("adamh", True),
                                             ("muonh", False), ("muonh", True)])
def test_matches_reference(kind, scheduled):
  params, batch_axes = make_tree()
  grads = testing.make_grads(params, 20)  # 20 steps
  lr = optax.linear_schedule(0.05, 0.01, 20) if scheduled else 0.05
  lr_fn = (lambda t: float(lr(t))) if scheduled else (lambda t: lr)
  hparams = dict(b1=B1, b2=B2, eps=EPS, adam_learning_rate=3e-3, weight_decay=0.1,
                 batch_axes=batch_axes)
  if kind == "muonh":
    hparams["beta"] = BETA
  traj = testing.run_trajectory(O.create(kind, learning_rate=lr, **hparams), params, grads)
  ref = reference(params, grads, lr_fn, 3e-3, kind)
  testing.assert_trajectory_close(traj, ref, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("kind", ["adamh", "muonh"])
def test_every_matrix_keeps_its_initial_norm(kind):
  params, batch_axes = make_tree(seed=3)
  traj = testing.run_trajectory(O.create(kind, learning_rate=0.2, batch_axes=batch_axes),
                                params, testing.make_grads(params, 20, seed=4))
  norms = lambda p: np.concatenate([
      np.linalg.norm(np.asarray(p[k]["kernel"], np.float64), axis=(-2, -1)).ravel()
      for k in ("w1", "w2", "layers", "lm_head")])
  start = norms(params)
  for step in traj:
    np.testing.assert_allclose(norms(step), start, rtol=2e-6)
  assert not np.allclose(np.asarray(traj[-1]["w1"]["kernel"]), np.asarray(params["w1"]["kernel"]))


def test_a_configured_radius_is_reached_in_one_step():
  params, batch_axes = make_tree()
  traj = testing.run_trajectory(O.adamh(0.01, radius=2.5, batch_axes=batch_axes), params,
                                testing.make_grads(params, 2))
  for p in traj:
    for k in ("w1", "w2", "layers", "lm_head"):
      np.testing.assert_allclose(
          np.linalg.norm(np.asarray(p[k]["kernel"], np.float64), axis=(-2, -1)), 2.5, rtol=1e-6)


def test_bfloat16_parameters_do_not_drift_off_the_sphere():
  """Rounded to bfloat16 every step, each matrix stays on its sphere to bfloat16 precision."""
  params, batch_axes = make_tree()
  bf16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
  start = float(jnp.linalg.norm(bf16["w1"]["kernel"].astype(jnp.float32)))
  traj = testing.run_trajectory(O.muonh(0.05, batch_axes=batch_axes), bf16,
                                testing.make_grads(params, 60))
  for p in traj:
    assert p["w1"]["kernel"].dtype == jnp.bfloat16
    norm = float(jnp.linalg.norm(p["w1"]["kernel"].astype(jnp.float32)))
    assert abs(norm / start - 1) < 4e-3, norm / start


def test_weight_decay_only_on_adam_leaves_of_the_mask():
  """The sphere replaces decay: weight_decay reaches only the Adam branch's masked leaves."""
  params, batch_axes = make_tree()
  grads = testing.make_grads(params, 3)
  mask = jax.tree.map(lambda _: True, params)
  plain = testing.run_trajectory(O.adamh(0.05, batch_axes=batch_axes), params, grads)
  decayed = testing.run_trajectory(
      O.adamh(0.05, weight_decay=0.5, mask=mask, batch_axes=batch_axes), params, grads)
  default_mask = testing.run_trajectory(
      O.adamh(0.05, weight_decay=0.5, batch_axes=batch_axes), params, grads)
  testing.assert_trajectory_close(default_mask, plain, rtol=0, atol=0)
  for k in ("w1", "w2", "layers", "lm_head"):
    np.testing.assert_array_equal(decayed[-1][k]["kernel"], plain[-1][k]["kernel"])
  assert not np.allclose(decayed[-1]["embed"]["embedding"], plain[-1]["embed"]["embedding"])
  assert not np.allclose(decayed[-1]["norm"]["scale"], plain[-1]["norm"]["scale"])


def test_sphere_step_is_linear_at_small_rates_and_exact_on_degenerate_matrices():
  rng = np.random.default_rng(7)
  w = jnp.asarray(rng.normal(size=(2, 6, 5)), jnp.float32)
  u = jnp.asarray(rng.normal(size=(2, 6, 5)), jnp.float32)
  radius = jnp.sqrt(jnp.sum(jnp.square(w), axis=(-2, -1)))  # W on its sphere, in float32
  w64, u64, r64 = (np.asarray(x, np.float64) for x in (w, u, radius))
  for lr in (1e-3, 0.3):
    step = np.asarray(sphere_step(w, u, radius, lr, 1), np.float64)
    expected = np.stack([sphere(w64[i], u64[i], lr, r64[i]) - w64[i] for i in range(2)])
    np.testing.assert_allclose(step, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
  # The step is a sum of O(lr) terms, not W' - W: nothing moves at lr = 0, and a small
  # rate's step is proportional to it (what the contract's schedule check relies on).
  np.testing.assert_array_equal(sphere_step(w, u, radius, 0.0, 1), 0)
  small = [np.asarray(sphere_step(w, u, radius, lr, 1), np.float64) / lr for lr in (1e-6, 2e-6)]
  np.testing.assert_allclose(small[0], small[1], rtol=1e-4, atol=1e-5 * np.abs(small[0]).max())
  zero = jnp.zeros((4, 3))
  w0 = jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)
  r0 = jnp.linalg.norm(w0)
  # U = 0: nothing moves; R = 0: W stays 0; W = 0 with R > 0: W' = -R U^.
  np.testing.assert_allclose(sphere_step(w0, zero, r0, 0.1, 0), 0, atol=1e-6)
  np.testing.assert_array_equal(sphere_step(zero, w0, jnp.float32(0), 0.1, 0), 0)
  np.testing.assert_allclose(sphere_step(zero, w0, jnp.float32(2.0), 0.1, 0),
                             -2.0 * w0 / r0, rtol=1e-6)


@pytest.mark.parametrize("kind", ["adamh", "muonh"])
def test_sharded_on_a_transformer_layout(kind):
  """MoE experts with two batch axes (one radius per expert and layer), a (tensor, fsdp)
  down projection, the embedding (Adam) and the untied head sharded over both mesh axes."""
  params, batch_axes, specs = transformer_tree()
  tx = O.create(kind, learning_rate=0.05, batch_axes=batch_axes)
  state = jax.eval_shape(tx.init, params)
  radius = state.inner_states[HYPERBALL if kind == "adamh" else MUONH].inner_state.radius
  assert radius["layers"]["moe"]["experts"]["up_proj"]["kernel"].shape == (2, 4)
  sharding_check.check_sharded_matches_unsharded(tx, params, specs, rtol=2e-5, atol=2e-6,
                                                 pin_state="other")


def test_muonh_routes_the_head_to_adamh_and_embeddings_to_adam():
  params, batch_axes = make_tree()
  groups = {"matrix": MUONH, "head": ADAMH, "embedding": ADAM, "vector": ADAM}
  assert routing(batch_axes, groups)(params) == {"embed": {"embedding": ADAM}, "w1": {"kernel": MUONH},
                     "w2": {"kernel": MUONH}, "layers": {"kernel": MUONH},
                     "norm": {"scale": ADAM}, "lm_head": {"kernel": ADAMH}}


@pytest.mark.parametrize("kind", ["adamh", "muonh"])
@pytest.mark.parametrize("bad, match", [
    (dict(learning_rate=-1.0), "learning_rate"),
    (dict(adam_learning_rate=-1.0), "adam_learning_rate"),
    (dict(b2=1.0), "b2"),
    (dict(eps=0.0), "eps"),
    (dict(radius=0.0), "radius"),
    (dict(weight_decay=-0.1), "weight_decay"),
])
def test_bad_hyperparameters(kind, bad, match):
  with pytest.raises(ValueError, match=match):
    O.create(kind, **bad)


def test_update_needs_params():
  tx = hyperball(optax.scale_by_adam(), 0.1)
  params = {"w": jnp.ones((3, 3))}
  with pytest.raises(ValueError, match="needs params"):
    tx.update(params, tx.init(params))
