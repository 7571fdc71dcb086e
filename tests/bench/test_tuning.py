"""Tuners on synthetic objectives (no trainer): grid coverage, coordinate descent finds the optimum."""

import math

import pytest

from optbench_jax.bench import search_space, tuning

LRS = search_space.log_grid(1e-4, 1e-1, 7)
WDS = (0.0, 0.05, 0.1, 0.2, 0.5)
B2S = (0.95, 0.98, 0.99, 0.999)
GRID = {"learning_rate": LRS, "weight_decay": WDS, "b2": B2S}
BASELINE = {"learning_rate": LRS[0], "weight_decay": WDS[0], "b2": B2S[0]}
PLANTED = {"learning_rate": LRS[4], "weight_decay": WDS[3], "b2": B2S[2]}


def separable_bowl(point):
  """Minimum 3.0 at PLANTED; each coordinate adds a convex penalty in its grid index."""
  loss = 3.0
  for name, values in GRID.items():
    loss += 0.05 * (values.index(point[name]) - values.index(PLANTED[name])) ** 2
  return loss


def test_coordinate_descent_finds_planted_optimum_within_budget():
  calls = []

  def objective(point):
    calls.append(point)
    return separable_bowl(point)

  full_grid = len(LRS) * len(WDS) * len(B2S)
  tuner = tuning.CoordinateDescentTuner(GRID, BASELINE, threshold=3e-3, trial_budget=40)
  best, loss = tuning.run_tuner(tuner, objective)
  assert best == PLANTED
  assert loss == pytest.approx(3.0)
  assert len(calls) <= 40 < full_grid
  # No point is evaluated twice.
  assert len({tuning.point_key(p) for p in calls}) == len(calls)


def test_coordinate_descent_respects_threshold_and_divergence():
  # Improvements smaller than the threshold are not adopted.
  def flat(point):
    return 3.0 - 4e-4 * LRS.index(point["learning_rate"])

  tuner = tuning.CoordinateDescentTuner({"learning_rate": LRS}, {"learning_rate": LRS[0]},
                                        threshold=3e-3)
  best, _ = tuning.run_tuner(tuner, flat)
  assert tuner.current == {"learning_rate": LRS[0]}
  assert tuner.rounds == 1
  # Divergence (+inf) is never adopted; the finite best wins.
  def diverge_high(point):
    return math.inf if point["learning_rate"] > 1e-2 else separable_bowl(
        {**PLANTED, "learning_rate": point["learning_rate"]})
  tuner = tuning.CoordinateDescentTuner({"learning_rate": LRS}, {"learning_rate": LRS[0]})
  best, loss = tuning.run_tuner(tuner, diverge_high)
  assert best == {"learning_rate": LRS[4]} and math.isfinite(loss)


def test_coordinate_descent_budget_is_a_hard_cap():
  calls = []
  tuner = tuning.CoordinateDescentTuner(GRID, BASELINE, trial_budget=9)
  tuning.run_tuner(tuner, lambda p: calls.append(p) or separable_bowl(p))
  assert len(calls) == 9 == tuner.num_trials


def test_coordinate_descent_batches_are_independent_rounds():
  tuner = tuning.CoordinateDescentTuner(GRID, BASELINE)
  assert tuner.propose() == [BASELINE]
  assert tuner.propose() == []          # waits for the baseline result
  tuner.observe(BASELINE, separable_bowl(BASELINE))
  round_one = tuner.propose()
  assert len(round_one) == sum(len(v) - 1 for v in GRID.values())
  assert all(sum(p[k] != BASELINE[k] for k in GRID) == 1 for p in round_one)


def test_grid_tuner_covers_grid_once():
  tuner = tuning.GridTuner({"learning_rate": LRS, "b2": B2S}, {"weight_decay": 0.1})
  calls = []
  best, loss = tuning.run_tuner(tuner, lambda p: calls.append(p) or separable_bowl(p))
  assert len(calls) == len(LRS) * len(B2S)
  assert all(p["weight_decay"] == 0.1 for p in calls)
  assert best["learning_rate"] == PLANTED["learning_rate"] and best["b2"] == PLANTED["b2"]


def test_bad_tuner_input():
  with pytest.raises(search_space.SearchSpaceError, match="baseline value for b2"):
    tuning.CoordinateDescentTuner(GRID, {"learning_rate": 1e-3, "weight_decay": 0.1})
  with pytest.raises(search_space.SearchSpaceError, match="unknown strategy"):
    tuning.make_tuner("random", GRID, BASELINE)


def test_extend_grid_continues_the_spacing_and_never_crosses_zero():
  assert search_space.extend_grid([1e-3, 3e-3, 1e-2], "high") == pytest.approx(3.333e-2)
  assert search_space.extend_grid([1e-3, 3e-3, 1e-2], "low") == pytest.approx(3.333e-4)
  assert search_space.extend_grid([100, 200, 400], "high") == 800
  assert search_space.extend_grid([-2.0, -1.0], "low") == -3.0
  assert search_space.extend_grid([0.0, 0.1, 0.2], "low") is None      # weight decay 0
  assert search_space.extend_grid([0.0, 0.1, 0.2], "high") == pytest.approx(0.3)
  with pytest.raises(search_space.SearchSpaceError, match=">= 2 numeric"):
    search_space.extend_grid([1e-3], "high")


def lr_bowl(optimum):
  """Convex in log10(lr) with its minimum at ``optimum``."""
  return lambda p: 3.0 + (math.log10(p["learning_rate"]) - math.log10(optimum)) ** 2


def test_grid_tuner_extends_an_edge_until_the_best_is_interior():
  grid = {"learning_rate": [1e-4, 3e-4, 1e-3]}
  calls = []
  tuner = tuning.GridTuner(grid, edge_extension={"learning_rate": 4})
  best, _ = tuning.run_tuner(tuner, lambda p: calls.append(p) or lr_bowl(1e-2)(p))
  tried = [p["learning_rate"] for p in calls]
  # 3.3e-3 and 1.1e-2 extend the top edge; 3.7e-2 shows the optimum is inside.
  assert tried[:3] == grid["learning_rate"]
  assert tried[3:] == pytest.approx([3.333e-3, 1.111e-2, 3.704e-2], rel=1e-3)
  assert best["learning_rate"] == pytest.approx(1.111e-2)
  assert tuner.done and tuner.num_trials == 6
  assert len(tuner.grid["learning_rate"]) == 6


def test_grid_tuner_edge_extension_respects_its_limit_and_is_off_by_default():
  grid = {"learning_rate": [1e-4, 3e-4, 1e-3]}
  limited = tuning.GridTuner(grid, edge_extension={"learning_rate": 1})
  best, _ = tuning.run_tuner(limited, lr_bowl(1.0))
  assert limited.num_trials == 4 and best["learning_rate"] == pytest.approx(3.333e-3)
  plain = tuning.GridTuner(grid)
  tuning.run_tuner(plain, lr_bowl(1.0))
  assert plain.num_trials == 3
  # An optimum below the grid extends the low edge.
  low = tuning.GridTuner(grid, edge_extension={"learning_rate": 2})
  best, _ = tuning.run_tuner(low, lr_bowl(1e-5))
  assert best["learning_rate"] == pytest.approx(1.111e-5)


def test_coordinate_descent_extends_edges_within_its_budget():
  grid = {"learning_rate": [1e-4, 3e-4, 1e-3], "b2": [0.95, 0.99]}
  baseline = {"learning_rate": 1e-4, "b2": 0.95}
  objective = lambda p: lr_bowl(1e-2)(p) + (0.0 if p["b2"] == 0.99 else 0.1)
  tuner = tuning.CoordinateDescentTuner(grid, baseline, edge_extension={"learning_rate": 3},
                                        trial_budget=12)
  best, _ = tuning.run_tuner(tuner, objective)
  assert best["b2"] == 0.99 and best["learning_rate"] == pytest.approx(1.111e-2)
  assert tuner.num_trials <= 12
  capped = tuning.CoordinateDescentTuner(grid, baseline, edge_extension={"learning_rate": 3},
                                         trial_budget=5)
  tuning.run_tuner(capped, objective)
  assert capped.num_trials == 5


def test_grid_tuner_is_done_only_when_no_extension_is_left():
  tuner = tuning.GridTuner({"learning_rate": [1e-4, 3e-4]}, edge_extension={"learning_rate": 1})
  for point in tuner.propose():
    tuner.observe(point, lr_bowl(1.0)(point))
  assert not tuner.done                  # the best sits at the top edge: one more to run
  (extra,) = tuner.propose()
  assert extra["learning_rate"] == pytest.approx(9e-4)
  tuner.observe(extra, lr_bowl(1.0)(extra))
  assert tuner.propose() == [] and tuner.done
