"""``python -m optbench_jax.bench.study_report``: a study's cross-scale report from a results table.

    python -m optbench_jax.bench.study_report --results=table.csv --out=DIR \\
        [--reference=adamw] [--extrapolate=7e9,1.3e10] [--curves=curves.csv] \\
        [--gamma=fit|NUMBER] [--num_bootstrap=N]

reads the table (:mod:`study_table`), analyses it (:func:`study_analysis.analyse`)
and writes ``DIR/study.json``, ``DIR/study_report.md``, ``DIR/study_report.html``
and ``DIR/plots/*.png``: best losses, per-size speedups over the reference with
bootstrap intervals, the joint laws L(N, D) = E + A N^-a + B D^-b (Hoffmann et
al. 2022) and the speedups they extrapolate to larger models (Wen et al. 2025,
arXiv 2509.02046), which optimizer each law predicts wins where, rank flips
during training, the significance of adjacent ranks, tuning health, the
compute saved, and (runs trained with ``train.downstream``) the downstream
scores beside the losses with a score-against-loss figure. The document is built as blocks and rendered by
:mod:`report`'s Markdown and HTML writers.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from typing import Sequence

from optbench_jax import storage

from optbench_jax.bench import (downstream as downstream_lib, plots, report, study_analysis,
                                study_plots, study_results, study_table)
from optbench_jax.bench.study_table import StudyInputError, model_label

PLOTS_DIR = "plots"


def _fmt(x, digits: int = 4) -> str:
  if x is None:
    return "n/a"
  if isinstance(x, str):
    return x
  return f"{x:.{digits}g}"


def _interval(row: dict) -> str:
  return f"{_fmt(row['value'], 3)} [{_fmt(row['low'], 3)}, {_fmt(row['high'], 3)}]"


def _bs(value) -> str:
  return "-" if value is None else str(value)


def _rank_flip_rows(study: dict) -> list[list[str]]:
  groups = {}
  for r in study["rank_flips"]:
    groups.setdefault((r["model"], r["chinchilla"], r["batch_size"]), []).append(r)
  rows = []
  for (model, k, bs), taus in groups.items():
    early = [t for t in taus[:-1] if t["kendall_tau"] is not None]
    worst = min(early, key=lambda t: t["kendall_tau"], default=None)
    flipped = worst is not None and worst["kendall_tau"] < 1
    rows.append([model, _fmt(k), _bs(bs), taus[0]["optimizer_count"],
                 "n/a" if worst is None else
                 f"{worst['kendall_tau']:.3f} at {worst['fraction_of_training']:.3g}",
                 "yes" if flipped else "no"])
  return rows


def _best_table(study: dict) -> tuple[list[str], list[list[str]]]:
  """The best final losses, with each run's mean downstream scores where it has them."""
  scores = {}
  for r in study.get("downstream", []):
    scores.setdefault((r["optimizer"], r["model"], r["chinchilla"], r["batch_size"]), {}
                      ).setdefault(r["task"], {})[r["metric"]] = r["value"]
  score_columns = downstream_lib.columns(scores.values())
  headers = ["optimizer", "model", "chinchilla", "tokens", "batch", "final loss (mean ± sd)",
             *[downstream_lib.column_name(t, m) for t, m in score_columns], "seeds (diverged)"]
  rows = []
  for r in study["best"]:
    here = scores.get((r["optimizer"], r["model"], r["chinchilla"], r["batch_size"]), {})
    rows.append([r["optimizer"], r["model"], _fmt(r["chinchilla"]), _fmt(r["tokens"], 3),
                 _bs(r["batch_size"]), _fmt(r["final_loss"]) + (
                     f" ± {r['final_loss_std']:.4f}" if r["final_loss_std"] is not None else ""),
                 *[_fmt(here.get(t, {}).get(m)) for t, m in score_columns],
                 f"{r['seeds']} ({r['diverged']})"])
  return headers, rows


def build(study: dict, plot_paths: dict[str, list[str]]) -> list[tuple]:
  """The report as :mod:`report` blocks (headings, paragraphs, tables, images)."""
  ref = study["reference"]
  blocks: list[tuple] = [("h", 1, f"Optimizer study across scales (reference {ref})")]
  blocks.append(("p", (
      f"Speedup = D_eff / D: the tokens {ref} needs to reach an optimizer's loss, over the "
      "optimizer's tokens (Wen et al. 2025). Per size, from the reference's fitted L(D) = alpha "
      "D^-beta + gamma (interval: bootstrap over seeds); across sizes, from each optimizer's "
      "joint law L(N, D) = E + A N^-a + B D^-b (Hoffmann et al. 2022). Chinchilla multiple k: "
      "D = 20 k N.")))
  if study["notes"]:
    blocks.append(("h", 2, "Notes"))
    blocks.append(("pre", "\n".join(f"- {n}" for n in study["notes"])))
  blocks.append(("h", 2, "Best final losses"))
  blocks.append(("table", *_best_table(study)))
  blocks.append(("h", 2, f"Token speedup over {ref} per size [95% CI]"))
  blocks.append(("table", ["optimizer", "model", "chinchilla", "tokens", "batch", "speedup"],
                 [[r["optimizer"], r["model"], _fmt(r["chinchilla"]), _fmt(r["tokens"], 3),
                   _bs(r["batch_size"]), _interval(r)] for r in study["speedup"]]))
  blocks.append(("h", 2, "Joint laws L(N, D) = E + A N^-a + B D^-b"))
  blocks.append(("table", ["optimizer", "E", "A", "a", "B", "b", "RMSE", "R²", "cells"],
                 [[name] + ([_fmt(law[k]) for k in ("E", "A", "a", "B", "b", "rmse", "r2")]
                            + [law["cells"]] if "reason" not in law
                            else [f"not fitted: {law['reason']}"] + [""] * 7)
                  for name, law in study["joint_laws"].items()]))
  blocks.append(("h", 2, f"Extrapolated speedup over {ref} (joint laws)"))
  blocks.append(("table", ["optimizer", "size", "chinchilla", "speedup [95% CI]", "extrapolated",
                           "interval from"],
                 [[r["optimizer"], model_label(r["params"]), _fmt(r["chinchilla"]), _interval(r),
                   "yes" if r["extrapolated"] else "no", r["interval"]]
                  for r in study["extrapolation"]]))
  blocks.append(("h", 2, "Predicted winner per regime (lowest joint-law loss)"))
  blocks.append(("table", ["size", "chinchilla", "winner", "predicted loss"],
                 [[model_label(r["params"]), _fmt(r["chinchilla"]), r["optimizer"],
                   _fmt(r["predicted_loss"])] for r in study["winners"]]))
  blocks.append(("h", 2, "Rank flips during training (Kendall's tau vs the final ranking)"))
  blocks.append(("table", ["model", "chinchilla", "batch", "optimizers",
                           "lowest tau before the end (at fraction)", "flip"],
                 _rank_flip_rows(study)))
  if study["crossings"]:
    blocks.append(("table", ["model", "chinchilla", "batch", "a", "b", "last crossing (fraction)"],
                   [[c["model"], _fmt(c["chinchilla"]), _bs(c["batch_size"]), c["a"], c["b"],
                     _fmt(c["fraction"], 3)] for c in study["crossings"]]))
  blocks.append(("h", 2, "Significance of adjacent ranks"))
  blocks.append(("p", study["test"] + (f" Seed noise sigma = {study['noise_sigma']:.4g}."
                                       if study["noise_sigma"] is not None else "")))
  blocks.append(("table", ["model", "tokens", "batch", "better", "worse", "gap", "p", "status"],
                 [[r["model"], _fmt(r["tokens"], 3), _bs(r["batch_size"]), r["better"],
                   r["worse"], _fmt(r["difference"], 3), _fmt(r["p_value"], 3), r["status"]]
                  for r in study["significance"]]))
  if study["tuning_health"]:
    blocks.append(("h", 2, "Tuning health (one-step neighbours of each best point)"))
    blocks.append(("table", ["optimizer", "model", "chinchilla", "batch", "neighbours run",
                             "missing neighbours", "best on grid edge"],
                   [[t["optimizer"], t["model"], _fmt(t["chinchilla"]), _bs(t["batch_size"]),
                     "yes" if t["neighbours_run"] else "no",
                     "; ".join(json.dumps(m, sort_keys=True) for m in t["missing_neighbours"]),
                     ", ".join(t["on_edge"])] for t in study["tuning_health"]]))
  compute = study.get("compute")
  if compute:
    trained, separate = compute.get("steps_trained"), compute.get("steps_if_separate")
    saving = (f"{1 - trained / separate:.1%}" if trained is not None and separate else "n/a")
    blocks.append(("h", 2, "Compute"))
    blocks.append(("table", ["steps trained", "steps if every run were separate", "saving"],
                   [[_fmt(trained, 6), _fmt(separate, 6), saving]]))
  blocks.append(("h", 2, "Figures"))
  for key, caption in (("speedup", f"Speedup over {ref} vs model size (dashed: extrapolation)"),
                       ("loss", "Final loss vs data budget"),
                       ("d_eff", "D_eff vs D (log-log, y = x: no speedup)"),
                       ("rank_flip", "Eval-loss curves of the regime with the lowest Kendall tau"),
                       ("score_vs_loss", "Downstream score vs final loss per optimizer (mean over "
                        "seeds; at equal loss, do optimizers score alike?)")):
    for path in plot_paths.get(key, []):
      blocks.append(("img", f"{PLOTS_DIR}/{os.path.basename(path)}", caption))
  return blocks


def write(study: dict, out_dir: str) -> list[str]:
  """Writes study.json, study_report.md, study_report.html and plots/*.png; returns the paths."""
  plot_dir = os.path.join(out_dir, PLOTS_DIR)
  os.makedirs(plot_dir, exist_ok=True)
  json_path = os.path.join(out_dir, "study.json")
  with open(json_path, "w", encoding="utf-8") as f:
    json.dump(study, f, indent=1, allow_nan=False)
    f.write("\n")
  plot_paths = {
      "speedup": [study_plots.speedup_vs_size(study, os.path.join(plot_dir, "speedup_vs_size.png"))],
      "loss": study_plots.loss_vs_tokens(study, plot_dir),
      "d_eff": [study_plots.d_eff_vs_d(study, os.path.join(plot_dir, "d_eff_vs_d.png"))],
      "rank_flip": [study_plots.rank_flip_curves(study, os.path.join(plot_dir, "rank_flips.png"))],
      "score_vs_loss": [plots.score_vs_loss(
          [r for r in study["downstream"] if study_plots.number(r["final_loss"]) is not None
           and math.isfinite(study_plots.number(r["final_loss"]))],
          os.path.join(plot_dir, "score_vs_loss.png"))] if study.get("downstream") else [],
  }
  plot_paths = {k: [p for p in v if p] for k, v in plot_paths.items()}
  blocks = build(study, plot_paths)
  md_path = os.path.join(out_dir, "study_report.md")
  html_path = os.path.join(out_dir, "study_report.html")
  with open(md_path, "w", encoding="utf-8") as f:
    f.write(report.to_markdown(blocks))
  with open(html_path, "w", encoding="utf-8") as f:
    f.write(report.to_html(blocks, blocks[0][2]))
  return [json_path, md_path, html_path] + [p for v in plot_paths.values() for p in v]


def write_study_dir(workdir: str, num_bootstrap: int | None = None,
                    extrapolate: Sequence[float] | None = None) -> list[str]:
  """Analyses the study in ``workdir`` (``trainers.study``) and writes its report there
  (through a local copy for a ``gs://`` work directory); returns the paths written."""
  data = study_results.collect(workdir)
  study = data["study"]
  if not data["rows"]:
    raise StudyInputError(f"{workdir}: no finished best runs yet; nothing to report")
  study_table.check_reference(data["rows"], study["reference_optimizer"], workdir)
  gamma = study["speedup"]["gamma"]
  if gamma == "loss_floor":
    gamma = data["loss_floor"] if data["loss_floor"] is not None else "fit"
  analysis = study_analysis.analyse(
      data["rows"], curves=data["curves"], tuning=data["tuning"], compute=data["compute"],
      downstream=data["downstream"],
      reference=study["reference_optimizer"],
      extrapolate=list(study["extrapolate"] if extrapolate is None else extrapolate),
      gamma=gamma, num_bootstrap=int(num_bootstrap or study["speedup"]["num_bootstrap"]))
  analysis["notes"] = list(data["notes"]) + list(analysis.get("notes", []))
  if not storage.is_remote(workdir):
    return write(analysis, storage.resolve(workdir))
  with tempfile.TemporaryDirectory() as local:
    written = write(analysis, local)
    targets = []
    for path in written:
      target = storage.join(workdir, os.path.relpath(path, local))
      storage.upload(path, target)
      targets.append(target)
    return targets


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="python -m optbench_jax.bench.study_report",
                                   description=__doc__.splitlines()[0])
  parser.add_argument("--results", required=True, help="results CSV (one row per run)")
  parser.add_argument("--out", required=True, help="output directory")
  parser.add_argument("--reference", default="adamw", help="optimizer speedups are measured against")
  parser.add_argument("--extrapolate", default="", help="model sizes to extrapolate to, e.g. 7e9,1.3e10")
  parser.add_argument("--curves", default=None, help="eval-curves CSV (for rank flips)")
  parser.add_argument("--gamma", default="fit", help="'fit' or the L(D) floor as a number")
  parser.add_argument("--num_bootstrap", type=int, default=1000, help="bootstrap replicates")
  parser.add_argument("--verbose", "-v", action="store_true", help="tracebacks on errors")
  return parser


def _sizes(text: str) -> list[float]:
  sizes = []
  for part in filter(None, (p.strip() for p in text.split(","))):
    try:
      value = float(part)
    except ValueError:
      value = -1.0
    if not value > 0:
      raise StudyInputError(f"--extrapolate: {part!r} is not a positive model size")
    sizes.append(value)
  return sizes


def _gamma(text: str) -> str | float:
  if text == "fit":
    return text
  try:
    return float(text)
  except ValueError:
    raise StudyInputError(f"--gamma: {text!r} is neither 'fit' nor a number") from None


def main(argv: Sequence[str]) -> int:
  args = _parser().parse_args(list(argv[1:]))
  extrapolate, gamma = _sizes(args.extrapolate), _gamma(args.gamma)
  if args.num_bootstrap < 1:
    raise StudyInputError(f"--num_bootstrap: {args.num_bootstrap} is not a positive count")
  rows = study_table.read_results(args.results)
  study_table.check_reference(rows, args.reference, args.results)
  curves = study_table.read_curves(args.curves) if args.curves else None
  study = study_analysis.analyse(rows, curves=curves, reference=args.reference,
                                 extrapolate=extrapolate, gamma=gamma,
                                 num_bootstrap=args.num_bootstrap)
  paths = write(study, args.out)
  print(f"wrote {len(paths)} files to {args.out}: " + ", ".join(
      os.path.relpath(p, args.out) for p in paths))
  return 0


if __name__ == "__main__":
  from optbench_jax import cli_errors  # pylint: disable=import-outside-toplevel
  sys.exit(cli_errors.run(main, sys.argv))
