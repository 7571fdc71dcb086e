"""What the sweep runner runs: a sweep (one scale) or a study (many), behind one interface.

The runner (``bench.sweep``) launches, watches, records and resumes trials; a
*program* says which trials exist and what each one is:

* ``name``, ``operational`` (``hosts_per_trial``, ``trial_resources``) and
  ``fingerprint`` (the store refuses another program's results);
* ``scales()``: (scale label, validated sweep dict, base trainer config) for each
  scale, which the runner's pre-flight checks walk;
* ``plan()``: a fresh trial plan (``TrialPlan`` for a sweep, ``StudyPlan`` for a
  study) with ``propose(known)``, ``observe``, ``forget`` and ``waiting``;
* ``config(trial)`` and ``sweep_of(trial)`` (its scale's sweep dict: the
  divergence rule);
* ``snapshot()``: what ``--status`` and the reports read back;
* ``order(queue)`` and ``prepare(trial, active, trial_dir)``: a study launches longer
  budgets first and starts a shorter budget from a longer run's stable phase.
  ``prepare`` returns the trainer config values to launch the trial with ({}:
  its config as it is), or None to hold it back until that run gets there.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Mapping

import ml_collections

from optbench_jax.bench import sweep_config, trial_plan


class Program:
  """What every program has: ``plain`` (its validated config as a dict) names it and holds
  the operational fields."""
  plain: dict[str, Any]

  @property
  def name(self) -> str:
    return self.plain["name"]

  @property
  def operational(self) -> Mapping[str, Any]:
    return self.plain


class SweepProgram(Program):
  """One sweep config (see the module docstring)."""

  def __init__(self, sweep: Any):
    self.plain, self.base, self.fingerprint = sweep_config.load(sweep)

  def scales(self) -> Iterator[tuple[str, Mapping[str, Any], ml_collections.ConfigDict]]:
    yield "", self.plain, self.base

  def plan(self) -> trial_plan.TrialPlan:
    return trial_plan.TrialPlan(self.plain)

  def sweep_of(self, trial: trial_plan.Trial) -> Mapping[str, Any]:
    del trial
    return self.plain

  def config(self, trial: trial_plan.Trial) -> ml_collections.ConfigDict:
    return sweep_config.trial_config(self.plain, self.base, trial.optimizer, trial.hparams,
                                     trial.budget_steps, trial.seed)

  def snapshot(self) -> dict[str, Any]:
    return {"fingerprint": self.fingerprint, "sweep": self.plain,
            "base_config": sweep_config._plain(self.base)}   # pylint: disable=protected-access

  def order(self, queue: list[trial_plan.Trial]) -> list[trial_plan.Trial]:
    return queue

  def prepare(self, trial: trial_plan.Trial, active: Callable[[str], bool],
              trial_dir: Callable[[str], str]) -> dict[str, Any] | None:
    del trial, active, trial_dir
    return {}
