"""The joint law recovers planted L(N, D) and its speedups, per size and extrapolated."""

import math

import pytest

from optbench_jax.bench import scaling_law, study_analysis
from tests.bench import study_planted as planted


def _cells(rows, optimizer):
  cells = {}
  for r in rows:
    if r["optimizer"] == optimizer:
      cells.setdefault((r["params"], r["tokens"]), []).append(r["final_loss"])
  return cells


@pytest.fixture(scope="module")
def study():
  return study_analysis.analyse(planted.rows(), reference="adamw", extrapolate=[7e9],
                                num_bootstrap=100, seed=0)


def test_fit_recovers_the_planted_law():
  law = scaling_law.fit(_cells(planted.rows(), "adamw"))
  assert isinstance(law, scaling_law.JointLaw)
  truth = planted.REFERENCE
  # 12 cells over a 4x size range cannot pin the coefficients tightly; exponents and floor can.
  assert law.E == pytest.approx(truth["E"], abs=0.05)
  assert law.a == pytest.approx(truth["a"], abs=0.03)
  assert law.b == pytest.approx(truth["b"], abs=0.02)
  assert law.A == pytest.approx(truth["A"], rel=0.3)
  assert law.B == pytest.approx(truth["B"], rel=0.3)
  assert law.cells == 12
  assert law.rmse < 2 * planted.NOISE
  assert law.r2 > 0.999


def test_fit_is_exact_without_noise():
  law = scaling_law.fit(_cells(planted.rows(noise=0.0, seeds=1), "muon"))
  for key, value in planted.BETTER.items():
    assert getattr(law, key) == pytest.approx(value, rel=1e-3)


def _planted_cells(keys):
  return {(n, d): [float(planted.loss(planted.REFERENCE, n, d))] for n, d in keys}


@pytest.mark.parametrize("keys, why", [
    ([(3e8, d) for d in (1e9, 2e9, 4e9, 8e9, 1.6e10, 3.2e10)], "distinct model sizes"),
    ([(n, 1e10) for n in (1e8, 2e8, 4e8, 8e8, 1.6e9, 3.2e9)], "distinct data budgets"),
    ([(n, d) for n in (1e8, 3e8) for d in (1e9, 4e9)] + [(1e9, 1e10)], "(N, D) cells"),
])
def test_too_few_cells_are_refused_with_a_reason(keys, why):
  reason = scaling_law.fit(_planted_cells(keys))
  assert isinstance(reason, str) and why in reason


def test_per_size_speedups_match_the_planted_truth(study):
  rows = [r for r in study["speedup"] if r["optimizer"] == "muon"]
  assert len(rows) == len(planted.SIZES) * len(planted.MULTIPLES)
  for r in rows:
    truth = planted.true_speedup(planted.BETTER, r["params"], r["tokens"])
    # Interpolating the reference's L(D) (D_eff inside its budgets, k <= 2) is tight;
    # extrapolating it to 3x its largest budget (k = 8 needs ~24x) is looser.
    inside = truth * r["chinchilla"] <= max(planted.MULTIPLES)
    assert r["value"] == pytest.approx(truth, rel=0.03 if inside else 0.1)
    assert r["low"] <= r["value"] <= r["high"]
  assert all(r["value"] == 1.0 for r in study["speedup"] if r["optimizer"] == "adamw")


def test_extrapolated_interval_covers_the_planted_truth(study):
  far = [r for r in study["extrapolation"] if r["params"] == 7e9]
  assert {r["chinchilla"] for r in far} == set(planted.MULTIPLES)
  for r in far:
    assert r["extrapolated"] and r["interval"] == "seeds"
    truth = planted.true_speedup(planted.BETTER, 7e9, 20 * r["chinchilla"] * 7e9)
    assert r["low"] <= truth <= r["high"]
  seen = [r for r in study["extrapolation"] if not r["extrapolated"]]
  assert {r["params"] for r in seen} == set(planted.SIZES)


def test_winners_and_joint_laws_in_the_study(study):
  assert set(study["joint_laws"]) == {"adamw", "muon"}
  assert study["joint_laws"]["muon"]["B"] < study["joint_laws"]["adamw"]["B"]
  assert {w["optimizer"] for w in study["winners"]} == {"muon"}
  assert len(study["winners"]) == (len(planted.SIZES) + 1) * len(planted.MULTIPLES)


def test_single_seed_cells_bootstrap_the_residuals():
  rows = planted.rows(seeds=1)
  result = scaling_law.extrapolate({n: _cells(rows, n) for n in ("adamw", "muon")}, "adamw",
                                   [(7e9, 1.0)], num_bootstrap=30)
  assert result.method == "residuals" and result.replicates > 0
  point, low, high = result.estimates["muon"][(7e9, 1.0)]
  assert low <= point <= high


def test_speedup_beyond_the_reference_floor_is_infinite():
  law = scaling_law.JointLaw(E=2.0, A=400, a=0.34, B=410, b=0.28, rmse=0, r2=1, cells=12)
  below = scaling_law.JointLaw(E=1.5, A=400, a=0.34, B=410, b=0.28, rmse=0, r2=1, cells=12)
  assert math.isinf(scaling_law.speedup_at(below, law, 7e9, 1e6))
  assert scaling_law.speedup_at(law, law, 7e9, 4.0) == pytest.approx(1.0)


def test_two_budgets_fix_gamma_to_the_reference_joint_law_floor():
  rows = planted.rows(multiples=(1.0, 4.0))       # 3 sizes x 2 budgets = 6 cells: law fits
  study = study_analysis.analyse(rows, reference="adamw", num_bootstrap=20)
  assert "reason" not in study["joint_laws"]["adamw"]
  assert sum("gamma fixed to the reference joint law" in n for n in study["notes"]) == 3
  for r in study["speedup"]:
    truth = planted.true_speedup(planted.LAWS[r["optimizer"]], r["params"], r["tokens"])
    assert r["value"] == pytest.approx(truth, rel=0.1)


def test_refused_reference_law_is_said_in_the_notes():
  study = study_analysis.analyse(planted.rows(sizes=(3e8,)), reference="adamw", num_bootstrap=20)
  assert study["joint_laws"]["adamw"] == {"reason": "needs >= 2 distinct model sizes N, got 1"}
  assert study["extrapolation"] == [] and study["winners"] == []
  assert any("extrapolation and winners not computed" in n for n in study["notes"])
