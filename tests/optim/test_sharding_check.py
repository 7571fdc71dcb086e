"""optim/sharding_check.py: the trainer's state-sharding rule, pinning modes, bad input."""

import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import optbench_jax.optim as O
from optbench_jax.optim import sharding_check

PARAMS = {"w": jnp.asarray(np.random.default_rng(0).normal(size=(8, 4)), jnp.float32),
          "b": jnp.linspace(0.5, 1.5, 4)}
SPECS = {"w": P("fsdp", "tensor"), "b": P()}


def test_state_shardings_follow_the_trainer_rule():
  mesh = sharding_check.make_mesh()
  shardings = sharding_check.param_shardings(mesh, SPECS)
  state, mirrors = sharding_check.state_shardings(O.adamw(1e-3), PARAMS, shardings, mesh)
  mu, nu = state[0].mu, state[0].nu
  assert mu["w"].spec == nu["w"].spec == P("fsdp", "tensor")
  assert mirrors[0].mu["w"] and mirrors[0].nu["b"] and not mirrors[0].count
  assert state[0].count.spec == P()


@pytest.mark.parametrize("pin_state", ["none", "other", "all"])
def test_adamw_sharded_matches_unsharded_in_every_pinning_mode(pin_state):
  sharding_check.check_sharded_matches_unsharded(O.adamw(1e-3), PARAMS, SPECS,
                                                 pin_state=pin_state)


def test_a_bad_pinning_mode_is_one_clear_error():
  with pytest.raises(ValueError, match="pin_state must be"):
    sharding_check.check_sharded_matches_unsharded(O.adamw(1e-3), PARAMS, SPECS,
                                                   pin_state="some")
