"""The speedup fit recovers planted laws and multipliers from synthetic curves."""

import math

import numpy as np
import pytest

from optbench_jax.bench import speedup

ALPHA, BETA, GAMMA = 400.0, 0.3, 2.5
BUDGETS = [1e8, 2e8, 4e8, 8e8, 1.6e9]


def planted_loss(tokens, multiplier=1.0):
  # An optimizer with a token multiplier k reaches AdamW's loss at k * D.
  return ALPHA * (multiplier * np.asarray(tokens)) ** (-BETA) + GAMMA


def test_fit_recovers_planted_law():
  law = speedup.fit_power_law(BUDGETS, planted_loss(BUDGETS))
  assert law.alpha == pytest.approx(ALPHA, rel=1e-3)
  assert law.beta == pytest.approx(BETA, rel=1e-4)
  assert law.gamma == pytest.approx(GAMMA, abs=1e-5)


def test_fixed_gamma_fits_two_budgets():
  law = speedup.fit_power_law(BUDGETS[:2], planted_loss(BUDGETS[:2]), gamma=GAMMA)
  assert law.beta == pytest.approx(BETA, rel=1e-6)
  assert law.alpha == pytest.approx(ALPHA, rel=1e-5)


@pytest.mark.parametrize("multiplier", [0.7, 1.0, 1.4, 2.0])
def test_speedup_recovers_multiplier(multiplier):
  law = speedup.fit_power_law(BUDGETS, planted_loss(BUDGETS))
  for d in BUDGETS:
    loss = float(planted_loss(d, multiplier))
    assert speedup.speedup(law, loss, d) == pytest.approx(multiplier, rel=1e-3)


def test_effective_tokens_formula_matches_definition():
  law = speedup.PowerLaw(ALPHA, BETA, GAMMA)
  loss = 3.4
  expected = ((loss - GAMMA) / ALPHA) ** (-1 / BETA)
  assert law.effective_tokens(loss) == pytest.approx(expected, rel=1e-12)
  assert law.effective_tokens(GAMMA - 0.1) == math.inf
  assert law.effective_tokens(math.inf) == 0.0


def test_bootstrap_interval_covers_truth_and_shrinks_with_seeds():
  rng = np.random.default_rng(0)
  noise = 0.005

  def seeds(d, k, n):
    return planted_loss(d, k) + noise * rng.standard_normal(n)

  widths = []
  for n in (4, 64):
    reference = {d: seeds(d, 1.0, n) for d in BUDGETS}
    est = speedup.bootstrap_speedup(reference, seeds(4e8, 1.5, n), 4e8, num_bootstrap=200)
    assert est.low <= 1.5 <= est.high, est
    assert est.low < est.point < est.high
    widths.append(est.high - est.low)
  assert widths[1] < widths[0]


def test_bootstrap_single_seed_is_degenerate_interval():
  reference = {d: [float(planted_loss(d))] for d in BUDGETS}
  est = speedup.bootstrap_speedup(reference, [float(planted_loss(2e8, 1.3))], 2e8,
                                  num_bootstrap=20)
  assert est.point == pytest.approx(1.3, rel=1e-3)
  assert est.low == pytest.approx(est.point) and est.high == pytest.approx(est.point)


def test_too_few_budgets_and_bad_gamma_raise():
  with pytest.raises(ValueError, match="needs >= 3 distinct budgets"):
    speedup.fit_power_law(BUDGETS[:2], planted_loss(BUDGETS[:2]))
  with pytest.raises(ValueError, match="below every reference loss"):
    speedup.fit_power_law(BUDGETS, planted_loss(BUDGETS), gamma=10.0)
  with pytest.raises(ValueError, match="finite"):
    speedup.fit_power_law(BUDGETS, [3.0, math.nan, 2.9, 2.8, 2.7])


def test_wall_clock_adjustment():
  overhead = speedup.step_time_overhead([0.2, 0.22, 0.21], [0.1, 0.1, 0.11])
  assert overhead == pytest.approx(0.21 / 0.1)
  assert speedup.wall_clock_speedup(1.4, overhead) == pytest.approx(1.4 / 2.1)
  assert math.isnan(speedup.step_time_overhead([], [0.1]))
