"""Sweeps through ``--executor=ray`` on a real 2-node Ray cluster on loopback addresses.

One cluster for the module (``tests/ray_cluster.py``: ``ray start --head`` plus a
second ``ray start`` joining it, each node with one ``trial_slot`` so concurrent
trials land on both; 4 CPU devices per trial process), torn down by the pids it
started. Every wait has a timeout. The test that kills a node runs last.
"""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from optbench_jax import workdir_files
from optbench_jax import process_group
from optbench_jax.bench import ray_executor, results_store, sweep, sweep_config, sweep_status
from tests import ray_cluster

pytestmark = pytest.mark.slow
ray = pytest.importorskip("ray")

TIMEOUT_S = 240
NODE_ENV = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu",
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
SLOT = {"trial_slot": 1}
BASE = dict(
    base_config="configs/tiny.py", trial_resources=SLOT, seeds=[0], strategy="grid",
    speedup=dict(gamma="loss_floor", num_bootstrap=10),
    divergence=dict(loss_threshold=100.0, after_steps=2000, after_fraction=1.0))
TRAIN = {"log_every": 5, "eval_every": 5, "eval_batches": 1, "checkpoint_every": 10,
         "full_eval_at_end": False}
DATA = {"synthetic_train_tokens": 200_000, "synthetic_val_tokens": 20_000}
GRID = dict(BASE, name="ray-grid", budgets=[10],
            overrides={"optimizer": {"schedule": {"warmup_steps": 2}}, "train": TRAIN, "data": DATA},
            optimizers={"adamw": dict(baseline={"b1": 0.9, "b2": 0.99},
                                      grid={"learning_rate": [1e-3, 3e-3, 1e-2, 2e-2]})})


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
  saved = dict(os.environ)
  env = dict(NODE_ENV, JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("jax_cache")),
             **ray_cluster.DRIVER_ENV)
  os.environ.update(env)      # the driver and the local executor's trials: as on the nodes
  # Ray's AF_UNIX socket paths must stay under 107 bytes: a short directory of its own, not
  # pytest's (deeper under pytest-xdist).
  temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")
  c = ray_cluster.LocalRayCluster(temp_dir, env=dict(os.environ))
  try:
    c.start({"worker1": dict(SLOT, node1=1)}, dict(SLOT, node0=1))
    yield c
  finally:
    if ray.is_initialized():
      ray.shutdown()
    c.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)
    os.environ.clear()
    os.environ.update(saved)


def run_ray(spec, workdir, cluster, **kw):
  options = {"address": cluster.address, **kw.pop("options", {})}
  return sweep.run_sweep(spec, str(workdir), parallel=kw.pop("parallel", 0), executor="ray",
                         executor_options=options, poll_interval_s=0.2, **kw)


def results(workdir):
  with results_store.ResultsStore.open_existing(os.path.join(str(workdir), "results.sqlite")) as s:
    return s.attempts(), {r.trial_id: r for r in s.latest()}


def trial_log(result):
  with open(os.path.join(result.workdir, "trial.log"), errors="replace") as f:
    return f.read()


def test_a_grid_sweep_on_ray_records_what_the_local_executor_does(cluster, tmp_path):
  t0 = time.monotonic()
  out = run_ray(GRID, tmp_path / "ray", cluster)
  ray_s = time.monotonic() - t0
  t0 = time.monotonic()
  local = sweep.run_sweep(GRID, str(tmp_path / "local"), parallel=2, poll_interval_s=0.2)
  local_s = time.monotonic() - t0
  print(f"4-trial grid: ray {ray_s:.1f} s, local (--parallel=2) {local_s:.1f} s")
  assert out.recorded["completed"] == 4 and local.recorded["completed"] == 4, (out, local)
  _, on_ray = results(tmp_path / "ray")
  _, here = results(tmp_path / "local")
  assert set(on_ray) == set(here) and len(on_ray) == 4
  for tid, r in on_ray.items():     # bit for bit
    assert r.final_eval_loss == here[tid].final_eval_loss, tid
    assert r.eval_curve == here[tid].eval_curve and r.steps == here[tid].steps == 10
  ips = {ip for r in on_ray.values() for ip in cluster.ips.values() if f"running on {ip}" in
         trial_log(r)}
  assert ips == set(cluster.ips.values()), "the trials did not land on both nodes"


MULTIHOST = dict(
    BASE, name="ray-multihost", budgets=[40], hosts_per_trial=2,
    overrides={"optimizer": {"schedule": {"warmup_steps": 2}},
               "mesh": {"data": 2, "fsdp": 4},
               "train": dict(TRAIN, eval_every=10, checkpoint_every=100),
               "data": dict(DATA, global_batch_size=16, seq_len=32)},
    # lr 1e-5 barely moves from ln(512) = 6.24: stopped by the rule from step 10.
    divergence=dict(loss_threshold=5.9, after_steps=10, after_fraction=1.0),
    optimizers={"adamw": dict(baseline={"b1": 0.9, "b2": 0.99},
                              grid={"learning_rate": [1e-5, 2e-2]})})


def test_a_two_host_trial_spans_both_nodes_and_a_diverging_one_is_stopped(cluster, tmp_path):
  out = run_ray(MULTIHOST, tmp_path / "ray", cluster)
  assert (out.recorded["completed"], out.recorded["diverged"]) == (1, 1), out
  _, on_ray = results(tmp_path / "ray")
  by_lr = {r.hparams["learning_rate"]: r for r in on_ray.values()}
  good, bad = by_lr[2e-2], by_lr[1e-5]
  # Stopped by process 0's supervisor on its node, long before the budget.
  assert bad.status == "diverged" and ">= 5.9" in bad.reason and bad.steps < 40, bad
  for r in (good, bad):      # 2 processes, one per node, each with its log
    log = trial_log(r)
    assert all(f"{ip} (" in log for ip in cluster.ips.values()), log[-2000:]
    assert os.path.getsize(os.path.join(r.workdir, "trial.host1.log")) > 0
  with open(os.path.join(good.workdir, "summary.json")) as f:
    assert json.load(f)["processes"] == 2
  # The same trial as one process of 8 devices (the local executor).
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
  try:
    one = dict(MULTIHOST, hosts_per_trial=1,
               optimizers={"adamw": dict(MULTIHOST["optimizers"]["adamw"],
                                         grid={"learning_rate": [2e-2]})})
    assert sweep.run_sweep(one, str(tmp_path / "one")).recorded["completed"] == 1
  finally:
    os.environ["XLA_FLAGS"] = NODE_ENV["XLA_FLAGS"]
  _, single = results(tmp_path / "one")
  (reference,) = single.values()
  assert reference.trial_id == good.trial_id
  assert math.isclose(good.final_eval_loss, reference.final_eval_loss, rel_tol=1e-5)
  for (s1, l1), (s2, l2) in zip(good.eval_curve, reference.eval_curve, strict=True):
    assert s1 == s2 and math.isclose(l1, l2, rel_tol=1e-5)


def test_bad_input_fails_before_any_trial(cluster, tmp_path, monkeypatch):
  def refused(spec, match, **options):
    with pytest.raises(sweep_config.SweepConfigError, match=match):
      run_ray(spec, tmp_path / "w", cluster, options=options)
    assert not os.path.exists(tmp_path / "w" / "results.sqlite")

  nobody = f"127.0.0.1:{process_group.free_port()}"
  t0 = time.monotonic()
  refused(GRID, rf"no Ray cluster answers at --ray_address={nobody}", address=nobody,
          connect_timeout_s=5.0)
  assert time.monotonic() - t0 < 30
  refused(dict(GRID, trial_resources={"GPU": 8, "trial_slot": 1}),
          r"can never be placed.*no node has GPU >= 8 \(the most any node has: 0\)")
  refused(dict(GRID, hosts_per_trial=2, trial_resources={"node0": 1}),
          r"needs 2 distinct nodes with \{'node0': 1.0\}, the cluster has 1")
  refused(dict(MULTIHOST, hosts_per_trial=3), "hosts_per_trial=3 does not match the trial's mesh")
  refused(dict(GRID, trial_resources={"GPU": -1}), "trial_resources must map")
  with pytest.raises(sweep_config.SweepConfigError, match="--executor must be"):
    sweep.run_sweep(GRID, str(tmp_path / "w"), executor="slurm")
  monkeypatch.setitem(sys.modules, "ray", None)     # as if the extra were not installed
  refused(GRID, r'needs Ray, which is not installed.*pip install "optbench_jax\[ray\]"')


def test_pure_placement_checks():
  nodes = [{"Alive": True, "Resources": {"CPU": 8, "GPU": 8}},
           {"Alive": True, "Resources": {"CPU": 8, "GPU": 4}},
           {"Alive": False, "Resources": {"CPU": 8, "GPU": 8}}]
  assert ray_executor.unsatisfiable(nodes, {"GPU": 8}, 1) is None
  assert "2 distinct nodes" in ray_executor.unsatisfiable(nodes, {"GPU": 8}, 2)
  assert "TPU >= 4" in ray_executor.unsatisfiable(nodes, {"TPU": 4}, 1)
  assert ray_executor.capacity(nodes, {"GPU": 4}, 1) == 3
  assert ray_executor.capacity(nodes, {"GPU": 4}, 2) == 1
  assert ray_executor.capacity(nodes, {"CPU": 1}, 2) == 8


KILLED = dict(GRID, name="ray-driver-killed", budgets=[40],
              overrides=dict(GRID["overrides"], train=dict(TRAIN, eval_every=20)),
              optimizers={"adamw": dict(baseline={"b1": 0.9, "b2": 0.99},
                                        grid={"learning_rate": [1e-3, 1e-2]})})


def _wait(condition, what, timeout=TIMEOUT_S, proc=None):
  deadline = time.monotonic() + timeout
  while not condition():
    if proc is not None and proc.poll() is not None:
      raise AssertionError(f"the driver exited ({proc.returncode}) before {what}")
    if time.monotonic() > deadline:
      raise TimeoutError(f"no {what} after {timeout} s")
    time.sleep(0.2)


def _max_step(trial_dir):
  return max((r.get("step", 0) for r in workdir_files.read_metrics(trial_dir)),
             default=-1)


def _committed(trial_dir, step):
  """Orbax renames ``<step>.orbax-checkpoint-tmp*`` to ``<step>`` when the checkpoint is whole."""
  return os.path.isdir(os.path.join(trial_dir, "checkpoints", str(step)))


def test_a_killed_driver_rerun_loses_and_duplicates_nothing(cluster, tmp_path):
  """Ray kills a dead driver's supervisors, and the raylet their trainers (SIGKILL):
  the rerun resumes the interrupted trial from its last whole checkpoint."""
  config = tmp_path / "sweep_config.py"
  config.write_text("import json\nfrom ml_collections import config_dict\n\n"
                    f"def get_config():\n  return config_dict.ConfigDict(json.loads({json.dumps(json.dumps(KILLED))}))\n")
  workdir = tmp_path / "w"
  argv = [sys.executable, "-m", "trainers.sweep", f"--config={config}", f"--workdir={workdir}",
          "--executor=ray", f"--ray_address={cluster.address}", "--parallel=1"]
  env = dict(os.environ, PYTHONPATH=sweep_config.REPO_ROOT)
  log = open(tmp_path / "driver1.log", "w")
  driver = subprocess.Popen(argv, cwd=sweep_config.REPO_ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
  try:
    trials = workdir / "trials"
    store = workdir / "results.sqlite"

    def second_trial_checkpointed():
      if not store.exists() or not trials.exists() or len(results(workdir)[1]) != 1:
        return False
      done = set(results(workdir)[1])
      running = [d for d in os.listdir(trials) if d not in done]
      return bool(running) and _committed(trials / running[0], 10)
    _wait(second_trial_checkpointed, "second trial's checkpoint at step 10", proc=driver)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait(timeout=30)
  finally:
    if driver.poll() is None:
      os.killpg(driver.pid, signal.SIGKILL)
    log.close()
  rerun = subprocess.run(argv, cwd=sweep_config.REPO_ROOT, env=env, capture_output=True,
                         text=True, timeout=TIMEOUT_S)
  assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
  assert "launched 1, skipped 1 already finished" in rerun.stdout, rerun.stdout[-2000:]
  attempts, latest = results(workdir)
  assert len(attempts) == 2 and {r.status for r in attempts} == {"completed"}   # once each
  summaries = {}
  for r in latest.values():
    with open(os.path.join(r.workdir, "summary.json")) as f:
      summaries[r.trial_id] = json.load(f)
    assert r.steps == 40
  assert sorted((s.get("resumed_from_step") or 0) >= 10 for s in summaries.values()) == \
      [False, True], summaries


LOST = dict(GRID, name="ray-node-lost", budgets=[200],
            overrides=dict(GRID["overrides"], train=dict(TRAIN, eval_every=50, checkpoint_every=20)),
            optimizers={"adamw": dict(baseline={"b1": 0.9, "b2": 0.99},
                                      grid={"learning_rate": [1e-2]})})


def test_a_lost_node_reschedules_the_trial_which_resumes_on_the_other(cluster, tmp_path):
  """Runs last: it kills the worker node. The head's slot is held at first, so the trial
  starts on the worker (killing the head would end the cluster)."""
  from ray.util import placement_group, remove_placement_group
  ray.init(address=cluster.address, namespace="test-placeholder", logging_level="ERROR")
  hold = placement_group([dict(SLOT, node0=1)])
  ray.get(hold.ready(), timeout=60)
  outcome, errors, lines = {}, [], []

  def drive():
    try:
      outcome["out"] = run_ray(LOST, tmp_path / "w", cluster, parallel=1, log=lines.append)
    except BaseException as e:  # pylint: disable=broad-except
      errors.append(e)
  thread = threading.Thread(target=drive, daemon=True)
  thread.start()
  try:
    trials = tmp_path / "w" / "trials"
    _wait(lambda: trials.exists() and os.listdir(trials) and
          _committed(trials / os.listdir(trials)[0], 20), "the trial's checkpoint at step 20")
    trial_dir = trials / os.listdir(trials)[0]
    assert f"running on {cluster.ips['worker1']}" in open(trial_dir / "trial.log").read()
    remove_placement_group(hold)
    cluster.kill_raylet("worker1")
    # While the driver reschedules, --status shows the trial as the driver's, not as one to
    # rerun by hand.
    seen = set()
    while thread.is_alive():
      if "node retry" in open(trial_dir / "trial.log").read():
        seen |= {r.state for r in sweep_status.collect(str(tmp_path / "w"))[1]}
      time.sleep(0.5)
    thread.join(timeout=TIMEOUT_S)
    assert not thread.is_alive(), lines
  finally:
    ray.shutdown()
  assert not errors, errors
  out = outcome["out"]
  assert out.recorded["completed"] == 1 and out.launched == 1 and not out.interrupted, (out, lines)
  attempts, latest = results(tmp_path / "w")
  assert len(attempts) == 1 and attempts[0].status == "completed" and attempts[0].steps == 200
  log = open(trial_dir / "trial.log").read()
  assert "node lost" in log and "node retry 1 of 3" in log, log[-3000:]
  assert "rescheduling" in seen and "interrupted" not in seen, seen
  assert not (trial_dir / "rescheduling.json").exists()
  assert f"running on {cluster.ips['head']}" in log
  with open(trial_dir / "summary.json") as f:
    assert json.load(f)["resumed_from_step"] >= 20
