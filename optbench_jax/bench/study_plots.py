"""Matplotlib figures of a study (Agg backend, PNG), drawn from the study.json dict.

* speedup over the reference vs model size, per optimizer and Chinchilla
  multiple, with bootstrap intervals; the joint-law extrapolation dashed;
* final loss vs data budget, one figure per model size;
* D_eff vs D (log-log) with the y = x line (Wen et al. 2025, arXiv 2509.02046);
* the eval-loss curves of the regime whose ranking flips most (lowest Kendall
  tau), crossings marked.

Every function returns the path it wrote (or None when there is nothing to draw).
"""

from __future__ import annotations

import collections
import math
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position

from optbench_jax.bench import plots  # pylint: disable=wrong-import-position
from optbench_jax.bench.study_table import model_label  # pylint: disable=wrong-import-position


def number(value) -> float | None:
  """A study.json number as a float: "inf" -> inf, null -> None."""
  if value is None:
    return None
  if isinstance(value, str):
    return {"inf": math.inf, "-inf": -math.inf}.get(value)
  return float(value)


def _finite(value) -> bool:
  x = number(value)
  return x is not None and math.isfinite(x)


_axes, _save = plots.axes, plots.save   # one figure style for every report


def _bar(row) -> tuple[float, float, float]:
  y = number(row["value"])
  low = number(row["low"]) if _finite(row["low"]) else y
  high = number(row["high"]) if _finite(row["high"]) else y
  return y, max(y - low, 0.0), max(high - y, 0.0)


def _bar_ends(row) -> list[float]:
  y, below, above = _bar(row)
  return [v for v in (y - below, y + above) if v > 0]


def speedup_vs_size(study: dict, path: str) -> str | None:
  """Measured speedups (solid, per size) and the joint-law extrapolation (dashed)."""
  reference = study["reference"]
  measured = collections.defaultdict(list)
  for r in study["speedup"]:
    if r["optimizer"] != reference and _finite(r["value"]):
      measured[(r["optimizer"], r["chinchilla"], r["batch_size"])].append(r)
  extrapolated = collections.defaultdict(list)
  for r in study["extrapolation"]:
    if _finite(r["value"]):
      extrapolated[(r["optimizer"], r["chinchilla"])].append(r)
  if not measured and not extrapolated:
    return None
  fig, ax = _axes()
  colours = {}
  for (name, k, bs), rows in sorted(measured.items(), key=lambda kv: str(kv[0])):
    rows.sort(key=lambda r: r["params"])
    y, lo, hi = zip(*(_bar(r) for r in rows))
    label = f"{name}, {k:g}x Chinchilla" + (f", batch {bs}" if bs is not None else "")
    drawn = ax.errorbar([r["params"] for r in rows], y, yerr=[lo, hi], marker="o", capsize=3,
                        label=label)
    colours.setdefault((name, k), drawn[0].get_color())
  for (name, k), rows in sorted(extrapolated.items(), key=lambda kv: str(kv[0])):
    rows.sort(key=lambda r: r["params"])
    colour = colours.get((name, k))
    ax.plot([r["params"] for r in rows], [number(r["value"]) for r in rows], linestyle="--",
            color=colour, label=f"{name}, {k:g}x (joint-law extrapolation)")
    far = [r for r in rows if r["extrapolated"]]
    if far:
      y, lo, hi = zip(*(_bar(r) for r in far))
      ax.errorbar([r["params"] for r in far], y, yerr=[lo, hi], fmt="s", capsize=3,
                  color=colour or "gray", mfc="none")
  ax.axhline(1.0, color="gray", linestyle=":", label=f"{reference} (1x)")
  ax.set_xscale("log")
  # Speedups are ratios (0.5x and 2x are as far from 1x); an extrapolated interval reaching
  # beyond 1/10x .. 10x around the measured range is cut at the frame, not allowed to squash it.
  ax.set_yscale("log")
  measured_values = [v for rows in measured.values() for r in rows for v in _bar_ends(r)]
  if measured_values:
    ax.set_ylim(max(min(measured_values) / 10, 1e-3), min(max(measured_values) * 10, 1e3))
  ax.set_xlabel("model size (parameters, log scale)")
  ax.set_ylabel(f"token speedup over {reference} (D_eff / D, log scale)")
  ax.set_title(f"Speedup over {reference} vs model size (95% bootstrap intervals)")
  ax.grid(alpha=0.3)
  return _save(fig, path)


def loss_vs_tokens(study: dict, plot_dir: str) -> list[str]:
  """One figure per model size: mean final loss (± sd over seeds) vs budget per optimizer."""
  by_size = collections.defaultdict(lambda: collections.defaultdict(list))
  for r in study["best"]:
    if _finite(r["final_loss"]):
      by_size[(r["params"], r["model"])][(r["optimizer"], r["batch_size"])].append(r)
  paths = []
  for (params, model), series in sorted(by_size.items()):
    fig, ax = _axes()
    for (name, bs), rows in sorted(series.items(), key=lambda kv: str(kv[0])):
      rows.sort(key=lambda r: r["tokens"])
      ax.errorbar([r["tokens"] for r in rows], [r["final_loss"] for r in rows],
                  yerr=[r["final_loss_std"] or 0.0 for r in rows], marker="o", capsize=3,
                  label=name + (f", batch {bs}" if bs is not None else ""))
    ax.set_xscale("log")
    ax.set_xlabel("data budget D (tokens, log scale)")
    ax.set_ylabel("final loss (nats/token), mean ± sd over seeds")
    ax.set_title(f"Final loss vs data budget, {model} ({model_label(params)} parameters)")
    ax.grid(alpha=0.3)
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in model)
    paths.append(_save(fig, os.path.join(plot_dir, f"loss_vs_tokens_{safe}.png")))
  return paths


def d_eff_vs_d(study: dict, path: str) -> str | None:
  """D_eff against D on log-log axes; points above y = x beat the reference."""
  series = collections.defaultdict(list)
  for r in study["d_eff"]:
    if _finite(r["d_eff"]) and number(r["d_eff"]) > 0:
      series[(r["optimizer"], r["model"])].append((r["tokens"], number(r["d_eff"])))
  if not series:
    return None
  fig, ax = _axes()
  for (name, model), points in sorted(series.items()):
    points.sort()
    ax.plot(*zip(*points), marker="o", label=f"{name}, {model}")
  values = [v for points in series.values() for p in points for v in p]
  line = [min(values), max(values)]
  ax.plot(line, line, color="gray", linestyle=":", label="y = x (no speedup)")
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.set_xlabel("data budget D (tokens, log scale)")
  ax.set_ylabel(f"D_eff: {study['reference']} tokens for the same loss (log scale)")
  ax.set_title(f"Effective data D_eff vs D (over {study['reference']})")
  ax.grid(alpha=0.3, which="both")
  return _save(fig, path)


def rank_flip_curves(study: dict, path: str) -> str | None:
  """Mean eval-loss curves of the regime with the lowest Kendall tau, crossings marked."""
  group = study.get("rank_flip_curves")
  if not group:
    return None
  fig, ax = _axes()
  fractions = group["fractions"]
  for name, losses in sorted(group["curves"].items()):
    ax.plot(fractions, [number(x) for x in losses], marker=".", label=name)
  for c in group["crossings"]:
    loss = _interp(c["fraction"], fractions, [number(x) for x in group["curves"][c["a"]]])
    ax.plot([c["fraction"]], [loss], marker="x", color="black", markersize=9)
  if group["crossings"]:
    ax.plot([], [], marker="x", color="black", linestyle="none", label="last crossing of a pair")
  bs = group["batch_size"]
  ax.set_xlabel("fraction of training")
  ax.set_ylabel("eval loss (nats/token), mean over seeds")
  ax.set_title(f"Eval loss during training, {group['model']}, {group['chinchilla']:g}x Chinchilla"
               + (f", batch {bs}" if bs is not None else "") + " (lowest Kendall tau)")
  ax.grid(alpha=0.3)
  return _save(fig, path)


def _interp(x: float, xs: list[float], ys: list[float]) -> float:
  for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
    if x0 <= x <= x1:
      return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
  return ys[-1]
