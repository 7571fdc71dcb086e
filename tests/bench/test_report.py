"""Report generation over a fake-trainer sweep with planted answers (see fake_trainer.py).

nadamw's planted token speedup is exactly 2 and its step-time overhead 2, so the
tables must show speedup 2, overhead 2 and wall-clock speedup 1.
"""

import json
import math
import os
import sys

import pytest

from optbench_jax.bench import analysis, report, sensitivity, sweep

FAKE = os.path.join(os.path.dirname(__file__), "fake_trainer.py")
LRS = [1e-3, 3.162e-3, 1e-2]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("report_sweep")
  spec = dict(
      name="report-test", base_config="configs/tiny.py",
      overrides={"optimizer.schedule.warmup_steps": 5, "train.eval_every": 10},
      budgets=[40, 160], seeds=[0, 1], strategy="grid",
      speedup=dict(gamma="loss_floor", num_bootstrap=40),
      optimizers={name: dict(baseline={"b2": 0.95}, grid={"learning_rate": LRS, "b1": [0.9, 0.95]})
                  for name in ("adamw", "nadamw")})
  sweep.run_sweep(spec, str(workdir), parallel=2, poll_interval_s=0.02, log=lambda _: None,
                  launcher=lambda c, w: [sys.executable, FAKE, c, w])
  return str(workdir)


def test_analysis_recovers_planted_answers(run_dir):
  a = analysis.analyse(run_dir)
  assert a.law.beta == pytest.approx(0.5, rel=1e-3) and a.law.gamma == 1.5
  for budget in (40, 160):
    best = a.best[("nadamw", budget)]
    assert best.hparams["learning_rate"] == 3.162e-3
    assert len(best.seed_losses) == 2
    assert best.mean_loss == pytest.approx(1.5 + (math.log10(3.162e-3) + 2.5) ** 2
                                           + 4 / math.sqrt(2 * budget))
    # Rounded LR grid point: the planted multiplier is 2 up to the tiny LR penalty.
    assert a.speedups[("nadamw", budget)].point == pytest.approx(2.0, rel=2e-3)
    assert a.speedups[("adamw", budget)].point == pytest.approx(1.0, rel=2e-3)
    assert a.overheads[("nadamw", budget)] == pytest.approx(2.0)
  # Optimizer state of Adam-type methods: two fp32 moments per parameter (+ tiny counters).
  assert a.state_bytes_per_param["adamw"] == pytest.approx(8.0, rel=1e-3)


def test_sensitivity_slices(run_dir):
  a = analysis.analyse(run_dir, memory=False)
  best = a.best[("adamw", 40)].hparams
  line = sensitivity.slice_along(a.results, "adamw", 40, 0, best, "learning_rate")
  assert [v for v, _ in line] == LRS
  assert min(line, key=lambda item: item[1])[0] == 3.162e-3
  assert sensitivity.loss_increase(line) == pytest.approx(0.25, abs=1e-3)


def test_report_files_and_numbers(run_dir):
  md_path, html_path = report.write_report(run_dir, num_bootstrap=40)
  md = open(md_path).read()
  html = open(html_path).read()
  a = analysis.analyse(run_dir, num_bootstrap=40)
  for budget in (40, 160):
    b = a.best[("nadamw", budget)]
    assert f"{b.mean_loss:.4f}" in md and f"{b.mean_loss:.4f}" in html
    assert f"## Budget {budget} steps" in md
  nadamw_rows = [line for line in md.splitlines() if line.startswith("| nadamw |") and "(n=" in line]
  assert len(nadamw_rows) == 2
  for row in nadamw_rows:
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert cells[2].startswith("2 [") or cells[2].startswith("2.0")   # token speedup
    assert cells[3] == "1" or cells[3].startswith("1.0") or cells[3].startswith("0.99")
    assert cells[4] == "2"                                              # step-time overhead
    assert cells[5] == "8"                                              # bytes / param
    assert "learning_rate=0.003162" in cells[7]
  assert "<table>" in html and "L(D) =" in md
  for name in ("loss_curves_40.png", "loss_curves_160.png", "lr_sensitivity_40.png",
               "speedup_vs_budget.png"):
    path = os.path.join(run_dir, "plots", name)
    assert os.path.getsize(path) > 5000
    assert f"plots/{name}" in md and f"plots/{name}" in html


def test_report_cli_usage():
  assert report.main(["report"]) == 2


@pytest.mark.parametrize("state", ["missing", "empty", "damaged_store", "damaged_snapshot"])
def test_report_of_a_directory_without_a_readable_sweep_is_one_error(tmp_path, state):
  """A bad work directory gives `error: ...` instead of a traceback."""
  run_dir = tmp_path / "run"
  if state != "missing":
    run_dir.mkdir()
  if state == "damaged_store":
    (run_dir / "sweep.json").write_text(json.dumps({"sweep": {}}))
    (run_dir / "results.sqlite").write_bytes(b"not a database")
  if state == "damaged_snapshot":
    (run_dir / "sweep.json").write_text("{")
  with pytest.raises(report.ReportError):
    report.main(["report", str(run_dir)])
