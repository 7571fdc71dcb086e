"""AdaMuon against a float64 NumPy reference, and AdamW on the rest.

The generic properties are in test_contract_builtins, the sharded transformer layout
in test_muon (the Muon family).

The reference is written from Si et al. 2025 (arXiv:2507.11005, Algorithm 1:
sign-stabilised momentum, NS, element-wise second moment of O without bias
correction, RMS-aligned rescale 0.2 sqrt(mn) / ||O^||_F) in the PyTorch
orientation of the authors' code (``(out, in)`` weights) and transposed to
Flax kernels. Where paper and code differ it follows the code of the paper's
GPT-2 runs (gpt2/models/optimizers/adamuon.py): EMA momentum with the lerp form
of Nesterov, the sign taken of that Nesterov direction, v decaying with the
momentum coefficient, eps 1e-8 in sqrt(v) + eps and ||O^||_F + eps.
"""

import math

import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optbench_jax.optim as O
from optbench_jax.optim import linalg
from optbench_jax.optim import testing
from tests.optim.test_linalg_newton_schulz import reference_newton_schulz
from tests.optim.test_muon import transformer_tree

NS5 = [linalg.CLASSIC_COEFFICIENTS] * 5


def reference_adamuon(kernel, grads, lr, beta, beta2, wd, sign=True, nesterov=True,
                      eps=1e-8):
  """AdaMuon on one Flax (fan_in, fan_out) kernel, computed on W = kernel^T (out, in)."""
  w = np.asarray(kernel, np.float64).T
  m = np.zeros_like(w)
  v = np.zeros_like(w)
  out = []
  for g in grads:
    g = np.asarray(g, np.float64).T
    m = beta * m + (1 - beta) * g
    d = (1 - beta) * g + beta * m if nesterov else m
    o = reference_newton_schulz(np.sign(d) if sign else d, NS5)
    v = beta2 * v + (1 - beta2) * o * o
    o_hat = o / (np.sqrt(v) + eps)
    u = 0.2 * math.sqrt(w.shape[0] * w.shape[1]) * o_hat / (np.linalg.norm(o_hat) + eps)
    w = w - lr * (u + wd * w)
    out.append(w.T)
  return out


@pytest.mark.parametrize("shape, sign, nesterov, beta2", [
    ((8, 12), True, True, None), ((12, 8), True, True, None),
    ((12, 8), False, True, 0.999), ((8, 12), True, False, 0.9)])
def test_matches_reference(shape, sign, nesterov, beta2):
  rng = np.random.default_rng(0)
  params = {"w": {"kernel": jnp.asarray(rng.normal(size=shape), jnp.float32)}}
  grads = testing.make_grads(params, 20)  # 20 steps
  tx = O.adamuon(3e-3, beta=0.9, beta2=beta2, sign_momentum=sign, nesterov=nesterov,
                 weight_decay=0.1)
  traj = testing.run_trajectory(tx, params, grads)
  ref = reference_adamuon(params["w"]["kernel"], [g["w"]["kernel"] for g in grads],
                          3e-3, 0.9, 0.9 if beta2 is None else beta2, 0.1, sign, nesterov)
  testing.assert_trajectory_close(traj, [{"w": {"kernel": r}} for r in ref],
                                  rtol=2e-5, atol=2e-6)


def test_update_rms_is_aligned_to_adam_per_matrix():
  rng = np.random.default_rng(1)
  stack = jnp.asarray(rng.normal(size=(3, 7, 5)), jnp.float32)
  grads = testing.make_grads({"k": stack}, 4)
  traj = testing.run_trajectory(O.adamuon(1e-2, weight_decay=0.0, batch_axes=1),
                                {"k": stack}, grads)
  previous = stack
  for step in traj:
    delta = np.asarray(step["k"] - previous, np.float64) / -1e-2
    np.testing.assert_allclose(np.sqrt(np.mean(delta**2, axis=(1, 2))), 0.2, rtol=1e-4)
    previous = step["k"]


def test_non_matrix_leaves_follow_adamw_with_the_shared_lr_and_weight_decay():
  params, batch_axes, _ = transformer_tree(layers=4)
  grads = testing.make_grads(params, 5)
  traj = testing.run_trajectory(O.adamuon(2e-3, weight_decay=0.1, batch_axes=batch_axes),
                                params, grads)
  pick = lambda t: {"embed": t["embed"], "final_norm": t["final_norm"],
                    "lm_head": t["lm_head"], "norm": t["layers"]["attn_norm"]}
  mask = {"embed": {"embedding": False}, "final_norm": {"scale": False},
          "lm_head": {"kernel": True}, "norm": {"scale": False}}
  expected = testing.run_trajectory(
      optax.adamw(2e-3, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, mask=mask),
      pick(params), [pick(g) for g in grads])
  testing.assert_trajectory_close([pick(t) for t in traj], expected, rtol=1e-7, atol=0)


@pytest.mark.parametrize("bad, match", [
    (dict(ns_steps=0), "ns_steps"),
    (dict(ns_coefficients="cubic"), "preset"),
    (dict(learning_rate=-1.0), "learning_rate"),
    (dict(adam_learning_rate=-1.0), "adam_learning_rate"),
    (dict(beta=1.0), "beta"),
    (dict(beta2=1.0), "beta2"),
    (dict(eps=-1e-8), "eps"),
    (dict(adam_b1=-0.1), "adam_b1"),
    (dict(weight_decay=-0.1), "weight_decay"),
    (dict(adam_weight_decay=-0.1), "adam_weight_decay"),
])
def test_bad_hyperparameters(bad, match):
  with pytest.raises(ValueError, match=match):
    O.adamuon(**bad)
