"""Muon and D-Muon against float64 NumPy references and optax; the Muon family on a
sharded transformer layout. The generic properties are in test_contract_builtins."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

import optbench_jax.optim as O
from optbench_jax.optim import linalg
from optbench_jax.optim import testing
from optbench_jax.optim import sharding_check
from tests.optim.test_linalg_newton_schulz import reference_newton_schulz

NS5 = [linalg.CLASSIC_COEFFICIENTS] * 5


def reference_muon_matrix(p, grads, lr, mu, scale, wd=0.0, nesterov=True):
  """Muon on one 2-D (fan_in, fan_out) matrix, float64, from the equations."""
  p = np.asarray(p, np.float64)
  buf = np.zeros_like(p)
  out = []
  for g in grads:
    g = np.asarray(g, np.float64)
    buf = mu * buf + g
    direction = g + mu * buf if nesterov else buf
    u = scale * reference_newton_schulz(direction, NS5)
    p = p - lr * (u + wd * p)
    out.append(p)
  return out


def transformer_tree(seed=0, layers=8):
  """A tiny transformer-shaped tree (names as in the models' contract)."""
  rng = np.random.default_rng(seed)
  f = lambda *s: jnp.asarray(rng.normal(size=s) * 0.1, jnp.float32)
  params = {
      "embed": {"embedding": f(64, 16)},
      "layers": {"attn": {"q_proj": {"kernel": f(layers, 16, 32)}},
                 "mlp": {"down_proj": {"kernel": f(layers, 32, 16)}},
                 "attn_norm": {"scale": 1.0 + f(layers, 16)},
                 "moe": {"experts": {"up_proj": {"kernel": f(layers // 4, 4, 16, 24)}}}},
      "final_norm": {"scale": 1.0 + f(16)},
      "lm_head": {"kernel": f(16, 64)},
  }
  batch_axes = jax.tree.map(lambda _: 0, params)
  batch_axes["layers"] = {"attn": {"q_proj": {"kernel": 1}}, "mlp": {"down_proj": {"kernel": 1}},
                          "attn_norm": {"scale": 1}, "moe": {"experts": {"up_proj": {"kernel": 2}}}}
  specs = {
      "embed": {"embedding": P("tensor", "fsdp")},
      "layers": {"attn": {"q_proj": {"kernel": P(None, "fsdp", "tensor")}},
                 "mlp": {"down_proj": {"kernel": P(None, "tensor", "fsdp")}},
                 "attn_norm": {"scale": P(None, None)},
                 "moe": {"experts": {"up_proj": {"kernel": P(None, None, "fsdp", "tensor")}}}},
      "final_norm": {"scale": P()},
      "lm_head": {"kernel": P("fsdp", "tensor")},
  }
  return params, batch_axes, specs


@pytest.mark.parametrize("shape, nesterov", [((8, 12), True), ((12, 8), True), ((8, 12), False)])
def test_matches_reference_on_2d_matrix(shape, nesterov):
  rng = np.random.default_rng(0)
  params = {"w": {"kernel": jnp.asarray(rng.normal(size=shape), jnp.float32)}}
  grads = testing.make_grads(params, 4)
  tx = O.muon(learning_rate=0.05, beta=0.9, nesterov=nesterov, weight_decay=0.1)
  traj = testing.run_trajectory(tx, params, grads)
  scale = math.sqrt(max(1.0, shape[1] / shape[0]))
  ref = reference_muon_matrix(params["w"]["kernel"], [g["w"]["kernel"] for g in grads],
                              0.05, 0.9, scale, wd=0.1, nesterov=nesterov)
  testing.assert_trajectory_close(traj, [{"w": {"kernel": r}} for r in ref], rtol=1e-5, atol=1e-6)


def test_non_matrix_leaves_follow_adamw_exactly():
  params, batch_axes, _ = transformer_tree(layers=4)
  grads = testing.make_grads(params, 5)
  kw = dict(adam_learning_rate=3e-3, adam_b1=0.8, adam_b2=0.99, adam_eps=1e-8,
            adam_weight_decay=0.1)
  traj = testing.run_trajectory(O.muon(0.02, batch_axes=batch_axes, **kw), params, grads)
  pick = lambda t: {"embed": t["embed"], "final_norm": t["final_norm"],
                    "lm_head": t["lm_head"], "norm": t["layers"]["attn_norm"]}
  # The untied head is decayed, the embedding and norms are not.
  mask = {"embed": {"embedding": False}, "final_norm": {"scale": False},
          "lm_head": {"kernel": True}, "norm": {"scale": False}}
  expected = testing.run_trajectory(
      optax.adamw(3e-3, b1=0.8, b2=0.99, eps=1e-8, weight_decay=0.1, mask=mask),
      pick(params), [pick(g) for g in grads])
  testing.assert_trajectory_close([pick(t) for t in traj], expected, rtol=1e-7, atol=0)
  # Hidden matrices did not take Adam steps: their update is a scaled orthogonal matrix.
  delta = np.asarray(traj[0]["layers"]["attn"]["q_proj"]["kernel"][0]
                     - params["layers"]["attn"]["q_proj"]["kernel"][0]) / -0.02
  s = np.linalg.svd(delta / math.sqrt(32 / 16), compute_uv=False)
  assert s.min() > 0.6 and s.max() < 1.2, s


def test_d_muon_scale_shared_lr_and_weight_decay():
  rng = np.random.default_rng(2)
  params = {"hidden": {"kernel": jnp.asarray(rng.normal(size=(6, 10)), jnp.float32)},
            "norm": {"scale": jnp.asarray(rng.normal(size=(10,)), jnp.float32)}}
  grads = testing.make_grads(params, 3)
  lr, wd, mu = 1e-2, 0.1, 0.95
  traj = testing.run_trajectory(
      O.d_muon(lr, beta=mu, weight_decay=wd, adam_b1=0.8, adam_b2=0.999), params, grads)
  scale = 0.2 * math.sqrt(10)
  ref = reference_muon_matrix(params["hidden"]["kernel"], [g["hidden"]["kernel"] for g in grads],
                              lr, mu, scale, wd=wd)
  norm_ref = testing.run_trajectory(optax.adam(lr, b1=0.8, b2=0.999), params["norm"],
                                    [g["norm"] for g in grads])
  expected = [{"hidden": {"kernel": r}, "norm": n} for r, n in zip(ref, norm_ref)]
  testing.assert_trajectory_close(traj, expected, rtol=1e-5, atol=1e-6)
  # With an explicit mask that decays everything, the vector is decayed with the same lr.
  all_decay = O.d_muon(lr, beta=mu, weight_decay=wd, adam_b1=0.8, mask=lambda p: jax.tree.map(
      lambda _: True, p))
  decayed = testing.run_trajectory(all_decay, params, grads[:1])
  norm_wd = testing.run_trajectory(optax.adamw(lr, b1=0.8, weight_decay=wd), params["norm"],
                                   [grads[0]["norm"]])
  testing.assert_trajectory_close([decayed[0]["norm"]], norm_wd, rtol=1e-6, atol=1e-7)


def test_agrees_with_optax_contrib_muon_without_nesterov():
  # optax keeps a bias-corrected EMA; NS is scale-invariant, so without Nesterov
  # the directions coincide (its Nesterov form weighs g differently).
  rng = np.random.default_rng(3)
  params = {"a": {"kernel": jnp.asarray(rng.normal(size=(8, 12)), jnp.float32)},
            "b": {"kernel": jnp.asarray(rng.normal(size=(12, 8)), jnp.float32)}}
  grads = testing.make_grads(params, 5)
  ours = testing.run_trajectory(O.muon(0.02, beta=0.9, nesterov=False), params, grads)
  theirs = testing.run_trajectory(
      optax.contrib.muon(0.02, beta=0.9, nesterov=False, eps=1e-7), params, grads)
  testing.assert_trajectory_close(ours, theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name, hparams, pin_state", [
    ("muon", dict(learning_rate=0.01), "none"),
    ("d_muon", dict(learning_rate=0.01), "none"),
    ("normuon", dict(learning_rate=0.01), "other"),
    ("adamuon", dict(learning_rate=3e-3), "none"),
    ("conda", dict(learning_rate=1e-2, update_proj_gap=2), "other"),
])
def test_muon_family_sharded_on_a_transformer_layout(name, hparams, pin_state):
  """The layout the contract's sharded tree lacks: MoE experts with two batch axes, a
  down projection sharded (tensor, fsdp), the embedding and untied head (AdamW branch)
  sharded over both mesh axes."""
  params, batch_axes, specs = transformer_tree()
  tx = O.create(name, weight_decay=0.1, batch_axes=batch_axes, **hparams)
  sharding_check.check_sharded_matches_unsharded(tx, params, specs, rtol=2e-5, atol=2e-6,
                                                 pin_state=pin_state)


def test_stacked_newton_schulz_is_distributed_not_gathered():
  """Compiled HLO: the (8, 64, 128) stack moves by all-to-all, never gathered whole."""
  stack = jnp.asarray(np.random.default_rng(4).normal(size=(8, 64, 128)), jnp.float32)
  specs = {"k": P(None, "fsdp", "tensor")}
  run = sharding_check.check_sharded_matches_unsharded(
      O.muon(0.01, batch_axes=1), {"k": stack}, specs, n_steps=1)
  ops = sharding_check.collectives(run.compiled.as_text())
  assert any(op == "all-to-all" for op, _ in ops), ops
  full = "f32[8,64,128]"
  assert not any(op == "all-gather" and shape.startswith(full) for op, shape in ops), ops
  # The whole stack is never materialised on one device: every collective
  # result is smaller than the stack.
  for op, shape in ops:
    for dims in __import__("re").findall(r"f32\[([\d,]+)\]", shape):
      assert math.prod(int(d) for d in dims.split(",")) < 8 * 64 * 128, (op, shape)


@pytest.mark.parametrize("bad, match", [
    (dict(ns_steps=0), "ns_steps"),
    (dict(ns_coefficients="cubic"), "preset"),
    (dict(learning_rate=-1.0), "learning_rate"),
    (dict(adam_learning_rate=-1.0), "adam_learning_rate"),
    (dict(beta=1.0), "beta"),
    (dict(adam_b2=1.5), "adam_b2"),
    (dict(weight_decay=-0.1), "weight_decay"),
])
def test_bad_hyperparameters(bad, match):
  kwargs = dict(learning_rate=0.02)
  kwargs.update(bad)
  with pytest.raises(ValueError, match=match):
    O.muon(**kwargs)
  if "adam_learning_rate" not in bad:
    with pytest.raises(ValueError, match=match):
      O.d_muon(**kwargs)
