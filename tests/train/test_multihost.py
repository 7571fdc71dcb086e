"""The trainer as several processes (``tests/multihost.py``): equivalence, preemption, elastic restore, a dead host.

Every run is ``trainers.lm`` on ``configs/tiny.py`` cut to 40 steps
(``multihost.TINY``), as 2 processes x 4 CPU devices or 1 process x 8, mesh
data=2 x fsdp=4 unless a test says otherwise.

Tolerance: 2 processes compute the same program as 1 process on the same 8
devices, except that the all-reduces run through gloo between processes instead
of in-process, so floating-point sums may be taken in another order. In float32
(eps 1.2e-7) that moves a loss by a few ulps per step; measured: at most 7.2e-8
relative over 40 steps. ``RTOL = 1e-5`` leaves room for 100x that drift over the
run, and is still far below any optimizer-level difference (a different learning
rate moves the step-40 loss by > 1e-2).
"""

import json
import os
import shutil
import signal
import sys
import time

import numpy as np
import pytest

from optbench_jax import data as data_lib
from tests import multihost

pytestmark = pytest.mark.slow

RTOL = 1e-5
TIMEOUT_S = 300.0
HEARTBEAT_S = 5


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("corpus"))
  data_lib.write_synthetic_corpus(path, vocab_size=512, branching=4, seed=0,
                                  train_tokens=200_000, val_tokens=20_000)
  return path


def _argv(workdir, corpus, mesh=None, steps=None, flags=()):
  mesh = {**dict(data=2, fsdp=4, tensor=1), **(mesh or {})}
  overrides = {"config.data.path": corpus, "config.data.synthetic_branching": 4,
               **{f"config.mesh.{axis}": size for axis, size in mesh.items()}}
  if steps is not None:
    overrides["config.train.steps"] = steps
  return multihost.trainer_argv(workdir, overrides, flags)


def _close(a: dict, b: dict, steps) -> None:
  for step in steps:
    np.testing.assert_allclose(a[step], b[step], rtol=RTOL, err_msg=f"loss at step {step}")


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory):
  """1 process x 8 devices, uninterrupted: the run every other one must equal."""
  workdir = str(tmp_path_factory.mktemp("reference") / "run")
  codes = multihost.run(_argv(workdir, corpus), workdir, processes=1, devices=8,
                        timeout=TIMEOUT_S)
  assert codes == [0], multihost.read_log(workdir, 0)[-3000:]
  return workdir


def _assert_single_writer(workdir: str, processes: int) -> None:
  """metrics.jsonl holds each record once, whole, in order; summary.json parses; one plot."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    lines = f.read().splitlines()
  records = [json.loads(line) for line in lines]      # a torn line would not parse
  loss_steps = [r["step"] for r in records if "loss" in r]
  assert loss_steps == sorted(set(loss_steps)), loss_steps   # nothing written twice
  summary = multihost.summary(workdir)
  assert summary["processes"] == processes
  assert os.path.exists(os.path.join(workdir, "loss_curve.png"))
  assert not [n for n in os.listdir(workdir) if n.endswith(".tmp")]


@pytest.mark.parametrize("mesh", [dict(data=2, fsdp=4, tensor=1), dict(data=2, fsdp=2, tensor=2)],
                         ids=["fsdp", "tensor"])
def test_each_host_reads_only_its_slice_of_every_batch(mesh, corpus, tmp_path):
  out = str(tmp_path)
  argv = [sys.executable, os.path.join(os.path.dirname(__file__), "multihost_batches.py"), out,
          corpus, str(mesh["data"]), str(mesh["fsdp"]), str(mesh["tensor"])]
  codes = multihost.run(argv, os.path.join(out, "check"), processes=2, devices=4,
                        timeout=TIMEOUT_S)
  assert codes == [0, 0], multihost.read_log(os.path.join(out, "check"), 0)[-3000:]
  seen_rows = set()
  for index in range(2):
    with open(os.path.join(out, f"process_{index}.json")) as f:
      report = json.load(f)
    assert report["processes"] == 2
    for step in report["steps"]:
      assert step["local_rows"] == 8            # 16 / 2 processes
      assert step["local_is_own_slice"], (index, step)
      assert step["shards_hold_own_rows"], (index, step)
      assert step["gathered_equals_full"], (index, step)
      assert all(index * 8 <= row < (index + 1) * 8 for row in step["shard_rows"])
      seen_rows.update(step["shard_rows"])
  batch_shards = mesh["data"] * mesh["fsdp"]     # the batch is split over data x fsdp
  assert seen_rows == set(range(0, 16, 16 // batch_shards))


@pytest.mark.parametrize("mesh", [dict(data=2, fsdp=4, tensor=1), dict(data=2, fsdp=2, tensor=2)],
                         ids=["fsdp", "tensor"])
def test_two_processes_match_one(mesh, corpus, reference, tmp_path):
  workdir = str(tmp_path / "run")
  codes = multihost.run(_argv(workdir, corpus, mesh), workdir, processes=2, devices=4,
                        timeout=TIMEOUT_S)
  assert codes == [0, 0], multihost.read_log(workdir, 1)[-3000:]
  ours, theirs = multihost.losses(workdir), multihost.losses(reference)
  assert sorted(ours) == sorted(theirs) == list(range(5, 41, 5))
  _close(ours, theirs, ours)
  np.testing.assert_allclose(multihost.summary(workdir)["final_eval_loss"],
                             multihost.summary(reference)["final_eval_loss"], rtol=RTOL)
  _assert_single_writer(workdir, processes=2)


def _first_record_after(workdir: str, step: int) -> int:
  return min(s for s in multihost.losses(workdir) if s > step)


def test_sigterm_to_every_host_stops_all_at_one_step_and_resumes_on_one_process(
    corpus, reference, tmp_path):
  workdir = str(tmp_path / "run")
  codes = multihost.run(_argv(workdir, corpus, flags=["--config.train.checkpoint_every=1000"]),
                        workdir, processes=2, devices=4, timeout=TIMEOUT_S, signal_at_step=10)
  assert codes == [0, 0]
  summary = multihost.summary(workdir)
  assert summary["status"] == "preempted", summary["message"]
  stopped = summary["steps"]
  assert 10 <= stopped < 40
  for index in range(2):   # every host stopped at the same step, and said so
    assert f"preempted: {stopped} steps" in multihost.read_log(workdir, index)
  assert sorted(int(n) for n in os.listdir(os.path.join(workdir, "checkpoints"))
                if n.isdigit()) == [stopped]
  # Elastic: the 2-process checkpoint (state + data position) resumes on 1 process x 8.
  codes = multihost.run(_argv(workdir, corpus, flags=["--config.train.checkpoint_every=1000"]),
                        workdir, processes=1, devices=8, timeout=TIMEOUT_S)
  assert codes == [0], multihost.read_log(workdir, 0)[-3000:]
  assert multihost.summary(workdir)["resumed_from_step"] == stopped
  ours, theirs = multihost.losses(workdir), multihost.losses(reference)
  _close(ours, theirs, [s for s in theirs if s > _first_record_after(workdir, stopped)])
  np.testing.assert_allclose(multihost.summary(workdir)["final_eval_loss"],
                             multihost.summary(reference)["final_eval_loss"], rtol=RTOL)


def test_one_process_checkpoint_resumes_on_two(corpus, reference, tmp_path):
  """The reverse: a checkpoint written by 1 process (the reference's step 20) on 2 processes."""
  workdir = str(tmp_path / "run")
  shutil.copytree(reference, workdir, ignore=shutil.ignore_patterns("*.host*.log"))
  shutil.rmtree(os.path.join(workdir, "checkpoints", "40"))
  os.remove(os.path.join(workdir, "summary.json"))
  codes = multihost.run(_argv(workdir, corpus), workdir, processes=2, devices=4,
                        timeout=TIMEOUT_S)
  assert codes == [0, 0], multihost.read_log(workdir, 0)[-3000:]
  summary = multihost.summary(workdir)
  assert summary["resumed_from_step"] == 20 and summary["processes"] == 2
  ours, theirs = multihost.losses(workdir), multihost.losses(reference)
  _close(ours, theirs, [25, 30, 35, 40])     # 20 is a record boundary: no partial average
  np.testing.assert_allclose(summary["final_eval_loss"],
                             multihost.summary(reference)["final_eval_loss"], rtol=RTOL)


def test_a_dead_host_stops_the_others_and_leaves_a_restorable_checkpoint(corpus, tmp_path):
  workdir = str(tmp_path / "run")
  argv = _argv(workdir, corpus, steps=100_000,
               flags=["--config.train.checkpoint_every=10",
                      f"--heartbeat_timeout_s={HEARTBEAT_S}"])
  with multihost.start(argv, workdir, processes=2, devices=4) as group:
    multihost.wait_for_step(workdir, 25, group, TIMEOUT_S)
    killed_at = time.monotonic()
    group.send_signal(signal.SIGKILL, 1)
    group.wait(HEARTBEAT_S + 60.0)       # bounded: the survivor does not hang
    waited = time.monotonic() - killed_at
    codes = group.returncodes()
  assert codes[1] == -signal.SIGKILL
  survivor = multihost.read_log(workdir, 0)
  # One line, exit 2: no SIGABRT, C++ coordination errors or thread dump after it.
  assert codes[0] == 2, survivor[-3000:]
  assert survivor.rstrip().splitlines()[-1].startswith(
      "error: another process of this multi-process run died"), survivor[-3000:]
  assert "Fatal Python error" not in survivor
  assert waited < HEARTBEAT_S + 60.0
  steps = sorted(int(n) for n in os.listdir(os.path.join(workdir, "checkpoints")) if n.isdigit())
  assert steps and steps[-1] >= 20
  # The newest complete checkpoint restores: resume on 1 process, to step 40 this time.
  codes = multihost.run(_argv(workdir, corpus, steps=max(40, steps[-1]),
                              flags=["--allow_config_change"]),
                        workdir, processes=1, devices=8, timeout=TIMEOUT_S)
  log = multihost.read_log(workdir, 0)
  assert codes == [0], log[-3000:]
  assert "does not restore" not in log
  summary = multihost.summary(workdir)
  assert summary["resumed_from_step"] == steps[-1] and summary["status"] == "completed"


@pytest.mark.parametrize("overrides, message", [
    ({"config.mesh.fsdp": 2}, "mesh data=2 x fsdp=2 x tensor=1 x expert=1 has 4 devices but 8"),
    ({"config.data.global_batch_size": 15, "config.mesh.data": 1, "config.mesh.fsdp": 1,
      "config.mesh.tensor": 4, "config.mesh.expert": 2},
     "global_batch_size (15) must be divisible by the number of hosts (2)"),
], ids=["mesh-mismatch", "batch-not-divisible"])
def test_bad_multihost_input_is_one_error_on_every_host_before_compiling(
    overrides, message, corpus, tmp_path):
  workdir = str(tmp_path / "run")
  argv = multihost.trainer_argv(workdir, {"config.data.path": corpus,
                                          "config.data.synthetic_branching": 4,
                                          "config.mesh.data": 2, "config.mesh.fsdp": 4,
                                          **overrides})
  codes = multihost.run(argv, workdir, processes=2, devices=4, timeout=TIMEOUT_S)
  assert codes == [2, 2]
  for index in range(2):
    log = multihost.read_log(workdir, index)
    errors = [l for l in log.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], log[-2000:]
    assert "Compiling" not in log and not os.path.exists(os.path.join(workdir, "metrics.jsonl"))


def test_a_coordinator_port_in_use_is_one_line_and_the_others_stop_waiting(corpus, tmp_path):
  """Process 0 names the address and 'in use' before anything else; process 1 gives up after
  its stated wait with one line instead of waiting silently."""
  import socket  # pylint: disable=import-outside-toplevel
  from optbench_jax.process_group import ProcessGroup  # pylint: disable=import-outside-toplevel
  workdir = str(tmp_path / "run")
  argv = _argv(workdir, corpus, flags=["--distributed_init_timeout_s=10"])
  logs = [open(multihost.host_log(workdir, i), "w") for i in range(2)]
  env = dict(os.environ, PYTHONPATH=multihost.REPO_ROOT)
  with socket.socket() as holder:
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    address = f"127.0.0.1:{holder.getsockname()[1]}"
    started = time.monotonic()
    with ProcessGroup(argv, 2, local_device_count=4, env=env, cwd=multihost.REPO_ROOT,
                      outputs=logs, coordinator=address) as group:
      group.wait(120.0)
      codes, waited = group.returncodes(), time.monotonic() - started
  for log in logs:
    log.close()
  first, second = (multihost.read_log(workdir, i) for i in range(2))
  assert codes == [2, 2], (first[-2000:], second[-2000:])
  assert first.rstrip().splitlines()[-1] == (
      f"error: the coordinator address {address} (JAX_COORDINATOR_ADDRESS) is in use by "
      "another listener: choose a free port"), first[-2000:]
  assert f"waiting up to 10 s for the coordinator at {address}" in second
  assert second.rstrip().splitlines()[-1].startswith(
      f"error: no coordinator answered at {address} within 10 s"), second[-2000:]
  assert waited < 90.0
