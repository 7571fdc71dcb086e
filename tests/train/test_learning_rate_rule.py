"""Every learning rate of every optimizer follows the run's schedule (optim/factory_contract.py).

Measured from the updates, through the trainer's own build, on a tiny model:
the optimizer is fed the same fixed gradients at fixed parameters twice, once
under the schedule S and once under a constant schedule U with the same peaks
(weight decay 0, so every update is lr x a direction that does not depend on
the lr). For every parameter leaf, at step 0, mid-warmup, the peak and the
end, the update under S must equal schedule(t) / peak x the update under U,
i.e. that leaf's group moves at schedule(t) / peak x its configured learning
rate. A group that ignores the schedule moves at its full rate under S and
fails. Secondary learning rates (``*_learning_rate``, ``learning_rate_*``)
are set to their own peaks, distinct from ``learning_rate``.
"""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optbench_jax import models
from optbench_jax import optim as O
from optbench_jax import train
from optbench_jax.optim import schedule_free as schedule_free_lib
from optbench_jax.optim import factory_contract
from tests.train import tiny

STEPS, WARMUP = 12, 4
PROBES = (0, 2, 4, STEPS - 1)          # step 0, mid-warmup, the peak, the end
SCHEDULES = {
    "cosine": dict(name="cosine", warmup_steps=WARMUP, final_fraction=0.1),
    "wsd": dict(name="wsd", warmup_steps=WARMUP, decay_fraction=0.5, decay_shape="linear",
                final_fraction=0.0),
    "constant_warmup": dict(name="constant", warmup_steps=WARMUP),
}
PEAKS = {"prodigy": 1.0}               # Prodigy's learning_rate is a multiplier of its estimate


def _secondary_rates(name: str, peak: float) -> dict:
  """A distinct peak for every secondary learning-rate argument of ``name``'s factory."""
  signature = inspect.signature(O.registry.factory(name))
  return {arg: round(peak * 0.37, 8) for arg in signature.parameters
          if factory_contract.is_learning_rate(arg) and arg != "learning_rate"}


def _config(tmp_path, name: str, schedule: dict):
  config = tiny.micro_config(tmp_path, steps=STEPS)
  peak = PEAKS.get(name, 1e-3)
  config.optimizer.update(name=name, learning_rate=peak, weight_decay=0.0)
  config.optimizer.hparams = _secondary_rates(name, peak)
  config.optimizer.schedule.update(**schedule)
  return config


def _direction_source(name):
  """What moves at the learning rate: the updates, or schedule-free's z step."""
  if name != "schedule_free_adamw":
    return lambda updates, before, after: updates

  def z_step(updates, before, after):
    del updates
    find = lambda s: [n for n in jax.tree.leaves(   # pylint: disable=g-long-lambda
        s, is_leaf=lambda n: isinstance(n, schedule_free_lib.ScheduleFreeState))
        if isinstance(n, schedule_free_lib.ScheduleFreeState)][0]
    return jax.tree.map(jnp.subtract, find(after).z, find(before).z)
  return z_step


def probe_updates(config, name: str, tx=None) -> dict[int, dict]:
  """{step: what moved at that step} along fixed gradients at fixed parameters."""
  run = train.build(config, tiny.one_device())
  tx = run.optimizer.tx if tx is None else tx
  params = models.init_params(run.model_spec, jax.random.PRNGKey(0))
  rng = np.random.default_rng(7)
  draw = lambda: jax.tree.map(   # pylint: disable=g-long-lambda
      lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)
  source = _direction_source(name)

  @jax.jit
  def step(grads, hessian_grads, state):
    updates, new_state = tx.update(grads, state, params, hessian_grads_fn=lambda: hessian_grads,
                                   obj_fn=lambda p: optax.tree.norm(p))
    return source(updates, state, new_state), new_state

  state, out = tx.init(params), {}
  for t in range(STEPS):
    moved, state = step(draw(), draw(), state)
    if t in PROBES:
      out[t] = jax.device_get(moved)
  return out


def assert_follows(scheduled: dict, unit: dict, schedule, peak: float, label: str) -> None:
  for t in PROBES:
    factor = float(schedule(t)) / peak
    for path, (s, u) in zip(jax.tree_util.tree_flatten_with_path(scheduled[t])[0],
                            zip(jax.tree.leaves(scheduled[t]), jax.tree.leaves(unit[t]))):
      s, u = np.asarray(s, np.float64), np.asarray(u, np.float64)
      scale = max(np.max(np.abs(u)), 1e-30)
      # atol: float32 rounding of parameter-sized numbers (schedule-free's z differences)
      np.testing.assert_allclose(
          s, factor * u, rtol=2e-4, atol=max(2e-6 * scale, 2e-7),
          err_msg=f"{label}: {jax.tree_util.keystr(path[0])} at step {t} moves at "
                  f"{np.max(np.abs(s)) / scale:.4g} x its configured rate, the schedule says "
                  f"{factor:.4g}")


@pytest.mark.parametrize("name", O.registry.builtin_names())
def test_every_learning_rate_follows_the_schedule(name, tmp_path):
  unit = probe_updates(_config(tmp_path, name, dict(name="constant", warmup_steps=0)), name)
  assert any(np.any(np.asarray(x) != 0) for x in jax.tree.leaves(unit[STEPS - 1])), name
  for label, schedule in SCHEDULES.items():
    config = _config(tmp_path, name, schedule)
    if name == "schedule_free_adamw" and schedule["name"] != "constant":
      with pytest.raises(train.ConfigError, match="applies its own warmup"):
        train.build(config, tiny.one_device())
      continue
    scheduled = probe_updates(config, name)
    assert_follows(scheduled, unit, train.optimizer.make_schedule(config),
                   config.optimizer.learning_rate, f"{name} / {label}")


def test_a_group_that_ignores_the_schedule_fails(tmp_path):
  """The measurement catches Muon's AdamW branch at a constant rate (the old trainer's bug)."""
  config = _config(tmp_path, "muon", SCHEDULES["cosine"])
  unit = probe_updates(_config(tmp_path, "muon", dict(name="constant", warmup_steps=0)), "muon")
  schedule = train.optimizer.make_schedule(config)
  constant_adam = optax.chain(
      optax.clip_by_global_norm(config.optimizer.grad_clip),
      O.muon(schedule, weight_decay=0.0, adam_learning_rate=3.7e-4,
             batch_axes=lambda path, leaf: 1 if leaf.ndim == 3 else 0))
  with pytest.raises(AssertionError, match=r"embed.* at step 0 moves at 1 x"):
    assert_follows(probe_updates(config, "muon", tx=constant_adam), unit, schedule, 1e-3,
                   "muon with a constant adam_learning_rate")


def test_constant_schedule_honours_warmup(tmp_path):
  config = _config(tmp_path, "adamw", SCHEDULES["constant_warmup"])
  schedule = train.optimizer.make_schedule(config)
  assert [float(schedule(t)) for t in (0, 2, 4, 11)] == pytest.approx([0.0, 5e-4, 1e-3, 1e-3])


def test_schedule_free_gets_its_own_warmup(tmp_path, monkeypatch):
  """Schedule-free receives the run's warmup through its own ``warmup_steps`` and a constant lr."""
  seen = tiny.spy_on_factory(monkeypatch, "schedule_free_adamw")
  train.build(_config(tmp_path, "schedule_free_adamw", SCHEDULES["constant_warmup"]),
              tiny.one_device())
  assert seen["warmup_steps"] == WARMUP and seen["learning_rate"] == 1e-3
