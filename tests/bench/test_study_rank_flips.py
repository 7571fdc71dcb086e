"""A planted crossing of two loss curves is a rank flip; parallel curves are not."""

import numpy as np
import pytest

from optbench_jax.bench import rank_flips

FRACTIONS = np.linspace(0.1, 1.0, 10)


def _curves(optimizer, losses, fractions=FRACTIONS, seeds=(0, 1)):
  return [{"optimizer": optimizer, "model": "130M", "params": 1.3e8, "tokens": 2.6e9,
           "chinchilla": 1.0, "batch_size": 256, "seed": s, "fraction": float(f),
           "eval_loss": float(l) + 1e-3 * s}
          for s in seeds for f, l in zip(fractions, losses)]


def test_planted_crossing_is_a_flip_with_its_pair_and_fraction():
  # b starts better and ends worse; the curves cross where 4 - 1.5 f = 3.7 - 1.0 f, f = 0.6.
  curves = (_curves("a", 4.0 - 1.5 * FRACTIONS) + _curves("b", 3.7 - 1.0 * FRACTIONS)
            + _curves("c", 5.0 - 1.0 * FRACTIONS))
  (group,) = rank_flips.rank_flips(curves)
  assert group.key == ("130M", 1.0, 256)
  assert group.flipped
  assert group.taus[-1] == pytest.approx(1.0)
  assert min(group.taus[:-1]) < 1
  (crossing,) = group.crossings
  assert crossing[:2] == ("a", "b")
  assert crossing[2] == pytest.approx(0.6, abs=1e-6)


def test_parallel_curves_are_not_a_flip():
  curves = (_curves("a", 4.0 - 1.0 * FRACTIONS) + _curves("b", 3.9 - 1.0 * FRACTIONS)
            + _curves("c", 3.8 - 1.0 * FRACTIONS))
  (group,) = rank_flips.rank_flips(curves)
  assert not group.flipped
  assert group.taus == pytest.approx([1.0] * len(FRACTIONS))
  assert group.crossings == []


def test_unaligned_fractions_are_interpolated_onto_a_common_grid():
  dense = np.linspace(0.0, 1.0, 21)
  curves = (_curves("a", 4.0 - 1.5 * dense, fractions=dense)
            + _curves("b", 3.7 - 1.0 * FRACTIONS, fractions=FRACTIONS))
  (group,) = rank_flips.rank_flips(curves)
  assert group.fractions == pytest.approx(FRACTIONS)
  assert group.flipped
  assert group.crossings[0][2] == pytest.approx(0.6, abs=1e-6)


def test_identical_rankings_of_five_are_exactly_tau_one():
  """scipy returns 1 - 1e-16 for some identical rankings of five; that is not a flip."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  from optbench_jax.bench.rank_flips import _kendall  # pylint: disable=import-outside-toplevel
  x = np.array([4.785, 4.975, 5.169, 5.811, 6.146])
  assert _kendall(x, x + 0.1) == 1.0
