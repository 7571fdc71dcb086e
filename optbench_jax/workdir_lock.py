"""One process per work directory: ``<workdir>/.lock``, held by the trainer and the sweep driver.

Two trainers in one workdir interleave ``metrics.jsonl`` and overwrite each
other's checkpoints; two sweep drivers launch every trial twice. So each takes
the workdir's lock before writing anything and refuses, in one line naming the
holder, when another live process has it.

Mechanism: ``flock(LOCK_EX | LOCK_NB)`` on ``<workdir>/.lock``, which also holds
the holder's identity (host, pid, role, start time) and a heartbeat the holder
refreshes every ``heartbeat_s`` seconds. The kernel drops an flock when its
process dies (SIGKILL, OOM, a crashed host's NFS lease), so a lock file whose
flock is free is stale by definition: it is taken over with a warning naming the
dead holder. What this guarantees, per file system:

* local disks (ext4, xfs, tmpfs, ...): exclusion between processes of one host,
  and stale locks of dead processes are recognised at once;
* NFSv4 and NFSv3 with lockd (Linux maps flock to NFS byte-range locks): exclusion
  across hosts; a crashed client's lock is released when the server's lease
  expires (about 90 s);
* file systems whose locks are local to each host (NFS mounted ``nolock``,
  gcsfuse for ``gs://`` buckets, most FUSE file systems): flock only excludes
  processes of the same host. The heartbeat covers other hosts: a lock file
  written by another host and refreshed within ``stale_after_s`` (5 min) is
  refused even though the flock was granted; an older one is taken over. Two
  hosts that start within the same instant can still both win there.
* ``gs://`` work directories (``GcsWorkdirLock``, chosen by ``for_directory``):
  no flock exists there, so the lock is the object ``<workdir>/.lock`` created
  with the precondition ``ifGenerationMatch=0`` (create only if absent: of two
  starters exactly one wins, whatever their hosts). The holder rewrites it with
  its heartbeat under ``ifGenerationMatch=<its generation>`` and deletes it the
  same way on release. Staleness: a lock object whose heartbeat is older than
  ``stale_after_s`` (5 min; it compares the holder's clock with ours, so hosts
  need NTP, as TPU VMs have) or whose holder is a dead pid on this host is taken
  over, again under a generation precondition, so two takers cannot both win.
  A live holder must therefore never look stale: each renewal is bounded by
  ``renew_timeout_s``, and a holder that has not renewed for ``heartbeat_s +
  renew_timeout_s`` gives up: it stops renewing and calls ``on_lost`` (the
  trainer exits there, so it stops writing the directory too). That moment
  stays ``STALE_MARGIN_S`` before anyone may take over (``max_renew_timeout_s``;
  a longer deadline is refused), for clock skew and the time to exit. A holder
  whose heartbeat finds its generation replaced (someone took over anyway, e.g.
  after this process was suspended) gives up the same way. Failed renewals are
  logged once per kind of error. After a SIGKILL on another host, a rerun waits
  out the 5 minutes (or the user deletes the object).

A process that releases the lock removes the file, so a leftover ``.lock``
always means a process that did not exit cleanly.
"""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import socket
import sys
import threading
import time
from typing import Any, Callable

from optbench_jax import storage

LOCK_NAME = ".lock"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0
RENEW_TIMEOUT_S = 120.0
# Between a holder giving up and the earliest takeover: hosts' clocks disagree a little, and
# the holder needs a moment to exit.
STALE_MARGIN_S = 30.0


def max_renew_timeout_s(heartbeat_s: float = HEARTBEAT_S,
                        stale_after_s: float = STALE_AFTER_S) -> float:
  """The longest renewal deadline a gs:// holder may use (see the module docstring): it gives
  up ``heartbeat_s`` + the deadline after its last renewal, ``STALE_MARGIN_S`` before the lock
  goes stale."""
  return stale_after_s - heartbeat_s - STALE_MARGIN_S


class WorkdirLockedError(RuntimeError):
  """Another live process holds the work directory; the message names it."""


def _describe(info: dict[str, Any]) -> str:
  since = info.get("started")
  since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) if since else "?"
  return (f"{info.get('role', 'a process')} pid {info.get('pid', '?')} on host "
          f"{info.get('host', '?')} (since {since})")


def _read_info(fd: int) -> dict[str, Any] | None:
  os.lseek(fd, 0, os.SEEK_SET)
  raw = b""
  while chunk := os.read(fd, 65536):
    raw += chunk
  if not raw.strip():
    return None
  try:
    info = json.loads(raw)
  except ValueError:
    return {"pid": "?", "host": "?", "unreadable": True}
  return info if isinstance(info, dict) else None


def read_holder(directory: str) -> dict[str, Any] | None:
  """The identity of the live process holding ``directory``'s lock, or None (free or stale)."""
  if storage.is_remote(directory):
    return GcsWorkdirLock(directory, "reader").live_holder()
  path = os.path.join(directory, LOCK_NAME)
  try:
    fd = os.open(path, os.O_RDONLY)
  except FileNotFoundError:
    return None
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
      return _read_info(fd) or {}
    fcntl.flock(fd, fcntl.LOCK_UN)
    return None
  finally:
    os.close(fd)


def _start_heartbeat(lock) -> None:
  """Starts ``lock._beat`` on a daemon thread (both lock kinds), stopped by ``_stop_heartbeat``."""
  lock._stop.clear()  # pylint: disable=protected-access
  lock._thread = threading.Thread(target=lock._beat, name="workdir-lock-heartbeat",  # pylint: disable=protected-access
                                  daemon=True)
  lock._thread.start()  # pylint: disable=protected-access


def _stop_heartbeat(lock) -> None:
  lock._stop.set()  # pylint: disable=protected-access
  if lock._thread is not None:  # pylint: disable=protected-access
    lock._thread.join()  # pylint: disable=protected-access
    lock._thread = None  # pylint: disable=protected-access


class WorkdirLock:
  """``with WorkdirLock(workdir, role="trainer", log=...):`` -- see the module docstring."""

  def __init__(self, directory: str, role: str, log=None, heartbeat_s: float = HEARTBEAT_S,
               stale_after_s: float = STALE_AFTER_S):
    self.directory = os.path.abspath(directory)
    self.path = os.path.join(self.directory, LOCK_NAME)
    self.role = role
    self.heartbeat_s = heartbeat_s
    self.stale_after_s = stale_after_s
    self.took_over: dict[str, Any] | None = None   # the stale holder replaced, if any
    self._log = log or (lambda msg: print(msg, file=sys.stderr))
    self._fd: int | None = None
    self._info: dict[str, Any] = {}
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None

  def acquire(self) -> "WorkdirLock":
    for _ in range(10):   # retried only if the file was replaced between open and flock
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        holder = _read_info(fd) or {}
        os.close(fd)
        raise WorkdirLockedError(
            f"work directory {self.directory} is in use by {_describe(holder)}; stop that "
            "process first or choose another directory") from None
      except OSError as e:
        if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
          os.close(fd)
          raise
        self._log(f"warning: {self.path}: the file system has no flock ({e.strerror}); "
                  "relying on the lock file's heartbeat only")
      try:
        same_file = os.fstat(fd).st_ino == os.stat(self.path).st_ino
      except FileNotFoundError:
        same_file = False
      if same_file:
        break
      os.close(fd)   # the holder released (and removed) it meanwhile: lock the new file
    else:
      raise WorkdirLockedError(f"could not lock {self.path}: it keeps being replaced")
    try:
      previous = _read_info(fd)
      if previous:
        self._check_other_host(previous)
        self.took_over = previous
        self._log(f"warning: taking over the stale lock of {self.directory}: "
                  f"{_describe(previous)} did not release it (it was killed or crashed)")
      self._info = dict(pid=os.getpid(), host=socket.gethostname(), role=self.role,
                        started=time.time(), heartbeat=time.time(), argv=sys.argv[:8])
      self._write(fd)
    except BaseException:
      os.close(fd)
      raise
    self._fd = fd
    _start_heartbeat(self)
    return self

  def _check_other_host(self, previous: dict[str, Any]) -> None:
    """A lock file from another host may be live where flock does not cross hosts."""
    if previous.get("host") in (None, "?", socket.gethostname()):
      return   # same host: the granted flock proves the holder is dead
    age = time.time() - float(previous.get("heartbeat", 0) or 0)
    if age < self.stale_after_s:
      raise WorkdirLockedError(
          f"work directory {self.directory} is in use by {_describe(previous)} (heartbeat "
          f"{age:.0f} s ago; this file system may not share locks between hosts); if that "
          f"process is dead, wait {self.stale_after_s - age:.0f} s or remove {self.path}")

  def _write(self, fd: int) -> None:
    data = json.dumps(self._info).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    os.fsync(fd)

  def _beat(self) -> None:
    while not self._stop.wait(self.heartbeat_s):
      fd = self._fd
      if fd is None:
        return
      self._info["heartbeat"] = time.time()
      try:
        self._write(fd)
      except OSError:   # e.g. disk full: the flock still excludes; retry next beat
        pass

  def release(self) -> None:
    if self._fd is None:
      return
    _stop_heartbeat(self)
    fd, self._fd = self._fd, None
    try:
      os.unlink(self.path)   # still holding the flock: nobody else can own this file
    except FileNotFoundError:
      pass
    os.close(fd)

  def __enter__(self) -> "WorkdirLock":
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()


def _error_text(error: Exception, timeout_s: float) -> str:
  if isinstance(error, TimeoutError):
    return f"no answer within {timeout_s:g} s"
  lines = str(error).strip().splitlines()
  return f"{type(error).__name__}: {lines[0][:200] if lines else ''}"


def _pid_alive(pid: Any) -> bool:
  try:
    os.kill(int(pid), 0)
  except (ProcessLookupError, ValueError, TypeError):
    return False
  except PermissionError:
    return True
  return True


class GcsWorkdirLock:
  """The ``gs://`` form of :class:`WorkdirLock` (see the module docstring); same interface."""

  def __init__(self, directory: str, role: str, log=None, heartbeat_s: float = HEARTBEAT_S,
               stale_after_s: float = STALE_AFTER_S, renew_timeout_s: float = RENEW_TIMEOUT_S,
               on_lost: Callable[[str], None] | None = None):
    """``renew_timeout_s``: how long one call to storage may take, and how long after the
    heartbeat's due time the holder gives up; ``on_lost(reason)``: called once, from the
    heartbeat thread, when it gives up (default: log the reason)."""
    limit = max_renew_timeout_s(heartbeat_s, stale_after_s)
    if renew_timeout_s > limit:
      raise ValueError(f"a lock renewal deadline of {renew_timeout_s:g} s leaves less than "
                       f"{STALE_MARGIN_S:g} s before the lock goes stale ({stale_after_s:g} s, "
                       f"heartbeat {heartbeat_s:g} s): use at most {limit:g} s")
    self.directory = storage.resolve(directory)
    self.path = storage.join(self.directory, LOCK_NAME)
    self.role = role
    self.heartbeat_s = heartbeat_s
    self.stale_after_s = stale_after_s
    self.renew_timeout_s = renew_timeout_s
    self.took_over: dict[str, Any] | None = None
    self.lost: str | None = None   # why the holder gave up, once it has
    self._log = log or (lambda msg: print(msg, file=sys.stderr))
    self._on_lost = on_lost or (lambda reason: self._log(f"error: {reason}"))
    self._generation: int | None = None
    self._renewed_at = 0.0   # the heartbeat stamp of the last write that committed
    self._failure_kinds: set[str] = set()   # renewal errors, each kind logged once
    self._last_failure: Exception | None = None
    self._info: dict[str, Any] = {}
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None
    self._mutex = threading.Lock()

  def _is_stale(self, info: dict[str, Any]) -> bool:
    if info.get("host") == socket.gethostname() and not _pid_alive(info.get("pid")):
      return True   # a dead process of this host: no need to wait for its heartbeat to age
    age = time.time() - float(info.get("heartbeat", 0) or 0)
    return age >= self.stale_after_s

  def _current(self) -> tuple[int, dict[str, Any]] | None:
    found = storage.stat_generation(self.path, timeout_s=self.renew_timeout_s)
    if found is None:
      return None
    generation, raw = found
    try:
      info = json.loads(raw)
    except ValueError:
      info = {}
    return generation, info if isinstance(info, dict) else {}

  def live_holder(self) -> dict[str, Any] | None:
    current = self._current()
    if current is None or self._is_stale(current[1]):
      return None
    return current[1]

  def acquire(self) -> "GcsWorkdirLock":
    try:
      return self._acquire()
    except TimeoutError:
      raise storage.StorageError(
          f"storage {self.directory} did not answer within {self.renew_timeout_s:g} s while "
          "taking the work directory's lock") from None

  def _acquire(self) -> "GcsWorkdirLock":
    self._info = dict(pid=os.getpid(), host=socket.gethostname(), role=self.role,
                      started=time.time(), heartbeat=time.time(), argv=sys.argv[:8])
    timeout = self.renew_timeout_s
    for _ in range(10):   # retried only when the object vanishes between create and read
      generation = storage.create_exclusive(self.path, json.dumps(self._info).encode(), timeout)
      if generation is not None:
        break
      current = self._current()
      if current is None:
        continue   # released meanwhile: try to create it again
      old_generation, previous = current
      if not self._is_stale(previous):
        age = time.time() - float(previous.get("heartbeat", 0) or 0)
        raise WorkdirLockedError(
            f"work directory {self.directory} is in use by {_describe(previous)} (heartbeat "
            f"{age:.0f} s ago); stop that process first, or if it is dead wait "
            f"{max(0.0, self.stale_after_s - age):.0f} s or delete {self.path}")
      generation = storage.replace_if_generation(self.path, json.dumps(self._info).encode(),
                                                 old_generation, timeout)
      if generation is None:
        raise WorkdirLockedError(f"work directory {self.directory}: another process took over "
                                 "its stale lock at the same moment; retry")
      self.took_over = previous
      self._log(f"warning: taking over the stale lock of {self.directory}: "
                f"{_describe(previous)} did not release it (it was killed or crashed)")
      break
    else:
      raise WorkdirLockedError(f"could not lock {self.path}: it keeps being replaced")
    self._generation = generation
    self._renewed_at = self._info["heartbeat"]
    _start_heartbeat(self)
    return self

  def renewal_deadline(self) -> float:
    """The time (``time.time()``) by which the next renewal must have committed; infinite
    when the lock is not held (released, or given up)."""
    if self._generation is None:
      return math.inf
    return self._renewed_at + self.heartbeat_s + self.renew_timeout_s

  def _beat(self) -> None:
    wait = self.heartbeat_s
    while not self._stop.wait(wait):
      with self._mutex:
        if self._generation is None:
          return
        left = self.renewal_deadline() - time.time()
        if left <= 0:
          self._give_up(self._overdue_reason())
          return
        stamp = time.time()
        self._info["heartbeat"] = stamp
        try:
          generation = storage.replace_if_generation(
              self.path, json.dumps(self._info).encode(), self._generation,
              timeout_s=min(self.renew_timeout_s, left))
        except Exception as e:  # pylint: disable=broad-except  (network errors: many types)
          self._note_failure(e)
          # Retry at the heartbeat's pace, and wake at the deadline to give up on time.
          wait = max(0.0, min(self.heartbeat_s, self.renewal_deadline() - time.time()))
          continue
        if generation is None:
          self._give_up(f"the lock of {self.directory} was taken over by another process (its "
                        f"heartbeat looked older than {self.stale_after_s:g} s to it); two "
                        "processes must not write one work directory")
          return
        self._generation, self._renewed_at, wait = generation, stamp, self.heartbeat_s

  def _note_failure(self, error: Exception) -> None:
    """Logs the first renewal error of each kind in one line (then retries quietly)."""
    self._last_failure = error
    if type(error).__name__ not in self._failure_kinds:
      self._failure_kinds.add(type(error).__name__)
      self._log(f"warning: could not renew the lock of {self.directory} "
                f"({_error_text(error, self.renew_timeout_s)}); retrying every "
                f"{self.heartbeat_s:g} s, giving up {self.heartbeat_s + self.renew_timeout_s:g} s "
                "after the last renewal")

  def _overdue_reason(self) -> str:
    error = self._last_failure
    if error is None or isinstance(error, TimeoutError):
      return (f"storage {self.directory} did not answer within {self.renew_timeout_s:g} s "
              "while renewing the work directory's lock")
    return (f"storage {self.directory} failed while renewing the work directory's lock for "
            f"{self.renew_timeout_s:g} s ({_error_text(error, self.renew_timeout_s)})")

  def _give_up(self, reason: str) -> None:
    """Stops renewing for good (this process must stop writing) and reports it once."""
    self._generation = None
    self.lost = reason
    self._on_lost(reason)

  def release(self) -> None:
    """Stops the heartbeat and deletes the lock object; a failed delete is logged (the object
    then goes stale ``stale_after_s`` after its last heartbeat)."""
    _stop_heartbeat(self)
    with self._mutex:
      generation, self._generation = self._generation, None
    if generation is None:
      return
    try:
      storage.delete_if_generation(self.path, generation, timeout_s=self.renew_timeout_s)
    except Exception as e:  # pylint: disable=broad-except  (network errors: many types)
      self._log(f"warning: could not delete the lock {self.path} "
                f"({_error_text(e, self.renew_timeout_s)}); it goes stale "
                f"{self.stale_after_s:g} s after its last heartbeat")

  def __enter__(self) -> "GcsWorkdirLock":
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()


def for_directory(directory: str, role: str, log=None, **kwargs):
  """The lock for ``directory``: :class:`WorkdirLock` locally, :class:`GcsWorkdirLock` on gs://."""
  cls = GcsWorkdirLock if storage.is_remote(directory) else WorkdirLock
  return cls(directory, role, log=log, **kwargs)
