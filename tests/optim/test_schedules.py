"""Schedules against closed-form values, jit safety and argument validation."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optbench_jax.optim import schedules


def values(schedule, steps):
  return np.array([float(schedule(s)) for s in steps])


def test_constant_and_linear():
  assert float(schedules.constant(3e-4)(123)) == pytest.approx(3e-4)
  lin = schedules.linear(1.0, total_steps=100, warmup_steps=10, final_fraction=0.1)
  np.testing.assert_allclose(values(lin, [0, 5, 10, 55, 100, 200]),
                             [0.0, 0.5, 1.0, 0.55, 0.1, 0.1], rtol=1e-6, atol=1e-7)


def test_cosine():
  cos = schedules.cosine(2.0, total_steps=110, warmup_steps=10)  # final fraction 0.1
  expected = [0.0, 1.0, 2.0, 0.2 + 1.8 * 0.5 * (1 + math.cos(math.pi * 0.5)), 0.2]
  np.testing.assert_allclose(values(cos, [0, 5, 10, 60, 110]), expected, rtol=1e-6, atol=1e-7)


def test_paper_cosine_quirk():
  sched = schedules.paper_cosine(1.0, total_steps=100, warmup_steps=20)
  low = 0.01
  assert float(sched(0)) == pytest.approx(low)  # warmup starts at lr/100
  mid = low + (1 - low) * 0.5 * (1 - math.cos(math.pi * 0.5))  # cosine-shaped warmup
  assert float(sched(10)) == pytest.approx(mid, rel=1e-6)
  assert float(sched(20)) == pytest.approx(1.0)
  assert float(sched(100)) == pytest.approx(low)


@pytest.mark.parametrize("shape, f", [
    ("linear", lambda p: 1 - p),
    ("cosine", lambda p: 0.5 * (1 + math.cos(math.pi * p))),
    ("sqrt", lambda p: 1 - math.sqrt(p)),
    ("square", lambda p: 1 - p * p),
    ("exp", lambda p: (math.exp(-5 * p) - math.exp(-5)) / (1 - math.exp(-5))),
    ("mirror_cosine", lambda p: 2 * (1 - p) - 0.5 * (1 + math.cos(math.pi * p))),
])
def test_wsd_shapes(shape, f):
  sched = schedules.wsd(1.0, total_steps=100, warmup_steps=10, decay_fraction=0.2,
                        decay_shape=shape, final_fraction=0.1)
  steps = [0, 5, 10, 50, 80, 85, 90, 100]
  expected = [0.0, 0.5, 1.0, 1.0, 1.0] + [0.1 + 0.9 * f(p) for p in (0.25, 0.5, 1.0)]
  np.testing.assert_allclose(values(sched, steps), expected, rtol=1e-5, atol=1e-6)


def test_jit_safe_on_traced_steps():
  sched = schedules.wsd(1.0, total_steps=100, warmup_steps=10, decay_shape="cosine")
  steps = jnp.arange(0, 101, 7)
  np.testing.assert_allclose(jax.jit(jax.vmap(sched))(steps), values(sched, np.arange(0, 101, 7)),
                             rtol=1e-6, atol=1e-7)


def test_create_by_name():
  sched = schedules.create("cosine", peak=1.0, total_steps=10)
  assert float(sched(0)) == pytest.approx(1.0)
  with pytest.raises(ValueError, match="unknown schedule"):
    schedules.create("cosin", peak=1.0, total_steps=10)


@pytest.mark.parametrize("build, kwargs, match", [
    (schedules.cosine, dict(peak=-1.0, total_steps=10), "learning rate"),
    (schedules.cosine, dict(peak=float("nan"), total_steps=10), "learning rate"),
    (schedules.cosine, dict(peak=1.0, total_steps=10, warmup_steps=11), "warmup_steps"),
    (schedules.linear, dict(peak=1.0, total_steps=0), "total_steps"),
    (schedules.cosine, dict(peak=1.0, total_steps=10, final_fraction=1.5), "final_fraction"),
    (schedules.wsd, dict(peak=1.0, total_steps=10, decay_shape="cubic"), "decay_shape"),
    (schedules.wsd, dict(peak=1.0, total_steps=10, warmup_steps=9, decay_fraction=0.5),
     "exceed"),
    (schedules.constant, dict(learning_rate=-1.0), "learning_rate"),
])
def test_bad_arguments(build, kwargs, match):
  with pytest.raises(ValueError, match=match):
    build(**kwargs)
