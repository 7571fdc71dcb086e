"""A sweep's pre-flight is the trainer's own check (``train.check``), with the trainer's message."""

import pytest

from optbench_jax import train
from optbench_jax.bench import sweep, sweep_config
from tests.bench.test_sweep import make_sweep, never_launch


def _trainer_error(spec, optimizer, point):
  plain = sweep_config.as_plain(spec)
  base = sweep_config.load_python_config(plain["base_config"])
  config = sweep_config.trial_config(plain, base, optimizer, point, plain["budgets"][0],
                                     plain["seeds"][0])
  with pytest.raises(train.ConfigError) as error:
    train.check(config)
  return str(error.value)


@pytest.mark.parametrize("optimizer,spec_changes", [
    # The registry alone builds it; the trainer refuses a decay schedule for schedule-free.
    ("schedule_free_adamw", {}),
    # A model the trainer rejects (d_model 128 is not divisible by 3 heads).
    ("adamw", {"overrides": {"optimizer.schedule.warmup_steps": 5, "model.num_heads": 3}}),
])
def test_a_trial_the_trainer_rejects_is_rejected_before_any_launch(optimizer, spec_changes,
                                                                   tmp_path):
  spec = make_sweep(optimizers={optimizer: dict(grid={"learning_rate": [1e-3]})},
                    reference_optimizer=optimizer, **spec_changes)
  message = _trainer_error(spec, optimizer, {"learning_rate": 1e-3})
  with pytest.raises(sweep_config.SweepConfigError) as error:
    sweep.run_sweep(spec, str(tmp_path), launcher=never_launch, log=lambda _: None)
  assert message in str(error.value)
  assert "\n" not in str(error.value)


def test_trials_proposed_later_are_checked_before_launch(tmp_path):
  """Edge extension / coordinate descent points: refused at launch, recorded failed."""
  runner = sweep.SweepRunner(make_sweep(), str(tmp_path), launcher=never_launch,
                             log=lambda _: None)
  try:
    trial = sweep.Trial("adamw", {"learning_rate": -1.0, "b1": 0.9, "b2": 0.95}, 40, 0)
    rejected = runner._preflight(trial)   # pylint: disable=protected-access
    assert rejected is not None and rejected.status == "failed"
    assert "the trainer rejects this trial" in rejected.reason and "learning" in rejected.reason
    assert runner._preflight(sweep.Trial("adamw", {"learning_rate": 1e-3, "b1": 0.9,  # pylint: disable=protected-access
                                                   "b2": 0.95}, 40, 0)) is None
  finally:
    runner.close()
