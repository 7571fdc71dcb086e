"""optbench_jax.workdir_lock: one process per work directory (two trainers on one work directory)."""

import json
import os
import subprocess
import sys
import time

import pytest

from optbench_jax import workdir_lock


def test_a_held_lock_refuses_a_second_holder_and_is_removed_on_release(tmp_path):
  with workdir_lock.WorkdirLock(str(tmp_path), "trainer") as held:
    assert workdir_lock.read_holder(str(tmp_path))["pid"] == os.getpid()
    with pytest.raises(workdir_lock.WorkdirLockedError, match=f"in use by trainer pid {os.getpid()}"):
      workdir_lock.WorkdirLock(str(tmp_path), "trainer").acquire()
    assert held.took_over is None
  assert not (tmp_path / workdir_lock.LOCK_NAME).exists()
  assert workdir_lock.read_holder(str(tmp_path)) is None


def test_a_lock_of_a_killed_process_is_recognised_and_taken_over(tmp_path):
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys, time; from optbench_jax import workdir_lock; "
       f"workdir_lock.WorkdirLock({str(tmp_path)!r}, 'trainer').acquire(); "
       "print('locked', flush=True); time.sleep(60)"],
      stdout=subprocess.PIPE, text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
  try:
    assert holder.stdout.readline().strip() == "locked"
    assert workdir_lock.read_holder(str(tmp_path))["pid"] == holder.pid
  finally:
    holder.kill()
    holder.wait(timeout=30)
  assert workdir_lock.read_holder(str(tmp_path)) is None   # the file is there, the flock is not
  messages = []
  with workdir_lock.WorkdirLock(str(tmp_path), "trainer", log=messages.append) as lock:
    assert lock.took_over["pid"] == holder.pid
  assert f"taking over the stale lock of {tmp_path}: trainer pid {holder.pid}" in messages[0]


def test_another_hosts_lock_counts_while_its_heartbeat_is_fresh(tmp_path):
  """File systems whose flocks stay on one host (gcsfuse, NFS nolock): the heartbeat decides."""
  path = tmp_path / workdir_lock.LOCK_NAME
  info = dict(pid=123, host="another-host", role="trainer", started=time.time())
  path.write_text(json.dumps(dict(info, heartbeat=time.time() - 10)))
  with pytest.raises(workdir_lock.WorkdirLockedError, match="another-host .*heartbeat 1\\d s ago"):
    workdir_lock.WorkdirLock(str(tmp_path), "trainer").acquire()
  path.write_text(json.dumps(dict(info, heartbeat=time.time() - workdir_lock.STALE_AFTER_S - 1)))
  with workdir_lock.WorkdirLock(str(tmp_path), "trainer", log=lambda _: None) as lock:
    assert lock.took_over["host"] == "another-host"


def test_the_heartbeat_is_refreshed(tmp_path):
  with workdir_lock.WorkdirLock(str(tmp_path), "trainer", heartbeat_s=0.05):
    first = workdir_lock.read_holder(str(tmp_path))["heartbeat"]
    time.sleep(0.3)
    assert workdir_lock.read_holder(str(tmp_path))["heartbeat"] > first
