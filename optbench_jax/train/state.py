"""The training state (step, parameters, optimizer state) and its shardings.

Parameter shardings come from the model's logical-axis rules; optimizer-state
shardings follow the rule of :mod:`optbench_jax.optim.state_sharding`
(``config.mesh.factor_sharding``).
With weight averaging on (``train.weight_averaging``), the state is an
:class:`AveragedTrainState`: the same fields plus ``averages`` (float32 trees
shaped and sharded exactly like the parameters; ``train/weight_averaging.py``).
Off, it is the plain :class:`TrainState`, so earlier checkpoints restore.
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
from optbench_jax.train import weight_averaging


@flax.struct.dataclass
class TrainState:
  step: jax.Array      # int32 scalar: optimizer steps taken
  params: Any          # float32 (config.model.param_dtype) parameters
  opt_state: Any       # the optimizer's state, float32


@flax.struct.dataclass
class AveragedTrainState(TrainState):
  averages: Any        # {"ema" | "tail": float32 tree like params}: weight_averaging.init


NO_AVERAGING = weight_averaging.Spec()


def init_state(model_cfg, tx, rng,
               averaging: weight_averaging.Spec = NO_AVERAGING) -> TrainState:
  params = models.init_params(model_cfg, rng)
  fields = dict(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
  if averaging.enabled:
    return AveragedTrainState(**fields, averages=weight_averaging.init(averaging, params))
  return TrainState(**fields)


def abstract_state(model_cfg, tx,
                   averaging: weight_averaging.Spec = NO_AVERAGING) -> TrainState:
  """Shapes and dtypes of the state (nothing allocated)."""
  return jax.eval_shape(functools.partial(init_state, model_cfg, tx, averaging=averaging),
                        jax.random.PRNGKey(0))


def state_shardings(model_cfg, state: TrainState, mesh,
                    factor_sharding: str = "matched") -> TrainState:
  """NamedShardings for every leaf of ``state`` (abstract or concrete)."""
  params = sharding_lib.param_shardings(model_cfg, mesh)
  fields = dict(
      step=NamedSharding(mesh, P()), params=params,
      opt_state=state_sharding.derive_opt_state_shardings(state.opt_state, state.params, params, mesh,
                                           factor_sharding))
  if isinstance(state, AveragedTrainState):
    return AveragedTrainState(**fields, averages={k: params for k in state.averages})
  return TrainState(**fields)


def with_shardings(abstract: Any, shardings: Any) -> Any:
  """ShapeDtypeStruct leaves carrying target shardings (orbax restore targets)."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract, shardings)


def create_sharded_state(model_cfg, tx, shardings: TrainState, seed: int,
                         averaging: weight_averaging.Spec = NO_AVERAGING) -> TrainState:
  """Initialises the state directly in its shardings (no full copy on one device)."""
  init = jax.jit(functools.partial(init_state, model_cfg, tx, averaging=averaging),
                 out_shardings=shardings)
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
