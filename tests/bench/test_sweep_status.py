"""``--status`` (bench/sweep_status.py) and the live progress (bench/sweep_progress.py), with the fake trainer."""

import io
import os
import subprocess
import sys
import time


from optbench_jax.bench import sweep_progress, sweep_status
from tests.bench import test_sweep as sweep_tests

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_status_counts_done_failed_interrupted_and_left(tmp_path, monkeypatch):
  spec = sweep_tests.make_sweep()
  monkeypatch.setenv("FAKE_PREEMPT_AT", "5")     # every trial stops part-way: interrupted
  out = sweep_tests.run(spec, tmp_path)
  assert out.launched == 5      # the grid; the best is re-run on seed 1 once all are done
  _, rows = sweep_status.collect(str(tmp_path))
  states = {(r.hparams["learning_rate"], r.seed): r.state for r in rows}
  # lr 0.5 crashes at step 2 and 0.3 is NaN at step 3, both before the preemption at 5.
  assert states[(0.5, 0)] == "failed" and states[(0.3, 0)] == "diverged"
  assert sum(1 for r in rows if r.state == "interrupted") == 3
  assert all(r.steps_done == 5 for r in rows if r.state == "interrupted")
  monkeypatch.delenv("FAKE_PREEMPT_AT")
  sweep_tests.run(spec, tmp_path)        # resumes them; the best is then re-run on seed 1
  _, rows = sweep_status.collect(str(tmp_path))
  counts = sweep_status.counts(rows)
  assert counts == {"completed": 3, "diverged": 2, "running": 0, "rescheduling": 0,
                    "interrupted": 0, "failed": 1, "pending": 0}, counts
  # The CLI prints the table without starting anything.
  result = subprocess.run([sys.executable, "-m", "trainers.sweep", f"--workdir={tmp_path}",
                           "--status"], cwd=REPO, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  assert "done 5 (3 completed, 2 diverged)" in " ".join(result.stdout.split())
  assert "failed 1" in result.stdout


def test_a_trial_the_live_driver_reschedules_is_not_shown_as_interrupted(tmp_path, monkeypatch):
  """Between a lost node and the next attempt (a cluster executor), the trial is the live
  driver's to restart: --status says so instead of inviting a manual rerun."""
  import json  # pylint: disable=import-outside-toplevel
  from optbench_jax import workdir_files, workdir_lock  # pylint: disable=import-outside-toplevel
  monkeypatch.setenv("FAKE_PREEMPT_AT", "5")
  sweep_tests.run(sweep_tests.make_sweep(), tmp_path)
  _, rows = sweep_status.collect(str(tmp_path))
  trial = next(r for r in rows if r.state == "interrupted")
  marker = tmp_path / "trials" / trial.trial_id / workdir_files.RESCHEDULING
  marker.write_text(json.dumps({"retry": 1, "of": 3, "time": time.time()}))
  states = lambda: {r.trial_id: (r.state, r.note) for r in sweep_status.collect(str(tmp_path))[1]}
  assert states()[trial.trial_id][0] == "interrupted"     # no live driver: rerun it
  time.sleep(0.01)
  lock = workdir_lock.for_directory(str(tmp_path), "sweep driver").acquire()
  try:
    stale = states()[trial.trial_id][0]   # a killed driver's marker: the live one restarts
    marker.write_text(json.dumps({"retry": 1, "of": 3, "time": time.time()}))
    state, note = states()[trial.trial_id]
  finally:
    lock.release()
  assert stale == "interrupted", stale
  assert state == "rescheduling" and note.startswith("node lost; retry 1 of 3"), note


def test_status_of_a_fresh_sweep_lists_the_grid_as_pending(tmp_path):
  spec = sweep_tests.make_sweep()
  from optbench_jax.bench import sweep   # pylint: disable=import-outside-toplevel
  sweep.SweepRunner(spec, str(tmp_path), launcher=sweep_tests.never_launch).close()
  _, rows = sweep_status.collect(str(tmp_path))
  assert [r.state for r in rows] == ["pending"] * 5   # the grid on seeds[0]; replicas later


def test_status_in_80_columns_never_cuts_a_trial_id(tmp_path):
  """Piped or on a narrow terminal, every trial id is printed whole (the ids are what tell
  the rows apart); the other columns wrap instead."""
  from rich.console import Console   # pylint: disable=import-outside-toplevel
  from optbench_jax.bench import sweep   # pylint: disable=import-outside-toplevel
  sweep.SweepRunner(sweep_tests.make_sweep(), str(tmp_path),
                    launcher=sweep_tests.never_launch).close()
  out = io.StringIO()
  sweep_status.render(str(tmp_path), Console(file=out, width=80, force_terminal=False))
  _, rows = sweep_status.collect(str(tmp_path))
  assert rows and all(r.trial_id in out.getvalue() for r in rows), out.getvalue()
  assert "…" not in out.getvalue()


def test_status_of_a_directory_without_a_sweep_is_one_error(tmp_path):
  result = subprocess.run([sys.executable, "-m", "trainers.sweep", f"--workdir={tmp_path}",
                           "--status"], cwd=REPO, capture_output=True, text=True, timeout=120)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1].startswith("error: ")
  assert "holds no sweep" in result.stderr


def test_progress_without_a_terminal_is_plain_lines_with_a_time_estimate():
  lines = []
  progress = sweep_progress.SweepProgress(parallel=2, stream=io.StringIO(), log=lines.append)
  with progress:
    progress.update(sweep_progress.Counts(done=0, known=4, running=2, diverged=0, failed=0))
    progress.update(sweep_progress.Counts(done=0, known=4, running=2, diverged=0, failed=0))
    progress.trial_finished(60.0)
    progress.update(sweep_progress.Counts(done=1, known=4, running=2, diverged=1, failed=0))
  assert len(lines) == 2                      # unchanged counts print nothing
  assert lines[0].startswith("[sweep] progress: 0/4 done") and "left ~?" in lines[0]
  assert "1/4 done" in lines[1] and "diverged 1" in lines[1]
  assert "left ~1m30s" in lines[1]            # 60 s x 3 trials left / 2 at once


def test_progress_on_a_terminal_is_a_rich_bar(monkeypatch):
  monkeypatch.setenv("COLUMNS", "200")
  class Terminal(io.StringIO):
    def isatty(self):
      return True
  stream = Terminal()
  progress = sweep_progress.SweepProgress(parallel=1, stream=stream)
  assert progress.live
  with progress:
    progress.update(sweep_progress.Counts(done=2, known=5, running=1, diverged=0, failed=1))
  assert "2/5" in stream.getvalue() and "failed 1" in stream.getvalue()


def test_sweep_logs_progress_lines_when_not_on_a_terminal(tmp_path):
  lines = []
  from optbench_jax.bench import sweep   # pylint: disable=import-outside-toplevel
  sweep.run_sweep(sweep_tests.make_sweep(), str(tmp_path), launcher=sweep_tests.fake_launcher,
                  poll_interval_s=0.02, log=lines.append)
  progress = [l for l in lines if l.startswith("[sweep] progress:")]
  assert progress and progress[-1].startswith("[sweep] progress: 6/6 done")
