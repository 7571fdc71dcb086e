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


def _fake_gcs_lock(monkeypatch, renew, **kwargs):
  """A GcsWorkdirLock on a fake bucket whose creation succeeds and whose renewals call ``renew``."""
  from optbench_jax import storage
  monkeypatch.setattr(storage, "create_exclusive", lambda url, data, timeout_s=None: 1)
  monkeypatch.setattr(storage, "replace_if_generation", renew)
  monkeypatch.setattr(storage, "delete_if_generation", lambda *a, **k: True)
  return workdir_lock.GcsWorkdirLock("gs://bucket/run", "trainer", **kwargs)


def test_a_gs_holder_that_cannot_renew_gives_up_once_and_logs_each_error_once(monkeypatch):
  """Refused renewals: one warning per kind of error, then give up at heartbeat + deadline
  after the last renewal, long before the lock goes stale, and write nothing more."""
  errors = iter([ConnectionRefusedError(111, "Connect call failed"), OSError("reset")] * 50)
  calls = []

  def renew(url, data, generation, timeout_s=None):
    calls.append(time.time())
    if len(calls) == 1:
      return generation + 1   # the first renewal commits
    raise next(errors)

  messages, lost = [], []
  lock = _fake_gcs_lock(monkeypatch, renew, log=messages.append, heartbeat_s=0.1,
                        renew_timeout_s=0.5, on_lost=lost.append).acquire()
  try:
    deadline = time.time() + 10
    while not lost and time.time() < deadline:
      time.sleep(0.02)
    given_up = time.time()
    assert len(lost) == 1, messages
    renewed = calls[0]
    assert renewed + 0.1 + 0.5 <= given_up < renewed + 0.1 + 0.5 + 0.5
    assert lost[0] == lock.lost
    assert lost[0].startswith("storage gs://bucket/run failed while renewing the work directory's "
                              "lock for 0.5 s (")   # the last error: either kind
    assert "OSError: reset" in lost[0] or "ConnectionRefusedError" in lost[0]
    assert len(messages) == 2 and all("could not renew the lock of gs://bucket/run" in m
                                      for m in messages), messages
    assert "ConnectionRefusedError" in messages[0] and "OSError: reset" in messages[1]
    count = len(calls)
    time.sleep(0.4)
    assert len(calls) == count and not lock._thread.is_alive()   # pylint: disable=protected-access
    assert lock.renewal_deadline() == float("inf")
  finally:
    lock.release()


def test_a_gs_holder_gives_up_on_frozen_storage_within_the_deadline(own_gcs):
  """Real storage that stops answering (a frozen emulator): each renewal is cut at the deadline."""
  from optbench_jax import storage
  url = "gs://test-bucket/frozen"
  messages, lost = [], []
  lock = workdir_lock.GcsWorkdirLock(url, "trainer", log=messages.append, heartbeat_s=0.2,
                                     renew_timeout_s=1.0, on_lost=lost.append).acquire()
  try:
    time.sleep(0.5)   # renewals commit
    generation, _ = storage.stat_generation(storage.join(url, ".lock"))
    own_gcs.freeze()
    frozen = time.time()
    while not lost and time.time() < frozen + 15:
      time.sleep(0.05)
    assert lost, messages
    assert time.time() - frozen < 0.2 + 1.0 + 2.0   # heartbeat + deadline + a loaded machine
    assert lost[0] == (f"storage {url} did not answer within 1 s while renewing the work "
                       "directory's lock")
    # At most one warning: none when the heartbeat woke past its deadline before an attempt
    # could fail (a slow last renewal on a loaded machine), else the first failure, once.
    assert messages in ([], [f"warning: could not renew the lock of {url} (no answer within "
                             "1 s); retrying every 0.2 s, giving up 1.2 s after the last "
                             "renewal"]), messages
    own_gcs.thaw()
    time.sleep(0.6)   # three heartbeats: none renews any more
    latest, _ = storage.stat_generation(storage.join(url, ".lock"))
    time.sleep(0.6)
    assert storage.stat_generation(storage.join(url, ".lock"))[0] == latest >= generation
  finally:
    own_gcs.thaw()
    lock.release()


def test_a_renewal_deadline_that_reaches_the_stale_window_is_refused():
  assert workdir_lock.max_renew_timeout_s() == 300 - 30 - 30
  with pytest.raises(ValueError, match="use at most 240 s"):
    workdir_lock.GcsWorkdirLock("gs://bucket/run", "trainer", renew_timeout_s=241)
