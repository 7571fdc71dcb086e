"""A sweep whose Ray cluster loses its head: the driver says so at once, and a rerun resumes.

A real cluster (``tests/ray_cluster.py``: a head and a worker on loopback addresses, one
``trial_slot`` each) runs a 4-trial grid of the fake trainer (``tests/bench/fake_trainer.py``)
through the sweep command (``tests/bench/fake_sweep_cli.py``, ``trainers.sweep`` with the fake
as the trial command). Once a trial is recorded and another is under way, the head's GCS and
raylet are SIGKILLed: the whole cluster is gone, not one node. A fresh one-node cluster then
runs the command the driver printed. Every wait has a timeout.
"""

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

from optbench_jax import workdir_files
from optbench_jax.bench import ray_executor, results_store, sweep_config, sweep_status
from tests import ray_cluster

pytestmark = pytest.mark.slow
ray = pytest.importorskip("ray")

SPEC = dict(
    name="ray-head-loss", base_config="configs/tiny.py", trial_resources={"trial_slot": 1},
    overrides={"optimizer": {"schedule": {"warmup_steps": 2}}, "train": {"eval_every": 10}},
    budgets=[40], seeds=[0], strategy="grid",
    divergence=dict(loss_threshold=100.0, after_steps=2000, after_fraction=1.0),
    speedup=dict(gamma="loss_floor", num_bootstrap=10),
    optimizers={"adamw": dict(baseline={"b1": 0.9, "b2": 0.99},
                              grid={"learning_rate": [1e-3, 3e-3, 1e-2, 2e-2]})})
EXIT_BOUND_S = 40.0


def test_the_head_watch_waits_out_its_grace_then_names_the_cluster():
  answers = []

  def probe(address):
    return answers.pop(0) if answers else "Connection refused"
  watch = ray_executor.HeadWatch("ray://10.0.0.1:10001", "10.0.0.1:10001", probe, every_s=0.05,
                                 grace_s=0.3)
  answers[:] = [None]
  watch.check()                       # answers: alive
  answers[:] = ["Connection refused", None]
  time.sleep(0.06)
  watch.check()                       # one miss is not a dead head
  time.sleep(0.06)
  watch.check()
  assert watch.gone is None
  t0 = time.monotonic()
  with pytest.raises(ray_executor.ClusterGone, match=r"the Ray cluster at ray://10.0.0.1:10001 "
                     r"is gone: its head \(10.0.0.1:10001\) has not answered .*Connection refused"):
    watch.confirm()                   # silent from now on
  assert 0.25 < time.monotonic() - t0 < 2.0
  with pytest.raises(ray_executor.ClusterGone):   # and stays gone
    watch.check()
  ray_executor.HeadWatch("auto", None, probe).confirm()   # nothing to probe: taken as alive


def test_a_call_through_a_dead_head_is_left_behind_not_waited_for():
  """Ray blocks a placement group or an actor creation on a dead GCS for a minute, then
  aborts the process: the driver gives up on the call once the head is gone."""
  alive = ray_executor.HeadWatch("h:1", "h:1", lambda address: None, every_s=0.05, grace_s=0.2)
  assert alive.call(lambda a, b: a + b, 2, 3) == 5
  with pytest.raises(KeyError):
    alive.call({}.__getitem__, "missing")
  dead = ray_executor.HeadWatch("h:1", "h:1", lambda address: "Connection refused",
                                every_s=0.05, grace_s=0.2)
  t0 = time.monotonic()
  with pytest.raises(ray_executor.ClusterGone):
    dead.call(time.sleep, 30)
  assert time.monotonic() - t0 < 2.0


def _env(**extra):
  return dict(os.environ, **ray_cluster.DRIVER_ENV, JAX_PLATFORMS="cpu", **extra)


def _store(workdir):
  path = os.path.join(str(workdir), "results.sqlite")
  if not os.path.exists(path):
    return {}
  with results_store.ResultsStore.open_existing(path) as store:
    return {r.trial_id: r for r in store.latest()}


def _steps(trial_dir):
  return max((r.get("step", 0) for r in workdir_files.read_metrics(str(trial_dir))), default=0)


def _wait(condition, what, timeout, proc):
  deadline = time.monotonic() + timeout
  while not condition():
    if proc.poll() is not None:
      raise AssertionError(f"the driver exited ({proc.returncode}) before {what}")
    if time.monotonic() > deadline:
      raise TimeoutError(f"no {what} after {timeout} s")
    time.sleep(0.2)


def test_a_dead_head_ends_the_sweep_at_once_saying_what_is_saved_and_what_to_rerun(tmp_path):
  t_start = time.monotonic()
  config = tmp_path / "spec.py"
  config.write_text("import ml_collections\ndef get_config():\n"
                    f"  return ml_collections.ConfigDict({SPEC!r})\n")
  workdir = tmp_path / "w"
  temp_dirs = [tempfile.mkdtemp(prefix="ray", dir="/tmp") for _ in range(2)]   # short socket paths
  # 40 steps of 0.25 s: a trial takes ~10 s on the first cluster, ~1 s on the second.
  first = ray_cluster.LocalRayCluster(temp_dirs[0], env=_env(FAKE_STEP_SLEEP="0.25"))
  second = None
  driver = None
  try:
    first.start({"worker1": {"trial_slot": 1}}, {"trial_slot": 1})
    argv = [sys.executable, "-m", "tests.bench.fake_sweep_cli", f"--config={config}",
            f"--workdir={workdir}", "--executor=ray", f"--ray_address={first.address}",
            "--parallel=2"]
    out_path = tmp_path / "driver.log"
    with open(out_path, "w") as out:
      driver = subprocess.Popen(argv, cwd=sweep_config.REPO_ROOT, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                env=_env(PYTHONPATH=sweep_config.REPO_ROOT))
    trials = workdir / "trials"

    def one_saved_one_under_way():   # (the other far from its end: it is cut, not recorded)
      done = _store(workdir)
      return bool(done) and trials.exists() and any(
          d not in done and 3 <= _steps(trials / d) <= 20 for d in os.listdir(trials))
    _wait(one_saved_one_under_way, "a recorded trial and another at step 3", 120, driver)
    t_up = time.monotonic()
    assert first.kill_services("head"), "no GCS / raylet under the head"
    t_kill = time.monotonic()
    try:
      code = driver.wait(timeout=EXIT_BOUND_S + 30)
    except subprocess.TimeoutExpired:
      code = None
    exit_s = time.monotonic() - t_kill
    text = out_path.read_text(errors="replace")
    lines = text.strip().splitlines()
    assert code == 4 and exit_s < EXIT_BOUND_S, (code, exit_s, text[-3000:])
    # The last lines: the cluster named as gone, the store, the interrupted trials, the command.
    tail = "\n".join(lines[-5:])
    assert f"[sweep] error: the Ray cluster at {first.address} is gone" in tail, tail
    assert shlex.split(lines[-1]) == argv, lines[-1]
    assert "start the Ray cluster again" in lines[-2], tail
    assert "node retry" not in text and "Failed to connect to GCS" not in text, text[-3000:]
    saved = _store(workdir)
    assert saved and {r.status for r in saved.values()} == {"completed"}, saved
    saved_line = next(line for line in lines if line.startswith("[sweep] saved in"))
    assert all(tid in saved_line for tid in saved), saved_line
    interrupted_line = next(line for line in lines if line.startswith("[sweep] interrupted,"))
    # --status: nothing claims a live driver is rescheduling; the cut trials resume on rerun.
    assert not list(trials.glob(f"*/{workdir_files.RESCHEDULING}"))
    states = {r.trial_id: r.state for r in sweep_status.collect(str(workdir))[1]}
    cut = [t for t, s in states.items() if s == sweep_status.INTERRUPTED]
    assert set(states.values()) <= {"completed", "interrupted", "pending"}, states
    assert cut and all(t in interrupted_line for t in cut), (states, interrupted_line)
    t_down = time.monotonic()
    first.shutdown(grace_s=2.0)

    # A fresh cluster; the printed command, with the new address, finishes the sweep.
    t_fresh = time.monotonic()
    second = ray_cluster.LocalRayCluster(temp_dirs[1], env=_env(FAKE_STEP_SLEEP="0.02"))
    second.start({}, {"trial_slot": 2})
    rerun = subprocess.run(
        [a.replace(first.address, second.address) for a in shlex.split(lines[-1])],
        cwd=sweep_config.REPO_ROOT, env=_env(PYTHONPATH=sweep_config.REPO_ROOT),
        capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert f"skipped {len(saved)} already finished" in rerun.stdout, rerun.stdout[-2000:]
    final = _store(workdir)
    assert len(final) == 4 and {r.status for r in final.values()} == {"completed"}, final
    assert all(final[t].steps == 40 for t in final)
    print(f"cluster up and a trial recorded {t_up - t_start:.1f} s; driver exit {exit_s:.1f} s "
          f"after the kill; old cluster down {t_fresh - t_down:.1f} s; fresh cluster + rerun "
          f"{time.monotonic() - t_fresh:.1f} s")
  finally:
    if driver is not None and driver.poll() is None:
      os.killpg(driver.pid, 9)
    first.shutdown(grace_s=2.0)
    if second is not None:
      second.shutdown(grace_s=2.0)
    for d in temp_dirs:
      shutil.rmtree(d, ignore_errors=True)
