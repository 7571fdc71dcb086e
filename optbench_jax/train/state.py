"""The training state (step, parameters, optimizer state) and its shardings.

Parameter shardings come from the model's logical-axis rules; optimizer-state
shardings follow the rule of :mod:`optbench_jax.optim.state_sharding`
(``config.mesh.factor_sharding``).
Nothing here allocates: shapes come from ``jax.eval_shape``, and the state is
created directly in its shardings by a jitted init.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from optbench_jax import models
from optbench_jax.models import sharding as sharding_lib
from optbench_jax.optim import state_sharding


@flax.struct.dataclass
class TrainState:
  step: jax.Array      # int32 scalar: optimizer steps taken
  params: Any          # float32 (config.model.param_dtype) parameters
  opt_state: Any       # the optimizer's state, float32


def init_state(model_cfg, tx, rng) -> TrainState:
  params = models.init_params(model_cfg, rng)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def abstract_state(model_cfg, tx) -> TrainState:
  """Shapes and dtypes of the state (nothing allocated)."""
  return jax.eval_shape(functools.partial(init_state, model_cfg, tx), jax.random.PRNGKey(0))


def state_shardings(model_cfg, state: TrainState, mesh,
                    factor_sharding: str = "matched") -> TrainState:
  """NamedShardings for every leaf of ``state`` (abstract or concrete)."""
  params = sharding_lib.param_shardings(model_cfg, mesh)
  return TrainState(
      step=NamedSharding(mesh, P()), params=params,
      opt_state=state_sharding.derive_opt_state_shardings(state.opt_state, state.params, params, mesh,
                                           factor_sharding))


def with_shardings(abstract: Any, shardings: Any) -> Any:
  """ShapeDtypeStruct leaves carrying target shardings (orbax restore targets)."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract, shardings)


def create_sharded_state(model_cfg, tx, shardings: TrainState, seed: int) -> TrainState:
  """Initialises the state directly in its shardings (no full copy on one device)."""
  init = jax.jit(functools.partial(init_state, model_cfg, tx), out_shardings=shardings)
  return init(jax.random.PRNGKey(seed))


def per_device_bytes(abstract: Any, shardings: Any) -> int:
  """Bytes one device holds for ``abstract`` laid out with ``shardings``."""
  total = 0
  for leaf, sharding in zip(jax.tree.leaves(abstract), jax.tree.leaves(shardings)):
    shape = sharding.shard_shape(leaf.shape)
    total += math.prod(shape) * np.dtype(leaf.dtype).itemsize
  return total


def total_bytes(abstract: Any) -> int:
  return sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(abstract))
