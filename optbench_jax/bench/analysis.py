"""From a sweep's stored results to the comparison: best configs, speedups, overheads, memory.

* Best configuration per optimizer per budget: the point with the lowest
  *final* validation loss at that budget on the tuning seed (``seeds[0]``).
  Both studies show intermediate checkpoints mislead (rankings flip during
  training), so nothing else is looked at. Its loss is then averaged over
  every seed it was run on.
* Speedup vs the reference optimizer (AdamW): :mod:`optbench_jax.bench.speedup`
  on the best configs' per-seed losses, with a bootstrap interval.
* Step-time overhead: median seconds/step of all the optimizer's trials at a
  budget over the reference's; the wall-clock-adjusted speedup divides by it.
* Optimizer-state memory: bytes of ``opt.init`` state per model parameter,
  from ``jax.eval_shape`` on the model's abstract parameters (nothing allocated).
* Downstream scores (trials trained with ``train.downstream``): the best
  point's mean over its completed seeds, and every completed trial's scores
  against its final loss (:mod:`optbench_jax.bench.downstream`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

import jax
import numpy as np

from optbench_jax import storage
from optbench_jax.bench import downstream as downstream_lib
from optbench_jax.bench import results_store, speedup, tuning
from optbench_jax.bench import sweep_dir


@dataclasses.dataclass
class BestConfig:
  optimizer: str
  budget_steps: int
  budget_tokens: int
  hparams: dict[str, Any] | None           # None: every trial diverged or failed
  seed_losses: list[float]                 # final losses of the best point, one per seed
  tuning_trials: int                       # trials at this budget on the tuning seed
  diverged_trials: int
  best_result: results_store.TrialResult | None
  step_time_s: float                       # median over all trials at this budget

  @property
  def mean_loss(self) -> float:
    finite = [l for l in self.seed_losses if math.isfinite(l)]
    return float(np.mean(finite)) if finite else math.inf


@dataclasses.dataclass
class SweepAnalysis:
  sweep: dict[str, Any]                    # the sweep config snapshot
  results: list[results_store.TrialResult]
  best: dict[tuple[str, int], BestConfig]
  speedups: dict[tuple[str, int], speedup.SpeedupEstimate]
  overheads: dict[tuple[str, int], float]
  law: speedup.PowerLaw | None
  law_note: str                            # why there is no law, or how gamma was set
  state_bytes_per_param: dict[str, float]
  # (optimizer, budget) -> {task: {metric: mean over the best point's seeds}}; {} without scores
  downstream: dict[tuple[str, int], dict[str, dict[str, float]]] = dataclasses.field(
      default_factory=dict)
  downstream_points: list[dict[str, Any]] = dataclasses.field(default_factory=list)

  @property
  def optimizers(self) -> list[str]:
    return list(self.sweep["optimizers"])

  @property
  def budgets(self) -> list[int]:
    return sorted(self.sweep["budgets"])

  @property
  def reference(self) -> str:
    return self.sweep["reference_optimizer"]


def best_configs(results: Sequence[results_store.TrialResult], optimizers: Sequence[str],
                 budgets: Sequence[int], tuning_seed: int) -> dict[tuple[str, int], BestConfig]:
  """The best point per (optimizer, budget), chosen on the final loss of the tuning seed."""
  best = {}
  for optimizer in optimizers:
    for budget in budgets:
      here = [r for r in results if r.optimizer == optimizer and r.budget_steps == budget]
      tuned = [r for r in here if r.seed == tuning_seed]
      finite = [r for r in tuned if math.isfinite(r.objective)]
      # Completed runs only: a run stopped at step 1 measures compilation, not steps.
      times = [r.step_time_s for r in here
               if r.status == results_store.COMPLETED and math.isfinite(r.step_time_s)]
      # Ties break as in the tuners (by the canonical point), so the replicated point wins.
      winner = min(finite, key=lambda r: (r.objective, tuning.point_key(r.hparams)), default=None)
      seed_losses = []
      if winner is not None:
        key = tuning.point_key(winner.hparams)
        seed_losses = [r.objective for r in sorted(here, key=lambda r: r.seed)
                       if tuning.point_key(r.hparams) == key]
      tokens = here[0].budget_tokens if here else 0
      best[(optimizer, budget)] = BestConfig(
          optimizer=optimizer, budget_steps=budget, budget_tokens=tokens,
          hparams=None if winner is None else dict(winner.hparams), seed_losses=seed_losses,
          tuning_trials=len(tuned), diverged_trials=sum(r.status != results_store.COMPLETED
                                                        for r in tuned),
          best_result=winner, step_time_s=float(np.median(times)) if times else math.nan)
  return best


def best_downstream(results: Sequence[results_store.TrialResult],
                    best: Mapping[tuple[str, int], BestConfig]
                    ) -> dict[tuple[str, int], dict[str, dict[str, float]]]:
  """Each best point's downstream scores, averaged over its completed seeds (if any)."""
  out = {}
  for (name, budget), b in best.items():
    if b.hparams is None:
      continue
    key = tuning.point_key(b.hparams)
    scores = downstream_lib.mean_scores(
        downstream_lib.trial_scores(r.workdir) for r in results
        if r.optimizer == name and r.budget_steps == budget
        and r.status == results_store.COMPLETED and tuning.point_key(r.hparams) == key)
    if scores:
      out[(name, budget)] = scores
  return out


def _gamma(sweep: Mapping[str, Any], results: Sequence[results_store.TrialResult]
           ) -> tuple[float | None, str]:
  setting = sweep["speedup"]["gamma"]
  if setting == "fit":
    return None, "alpha, beta and gamma fitted"
  if setting == "loss_floor":
    floors = [r.loss_floor for r in results if math.isfinite(r.loss_floor)]
    if not floors:
      raise ValueError("speedup.gamma='loss_floor' but no trial reported a loss_floor "
                       "(only the synthetic corpus has one)")
    return float(min(floors)), f"gamma fixed to the corpus entropy floor {min(floors):.4f}"
  return float(setting), f"gamma fixed to {float(setting)}"


def speedups(sweep: Mapping[str, Any], results: Sequence[results_store.TrialResult],
             best: Mapping[tuple[str, int], BestConfig], seed: int = 0
             ) -> tuple[speedup.PowerLaw | None, str, dict[tuple[str, int], speedup.SpeedupEstimate]]:
  """Fits the reference's L(D) and estimates every optimizer's speedup at every budget."""
  reference = sweep["reference_optimizer"]
  ref = {b.budget_tokens: [l for l in b.seed_losses if math.isfinite(l)]
         for (name, _), b in best.items() if name == reference and b.hparams is not None}
  ref = {tokens: losses for tokens, losses in ref.items() if losses}
  try:
    gamma, note = _gamma(sweep, results)
    law = speedup.fit_power_law(sorted(ref), [float(np.mean(ref[t])) for t in sorted(ref)], gamma)
  except (ValueError, RuntimeError) as e:
    return None, f"no speedup: the {reference} L(D) fit failed ({e})", {}
  estimates = {}
  for key, b in best.items():
    losses = [l for l in b.seed_losses if math.isfinite(l)]
    if not losses:
      continue
    estimates[key] = speedup.bootstrap_speedup(
        ref, losses, b.budget_tokens, gamma, int(sweep["speedup"]["num_bootstrap"]), seed=seed)
  return law, note, estimates


def overheads(best: Mapping[tuple[str, int], BestConfig], reference: str
              ) -> dict[tuple[str, int], float]:
  """Step-time overhead of every optimizer vs the reference at the same budget."""
  out = {}
  for (name, budget), b in best.items():
    ref = best.get((reference, budget))
    out[(name, budget)] = (speedup.step_time_overhead([b.step_time_s], [ref.step_time_s])
                           if ref else math.nan)
  return out


def optimizer_state_bytes_per_param(config: Mapping[str, Any]) -> float:
  """Bytes of optimizer state per model parameter for a trainer config (``train.build``,
  abstract: nothing allocated)."""
  from optbench_jax import train               # pylint: disable=g-import-not-at-top
  run = train.build(dict(config), abstract=True, process_count=1)
  state = run.abstract_state
  state_bytes = sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize
                    for x in jax.tree.leaves(state.opt_state))
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
  return state_bytes / n_params


store_path = sweep_dir.store_path   # re-exported: a local path to a sweep's results store


def analyse(run_dir: str, num_bootstrap: int | None = None,
            memory: bool = True) -> SweepAnalysis:
  """Reads ``run_dir`` (a sweep workdir) and computes everything the report shows."""
  sweep = sweep_dir.read_snapshot(run_dir)["sweep"]
  if num_bootstrap is not None:
    sweep["speedup"]["num_bootstrap"] = num_bootstrap
  with results_store.ResultsStore.open_existing(store_path(run_dir)) as store:
    results = store.latest()
  best = best_configs(results, list(sweep["optimizers"]), sorted(sweep["budgets"]),
                      sweep["seeds"][0])
  law, note, estimates = speedups(sweep, results, best)
  memory_per_param = {}
  for name in sweep["optimizers"]:
    candidates = [b for (n, _), b in best.items() if n == name and b.best_result]
    if memory and candidates:
      try:
        memory_per_param[name] = optimizer_state_bytes_per_param(candidates[0].best_result.config)
      except Exception as e:  # pylint: disable=broad-except
        # The report still renders; the table shows n/a and the log says why.
        print(f"[report] optimizer-state size of {name} unavailable: {e}")
        memory_per_param[name] = math.nan
  return SweepAnalysis(sweep=sweep, results=results, best=best, speedups=estimates,
                       overheads=overheads(best, sweep["reference_optimizer"]), law=law,
                       law_note=note, state_bytes_per_param=memory_per_param,
                       downstream=best_downstream(results, best),
                       downstream_points=downstream_lib.points(results))
