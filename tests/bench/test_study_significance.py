"""Adjacent optimizers in a cell's ranking are resolved only when the gap beats the noise."""

import math

import pytest

from optbench_jax.bench import significance


def _rows(optimizer, losses, tokens=1e9, model="130M"):
  return [{"optimizer": optimizer, "model": model, "tokens": tokens, "batch_size": None,
           "seed": s, "final_loss": l} for s, l in enumerate(losses)]


def test_well_separated_three_seed_cells_are_resolved():
  rows = _rows("adamw", [3.30, 3.31, 3.29]) + _rows("muon", [3.20, 3.21, 3.19])
  calls, noise = significance.significance(rows, "adamw")
  assert noise == pytest.approx(0.01)
  (call,) = calls
  assert (call.better, call.worse, call.status) == ("muon", "adamw", "resolved")
  assert call.difference == pytest.approx(0.10)
  assert call.p_value < 1e-3


def test_overlapping_three_seed_cells_are_unresolved():
  rows = _rows("adamw", [3.30, 3.32, 3.28]) + _rows("muon", [3.31, 3.27, 3.29])
  (call,), _ = significance.significance(rows, "adamw")
  assert call.status == "unresolved"
  assert call.p_value > 0.05


def test_single_seed_uses_the_reference_noise_band():
  # The reference is repeated at another budget (sigma = 0.01): band = 2 sqrt(2) 0.01 = 0.028.
  rows = (_rows("adamw", [3.50, 3.51, 3.49], tokens=5e8) + _rows("adamw", [3.30], tokens=1e9)
          + _rows("muon", [3.28], tokens=1e9) + _rows("lion", [3.20], tokens=1e9))
  calls, noise = significance.significance(rows, "adamw")
  assert noise == pytest.approx(0.01)
  by_pair = {(c.better, c.worse): c for c in calls if c.cell[1] == 1e9}
  assert by_pair[("lion", "muon")].status == "resolved"      # gap 0.08 > 0.028
  assert by_pair[("muon", "adamw")].status == "unresolved"   # gap 0.02 < 0.028
  assert by_pair[("muon", "adamw")].p_value is None


def test_single_seeds_without_any_repeat_are_noise_unknown():
  rows = _rows("adamw", [3.30]) + _rows("muon", [3.0])
  (call,), noise = significance.significance(rows, "adamw")
  assert noise is None
  assert call.status == "noise unknown"


def test_diverged_runs_are_left_out_of_the_ranking():
  rows = _rows("adamw", [3.30, 3.31]) + _rows("muon", [math.inf, math.nan])
  calls, _ = significance.significance(rows, "adamw")
  assert calls == []
