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
  A holder whose heartbeat finds its generation replaced (it was partitioned
  for longer than ``stale_after_s`` and someone took over) logs it loudly; it
  cannot be stopped from the heartbeat thread. After a SIGKILL on another
  host, a rerun waits out the 5 minutes (or the user deletes the object).

A process that releases the lock removes the file, so a leftover ``.lock``
always means a process that did not exit cleanly.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import threading
import time
from typing import Any

from optbench_jax import storage

LOCK_NAME = ".lock"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0


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
               stale_after_s: float = STALE_AFTER_S):
    self.directory = storage.resolve(directory)
    self.path = storage.join(self.directory, LOCK_NAME)
    self.role = role
    self.heartbeat_s = heartbeat_s
    self.stale_after_s = stale_after_s
    self.took_over: dict[str, Any] | None = None
    self._log = log or (lambda msg: print(msg, file=sys.stderr))
    self._generation: int | None = None
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
    found = storage.stat_generation(self.path)
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
    self._info = dict(pid=os.getpid(), host=socket.gethostname(), role=self.role,
                      started=time.time(), heartbeat=time.time(), argv=sys.argv[:8])
    for _ in range(10):   # retried only when the object vanishes between create and read
      generation = storage.create_exclusive(self.path, json.dumps(self._info).encode())
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
                                                 old_generation)
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
    _start_heartbeat(self)
    return self

  def _beat(self) -> None:
    while not self._stop.wait(self.heartbeat_s):
      with self._mutex:
        if self._generation is None:
          return
        self._info["heartbeat"] = time.time()
        try:
          generation = storage.replace_if_generation(
              self.path, json.dumps(self._info).encode(), self._generation)
        except Exception:  # pylint: disable=broad-except  (a transient network error: retry)
          continue
        if generation is None:
          self._log(f"error: the lock of {self.directory} was taken over by another process "
                    "(this one's heartbeat was older than "
                    f"{self.stale_after_s:.0f} s); two processes may now write this directory")
          self._generation = None
          return
        self._generation = generation

  def release(self) -> None:
    _stop_heartbeat(self)
    with self._mutex:
      generation, self._generation = self._generation, None
    if generation is not None:
      storage.delete_if_generation(self.path, generation)

  def __enter__(self) -> "GcsWorkdirLock":
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()


def for_directory(directory: str, role: str, log=None, **kwargs):
  """The lock for ``directory``: :class:`WorkdirLock` locally, :class:`GcsWorkdirLock` on gs://."""
  cls = GcsWorkdirLock if storage.is_remote(directory) else WorkdirLock
  return cls(directory, role, log=log, **kwargs)
