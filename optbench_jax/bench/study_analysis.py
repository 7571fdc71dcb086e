"""The cross-scale analysis of an optimizer study: every number of ``study.json``.

A study runs each optimizer's best configuration at several model sizes N and
data budgets D (a Chinchilla multiple k: D = 20 k N; Hoffmann et al. 2022), as
Wen et al. (2025, "Fantastic Pretraining Optimizers and Where to Find Them",
arXiv 2509.02046) and Semenov et al. (2025, "Benchmarking Optimizers for
Large Language Model Pretraining", arXiv 2509.01440) do. From one row per run
it derives:

* per-size token speedups D_eff / D over the reference from the reference's
  L(D) = alpha D^-beta + gamma at that size (:mod:`speedup`);
* each optimizer's joint law L(N, D) = E + A N^-a + B D^-b, the speedups it
  extrapolates to larger sizes and which optimizer it predicts wins where
  (:mod:`scaling_law`);
* whether early rankings predict the final one (:mod:`rank_flips`), whether
  adjacent ranks are separated by more than the noise (:mod:`significance`)
  and whether each best point's neighbours were run (:mod:`tuning_health`);
* the downstream scores of the runs that have them, averaged over seeds beside
  the same runs' mean final loss (:func:`downstream_rows`).

The result is strict JSON (no NaN or Infinity): an infinite value is written as
the string "inf", a value that could not be computed as null, and ``notes``
says why. README.md ("study.json") documents every field.
"""

from __future__ import annotations

import collections
import math
from typing import Any, Mapping, Sequence

import numpy as np

from optbench_jax.bench import rank_flips as rank_flips_lib
from optbench_jax.bench import scaling_law, significance, speedup, tuning_health


def multiple(value: float) -> float:
  """A Chinchilla multiple rounded to 6 significant digits, so computed ones group together."""
  return float(f"{float(value):.6g}")


def _bs_key(batch_size) -> int:
  return -1 if batch_size is None else int(batch_size)


def _normalise(row: Mapping[str, Any]) -> dict:
  return {"optimizer": str(row["optimizer"]), "model": str(row["model"]),
          "params": int(row["params"]), "tokens": float(row["tokens"]),
          "chinchilla": multiple(row["chinchilla"]),
          "batch_size": None if row.get("batch_size") is None else int(row["batch_size"]),
          "seed": int(row.get("seed", 0)), "final_loss": float(row["final_loss"])}


def _finite(values) -> list[float]:
  return [float(v) for v in values if math.isfinite(v)]


def best_rows(rows: Sequence[dict]) -> list[dict]:
  """Mean and standard deviation over seeds of every (optimizer, model, tokens, batch) cell."""
  cells = collections.defaultdict(list)
  for r in rows:
    cells[(r["optimizer"], r["model"], r["params"], r["chinchilla"], r["tokens"],
           r["batch_size"])].append(r["final_loss"])
  out = []
  for (name, model, params, k, tokens, bs), losses in cells.items():
    finite = _finite(losses)
    out.append({"optimizer": name, "model": model, "params": params, "chinchilla": k,
                "tokens": tokens, "batch_size": bs,
                "final_loss": float(np.mean(finite)) if finite else math.inf,
                "final_loss_std": float(np.std(finite, ddof=1)) if len(finite) > 1 else None,
                "seeds": len(losses), "diverged": len(losses) - len(finite)})
  out.sort(key=lambda r: (r["params"], r["tokens"], _bs_key(r["batch_size"]), r["final_loss"]))
  return out


def downstream_rows(scores: Sequence[Mapping[str, Any]]) -> list[dict]:
  """Mean over seeds of each (optimizer, model, chinchilla, batch, task, metric) score, with
  the mean final loss of the same runs (the finite ones)."""
  cells = collections.defaultdict(list)
  for s in scores:
    key = (str(s["optimizer"]), str(s["model"]), multiple(s["chinchilla"]),
           None if s.get("batch_size") is None else int(s["batch_size"]), str(s["task"]),
           str(s["metric"]))
    cells[key].append((float(s["value"]), float(s["final_loss"])))
  out = []
  for (name, model, k, bs, task, metric), pairs in cells.items():
    losses = _finite(loss for _, loss in pairs)
    out.append({"optimizer": name, "model": model, "chinchilla": k, "batch_size": bs,
                "task": task, "metric": metric,
                "value": float(np.mean([v for v, _ in pairs])),
                "final_loss": float(np.mean(losses)) if losses else math.inf,
                "seeds": len(pairs)})
  out.sort(key=lambda r: (r["model"], r["chinchilla"], _bs_key(r["batch_size"]), r["task"],
                          r["metric"], r["optimizer"]))
  return out


def joint_law_cells(rows: Sequence[dict], notes: list[str]) -> dict[str, dict]:
  """optimizer -> (N, D) -> finite seed losses, at each cell's best batch size."""
  by_batch = collections.defaultdict(lambda: collections.defaultdict(list))
  for r in rows:
    if math.isfinite(r["final_loss"]):
      by_batch[(r["optimizer"], float(r["params"]), r["tokens"])][r["batch_size"]].append(
          r["final_loss"])
  cells = collections.defaultdict(dict)
  several = False
  for (name, n, d), batches in by_batch.items():
    several |= len(batches) > 1
    cells[name][(n, d)] = min(batches.values(), key=lambda losses: float(np.mean(losses)))
  if several:
    notes.append("joint laws: where an optimizer ran several batch sizes at one (N, D), the batch "
                 "size with the lowest mean loss is used")
  return dict(cells)


def _speedup_gamma(gamma, budgets: int, law, params: int) -> tuple[float | None, str | None]:
  """(fixed gamma or None to fit it, or the reason to skip) for the per-size L(D) fit."""
  if not isinstance(gamma, str):
    return (float(gamma), None) if budgets >= 2 else (None, f"{budgets} reference budget(s)")
  if budgets >= 3:
    return None, None
  if budgets == 2 and isinstance(law, scaling_law.JointLaw):
    return law.floor(params), None
  if budgets == 2:
    return None, ("2 reference budgets and no reference joint law to fix gamma = E + A N^-a "
                  "(give --gamma)")
  return None, f"{budgets} reference budget(s); L(D) needs >= 2"


def speedup_rows(rows: Sequence[dict], reference: str, gamma, ref_law, num_bootstrap: int,
                 seed: int, notes: list[str]) -> list[dict]:
  """Per-size token speedups with bootstrap intervals (:func:`speedup.bootstrap_speedup`)."""
  groups = collections.defaultdict(lambda: collections.defaultdict(list))
  for r in rows:
    groups[(r["model"], r["params"], r["batch_size"])][(r["optimizer"], r["chinchilla"],
                                                       r["tokens"])].append(r["final_loss"])
  out = []
  for (model, params, bs) in sorted(groups, key=lambda g: (g[1], _bs_key(g[2]))):
    runs = groups[(model, params, bs)]
    ref = {d: _finite(l) for (name, _, d), l in runs.items() if name == reference and _finite(l)}
    fixed, skip = _speedup_gamma(gamma, len(ref), ref_law, params)
    where = f"{model}" + (f", batch size {bs}" if bs is not None else "")
    if skip:
      notes.append(f"speedups at {where} not computed: {skip}")
      continue
    if fixed is not None and isinstance(gamma, str):
      notes.append(f"speedups at {where}: 2 reference budgets, gamma fixed to the reference "
                   f"joint law's E + A N^-a = {fixed:.4g}")
    for (name, k, d), losses in sorted(runs.items(), key=lambda item: (item[0][0], item[0][2])):
      row = {"optimizer": name, "model": model, "params": params, "chinchilla": k,
             "tokens": d, "batch_size": bs}
      if name == reference:
        out.append({**row, "value": 1.0, "low": 1.0, "high": 1.0})
        continue
      if not _finite(losses):
        notes.append(f"speedup of {name} at {where}, {d:.3g} tokens: every run diverged")
        continue
      try:
        est = speedup.bootstrap_speedup(ref, _finite(losses), d, gamma=fixed,
                                        num_bootstrap=num_bootstrap, seed=seed)
      except (ValueError, RuntimeError) as error:
        notes.append(f"speedup of {name} at {where}, {d:.3g} tokens: L(D) fit failed ({error})")
        continue
      out.append({**row, "value": est.point, "low": est.low, "high": est.high})
  return out


def extrapolation_rows(cells: dict, reference: str, sizes: Sequence[float],
                       seen: set[float], multiples: Sequence[float], num_bootstrap: int,
                       seed: int, notes: list[str]) -> list[dict]:
  points = [(n, k) for n in sizes for k in multiples]
  result = scaling_law.extrapolate(cells, reference, points, num_bootstrap=num_bootstrap,
                                   seed=seed)
  if isinstance(result, str):
    notes.append(f"extrapolation not computed: {result}")
    return []
  notes.append(
      f"extrapolation intervals: {result.replicates} of {num_bootstrap} bootstrap replicates "
      + ("resampling the seeds within each (N, D) cell" if result.method == scaling_law.SEEDS
         else "resampling the joint-law fit's residuals (every cell has a single seed)"))
  out = []
  for name, estimates in sorted(result.estimates.items()):
    if name == reference:
      continue
    for (n, k), (value, low, high) in estimates.items():
      out.append({"optimizer": name, "params": round(n), "chinchilla": k, "value": value, "low": low,
                  "high": high, "extrapolated": n not in seen, "interval": result.method})
  return out


def rank_flip_parts(curves: Sequence[Mapping[str, Any]]) -> tuple[list, list, dict | None]:
  """(tau rows, crossing rows, the mean curves of the group with the lowest tau)."""
  groups = rank_flips_lib.rank_flips([{**c, "chinchilla": multiple(c["chinchilla"])}
                                      for c in curves])
  rows, crossings = [], []
  for g in groups:
    model, k, bs = g.key
    rows += [{"model": model, "chinchilla": k, "batch_size": bs, "optimizer_count": len(g.curves),
              "fraction_of_training": f, "kendall_tau": t} for f, t in zip(g.fractions, g.taus)]
    crossings += [{"model": model, "chinchilla": k, "batch_size": bs, "a": a, "b": b,
                   "fraction": f} for a, b, f in g.crossings]
  lowest = None
  if groups:
    worst = min(groups, key=lambda g: min((t for t in g.taus if not math.isnan(t)), default=1.0))
    lowest = {"model": worst.key[0], "chinchilla": worst.key[1], "batch_size": worst.key[2],
              "fractions": worst.fractions, "curves": worst.curves,
              "crossings": [{"a": a, "b": b, "fraction": f} for a, b, f in worst.crossings]}
  return rows, crossings, lowest


def strict(value, replaced: list | None = None, where: str = ""):
  """``value`` with numpy scalars made Python, tuples lists, inf "inf" and nan None.

  The location (``key[index].key``) of every nan replaced is appended to ``replaced``.
  """
  if isinstance(value, dict):
    return {str(k): strict(v, replaced, f"{where}.{k}" if where else str(k))
            for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [strict(v, replaced, f"{where}[{i}]") for i, v in enumerate(value)]
  if isinstance(value, np.generic):
    value = value.item()
  if isinstance(value, float) and not math.isfinite(value):
    if math.isnan(value):
      if replaced is not None:
        replaced.append(where)
      return None
    return "inf" if value > 0 else "-inf"
  return value


def analyse(rows: Sequence[Mapping[str, Any]], curves: Sequence[Mapping[str, Any]] | None = None,
            tuning: Sequence[Mapping[str, Any]] | None = None,
            compute: Mapping[str, Any] | None = None,
            downstream: Sequence[Mapping[str, Any]] | None = None, reference: str = "adamw",
            extrapolate: Sequence[float] = (), gamma: str | float = "fit",
            num_bootstrap: int = 1000, seed: int = 0) -> dict:
  """The study.json dict (README.md, "study.json", documents every key).

  Args:
    rows: one dict per run of a best configuration: optimizer, model (label),
      params (N), tokens (D), chinchilla (D / 20 N), batch_size (int or None),
      seed, final_loss (inf or nan for a diverged run: excluded from fits).
    curves: optional eval curves, one dict per evaluation: optimizer, model,
      params, tokens, chinchilla, batch_size, seed, fraction, eval_loss.
    tuning: optional, one dict per tuned regime: optimizer, model, chinchilla,
      batch_size, grid ({hp: values}), best ({hp: value}), tried ([points]).
    compute: optional {steps_trained, steps_if_separate}, passed through.
    downstream: optional, one dict per final harness score of a run: optimizer,
      model, chinchilla, batch_size, seed, task, metric, value, final_loss.
    reference: the optimizer speedups are measured against.
    extrapolate: model sizes (parameters) to extrapolate speedups to.
    gamma: "fit" (per-size L(D) floor fitted; 2 budgets use the reference's
      joint-law floor) or a number used as the floor of every per-size fit.
    num_bootstrap: bootstrap replicates of every interval; seed: their RNG seed.

  Raises:
    ValueError: no rows, or no rows of ``reference``.
  """
  rows = [_normalise(r) for r in rows]
  if not rows:
    raise ValueError("no rows to analyse")
  if reference not in {r["optimizer"] for r in rows}:
    raise ValueError(f"no rows of the reference optimizer {reference!r}")
  notes: list[str] = []
  diverged = [r for r in rows if not math.isfinite(r["final_loss"])]
  if diverged:
    notes.append(f"{len(diverged)} run(s) with a non-finite final loss (diverged) are excluded "
                 "from means, fits and tests: " + "; ".join(
                     f"{r['optimizer']} {r['model']} {r['tokens']:.3g} tokens seed {r['seed']}"
                     for r in diverged[:20]) + ("; ..." if len(diverged) > 20 else ""))
  cells = joint_law_cells(rows, notes)
  laws = {name: scaling_law.fit(c) for name, c in sorted(cells.items())}
  for name in sorted({r["optimizer"] for r in rows} - set(laws)):
    laws[name] = "every run diverged"
  for name, law in laws.items():
    if isinstance(law, str):
      notes.append(f"joint law L(N, D) of {name} not fitted: {law}")
  fitted = {n: law for n, law in laws.items() if isinstance(law, scaling_law.JointLaw)}
  seen = {float(r["params"]) for r in rows}
  sizes = sorted(seen | {float(n) for n in extrapolate})
  multiples = sorted({r["chinchilla"] for r in rows})
  speedups = speedup_rows(rows, reference, gamma, laws.get(reference), num_bootstrap, seed, notes)
  calls, noise = significance.significance(rows, reference)
  if noise is None:
    notes.append(f"no repeated runs of {reference}: the seed noise is unknown, single-seed "
                 "gaps are not called")
  study = {
      "reference": reference,
      "test": significance.TEST,
      "notes": notes,
      "best": best_rows(rows),
      "speedup": speedups,
      "d_eff": [{"optimizer": s["optimizer"], "model": s["model"], "batch_size": s["batch_size"],
                 "tokens": s["tokens"], "d_eff": s["value"] * s["tokens"]} for s in speedups],
      "joint_laws": {n: (law.as_dict() if isinstance(law, scaling_law.JointLaw)
                         else {"reason": law}) for n, law in laws.items()},
      "extrapolation": extrapolation_rows(cells, reference, sizes,
                                          seen, multiples, num_bootstrap, seed, notes)
                       if fitted else [],
      "winners": [{"params": round(n), "chinchilla": k, "optimizer": name, "predicted_loss": loss}
                  for n, k, name, loss in scaling_law.winners(fitted, sizes, multiples)]
                 if fitted else [],
      "significance": [{"model": c.cell[0], "tokens": c.cell[1], "batch_size": c.cell[2],
                        "better": c.better, "worse": c.worse, "difference": c.difference,
                        "p_value": c.p_value, "status": c.status} for c in calls],
      "noise_sigma": noise,
      "compute": dict(compute) if compute is not None else None,
      "downstream": downstream_rows(downstream or []),
  }
  if not fitted:
    notes.append("extrapolation and winners not computed: no joint law could be fitted")
  if curves:
    study["rank_flips"], study["crossings"], study["rank_flip_curves"] = rank_flip_parts(curves)
  else:
    study["rank_flips"], study["crossings"], study["rank_flip_curves"] = [], [], None
    notes.append("rank flips not computed: no eval curves given")
  study["tuning_health"] = [
      {"optimizer": t["optimizer"], "model": t["model"], "chinchilla": multiple(t["chinchilla"]),
       "batch_size": t.get("batch_size"), **tuning_health.health(t["grid"], t["best"], t["tried"])}
      for t in (tuning or [])]
  replaced: list = []
  study = strict(study, replaced)
  if replaced:
    study["notes"].append(
        f"{len(replaced)} value(s) could not be computed and are null (a bootstrap interval "
        "with no replicate that could be refitted; Kendall's tau where every optimizer has the "
        "same loss): " + ", ".join(replaced[:20]) + (", ..." if len(replaced) > 20 else ""))
  return study
