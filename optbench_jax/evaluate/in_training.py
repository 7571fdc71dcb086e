"""Harness tasks on a training run's live parameters (``train.downstream``).

``DownstreamEvaluator(config)`` is what ``trainers.lm`` hands ``train.run`` when
``config.train.downstream.tasks`` names tasks: the training loop (which must not
import this layer) calls it at its downstream evaluation points with the train
state's parameters, and it returns ``{task: {metric: value}}``.

* Built before training starts, so every bad setting is one
  :class:`EvaluationError` line before anything is compiled: a model that was
  not trained on text (``harness.check_text_model``), an unknown task, a
  dataset that cannot be read offline (``tasks.load_tasks``, which also loads
  the data once for the whole run), more than one process.
* Each call wraps the parameters in memory in an ``inference.Model`` on the
  training mesh (no checkpoint is read; the model and its compiled forward
  passes are built once and reused) and runs ``lm_eval.simple_evaluate`` as
  ``python -m optbench_jax.evaluate`` does (same batch size, ``limit`` and
  seeds), so the scores equal that command's on the checkpoint of the same step.
  The process's ``random`` and ``numpy`` generator states are restored afterwards
  (the harness reseeds them).
* One process only: the harness runs its requests on the host that calls it,
  and a multi-host run's parameters are spread over hosts that would all have
  to join every forward pass. Evaluate a multi-host run's checkpoints with
  ``python -m optbench_jax.evaluate`` instead.
* The metrics kept are each task's (and group's) entries of lm-eval's
  ``results`` other than standard errors and the alias, under lm-eval's own
  names with its default filter suffix ``,none`` dropped (``acc``,
  ``acc_norm``, ``exact_match,strict-match``).
"""

from __future__ import annotations

import contextlib
import random
from typing import Any

import jax
import numpy as np

from optbench_jax import config as config_lib
from optbench_jax import inference
from optbench_jax.evaluate import EvaluationError
from optbench_jax.evaluate import harness
from optbench_jax.evaluate import tasks as tasks_lib


def main_metrics(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
  """``{task: {metric: value}}`` from lm-eval's ``results`` (module docstring)."""
  out = {}
  for task, entries in results.items():
    metrics = {}
    for key, value in entries.items():
      metric, _, suffix = key.partition(",")
      if not suffix or metric.endswith("_stderr") or isinstance(value, (str, bool)):
        continue
      if isinstance(value, (int, float, np.number)):
        metrics[metric if suffix == "none" else key] = float(value)
    if metrics:
      out[task] = metrics
  return out


@contextlib.contextmanager
def _kept_random_state():
  """Restores the process's ``random`` and ``numpy`` generators (the harness reseeds them)."""
  python_state, numpy_state = random.getstate(), np.random.get_state()
  try:
    yield
  finally:
    random.setstate(python_state)
    np.random.set_state(numpy_state)


class DownstreamEvaluator:
  """Runs ``config.train.downstream``'s tasks on parameters in memory (module docstring).

  Args:
    config: the run's config (resolved here); its tasks must not be empty.
  Raises:
    EvaluationError: a bad setting (module docstring), one line.
  """

  def __init__(self, config: Any):
    self.config = config_lib.resolve(config)
    settings = self.config.train.downstream
    self.task_names = config_lib.downstream_tasks(self.config)
    if not self.task_names:
      raise EvaluationError("config.train.downstream.tasks names no task")
    if jax.process_count() > 1:
      raise EvaluationError(
          f"config.train.downstream: a run of {jax.process_count()} processes cannot evaluate "
          "harness tasks while it trains (one process only); evaluate its checkpoints with "
          "python -m optbench_jax.evaluate")
    try:
      harness.check_text_model(self.config.model.vocab_size)
    except EvaluationError as e:
      raise EvaluationError(f"config.train.downstream: {e}") from None
    self.limit = int(settings.limit) or None
    self.manager, self.tasks = tasks_lib.load_tasks(self.task_names,
                                                    settings.include_path or None)
    self._model: inference.Model | None = None

  def _model_for(self, params: Any, step: int, spec: Any, mesh: jax.sharding.Mesh
                 ) -> inference.Model:
    if self._model is None or self._model.mesh is not mesh:
      self._model = inference.Model(self.config, spec, params, mesh, step)
    self._model.params, self._model.step = params, step
    return self._model

  def __call__(self, params: Any, step: int, spec: Any,
               mesh: jax.sharding.Mesh) -> dict[str, dict[str, float]]:
    """``{task: {metric: value}}`` of the model with ``params`` (laid out on ``mesh``)."""
    import lm_eval  # pylint: disable=import-outside-toplevel  (slow import)
    model = self._model_for(params, step, spec, mesh)
    try:
      lm = harness.OptbenchLM(model=model, batch_size=inference.DEFAULT_BATCH_SIZE)
      with _kept_random_state():
        output = lm_eval.simple_evaluate(model=lm, tasks=self.tasks, task_manager=self.manager,
                                         limit=self.limit, batch_size=inference.DEFAULT_BATCH_SIZE,
                                         log_samples=False)
    finally:
      model.params = None   # the train step donates these buffers: hold no reference
    return main_metrics(output["results"])

