"""``build(config, devices)``: the one place a run is assembled.

From a trainer config (``optbench_jax.config`` schema) to everything a run, a dry
run, a benchmark, a test or a sweep's pre-flight needs, in one order:

    resolve the config, once per run (typos, values; the model via ModelSpec)
    -> mesh over ``devices`` -> the attention implementation on that backend
    -> the batch split over hosts and batch axes
    -> abstract parameters -> optimizer (registry, schedule, trainer-owned args)
    -> abstract state and its shardings (``mesh.factor_sharding``)
    -> model, jitted train and eval steps

Nothing is allocated and nothing compiled: shapes come from
``jax.eval_shape``, and the steps are ``jax.jit`` objects created on first
use. ``abstract=True`` builds on an abstract mesh of the config's shape when
the local devices do not fit it (planning a pod run from a laptop, a sweep's
driver checking trials that will run elsewhere); :func:`check` builds that
way and also traces the train step, so whatever the trainer would reject is
rejected here, with the trainer's message.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Sequence

import jax
import ml_collections
import numpy as np

from optbench_jax import models
from optbench_jax.models import attention_kernels
from optbench_jax.models import sharding as sharding_lib
from optbench_jax import config as config_lib
from optbench_jax.train import mesh as mesh_lib
from optbench_jax.train import optimizer as optimizer_lib
from optbench_jax.train import state as state_lib
from optbench_jax.train import step as step_lib
from optbench_jax.train import weight_averaging
from optbench_jax.config import ConfigError


@dataclasses.dataclass(frozen=True)
class Run:
  """An assembled run (see the module docstring). Steps are built on first access."""
  config: ml_collections.ConfigDict           # resolved
  model_spec: models.ModelSpec
  mesh: Any                                   # jax.sharding.Mesh, or AbstractMesh
  batch_sharding: jax.sharding.NamedSharding
  optimizer: optimizer_lib.Optimizer
  abstract_state: state_lib.TrainState
  state_shardings: state_lib.TrainState
  attention_impl: str = "xla"                 # model.attention_impl resolved on this backend
  averaging: weight_averaging.Spec = state_lib.NO_AVERAGING

  @property
  def is_abstract(self) -> bool:
    return isinstance(self.mesh, jax.sharding.AbstractMesh)

  @functools.cached_property
  def model(self):
    return models.build_model(self.model_spec, mesh=self.mesh,
                              report_max_logits=self.config.optimizer.qk_clip_tau > 0)

  @functools.cached_property
  def train_step(self) -> Callable:
    return step_lib.make_train_step(self.model, self.model_spec, self.optimizer, self.config,
                                    self.mesh, self.state_shardings, self.batch_sharding)

  @functools.cached_property
  def eval_step(self) -> Callable:
    return step_lib.make_eval_step(self.model, self.optimizer, self.mesh, self.state_shardings,
                                   self.batch_sharding)

  @functools.cached_property
  def average_eval_steps(self) -> dict[str, Callable]:
    """``{readout: eval_step}`` for each weight average kept (``train.weight_averaging``)."""
    return {name: step_lib.make_eval_step(self.model, self.optimizer, self.mesh,
                                          self.state_shardings, self.batch_sharding,
                                          readout=name)
            for name in self.averaging.readouts}

  def state_target(self) -> state_lib.TrainState:
    """ShapeDtypeStructs of the state carrying its shardings (restore / lowering target)."""
    return state_lib.with_shardings(self.abstract_state, self.state_shardings)

  def abstract_batch(self) -> dict:
    """ShapeDtypeStructs of one global batch (inputs, targets)."""
    shape = (self.config.data.global_batch_size, self.config.data.seq_len)
    return {k: jax.ShapeDtypeStruct(shape, np.int32, sharding=self.batch_sharding)
            for k in ("inputs", "targets")}

  def create_state(self, seed: int | None = None) -> state_lib.TrainState:
    """A freshly initialised state, created directly in its shardings."""
    return state_lib.create_sharded_state(self.model_spec, self.optimizer.tx,
                                          self.state_shardings,
                                          self.config.seed if seed is None else seed,
                                          self.averaging)


def _mesh(config: ml_collections.ConfigDict, devices: Sequence | None, abstract: bool):
  devices = list(jax.devices() if devices is None else devices)
  try:
    return mesh_lib.make_mesh(config.mesh, devices)
  except ConfigError:
    if not abstract or -1 in [config.mesh[a] for a in mesh_lib.AXES]:
      raise
    device_count = int(np.prod([config.mesh[a] for a in mesh_lib.AXES]))
    return mesh_lib.abstract_mesh(config.mesh, device_count)


def build(config: Any, devices: Sequence | None = None, *, abstract: bool = False,
          process_count: int | None = None) -> Run:
  """Assembles the run of ``config`` on ``devices`` (default: all); see the module docstring.

  Raises one :class:`ConfigError` naming the culprit for any bad input.
  ``process_count``: hosts the batch is split over (default: this job's).
  """
  config = config_lib.resolve(config)
  model_spec = models.ModelSpec.from_config(config.model)
  mesh = _mesh(config, devices, abstract)
  attention_impl = resolve_attention(config, model_spec, sharding_lib.platform_of(mesh))
  batch_sharding = sharding_lib.batch_sharding(mesh)
  batch_axes = {a: mesh.shape[a] for a in jax.tree.leaves(tuple(batch_sharding.spec))
                if a is not None}
  config_lib.check_batch_split(config, batch_axes,
                                  jax.process_count() if process_count is None else process_count)
  abstract_params = models.abstract_params(model_spec)
  optimizer = optimizer_lib.build(config, abstract_params,
                                  models.param_batch_axes(abstract_params), model_spec)
  averaging = weight_averaging.Spec.from_config(config.train)
  abstract_state = state_lib.abstract_state(model_spec, optimizer.tx, averaging)
  shardings = state_lib.state_shardings(model_spec, abstract_state, mesh,
                                         config.mesh.factor_sharding)
  return Run(config=config, model_spec=model_spec, mesh=mesh, batch_sharding=batch_sharding,
             optimizer=optimizer, abstract_state=abstract_state, state_shardings=shardings,
             attention_impl=attention_impl, averaging=averaging)


def resolve_attention(config: ml_collections.ConfigDict, model_spec: models.ModelSpec,
                      platform: str) -> str:
  """``model.attention_impl`` on ``platform`` ('xla' | 'blocked' | 'cudnn' | 'splash');
  ConfigError if it cannot run there (``models/attention_kernels.py``)."""
  try:
    impl = attention_kernels.resolve(model_spec.attention_impl, platform,
                                     model_spec.compute_dtype, model_spec.head_dim)
    attention_kernels.check_seq_len(impl, config.data.seq_len)
  except ValueError as e:
    raise ConfigError(f"config.{e}") from None
  return impl


def check(config: Any, devices: Sequence | None = None, process_count: int = 1) -> Run:
  """Builds ``config`` abstractly and traces its train step; raises ConfigError on bad input.

  ``process_count``: the hosts the run will have (the batch must split over them).

  Tracing (``jax.eval_shape``, nothing compiled or allocated) catches what
  only the step reveals, e.g. an optimizer asking for an argument the step
  does not give it.
  """
  run = build(config, devices, abstract=True, process_count=process_count)
  try:
    jax.eval_shape(run.train_step, run.state_target(), run.abstract_batch())
  except (TypeError, ValueError) as e:
    raise ConfigError(f"config.optimizer ({run.config.optimizer.name}): the train step "
                      f"fails to trace: {e}") from None
  return run
