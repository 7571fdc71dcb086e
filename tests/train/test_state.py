import jax
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from optbench_jax import models
from optbench_jax import optim as O
from optbench_jax import config as config_lib
from optbench_jax.train import mesh as mesh_lib
from optbench_jax.config import ConfigError
from optbench_jax.train import state as state_lib
from tests.train import tiny


def test_opt_state_shardings_follow_the_parameters(tmp_path):
  config = tiny.micro_config(tmp_path)
  config.model.update(d_model=64, num_heads=4, ffn_dim=128)
  mesh = mesh_lib.make_mesh(dict(data=2, fsdp=2, tensor=2, expert=1), jax.devices()[:8])
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3))
  abstract = state_lib.abstract_state(config.model, tx)
  shardings = state_lib.state_shardings(config.model, abstract, mesh)
  params = models.sharding.param_shardings(config.model, mesh)
  adam = shardings.opt_state[1][0]
  # Both moments mirror the parameter shardings leaf for leaf ...
  assert jax.tree.leaves(adam.mu) == jax.tree.leaves(params)
  assert jax.tree.leaves(adam.nu) == jax.tree.leaves(params)
  # ... some of which are really sharded, and the counters are replicated.
  assert any(s.spec != P() for s in jax.tree.leaves(params))
  assert adam.count.spec == P() and shardings.step.spec == P()


def test_state_is_created_in_its_shardings_and_per_device_bytes_add_up(tmp_path):
  config = tiny.micro_config(tmp_path)
  mesh = mesh_lib.make_mesh(dict(data=1, fsdp=2, tensor=2, expert=1), jax.devices()[:4])
  tx = optax.adamw(1e-3)
  abstract = state_lib.abstract_state(config.model, tx)
  shardings = state_lib.state_shardings(config.model, abstract, mesh)
  state = state_lib.create_sharded_state(config.model, tx, shardings, seed=0)
  for leaf, sharding in zip(jax.tree.leaves(state), jax.tree.leaves(shardings)):
    assert leaf.sharding.is_equivalent_to(sharding, leaf.ndim)
  measured = sum(max(s.data.nbytes for s in leaf.addressable_shards)
                 for leaf in jax.tree.leaves(state.params))
  assert state_lib.per_device_bytes(abstract.params, shardings.params) == measured
  total = sum(np.asarray(x).nbytes for x in jax.tree.leaves(state.params))
  assert state_lib.total_bytes(abstract.params) == total


def test_preconditioner_state_is_sharded_not_replicated(tmp_path):
  """SOAP's and Kron's factors are spread over the mesh like their parameters; each
  factor_sharding policy stores less per device than the one before it."""
  config = tiny.micro_config(tmp_path)
  config.model.update(d_model=64, num_heads=4, ffn_dim=128)
  mesh = mesh_lib.make_mesh(dict(data=1, fsdp=4, tensor=2, expert=1), jax.devices()[:8])
  abstract_params = models.abstract_params(config.model)
  batch_axes = models.param_batch_axes(abstract_params)
  for name in ("soap", "kron"):
    tx = O.create(name, learning_rate=1e-3, batch_axes=batch_axes)
    abstract = state_lib.abstract_state(config.model, tx)
    shardings = state_lib.state_shardings(config.model, abstract, mesh, "full")
    factors = [(leaf, sharding) for (path, leaf), sharding in zip(
        jax.tree_util.tree_flatten_with_path(abstract.opt_state)[0],
        jax.tree.leaves(shardings.opt_state)) if "factors" in jax.tree_util.keystr(path)
        and leaf.ndim >= 2 and leaf.shape[-1] == leaf.shape[-2]]   # (.., d, d) matrix factors
    assert factors, name
    for leaf, sharding in factors:
      assert sharding.spec != P(*([None] * leaf.ndim)), (name, leaf.shape)
    whole = state_lib.total_bytes(abstract.opt_state)
    per_device = {policy: state_lib.per_device_bytes(
        abstract.opt_state, state_lib.state_shardings(config.model, abstract, mesh,
                                                      policy).opt_state)
                  for policy in ("replicated", "matched", "full")}
    assert per_device["full"] < whole / 3, (name, per_device, whole)
    assert per_device["full"] < per_device["matched"] < per_device["replicated"], per_device


def test_unknown_factor_sharding_is_a_config_error(tmp_path):
  config = tiny.micro_config(tmp_path)
  config.mesh.factor_sharding = "sharded"
  with pytest.raises(ConfigError, match="mesh.factor_sharding must be one of"):
    config_lib.check_values(config)
