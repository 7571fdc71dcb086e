"""Shared test machinery for optimizers: trees, trajectories, common properties.

Every optimizer test compares a trajectory of >= 20 steps against an
independent NumPy reference written in that test from the paper's equations,
then calls ``check_common_properties`` (jit == no-jit, stable state, bf16
params, inject_hyperparams) and ``check_trains_mlp``.
"""

from __future__ import annotations

from typing import Any, Callable

import optax

from optbench_jax.optim import contract
from optbench_jax.optim.contract import (  # pylint: disable=unused-import  (re-exported)
    BATCH_AXES, assert_trajectory_close, make_params, mlp_loss, run_trajectory, to_numpy)

N_STEPS = 20


def make_grads(params: Any, n_steps: int = N_STEPS, seed: int = 1) -> list:
  """``n_steps`` random gradient trees shaped like ``params`` (float32)."""
  return contract.make_grads(params, n_steps, seed)


def check_common_properties(build: Callable[..., optax.GradientTransformation],
                            hparams: dict, params: Any = None, n_steps: int = 6,
                            rtol: float = 1e-6, **extra_args) -> None:
  """jit == no-jit; state shapes/dtypes stable; bf16 params; inject_hyperparams.

  The same checks as ``python -m optbench_jax.optim.check`` (``optim.contract``), on
  the test's own tree and hyperparameters.
  """
  params = make_params() if params is None else params
  grads = make_grads(params, n_steps)
  tx = build(**hparams)
  contract.assert_jit_equals_eager(tx, params, grads, rtol=rtol, **extra_args)
  contract.assert_state_stable(tx, params, grads, **extra_args)
  contract.assert_bf16_params(tx, params, grads, **extra_args)
  contract.assert_inject_round_trip(build, hparams, params, grads, **extra_args)


def check_trains_mlp(tx: optax.GradientTransformation, steps: int = 200,
                     max_ratio: float = 0.5, **extra_args) -> tuple[float, float]:
  """Trains a tiny tanh MLP regression from a fixed seed; loss must fall below max_ratio x start."""
  return contract.trains_mlp(tx, steps, max_ratio, **extra_args)
