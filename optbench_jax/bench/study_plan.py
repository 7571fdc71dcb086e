"""Which trials a study runs: full tuning at the tuned scales, transfer to the others.

A study's plan has the interface of a sweep's ``TrialPlan`` (``propose(known)``,
``observe``, ``forget``, ``waiting``) and is made of them:

* each tuned scale (``plan.tune`` models, at every batch size) is a sweep's
  ``TrialPlan``: one tuner per optimizer and budget, seed replicas of the best;
* with one seed, the reference's best point at each scale's smallest budget
  is re-run on ``noise_seeds``: the seed noise the report's significance calls
  are measured against;
* once every tuner of an optimizer at the tuned scales of a batch size is
  done, its best points are carried to each other scale of that batch size and
  budget (``transfer_rules.carry``: ``same`` or ``fit``); each carried point is a
  one-budget ``TrialPlan`` whose baseline is that point and whose grid is the
  local search around it (``plan.local_search``; empty: the point alone), then
  re-run on every seed.

A plan is built from the study's snapshot alone (no config files are read), so
``--status`` replays it from the store exactly as the runner proposes.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Callable, Mapping

from optbench_jax.bench import transfer_rules, trial_plan


class StudyPlan:
  """The proposals of one study (module docstring). ``study``: the snapshot's study dict
  (``plan``, ``optimizers``, ``scales`` with each scale's sweep, size and budgets)."""

  def __init__(self, study: Mapping[str, Any]):
    self.study = study
    self.scales = study["scales"]
    self.subplans: dict[tuple, trial_plan.TrialPlan] = {
        (label,): trial_plan.TrialPlan(scale["sweep"], scale=label)
        for label, scale in self.scales.items() if scale["tuned"]}
    # (scale, optimizer, budget) -> (carried point, {hp: law}) for the report.
    self.carried: dict[tuple[str, str, int], tuple[dict, dict]] = {}
    self.notes: list[str] = []
    self._blocked: set[tuple[str, str]] = set()
    self._noise_done: set[str] = set()
    self._noise_waiting: set[str] = set()

  @property
  def waiting(self) -> list[str]:
    return [tid for plan in self.subplans.values() for tid in plan.waiting] + sorted(
        self._noise_waiting)

  def observe(self, trial_id: str, objective: float) -> None:
    for plan in self.subplans.values():
      plan.observe(trial_id, objective)
    self._noise_waiting.discard(trial_id)

  def forget(self, trial_id: str) -> None:
    for plan in self.subplans.values():
      plan.forget(trial_id)
    self._noise_waiting.discard(trial_id)

  def noise_trials(self, label: str) -> list[trial_plan.Trial]:
    """The reference's best point at ``label``'s smallest budget on every noise seed, once
    its tuner is done (else [])."""
    scale, reference = self.scales[label], self.study["reference_optimizer"]
    budget = min(scale["sweep"]["budgets"])
    plan = self.subplans.get((label,)) or self.subplans.get((label, reference, budget))
    if plan is None or (reference, budget) not in plan.tuners:
      return []
    tuner = plan.tuners[(reference, budget)]
    if not tuner.done or not math.isfinite(tuner.best[1]):
      return []
    return [trial_plan.Trial(reference, dict(tuner.best[0]), budget, seed, label)
            for seed in self.study.get("noise_seeds", [])]

  def tuned_cells(self, optimizer: str, batch_size: int
                  ) -> list[transfer_rules.TunedCell] | None:
    """The best point of every tuned (size, budget) at ``batch_size``; None until all tuners
    of ``optimizer`` there are done. Cells whose every trial diverged are left out."""
    cells = []
    for label, scale in self.scales.items():
      if not scale["tuned"] or scale["batch_size"] != batch_size:
        continue
      plan = self.subplans[(label,)]
      for index, budget in enumerate(scale["sweep"]["budgets"]):
        tuner = plan.tuners[(optimizer, budget)]
        if not tuner.done:
          return None
        point, loss = tuner.best
        if math.isfinite(loss):
          cells.append(transfer_rules.TunedCell(scale["params"], scale["tokens"][index],
                                                scale["chinchilla"][index], dict(point)))
    return cells

  def _carry(self, label: str, optimizer: str) -> bool:
    """Adds the carried plans of (scale, optimizer) once its sources are done."""
    scale = self.scales[label]
    cells = self.tuned_cells(optimizer, scale["batch_size"])
    if cells is None:
      return False
    self._blocked.add((label, optimizer))
    if not cells:
      self.notes.append(f"{optimizer} at {label}: every tuned trial diverged; nothing to "
                        "transfer")
      return True
    plan = self.study["plan"]
    for index, budget in enumerate(scale["sweep"]["budgets"]):
      point, laws = transfer_rules.carry(cells, scale["params"], scale["tokens"][index],
                                         scale["chinchilla"][index], plan["transfer"])
      self.carried[(label, optimizer, budget)] = (point, laws)
      sweep = copy.deepcopy(scale["sweep"])
      spec = sweep["optimizers"][optimizer]
      sweep.update(budgets=[budget], tune_budgets=[budget], strategy="coordinate_descent",
                   trial_budget=plan["local_trial_budget"], edge_extension={},
                   optimizers={optimizer: dict(spec, baseline=point,
                                               grid=transfer_rules.local_grid(
                                                   point, plan["local_search"]))})
      self.subplans[(label, optimizer, budget)] = trial_plan.TrialPlan(sweep, scale=label)
    return True

  def propose(self, known: Callable[[trial_plan.Trial], float | None]
              ) -> list[trial_plan.Trial]:
    """The new trials that must run before any tuner can go on."""
    new: list[trial_plan.Trial] = []
    progress = True
    while progress:
      progress = False
      for plan in list(self.subplans.values()):
        new.extend(plan.propose(known))
      for label in self.scales:
        if label in self._noise_done:
          continue
        extra = self.noise_trials(label)
        if extra or not self.study.get("noise_seeds"):
          self._noise_done.add(label)
        for trial in extra:
          if known(trial) is None and trial.trial_id not in self._noise_waiting:
            self._noise_waiting.add(trial.trial_id)
            new.append(trial)
      for label, scale in self.scales.items():
        if scale["tuned"]:
          continue
        for optimizer in scale["sweep"]["optimizers"]:
          if (label, optimizer) not in self._blocked and self._carry(label, optimizer):
            progress = True
    return new
