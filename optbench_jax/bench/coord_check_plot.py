"""The coordinate check's figure (Tensor Programs V, Fig. 5): RMS against width, per kind.

Two rows of one panel per kind of activation: the activation RMS and the RMS
of its change since initialisation, against width (or depth), log-log, one
line per step (light to dark: t = 0 .. steps). Flat lines: the
parametrization keeps that activation's scale as the model grows.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position

ROWS = (("activation_rms", "RMS of x_t"), ("update_rms", "RMS of x_t - x_0"))


def plot(result: dict, path: str) -> str:
  """Draws ``result`` (``coord_check.coord_check``'s dict) to the PNG ``path``; returns it."""
  axis = "widths" if "widths" in result else "depths"
  sizes = result[axis]
  kinds = list(result["activation_rms"])
  steps = len(next(iter(result["activation_rms"][kinds[0]].values())))
  fig, grid = plt.subplots(len(ROWS), len(kinds), figsize=(3.2 * len(kinds), 6.2),
                           squeeze=False)
  colours = plt.cm.viridis([t / max(steps - 1, 1) for t in range(steps)])
  for row, (table, ylabel) in enumerate(ROWS):
    for col, kind in enumerate(kinds):
      ax = grid[row][col]
      for t in range(steps):
        values = [result[table][kind][str(size)][t] for size in sizes]
        if table == "update_rms" and t == 0:
          continue   # x_0 - x_0 = 0: nothing to draw on a log scale
        ax.plot(sizes, values, marker="o", markersize=3, color=colours[t],
                label=f"t={t}" if t in (0 if table == "activation_rms" else 1, steps - 1) else None)
      ax.set_xscale("log", base=2)
      ax.set_yscale("log")
      ax.set_title(kind if row == 0 else f"{kind} (change)", fontsize=9)
      ax.set_xlabel("width (d_model)" if axis == "widths" else "depth (num_layers)")
      if col == 0:
        ax.set_ylabel(ylabel)
      ax.legend(fontsize=7)
  fig.suptitle(f"Coordinate check: {result.get('parametrization', '?')}, "
               f"{result.get('optimizer', '?')}, {steps - 1} steps", fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=100, format="png")
  plt.close(fig)
  return path
