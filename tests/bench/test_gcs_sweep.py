"""A sweep whose workdir is gs:// (GCS emulator): 2 real trials, the store, the rerun, the report."""

import math
import shutil
import sqlite3

import pytest

from optbench_jax import storage
from optbench_jax.bench import report, results_store, sweep, sweep_status
from tests.bench import test_integration


@pytest.mark.slow
def test_a_two_trial_sweep_in_gs_with_its_store_and_report(gcs, tmp_path):
  workdir = storage.join(gcs(), "sweep")
  out = sweep.run_sweep(test_integration.SPEC, workdir, parallel=2, log=lambda _: None)
  assert out.recorded["completed"] == 2, out
  assert {"results.sqlite", "sweep.json", "trials"} <= set(storage.listdir(workdir))
  trials = storage.listdir(storage.join(workdir, "trials"))
  assert len(trials) == 2
  for trial in trials:
    names = set(storage.listdir(storage.join(workdir, "trials", trial)))
    assert {"summary.json", "metrics.jsonl", "config.json", "trial.log", "checkpoints"} <= names
  # The bucket's store is the driver's: downloaded, it holds both results.
  local = str(tmp_path / "copy.sqlite")
  storage.download(storage.join(workdir, "results.sqlite"), local)
  with results_store.ResultsStore.open_existing(local) as store:
    results = store.latest()
  assert len(results) == 2 and all(r.workdir.startswith(workdir + "/trials/") for r in results)
  assert all(math.isfinite(r.final_eval_loss) and r.steps == 10 for r in results)
  # A rerun from another host (no local cache) reloads the store from the bucket: nothing runs.
  shutil.rmtree(storage.local_cache_dir(workdir, "sweeps"))
  again = sweep.run_sweep(test_integration.SPEC, workdir, log=lambda _: None)
  assert again.launched == 0 and again.skipped == 2
  # --status reads the bucket too.
  _, rows = sweep_status.collect(workdir)
  assert [r.state for r in rows] == ["completed", "completed"]
  # The report reads the bucket and writes into it.
  assert report.main(["report", workdir]) == 0
  assert "| adamw |" in storage.read_text(storage.join(workdir, "report.md"))
  assert storage.read_bytes(storage.join(workdir, "plots", "speedup_vs_budget.png"))[:4] == (
      b"\x89PNG")
  with pytest.raises(sqlite3.DatabaseError):   # the local copy is a real SQLite file
    sqlite3.connect(str(tmp_path / "copy.sqlite")).execute("SELECT * FROM nonexistent")


def test_report_and_sweep_on_an_unreachable_bucket_fail_with_one_line(gcs):
  with pytest.raises(report.ReportError, match="bucket gs://no-such-bucket does not exist"):
    report.check_run_dir("gs://no-such-bucket/sweep")
  with pytest.raises(report.ReportError, match="is not a directory"):
    report.check_run_dir(gcs())   # an empty prefix of a live bucket
  from optbench_jax.bench import sweep_config
  with pytest.raises(sweep_config.SweepConfigError, match="no-such-bucket does not exist"):
    sweep.run_sweep(test_integration.SPEC, "gs://no-such-bucket/sweep", log=lambda _: None)
