"""Results store: round trip, refusal of foreign/newer stores, never overwriting."""

import math
import sqlite3

import pytest

from optbench_jax.bench import results_store as rs


def make_result(trial_id="t1", status=rs.COMPLETED, loss=3.25, **kw):
  fields = dict(trial_id=trial_id, optimizer="adamw", budget_steps=100, seed=0,
                hparams={"learning_rate": 1e-3, "b2": 0.95}, status=status, final_eval_loss=loss,
                eval_curve=((50, 3.5), (100, loss)), wall_time_s=12.5, steps=100, tokens=6400,
                budget_tokens=6400, step_time_s=0.1, params=1000, loss_floor=1.5,
                workdir="/tmp/x", config={"optimizer": {"name": "adamw"}})
  fields.update(kw)
  return rs.TrialResult(**fields)


def test_round_trip(tmp_path):
  path = str(tmp_path / "results.sqlite")
  written = [make_result("a"), make_result("b", rs.DIVERGED, math.nan, reason="loss nan at 3",
                                           eval_curve=((50, math.nan),))]
  with rs.ResultsStore(path, "fp1", "s") as store:
    for r in written:
      store.record(r)
  with rs.ResultsStore(path, "fp1") as store:
    back = store.attempts()
  assert back[0] == written[0]
  assert back[1].reason == "loss nan at 3" and math.isnan(back[1].final_eval_loss)
  assert math.isnan(back[1].eval_curve[0][1])
  assert back[1].objective == math.inf and back[0].objective == 3.25
  assert rs.read_meta(path)["schema_version"] == str(rs.SCHEMA_VERSION)


def test_refuses_store_of_another_sweep(tmp_path):
  path = str(tmp_path / "results.sqlite")
  rs.ResultsStore(path, "fp1", "first").close()
  with pytest.raises(rs.StoreMismatchError, match="belongs to another sweep"):
    rs.ResultsStore(path, "fp2")


def test_refuses_newer_schema_and_non_stores(tmp_path):
  path = str(tmp_path / "results.sqlite")
  rs.ResultsStore(path, "fp1").close()
  db = sqlite3.connect(path)
  with db:
    db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(rs.SCHEMA_VERSION + 1),))
  db.close()
  with pytest.raises(rs.StoreMismatchError, match="newer than this code"):
    rs.ResultsStore(path, "fp1")
  junk = tmp_path / "junk.sqlite"
  junk.write_text("not a database at all" * 100)
  with pytest.raises(rs.StoreMismatchError, match="not an optbench_jax results store"):
    rs.ResultsStore(str(junk), "fp1")


def test_never_overwrites(tmp_path):
  path = str(tmp_path / "results.sqlite")
  with rs.ResultsStore(path, "fp") as store:
    store.record(make_result("t", rs.FAILED, math.nan, reason="exit code 1"))
    assert store.final_result("t") is None
    store.record(make_result("t", rs.COMPLETED, 3.0))
    with pytest.raises(rs.DuplicateResultError):
      store.record(make_result("t", rs.COMPLETED, 2.0))
    with pytest.raises(rs.DuplicateResultError):
      store.record(make_result("t", rs.FAILED, math.nan))
    history = store.attempts("t")
    assert [h.status for h in history] == [rs.FAILED, rs.COMPLETED]
    assert store.final_result("t").final_eval_loss == 3.0
    assert [r.final_eval_loss for r in store.latest()] == [3.0]
    with pytest.raises(ValueError, match="status"):
      store.record(make_result("u", "running"))
