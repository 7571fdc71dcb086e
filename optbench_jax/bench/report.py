"""``python -m optbench_jax.bench.report RUN_DIR``: a sweep's report in Markdown, HTML and PNGs.

Writes ``RUN_DIR/report.md``, ``RUN_DIR/report.html`` and ``RUN_DIR/plots/*.png``:

* per budget, a table of every optimizer's best final validation loss (mean and
  spread over seeds), its downstream scores when the trials ran ``train.downstream``
  (mean over seeds, one column per task and metric), token speedup vs the reference with its bootstrap
  interval, wall-clock-adjusted speedup, step-time overhead, optimizer-state
  bytes per parameter, trials spent (and how many diverged), and the best
  hyperparameters;
* the fitted L(D) law of the reference optimizer;
* hyperparameter sensitivity around each optimum (loss along every swept
  hyperparameter with the others at their best);
* every failed or diverged trial with its reason;
* figures: validation-loss curves of the best runs, learning-rate sensitivity,
  speedup vs budget, and (with downstream scores) every completed trial's score
  against its final validation loss per optimizer.

The document is built once as a list of blocks and rendered to both formats.
"""

from __future__ import annotations

import html
import math
import sqlite3
import sys
from typing import Any, Sequence

import numpy as np

from optbench_jax.bench import analysis as analysis_lib
from optbench_jax import storage
from optbench_jax.bench import downstream as downstream_lib
from optbench_jax.bench import plots, results_store, sensitivity, speedup, sweep_dir

PLOTS_DIR = "plots"


class ReportError(Exception):
  """RUN_DIR is not a readable sweep directory; the message says what is missing or damaged."""


def check_run_dir(run_dir: str) -> None:
  """Raises ReportError unless ``run_dir`` holds a readable sweep snapshot and results store."""
  if storage.is_remote(run_dir):
    try:
      storage.check_reachable(run_dir)
    except storage.StorageError as e:
      raise ReportError(f"{run_dir}: {e}") from None
  if not storage.isdir(run_dir):
    raise ReportError(f"{run_dir} is not a directory")
  snapshot = sweep_dir.snapshot_path(run_dir)
  if not storage.exists(snapshot):
    raise ReportError(f"{run_dir} is not a sweep workdir (no {sweep_dir.SNAPSHOT}; "
                      "run trainers.sweep there first)")
  try:
    storage.read_json(snapshot)["sweep"]
  except (ValueError, KeyError, TypeError) as e:
    raise ReportError(f"{snapshot} is damaged ({type(e).__name__}: {e})") from None
  store = storage.join(run_dir, sweep_dir.STORE)
  try:
    results_store.ResultsStore.open_existing(sweep_dir.store_path(run_dir)).close()
  except FileNotFoundError:
    raise ReportError(f"{run_dir} has no results store ({results_store.STORE_FILENAME})") from None
  except (sqlite3.DatabaseError, results_store.StoreMismatchError, KeyError) as e:
    raise ReportError(f"{store} is damaged or not a results store ({e})") from None


def _fmt(x: float, digits: int = 4) -> str:
  if x is None or (isinstance(x, float) and math.isnan(x)):
    return "n/a"
  if isinstance(x, float) and math.isinf(x):
    return "inf" if x > 0 else "-inf"
  return f"{x:.{digits}g}"


def _hparams(hparams: dict[str, Any] | None, grid: dict[str, list], trials: int) -> str:
  """The best point; a value at the edge of its grid gets a '*' (the optimum may lie beyond)."""
  if hparams is None:
    return "(all trials diverged or failed)" if trials else "(not run)"
  parts = []
  for k, v in sorted(hparams.items()):
    values = [x for x in grid.get(k, []) if x is not None and not isinstance(x, str)]
    edge = (len(values) > 1 and v is not None and not isinstance(v, str)
            and v in (min(values), max(values)))
    parts.append(f"{k}={_fmt(v) if isinstance(v, float) else v}{'*' if edge else ''}")
  return ", ".join(parts)


def _tokens(n: int) -> str:
  for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
    if n >= scale:
      return f"{n / scale:.3g}{unit}"
  return str(n)


def budget_table(a: analysis_lib.SweepAnalysis, budget: int) -> tuple[list[str], list[list[str]]]:
  headers = ["optimizer", "final val loss (mean ± sd, n seeds)", "token speedup [95% CI]",
             "wall-clock speedup", "step-time overhead", "opt-state bytes/param",
             "trials (diverged)", "best hyperparameters"]
  scores = [a.downstream[(n, budget)] for n in a.optimizers if (n, budget) in a.downstream]
  score_columns = downstream_lib.columns(scores)
  headers[2:2] = [downstream_lib.column_name(t, m) for t, m in score_columns]
  rows = []
  order = sorted(a.optimizers, key=lambda n: a.best[(n, budget)].mean_loss)
  for name in order:
    b = a.best[(name, budget)]
    finite = [l for l in b.seed_losses if math.isfinite(l)]
    if finite:
      spread = f" ± {np.std(finite, ddof=1):.4f}" if len(finite) > 1 else ""
      loss = f"{np.mean(finite):.4f}{spread} (n={len(finite)})"
    else:
      loss = "diverged/failed" if b.tuning_trials else "not run"
    est = a.speedups.get((name, budget))
    if est is None:
      token_speedup, wall = "n/a", "n/a"
    else:
      token_speedup = f"{_fmt(est.point, 3)} [{_fmt(est.low, 3)}, {_fmt(est.high, 3)}]"
      wall = _fmt(speedup.wall_clock_speedup(est.point, a.overheads[(name, budget)]), 3)
    here = a.downstream.get((name, budget), {})
    rows.append([name, loss, *[_fmt(here.get(t, {}).get(m, math.nan)) for t, m in score_columns],
                 token_speedup, wall, _fmt(a.overheads[(name, budget)], 3),
                 _fmt(a.state_bytes_per_param.get(name, math.nan), 3),
                 f"{b.tuning_trials} ({b.diverged_trials})",
                 _hparams(b.hparams, _tried_grid(a, name), b.tuning_trials)])
  return headers, rows


def _tried_grid(a: analysis_lib.SweepAnalysis, name: str) -> dict[str, list]:
  """The optimizer's grid plus any values edge extension added (seen in its trials)."""
  grid = {hp: list(values) for hp, values in a.sweep["optimizers"][name]["grid"].items()}
  for result in a.results:
    if result.optimizer == name:
      for hp, values in grid.items():
        value = result.hparams.get(hp)
        if value not in values:
          values.append(value)
  return grid


def sensitivity_rows(a: analysis_lib.SweepAnalysis, budget: int) -> list[list[str]]:
  seed = a.sweep["seeds"][0]
  rows = []
  for name in a.optimizers:
    b = a.best[(name, budget)]
    if b.hparams is None:
      continue
    grid = a.sweep["optimizers"][name]["grid"]
    for hp, line in sensitivity.sensitivity(a.results, name, budget, seed, b.hparams,
                                            list(grid)).items():
      values = "; ".join(f"{_fmt(v) if isinstance(v, float) else v}: {_fmt(l)}" for v, l in line)
      rows.append([name, hp, values, _fmt(sensitivity.loss_increase(line))])
  return rows


def build(run_dir: str, num_bootstrap: int | None = None) -> list[tuple]:
  """The report as blocks: ('h', level, text) | ('p', text) | ('table', headers, rows) |
  ('img', relative path, caption) | ('pre', text)."""
  a = analysis_lib.analyse(run_dir, num_bootstrap=num_bootstrap)
  sweep = a.sweep
  blocks: list[tuple] = [("h", 1, f"Optimizer benchmark: {sweep['name']}")]
  statuses = {s: sum(r.status == s for r in a.results) for s in results_store.STATUSES}
  model = next((r.config.get("model", {}) for r in a.results if r.config), {})
  params = next((r.params for r in a.results if r.params), 0)
  blocks.append(("p", (
      f"Base config `{sweep['base_config']}`"
      + (f" ({model.get('kind')} {model.get('num_layers')}x{model.get('d_model')}, "
         f"{params:,} parameters)" if model else "")
      + f"; strategy `{sweep['strategy']}`"
      + (f" (threshold {sweep['threshold']}, at most {sweep['trial_budget']} trials per "
         "optimizer and budget)" if sweep["strategy"] == "coordinate_descent" else "")
      + f"; tuning seed {sweep['seeds'][0]}, best configs re-run on seeds {sweep['seeds']}; "
      f"{len(a.results)} trials: {statuses['completed']} completed, "
      f"{statuses['diverged']} diverged, {statuses['failed']} failed.")))
  blocks.append(("p", (
      "Best configuration = lowest final validation loss at the target budget on the tuning "
      "seed (never an intermediate checkpoint). Token speedup = D_eff / D with D_eff from "
      f"{a.reference}'s fitted L(D) = alpha D^-beta + gamma (Wen et al. 2025); interval: "
      "bootstrap over seeds. Wall-clock speedup = token speedup / step-time overhead "
      f"(median s/step vs {a.reference} at the same budget; trials that shared the machine "
      "with others make it noisy). Trials: on the tuning seed (diverged or failed among them). "
      "A '*' marks a best value at the edge of the values tried (grid plus any edge "
      "extension): the optimum may lie beyond it. "
      "'not run': no trial yet, or (untuned budgets) no tuned config to transfer.")))
  plot_dir = storage.join(run_dir, PLOTS_DIR)
  storage.makedirs(plot_dir)
  for budget in a.budgets:
    per_step = next((r.budget_tokens / r.budget_steps for r in a.results if r.budget_steps), 0)
    tokens = int(budget * per_step)
    blocks.append(("h", 2, f"Budget {budget} steps ({_tokens(tokens)} tokens)"))
    headers, rows = budget_table(a, budget)
    blocks.append(("table", headers, rows))
  blocks.append(("h", 2, f"{a.reference} scaling law"))
  if a.law is not None:
    blocks.append(("p", f"L(D) = {a.law.alpha:.4g} D^-{a.law.beta:.4g} + {a.law.gamma:.4g} "
                        f"(D in tokens; {a.law_note})."))
  else:
    blocks.append(("p", a.law_note))
  blocks.append(("h", 2, "Hyperparameter sensitivity (others at their best)"))
  for budget in a.budgets:
    rows = sensitivity_rows(a, budget)
    if rows:
      blocks.append(("h", 3, f"Budget {budget} steps"))
      blocks.append(("table", ["optimizer", "hyperparameter", "value: final loss",
                               "worst - best loss"], rows))
  bad = [r for r in a.results if r.status != results_store.COMPLETED]
  if bad:
    blocks.append(("h", 2, "Diverged and failed trials"))
    blocks.append(("table", ["trial", "status", "reason"],
                   [[r.trial_id, r.status, r.reason.splitlines()[0][:160] if r.reason else ""]
                    for r in sorted(bad, key=lambda r: r.trial_id)]))
  blocks.append(("h", 2, "Figures"))
  for budget in a.budgets:
    path = plots.loss_curves(a, budget, storage.join(plot_dir, f"loss_curves_{budget}.png"))
    blocks.append(("img", f"{PLOTS_DIR}/{storage.basename(path)}",
                   f"Validation loss of the best runs, {budget} steps"))
    path = plots.lr_sensitivity(a, budget, storage.join(plot_dir, f"lr_sensitivity_{budget}.png"))
    blocks.append(("img", f"{PLOTS_DIR}/{storage.basename(path)}", f"Learning-rate sensitivity, {budget} steps"))
  path = plots.speedup_vs_budget(a, storage.join(plot_dir, "speedup_vs_budget.png"))
  blocks.append(("img", f"{PLOTS_DIR}/{storage.basename(path)}", f"Speedup over {a.reference} vs budget"))
  if a.downstream_points:
    path = plots.score_vs_loss(a.downstream_points, storage.join(plot_dir, "score_vs_loss.png"))
    blocks.append(("img", f"{PLOTS_DIR}/{storage.basename(path)}",
                   "Downstream score vs final validation loss, every completed trial (at equal "
                   "loss, do optimizers score alike?)"))
  return blocks


def to_markdown(blocks: Sequence[tuple]) -> str:
  out = []
  for block in blocks:
    kind = block[0]
    if kind == "h":
      out.append(f"{'#' * block[1]} {block[2]}\n")
    elif kind == "p":
      out.append(block[1] + "\n")
    elif kind == "table":
      headers, rows = block[1], block[2]
      cell = lambda s: str(s).replace("|", "\\|").replace("\n", " ")
      out.append("| " + " | ".join(cell(h) for h in headers) + " |")
      out.append("|" + "---|" * len(headers))
      out.extend("| " + " | ".join(cell(c) for c in row) + " |" for row in rows)
      out.append("")
    elif kind == "img":
      out.append(f"![{block[2]}]({block[1]})\n")
    elif kind == "pre":
      out.append(f"```\n{block[1]}\n```\n")
  return "\n".join(out)


def to_html(blocks: Sequence[tuple], title: str) -> str:
  e = html.escape
  out = ["<!DOCTYPE html>", "<html><head><meta charset='utf-8'>", f"<title>{e(title)}</title>",
         "<style>body{font-family:sans-serif;max-width:1200px;margin:auto}"
         "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;"
         "padding:3px 6px;text-align:left}img{max-width:100%}</style></head><body>"]
  for block in blocks:
    kind = block[0]
    if kind == "h":
      out.append(f"<h{block[1]}>{e(block[2])}</h{block[1]}>")
    elif kind == "p":
      out.append(f"<p>{e(block[1]).replace('`', '')}</p>")
    elif kind == "table":
      out.append("<table><tr>" + "".join(f"<th>{e(str(h))}</th>" for h in block[1]) + "</tr>")
      out.extend("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>"
                 for row in block[2])
      out.append("</table>")
    elif kind == "img":
      out.append(f"<figure><img src='{e(block[1])}' alt='{e(block[2])}'>"
                 f"<figcaption>{e(block[2])}</figcaption></figure>")
    elif kind == "pre":
      out.append(f"<pre>{e(block[1])}</pre>")
  out.append("</body></html>")
  return "\n".join(out)


def write_report(run_dir: str, num_bootstrap: int | None = None) -> tuple[str, str]:
  """Writes report.md, report.html and the PNGs into ``run_dir``; returns the two paths."""
  blocks = build(run_dir, num_bootstrap)
  md_path = storage.join(run_dir, "report.md")
  html_path = storage.join(run_dir, "report.html")
  storage.write_text(md_path, to_markdown(blocks))
  storage.write_text(html_path, to_html(blocks, blocks[0][2]))
  return md_path, html_path


def main(argv: Sequence[str]) -> int:
  argv = [a for a in argv if a not in ("--verbose", "-v")]
  if len(argv) != 2 or argv[1].startswith("-"):
    print("usage: python -m optbench_jax.bench.report RUN_DIR [--verbose]", file=sys.stderr)
    return 2
  check_run_dir(argv[1])
  md_path, html_path = write_report(argv[1])
  print(f"wrote {md_path}, {html_path} and {storage.join(argv[1], PLOTS_DIR)}/*.png")
  return 0


if __name__ == "__main__":
  from optbench_jax import cli_errors  # pylint: disable=import-outside-toplevel
  sys.exit(cli_errors.run(main, sys.argv))
