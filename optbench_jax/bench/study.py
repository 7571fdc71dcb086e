"""A study: one sweep per scale, run by the sweep runner as one program.

``StudyProgram`` is what ``bench.sweep.SweepRunner`` runs for
``python -m trainers.study``: the same trials, store, executors, supervisor,
progress and ``--status`` as a sweep, with

* the scales and tuning plan of ``study_config`` and ``study_plan``;
* trial ids carrying their scale (``<scale>-<optimizer>-<steps>steps-seed<s>-<hash>``);
* shared stable phases (``share_stable_phase``): a trial keeps a checkpoint at
  the step where each shorter budget of the same settings leaves the shared
  part of the schedule (``train.keep_steps``); a shorter trial starts from the
  nearest longer trial's checkpoint there (``train.branch_from``), waits while
  such a trial is queued or running and has not got there, and trains from
  scratch when none exists. Longer budgets launch first. A branch is taken only
  when the shared part is at least half of the shorter run (a WSD stable
  phase; under a cosine schedule the runs share little more than the warmup).
"""

from __future__ import annotations

import copy
import functools
import json
from typing import Any, Callable, Iterator, Mapping

import ml_collections

from optbench_jax import storage
from optbench_jax.bench import study_config, study_plan, sweep_config, sweep_program, trial_plan
from optbench_jax.train import branching
from optbench_jax.train import checkpoint as checkpoint_lib

OPERATIONAL_DEFAULTS = {"hosts_per_trial": 1, "trial_resources": {"CPU": 1}}


class StudyProgram(sweep_program.Program):
  """One study config, ready to run (module docstring)."""

  def __init__(self, study: Any):
    self.plain = study_config.as_plain(study)
    for key, value in OPERATIONAL_DEFAULTS.items():
      self.plain.setdefault(key, copy.deepcopy(value))
    self.scale_map = study_config.scales(self.plain)
    self.fingerprint = study_config.fingerprint(self.plain, self.scale_map)

  def scales(self) -> Iterator[tuple[str, Mapping[str, Any], ml_collections.ConfigDict]]:
    for label, scale in self.scale_map.items():
      yield label, scale["sweep"], scale["base"]

  def study(self) -> dict[str, Any]:
    """The study as the snapshot holds it (all a plan or a report needs)."""
    scales = {label: {k: v for k, v in scale.items() if k != "base"}
              for label, scale in self.scale_map.items()}
    return dict(self.plain, scales=scales)

  def plan(self) -> study_plan.StudyPlan:
    return study_plan.StudyPlan(self.study())

  def sweep_of(self, trial: trial_plan.Trial) -> Mapping[str, Any]:
    return self.scale_map[trial.scale]["sweep"]

  def _plain_config(self, trial: trial_plan.Trial, budget: int) -> ml_collections.ConfigDict:
    scale = self.scale_map[trial.scale]
    return sweep_config.trial_config(scale["sweep"], scale["base"], trial.optimizer,
                                     trial.hparams, budget, trial.seed)

  @functools.lru_cache(maxsize=4096)
  def _branch_step(self, scale: str, optimizer: str, hparams_key: str, short: int,
                   long: int) -> int | None:
    """Where a ``short``-step trial may branch from the ``long``-step one (None: not worth it)."""
    trial = trial_plan.Trial(optimizer, json.loads(hparams_key), short, 0, scale)
    step = branching.shared_steps(self._plain_config(trial, short),
                                  self._plain_config(trial, long))
    return step if step * 2 >= short else None

  def _longer(self, trial: trial_plan.Trial) -> list[int]:
    return sorted(b for b in self.scale_map[trial.scale]["sweep"]["budgets"]
                  if b > trial.budget_steps)

  def _key(self, trial: trial_plan.Trial) -> str:
    return json.dumps(dict(trial.hparams), sort_keys=True)

  def config(self, trial: trial_plan.Trial) -> ml_collections.ConfigDict:
    config = self._plain_config(trial, trial.budget_steps)
    if self.plain["share_stable_phase"]:
      shorter = [b for b in self.scale_map[trial.scale]["sweep"]["budgets"]
                 if b < trial.budget_steps]
      keep = {self._branch_step(trial.scale, trial.optimizer, self._key(trial), b,
                                trial.budget_steps) for b in shorter}
      config.train.keep_steps = sorted(s for s in keep if s is not None)
    return config

  def snapshot(self) -> dict[str, Any]:
    return {"fingerprint": self.fingerprint, "study": self.study(),
            "base_configs": {label: sweep_config._plain(scale["base"])   # pylint: disable=protected-access
                             for label, scale in self.scale_map.items()}}

  def order(self, queue: list[trial_plan.Trial]) -> list[trial_plan.Trial]:
    if not self.plain["share_stable_phase"]:
      return queue
    return sorted(queue, key=lambda t: -t.budget_steps)

  def prepare(self, trial: trial_plan.Trial, active: Callable[[str], bool],
              trial_dir: Callable[[str], str]) -> dict[str, Any] | None:
    """The branch to launch ``trial`` with ({}: none, from scratch or its own checkpoint), or
    None while a longer trial of the same point is queued or running but has not reached the
    branch step. ``active(id)``: the trial is queued or running; ``trial_dir(id)``: its work
    directory."""
    if not self.plain["share_stable_phase"]:
      return {}
    own = storage.join(trial_dir(trial.trial_id), "checkpoints")
    if storage.isdir(own) and storage.listdir(own):
      return {}   # started before: it resumes from its own checkpoint
    wait = False
    for budget in self._longer(trial):
      step = self._branch_step(trial.scale, trial.optimizer, self._key(trial),
                               trial.budget_steps, budget)
      if step is None:
        continue
      longer = trial_plan.Trial(trial.optimizer, trial.hparams, budget, trial.seed, trial.scale)
      source = trial_dir(longer.trial_id)
      if checkpoint_lib.is_complete(source, step):
        return {"train.branch_from": source, "train.branch_step": step}
      wait = wait or active(longer.trial_id)
    return None if wait else {}
