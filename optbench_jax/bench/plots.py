"""Matplotlib figures of a sweep (Agg backend, PNG): loss curves, LR sensitivity, speedup,
downstream score vs loss (also drawn for a study).

Each figure has a title, axis labels with units and a legend. The functions
take the :class:`optbench_jax.bench.analysis.SweepAnalysis` and write one PNG
each, returning the path.
"""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position

from optbench_jax.bench import sensitivity  # pylint: disable=wrong-import-position

from optbench_jax import storage


def axes():
  # 20 distinct colours: a sweep can hold every registered optimizer (18).
  fig, ax = plt.subplots(figsize=(7, 4.5))
  ax.set_prop_cycle(color=plt.cm.tab20.colors)
  return fig, ax


def save(fig, path: str) -> str:
  for ax in fig.axes:
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize=7, ncol=2)
  fig.tight_layout()
  with storage.local_file_for_writing(path) as local:   # path may be gs://
    fig.savefig(local, dpi=110, format="png")
  plt.close(fig)
  return path


def loss_curves(analysis, budget: int, path: str) -> str:
  """Validation loss vs tokens of each optimizer's best run at ``budget`` (tuning seed)."""
  fig, ax = axes()
  for name in analysis.optimizers:
    best = analysis.best.get((name, budget))
    if not best or not best.best_result or not best.best_result.eval_curve:
      continue
    tokens_per_step = best.budget_tokens / best.budget_steps
    steps, losses = zip(*best.best_result.eval_curve)
    ax.plot([s * tokens_per_step for s in steps], losses, marker="o", markersize=3,
            label=f"{name} ({best.mean_loss:.3f})")
  floors = [r.loss_floor for r in analysis.results if math.isfinite(r.loss_floor)]
  if floors:
    ax.axhline(min(floors), color="gray", linestyle=":", label="entropy floor")
  ax.set_xlabel("training tokens")
  ax.set_ylabel("validation loss (nats/token)")
  ax.set_title(f"Validation loss of each optimizer's best run, budget {budget} steps")
  ax.grid(alpha=0.3)
  return save(fig, path)


def lr_sensitivity(analysis, budget: int, path: str) -> str:
  """Final loss vs learning rate around each optimizer's optimum (others fixed at best)."""
  fig, ax = axes()
  seed = analysis.sweep["seeds"][0]
  for name in analysis.optimizers:
    best = analysis.best.get((name, budget))
    if not best or best.hparams is None or "learning_rate" not in best.hparams:
      continue
    line = sensitivity.slice_along(analysis.results, name, budget, seed, best.hparams,
                                   "learning_rate")
    finite = [(v, l) for v, l in line if math.isfinite(l)]
    if not finite:
      continue
    (drawn,) = ax.plot(*zip(*finite), marker="o", label=name)
    diverged = [v for v, l in line if not math.isfinite(l)]
    if diverged:
      top = max(l for _, l in finite)
      ax.scatter(diverged, [top] * len(diverged), marker="x", color=drawn.get_color())
  ax.set_xscale("log")
  ax.set_xlabel("peak learning rate (log scale)")
  ax.set_ylabel("final validation loss (nats/token)")
  ax.set_title(f"Learning-rate sensitivity at {budget} steps (x: diverged)")
  ax.grid(alpha=0.3)
  return save(fig, path)


def speedup_vs_budget(analysis, path: str) -> str:
  """Speedup over the reference vs budget (tokens), with bootstrap intervals."""
  fig, ax = axes()
  for name in analysis.optimizers:
    points = []
    for budget in analysis.budgets:
      est = analysis.speedups.get((name, budget))
      if est and math.isfinite(est.point):
        tokens = analysis.best[(name, budget)].budget_tokens
        low = est.low if math.isfinite(est.low) else est.point
        high = est.high if math.isfinite(est.high) else est.point
        points.append((tokens, est.point, est.point - low, high - est.point))
    if points:
      x, y, lo, hi = zip(*points)
      ax.errorbar(x, y, yerr=[lo, hi], marker="o", capsize=3, label=name)
  ax.axhline(1.0, color="gray", linestyle=":", label=f"{analysis.reference} (1x)")
  ax.set_xscale("log")
  ax.set_xlabel("training budget (tokens, log scale)")
  ax.set_ylabel(f"speedup over {analysis.reference} (x, D_eff / D)")
  ax.set_title(f"Token speedup vs {analysis.reference} (95% bootstrap interval over seeds)")
  ax.grid(alpha=0.3)
  return save(fig, path)


def score_vs_loss(points, path: str, title: str = "") -> str | None:
  """Downstream score vs final validation loss, one panel per (task, metric), one colour per
  optimizer: at equal loss, do optimizers score alike (speed, not quality)?

  ``points``: dicts with optimizer, task, metric, value and final_loss (``bench.downstream``).
  Returns the path, or None when there is no point to draw.
  """
  if not points:
    return None
  panels = sorted({(p["task"], p["metric"]) for p in points})
  optimizers = list(dict.fromkeys(p["optimizer"] for p in points))
  palette = plt.cm.tab20.colors[::2] + plt.cm.tab20.colors[1::2]   # strong colours first
  colours = {name: palette[i % 20] for i, name in enumerate(optimizers)}
  columns = min(3, len(panels))
  rows = -(-len(panels) // columns)
  fig, axes = plt.subplots(rows, columns, figsize=(4.5 * columns, 3.6 * rows), squeeze=False)
  for ax, (task, metric) in zip(axes.flat, panels):
    for name in optimizers:
      here = [(p["final_loss"], p["value"]) for p in points
              if p["optimizer"] == name and p["task"] == task and p["metric"] == metric]
      if here:
        ax.scatter(*zip(*here), s=18, color=colours[name], label=name)
    ax.set_xlabel("final validation loss (nats/token)")
    ax.set_ylabel(f"{task} {metric}")
    ax.set_title(f"{task} {metric} vs loss", fontsize=9)
    ax.grid(alpha=0.3)
  for ax in list(axes.flat)[len(panels):]:
    ax.set_visible(False)
  fig.suptitle(title or "Downstream score vs final validation loss, per optimizer")
  return save(fig, path)
