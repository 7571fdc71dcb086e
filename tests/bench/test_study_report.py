"""The study CLI end to end on a CSV, and one clear error line for every bad table."""

import csv
import json
import math
import os

import numpy as np
import pytest

from optbench_jax import cli_errors
from optbench_jax.bench import study_analysis, study_report
from tests.bench import study_planted as planted

STUDY_KEYS = {"reference", "test", "notes", "best", "speedup", "d_eff", "joint_laws",
              "extrapolation", "winners", "rank_flips", "crossings", "rank_flip_curves",
              "significance", "noise_sigma", "tuning_health", "compute", "downstream"}
COLUMNS = ["optimizer", "params", "tokens", "final_loss", "seed"]


def _write_csv(path, rows, columns=COLUMNS):
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
  return str(path)


def _curves(path):
  fractions = np.linspace(0.1, 1.0, 10)
  rows = []
  for name, start, slope in (("adamw", 4.0, 1.5), ("muon", 3.7, 1.0)):
    for f in fractions:
      rows.append({"optimizer": name, "params": 130000000, "tokens": 2.6e9, "seed": 0,
                   "fraction": f, "eval_loss": start - slope * f})
  return _write_csv(path, rows, ["optimizer", "params", "tokens", "seed", "fraction", "eval_loss"])


def _run(capsys, *args):
  status = cli_errors.run(study_report.main, ["study_report", *args], verbose=False)
  return status, capsys.readouterr()


def test_cli_end_to_end(tmp_path, capsys):
  results = _write_csv(tmp_path / "table.csv", planted.rows(seeds=2))
  out = tmp_path / "out"
  status, captured = _run(capsys, f"--results={results}", f"--out={out}", "--extrapolate=7e9",
                          f"--curves={_curves(tmp_path / 'curves.csv')}", "--num_bootstrap=50")
  assert status == 0, captured.err
  for name in ("study.json", "study_report.md", "study_report.html", "plots/speedup_vs_size.png",
               "plots/d_eff_vs_d.png", "plots/rank_flips.png", "plots/loss_vs_tokens_130M.png"):
    assert os.path.getsize(out / name) > 0, name
  text = (out / "study.json").read_text()
  study = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON token {c}"))
  assert set(study) == STUDY_KEYS
  assert study["best"][0]["model"] == "130M"            # labels derived from params
  assert {r["chinchilla"] for r in study["best"]} == set(planted.MULTIPLES)
  assert study["rank_flip_curves"]["crossings"][0]["fraction"] == pytest.approx(0.6)
  assert any(r["params"] == 7000000000 for r in study["extrapolation"])
  md = (out / "study_report.md").read_text()
  assert "Joint laws" in md and "plots/speedup_vs_size.png" in md


def test_write_handles_infinite_values_and_tuning(tmp_path):
  rows = planted.rows(seeds=2)
  rows.append({**rows[-1], "seed": 9, "final_loss": math.inf})
  study = study_analysis.analyse(
      rows, reference="adamw", num_bootstrap=20,
      tuning=[{"optimizer": "muon", "model": "130M", "chinchilla": 1, "batch_size": None,
               "grid": {"learning_rate": [1e-3, 1e-2]}, "best": {"learning_rate": 1e-2},
               "tried": [{"learning_rate": 1e-2}]}],
      compute={"steps_trained": 600, "steps_if_separate": 1000})
  assert any("diverged" in n for n in study["notes"])
  assert study["tuning_health"][0]["on_edge"] == ["learning_rate"]
  paths = study_report.write(study, str(tmp_path))
  assert all(os.path.exists(p) for p in paths)
  assert "40.0%" in (tmp_path / "study_report.md").read_text()


def _bad(tmp_path, rows, columns=COLUMNS):
  return _write_csv(tmp_path / "bad.csv", rows, columns)


def _row(**overrides):
  return {"optimizer": "adamw", "params": "1.3e8", "tokens": "2.6e9", "final_loss": "3.1",
          "seed": "0", **overrides}


@pytest.mark.parametrize("case, culprit", [
    ("missing column", "final_loss"),
    ("bad params", "row 2 (line 3), column params"),
    ("negative tokens", "row 1 (line 2), column tokens"),
    ("bad loss", "column final_loss: 'abc'"),
    ("duplicate", "duplicate rows 1 and 2"),
    ("no reference at a size", "at size 300M"),
    ("unknown reference", "--reference=lion"),
    ("empty", "no rows"),
    ("not found", "no such file"),
])
def test_bad_table_is_one_error_line(tmp_path, capsys, case, culprit):
  reference = "adamw"
  if case == "missing column":
    path = _bad(tmp_path, [_row()], ["optimizer", "params", "tokens", "seed"])
  elif case == "bad params":
    path = _bad(tmp_path, [_row(), _row(params="big", seed="1")])
  elif case == "negative tokens":
    path = _bad(tmp_path, [_row(tokens="-5")])
  elif case == "bad loss":
    path = _bad(tmp_path, [_row(final_loss="abc")])
  elif case == "duplicate":
    path = _bad(tmp_path, [_row(), _row(final_loss="3.2")])
  elif case == "no reference at a size":
    path = _bad(tmp_path, [_row(), _row(optimizer="muon", params="3e8")])
  elif case == "unknown reference":
    path, reference = _bad(tmp_path, [_row()]), "lion"
  elif case == "empty":
    path = _bad(tmp_path, [])
  else:
    path = str(tmp_path / "absent.csv")
  status, captured = _run(capsys, f"--results={path}", f"--out={tmp_path / 'out'}",
                          f"--reference={reference}")
  assert status == 2
  lines = captured.err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
  assert culprit in lines[0]
