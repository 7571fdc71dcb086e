"""Tuning health: one-step neighbours of the best point, and best values on a grid's edge."""

from optbench_jax.bench import tuning_health

GRID = {"learning_rate": [1e-3, 3e-3, 1e-2], "weight_decay": [0.0, 0.1, 0.2]}


def _all_neighbours_of(best):
  return [best] + tuning_health.neighbours(GRID, best)


def test_interior_best_with_every_neighbour_run_is_healthy():
  best = {"learning_rate": 3e-3, "weight_decay": 0.1}
  tried = [{**p, "seed": 0} for p in _all_neighbours_of(best)]   # extra keys are ignored
  assert len(tried) == 5
  assert tuning_health.health(GRID, best, tried) == {
      "neighbours_run": True, "missing_neighbours": [], "on_edge": []}


def test_best_at_the_edge_of_a_numeric_grid_is_flagged():
  best = {"learning_rate": 1e-2, "weight_decay": 0.0}
  result = tuning_health.health(GRID, best, _all_neighbours_of(best))
  assert result["neighbours_run"]
  assert result["on_edge"] == ["learning_rate", "weight_decay"]
  # An edge point has one neighbour per hyperparameter.
  assert len(tuning_health.neighbours(GRID, best)) == 2


def test_missing_neighbour_is_listed():
  best = {"learning_rate": 3e-3, "weight_decay": 0.1}
  tried = [p for p in _all_neighbours_of(best) if p != {"learning_rate": 1e-2, "weight_decay": 0.1}]
  result = tuning_health.health(GRID, best, tried)
  assert not result["neighbours_run"]
  assert result["missing_neighbours"] == [{"learning_rate": 1e-2, "weight_decay": 0.1}]


def test_categorical_and_single_value_grids_are_never_on_edge():
  grid = {"nesterov": [False, True], "warmup_steps": [100]}
  best = {"nesterov": True, "warmup_steps": 100}
  result = tuning_health.health(grid, best, [best, {"nesterov": False, "warmup_steps": 100}])
  assert result == {"neighbours_run": True, "missing_neighbours": [], "on_edge": []}


def test_best_beyond_the_grid_after_edge_extension_is_on_edge():
  best = {"learning_rate": 3e-2, "weight_decay": 0.1}
  result = tuning_health.health(GRID, best, [best])
  assert result["on_edge"] == ["learning_rate"]
  assert {"learning_rate": 1e-2, "weight_decay": 0.1} in result["missing_neighbours"]
