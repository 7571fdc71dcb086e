"""train/dynamics.py: per-matrix weight and update norms, in metrics.jsonl and dynamics.png."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optbench_jax import train
from optbench_jax.train import dynamics
from optbench_jax.train import metrics as metrics_lib
from tests.train import tiny


def two_layer_config(data_dir, **train_kwargs):
  config = tiny.micro_config(data_dir, **train_kwargs)
  config.model.num_layers = 2
  config.optimizer.learning_rate = 3e-2
  config.optimizer.schedule.update(name="constant", warmup_steps=0)
  return config


def expected_metrics(old, new):
  """The module's formulas in float64 numpy; the angle through the arccos definition."""
  old, new = np.asarray(old, np.float64), np.asarray(new, np.float64)
  delta = new - old
  norm = np.linalg.norm
  cosine = np.sum(old * new) / (norm(old) * norm(new))
  values = dict(weight_norm=norm(new), update_norm=norm(delta),
                relative_update=norm(delta) / norm(old),
                angular_update=np.arccos(np.clip(cosine, -1, 1)))
  if old.ndim == 2:
    v = np.asarray(jax.random.normal(jax.random.PRNGKey(0), old.shape[-1:], jnp.float32),
                   np.float64)
    v /= norm(v)
    for _ in range(dynamics.POWER_ITERATIONS):
      v = delta.T @ (delta @ v)
      v /= norm(v)
    values.update(update_rms=norm(delta) / np.sqrt(delta.size), update_top_sv=norm(delta @ v))
  return values


def test_one_step_equals_hand_computed_norms(tmp_path):
  run = train.build(two_layer_config(tmp_path), tiny.one_device())
  state = run.create_state(seed=0)
  copy, measure = dynamics.make_measure(run.state_shardings.params, run.mesh)
  before = copy(state.params)
  tokens = np.random.default_rng(0).integers(0, 128, size=(16, 17), dtype=np.int32)
  state, _ = run.train_step(state, {"inputs": jnp.asarray(tokens[:, :-1]),
                                    "targets": jnp.asarray(tokens[:, 1:])})
  got = dynamics.to_record(measure(before, state.params))

  old = {"layers.1.attn.q_proj.kernel": before["layers"]["attn"]["q_proj"]["kernel"][1],
         "layers.0.mlp.down_proj.kernel": before["layers"]["mlp"]["down_proj"]["kernel"][0],
         "layers.0.attn_norm.scale": before["layers"]["attn_norm"]["scale"][0],
         "embed.embedding": before["embed"]["embedding"]}
  new = {"layers.1.attn.q_proj.kernel": state.params["layers"]["attn"]["q_proj"]["kernel"][1],
         "layers.0.mlp.down_proj.kernel": state.params["layers"]["mlp"]["down_proj"]["kernel"][0],
         "layers.0.attn_norm.scale": state.params["layers"]["attn_norm"]["scale"][0],
         "embed.embedding": state.params["embed"]["embedding"]}
  for name in old:
    want = expected_metrics(old[name], new[name])
    assert want["update_norm"] > 0
    for metric, value in want.items():
      np.testing.assert_allclose(got[f"dynamics/{name}/{metric}"], value, rtol=2e-5,
                                 err_msg=f"{name} {metric}")
    if "update_top_sv" in want:   # power iteration: a lower bound of sigma_max, and close
      sigma = np.linalg.svd(np.asarray(new[name], np.float64) - np.asarray(old[name]),
                            compute_uv=False)[0]
      assert 0.9 * sigma <= got[f"dynamics/{name}/update_top_sv"] <= sigma * (1 + 1e-5)
  assert "dynamics/layers.0.attn_norm.scale/update_top_sv" not in got   # vectors: norms only
  # Every leaf, per layer for the stacked ones: 2 layers x 9 stacked leaves + embed + final norm.
  names = {key.split("/")[1] for key in got}
  assert len(names) == 2 * 9 + 2


def test_the_run_records_dynamics_every_n_steps_and_plots_them(tmp_path):
  config = two_layer_config(tmp_path / "data", steps=4, dynamics_every=2)
  summary = train.run(config, str(tmp_path / "work"), devices=tiny.one_device())
  assert summary["status"] == "completed"
  records = metrics_lib.read_records(tmp_path / "work" / "metrics.jsonl")
  measured = [r for r in records if any(k.startswith("dynamics/") for k in r)]
  assert [r["step"] for r in measured] == [2, 4]
  for metric in dynamics.METRICS:
    assert f"dynamics/layers.1.attn.q_proj.kernel/{metric}" in measured[0]
  assert all(np.isfinite(v) for r in measured for v in r.values())
  assert (tmp_path / "work" / "dynamics.png").stat().st_size > 0
  series = dynamics.kind_series(measured, "angular_update")
  assert "layers.attn.q_proj.kernel" in series and [s for s, _ in series["embed.embedding"]] == [
      2, 4]


def test_off_runs_nothing_extra(tmp_path, monkeypatch):
  """dynamics_every = 0: the same train step, no measurement built, no records, no figure."""
  off, on = (two_layer_config(tmp_path / "data", steps=2, dynamics_every=n) for n in (0, 1))
  run_off, run_on = (train.build(c, tiny.one_device()) for c in (off, on))
  state = run_off.create_state(seed=0)
  batch = {k: jnp.zeros((16, 16), jnp.int32) for k in ("inputs", "targets")}
  assert (run_off.train_step.lower(state, batch).as_text()
          == run_on.train_step.lower(state, batch).as_text())

  def forbidden(*args, **kwargs):
    raise AssertionError("dynamics measured with train.dynamics_every = 0")
  monkeypatch.setattr(dynamics, "make_measure", forbidden)
  train.run(off, str(tmp_path / "work"), devices=tiny.one_device())
  records = metrics_lib.read_records(tmp_path / "work" / "metrics.jsonl")
  assert not any(k.startswith("dynamics/") for r in records for k in r)
  assert not os.path.exists(tmp_path / "work" / "dynamics.png")


@pytest.mark.parametrize("bad", [-1, 1.5])
def test_bad_dynamics_every_is_one_config_error(bad):
  from optbench_jax import config as config_lib  # pylint: disable=import-outside-toplevel
  with pytest.raises(config_lib.ConfigError, match=r"^config\.train\.dynamics_every must be"):
    config_lib.resolve({"train": {"dynamics_every": bad}})
