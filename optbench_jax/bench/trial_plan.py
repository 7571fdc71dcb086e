"""Which trials a sweep runs: the tuners' proposals, then seed replicas and budget transfers.

One ``TrialPlan`` per sweep invocation (the runner) or per ``--status`` call. It
holds one tuner per (optimizer, tuned budget) (``bench.tuning``); tuning runs on
``seeds[0]``. When a tuner is done, its best point is re-run on the other seeds,
and on every untuned budget whose transfer source is this budget
(``sweep_config.transfer_source``), on all seeds.

``propose(known)`` walks the proposals until every tuner waits on a trial whose
result is not known yet, and returns those trials (each once). ``known(trial)``
is the objective of a result already held (e.g. in the results store), or None;
known results are fed back at once, which is how a rerun skips finished trials
and how ``--status`` replays a sweep from its store without running anything.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping

from optbench_jax.bench import sweep_config, tuning


@dataclasses.dataclass(frozen=True)
class Trial:
  optimizer: str
  hparams: dict[str, Any]
  budget_steps: int
  seed: int
  scale: str = ""     # a study's scale (model size, batch size); "" in a sweep

  @property
  def trial_id(self) -> str:
    return sweep_config.trial_id(self.optimizer, self.hparams, self.budget_steps, self.seed,
                                 self.scale)


class TrialPlan:
  """The proposals of one sweep (module docstring)."""

  def __init__(self, plain: Mapping[str, Any], scale: str = ""):
    self.plain = plain
    self.scale = scale
    self.tuners = {
        (optimizer, budget): tuning.make_tuner(
            plain["strategy"], spec["grid"], spec["baseline"], plain["threshold"],
            plain["trial_budget"] or None, plain["edge_extension"])
        for optimizer, spec in plain["optimizers"].items() for budget in plain["tune_budgets"]}
    self._replicated: set[tuple[str, int]] = set()
    self._waiting: dict[str, list[Callable[[float], None]]] = {}   # trial id -> callbacks

  @property
  def waiting(self) -> list[str]:
    """Ids of the trials proposed whose result has not been observed."""
    return list(self._waiting)

  def observe(self, trial_id: str, objective: float) -> None:
    """Feeds a trial's result (its objective: the final eval loss, inf if diverged) back."""
    for callback in self._waiting.pop(trial_id, []):
      callback(objective)

  def forget(self, trial_id: str) -> None:
    """Drops a trial without a result (interrupted: it resumes on the next invocation)."""
    self._waiting.pop(trial_id, None)

  def propose(self, known: Callable[[Trial], float | None]) -> list[Trial]:
    """The new trials that must run before any tuner can go on (see the module docstring)."""
    new: list[Trial] = []

    def submit(trial: Trial, callback: Callable[[float], None]) -> bool:
      """True if the trial's result was known (callback called)."""
      tid = trial.trial_id
      if tid in self._waiting:
        self._waiting[tid].append(callback)
        return False
      objective = known(trial)
      if objective is not None:
        callback(objective)
        return True
      self._waiting[tid] = [callback]
      new.append(trial)
      return False

    plain = self.plain
    progress = True
    while progress:
      progress = False
      for (optimizer, budget), tuner in self.tuners.items():
        batch = tuner.propose()
        for point in batch:
          trial = Trial(optimizer, point, budget, plain["seeds"][0], self.scale)
          progress |= submit(trial, lambda loss, t=tuner, p=point: t.observe(p, loss))
        if not batch and tuner.done and (optimizer, budget) not in self._replicated:
          self._replicated.add((optimizer, budget))
          best, best_loss = tuner.best
          if math.isfinite(best_loss):
            for seed in plain["seeds"][1:]:
              submit(Trial(optimizer, best, budget, seed, self.scale), lambda loss: None)
            for other in plain["budgets"]:     # untuned budgets reuse this best config
              if other not in plain["tune_budgets"] and \
                 sweep_config.transfer_source(plain, other) == budget:
                for seed in plain["seeds"]:
                  submit(Trial(optimizer, best, other, seed, self.scale), lambda loss: None)
    return new
