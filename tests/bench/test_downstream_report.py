"""Downstream scores in the sweep and study reports, from planted results (no training): the
score columns beside the loss, the score-against-loss figure and study.json's ``downstream``."""

import json
import math
import os
import sys

import pytest

from optbench_jax import workdir_files
from optbench_jax.bench import analysis, downstream, report, study_analysis, study_report, sweep
from tests.bench import study_planted as planted

FAKE = os.path.join(os.path.dirname(__file__), "fake_trainer.py")
LRS = [1e-3, 3.162e-3, 1e-2]


def planted_acc(optimizer: str, loss: float) -> float:
  """nadamw scores 0.05 above adamw at the same loss (a better model, not only a faster one)."""
  return round(1.0 - loss / 10 + (0.05 if optimizer == "nadamw" else 0.0), 6)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  """A fake-trainer sweep whose trials' summaries hold planted downstream scores."""
  workdir = tmp_path_factory.mktemp("downstream_sweep")
  spec = dict(
      name="downstream-test", base_config="configs/tiny.py",
      overrides={"optimizer.schedule.warmup_steps": 5, "train.eval_every": 10},
      budgets=[40], seeds=[0, 1], strategy="grid", speedup=dict(gamma="loss_floor",
                                                                num_bootstrap=20),
      optimizers={name: dict(baseline={}, grid={"learning_rate": LRS})
                  for name in ("adamw", "nadamw")})
  sweep.run_sweep(spec, str(workdir), parallel=2, poll_interval_s=0.02, log=lambda _: None,
                  launcher=lambda c, w: [sys.executable, FAKE, c, w])
  for trial in (workdir / "trials").iterdir():
    path = trial / workdir_files.SUMMARY
    summary = json.loads(path.read_text())
    optimizer = json.loads((trial / "config.json").read_text())["optimizer"]["name"]
    acc = planted_acc(optimizer, summary["final_eval_loss"])
    summary["downstream"] = {"tiny_mc": {"acc": acc, "acc_norm": acc / 2}}
    path.write_text(json.dumps(summary))
  return str(workdir)


def test_the_analysis_averages_the_best_points_seeds(run_dir):
  a = analysis.analyse(run_dir, num_bootstrap=20, memory=False)
  for name in ("adamw", "nadamw"):
    b = a.best[(name, 40)]
    expected = sum(planted_acc(name, l) for l in b.seed_losses) / len(b.seed_losses)
    assert a.downstream[(name, 40)]["tiny_mc"]["acc"] == pytest.approx(expected)
  completed = [r for r in a.results if r.status == "completed"]
  assert len(a.downstream_points) == 2 * len(completed) > 0   # 2 metrics per trial
  assert {p["metric"] for p in a.downstream_points} == {"acc", "acc_norm"}


def test_the_sweep_report_shows_scores_and_the_figure(run_dir):
  md_path, html_path = report.write_report(run_dir, num_bootstrap=20)
  md, html = open(md_path).read(), open(html_path).read()
  header = next(line for line in md.splitlines() if line.startswith("| optimizer | final val"))
  cells = [c.strip() for c in header.split("|")[1:-1]]
  assert cells[1:4] == ["final val loss (mean ± sd, n seeds)", "tiny_mc acc", "tiny_mc acc_norm"]
  a = analysis.analyse(run_dir, num_bootstrap=20, memory=False)
  row = next(line for line in md.splitlines() if line.startswith("| nadamw |"))
  assert [c.strip() for c in row.split("|")[1:-1]][2] == report._fmt(  # pylint: disable=protected-access
      a.downstream[("nadamw", 40)]["tiny_mc"]["acc"])
  assert os.path.getsize(os.path.join(run_dir, "plots", "score_vs_loss.png")) > 5000
  assert "plots/score_vs_loss.png" in md and "plots/score_vs_loss.png" in html


def test_a_sweep_without_scores_has_no_columns(tmp_path):
  assert downstream.trial_scores(str(tmp_path)) == {}
  (tmp_path / workdir_files.SUMMARY).write_text(json.dumps({"downstream": None}))
  assert downstream.trial_scores(str(tmp_path)) == {}
  assert downstream.columns([{}, {}]) == []


def planted_scores(rows):
  return [{**r, "task": "tiny_mc", "metric": "acc",
           "value": planted_acc("nadamw" if r["optimizer"] == "muon" else "adamw",
                                r["final_loss"])} for r in rows]


def test_study_json_and_report(tmp_path):
  rows = planted.rows(seeds=2, sizes=planted.SIZES[:2], multiples=(1.0, 2.0))
  study = study_analysis.analyse(rows, downstream=planted_scores(rows), reference="adamw",
                                 num_bootstrap=20)
  section = study["downstream"]
  assert len(section) == 2 * 2 * 2   # optimizers x sizes x multiples
  first = section[0]
  assert set(first) == {"optimizer", "model", "chinchilla", "batch_size", "task", "metric",
                        "value", "final_loss", "seeds"}
  runs = [r for r in rows if (r["optimizer"], r["model"], r["chinchilla"])
          == (first["optimizer"], first["model"], first["chinchilla"])]
  assert first["seeds"] == 2
  assert first["final_loss"] == pytest.approx(sum(r["final_loss"] for r in runs) / 2)
  paths = study_report.write(study, str(tmp_path))
  assert str(tmp_path / "plots" / "score_vs_loss.png") in paths
  md = (tmp_path / "study_report.md").read_text()
  header = next(line for line in md.splitlines() if line.startswith("| optimizer | model |"))
  assert "tiny_mc acc" in header
  json.loads((tmp_path / "study.json").read_text(),
             parse_constant=lambda c: pytest.fail(f"non-strict JSON token {c}"))


def test_a_study_without_scores_has_an_empty_section(tmp_path):
  rows = planted.rows(seeds=1, sizes=planted.SIZES[:2], multiples=(1.0, 2.0))
  rows[0] = {**rows[0], "final_loss": math.inf}
  study = study_analysis.analyse(rows, reference="adamw", num_bootstrap=10)
  assert study["downstream"] == []
  paths = study_report.write(study, str(tmp_path))
  assert not any(p.endswith("score_vs_loss.png") for p in paths)
  header = next(line for line in (tmp_path / "study_report.md").read_text().splitlines()
                if line.startswith("| optimizer | model |"))
  assert "acc" not in header
