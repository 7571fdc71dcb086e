"""benchmarks/lr_transfer.py's analysis on planted sweeps: the optimum, its drift per doubling
of width and the transfer regret, with known answers (no training)."""

import math

import pytest

from tests import benchmark_scripts


def _load():
  return benchmark_scripts.load("lr_transfer")


LRS = [2.0 ** k for k in range(-9, 0)]


def _parabola(log2_best: float):
  return lambda lr: 2.0 + 0.1 * (math.log2(lr) - log2_best) ** 2


def test_an_interior_optimum_is_the_parabolas_vertex():
  lt = _load()
  best, inside = lt.optimum(LRS, [_parabola(-4.3)(lr) for lr in LRS])
  assert inside and best == pytest.approx(2.0 ** -4.3, rel=1e-9)


def test_an_optimum_on_the_edge_is_the_grid_point_and_said_so():
  lt = _load()
  best, inside = lt.optimum(LRS, [_parabola(2.0)(lr) for lr in LRS])
  assert not inside and best == LRS[-1]
  best, _ = lt.optimum(LRS, [math.inf] * 3 + [_parabola(-5.4)(lr) for lr in LRS[3:]])
  assert best == pytest.approx(2.0 ** -5.4)  # its neighbours are finite


def test_drift_and_regret_of_an_optimum_that_halves_per_doubling():
  """lr*(d) = 2^-3 (32 / d): x0.5 per doubling; the d = 32 rate costs the widest width
  0.1 (3 doublings)^2 = 0.9, and under a rule that transfers (x1) it costs nothing."""
  lt = _load()
  widths = [32, 64, 128, 256]
  runs = {}
  for w in widths:
    halving = _parabola(-3 - math.log2(w / 32))
    for lr in LRS:
      runs[lt.run_key("adamw", "standard", w, lr)] = halving(lr)
      runs[lt.run_key("adamw", "mup", w, lr)] = _parabola(-3)(lr)
  out = lt.summarise(runs, widths, ["adamw"], ["standard", "mup"], lambda _: LRS)
  standard, mup = out["adamw/standard"], out["adamw/mup"]
  assert standard["factor_per_doubling"] == pytest.approx(0.5, rel=1e-9)
  assert standard["transfer_regret"] == pytest.approx(0.9, rel=1e-9)
  assert mup["factor_per_doubling"] == pytest.approx(1.0, rel=1e-9)
  assert mup["transfer_regret"] == pytest.approx(0.0, abs=1e-12)


def test_a_rate_that_diverges_at_the_widest_width_has_infinite_regret():
  lt = _load()
  widths = [32, 256]
  runs = {lt.run_key("adamw", "standard", 32, lr): _parabola(-1)(lr) for lr in LRS}
  runs.update({lt.run_key("adamw", "standard", 256, lr): (_parabola(-4)(lr) if lr < 0.25
                                                          else math.inf) for lr in LRS})
  out = lt.summarise(runs, widths, ["adamw"], ["standard"], lambda _: LRS)
  assert math.isinf(out["adamw/standard"]["transfer_regret"])


def test_hyperballs_adam_branch_moves_with_the_swept_rate():
  """Its Adam branch (embedding, vectors) takes the authors' ratio of the swept rate, so the
  sweep is not held back by a fixed embedding rate at small width."""
  lt = _load()
  for lr in (0.01, 0.2):
    c = lt.run_config("/nonexistent", "adamh", "standard", 32, 32, lr, 10, init_std=0.1)
    assert c.optimizer.hparams["adam_learning_rate"] == pytest.approx(0.4 * lr)
    assert c.model.init_std == 0.1
  assert "adam_learning_rate" not in lt.run_config("/x", "adamw", "mup", 64, 32, 0.01,
                                                    10).optimizer.hparams
