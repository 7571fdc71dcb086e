"""Bounded waits on a ``gs://`` work directory: a trainer whose storage stops answering exits.

Cloud Storage can stop answering in the middle of a run (an outage, a network
partition; in the tests a frozen emulator). Then orbax's wait for a checkpoint,
gcsfs's uploads and the lock's renewal block with no end of their own, SIGTERM
included, and once the lock's heartbeat is 5 minutes old another host may take
over the work directory of a process that still lives. So on a ``gs://`` work
directory every blocking wait of the trainer on storage runs inside
``deadline.bound(what)`` -- each ``storage`` call of the trainer's thread
(``storage.bound_waits``) and each checkpoint save, wait and restore
(``checkpoint.Checkpointer``) -- and a watchdog thread ends the process when

* one such wait lasts longer than ``train.storage_timeout_s``,
* one fails with a network error (a refused connection, a time-out, an HTTP
  error of the storage clients: ``is_storage_failure``), or
* the work directory's lock was not renewed within the deadline (its heartbeat
  gives up, ``workdir_lock.GcsWorkdirLock``; the watchdog checks the same
  deadline, in case the heartbeat thread itself is stuck).

It prints one line and exits with ``cli_errors.STORAGE_UNAVAILABLE`` (3)::

  error: storage gs://b/w did not answer within 120 s while saving checkpoint 60; the last
  checkpoint known to be committed is step 40; rerun to resume

through ``os._exit``: the threads blocked in the storage clients cannot be
cancelled, and a process that lived on could still write once storage answers
again, racing whoever takes the lock over. So the same holds for a trainer run
in-process (``train.run``). Orbax marks a checkpoint committed only once all of
it is written (``commit_success.txt`` on GCS), so the last committed one is
intact and a rerun resumes from it. ("Known to be committed": a save that
finished in the background since the trainer last waited for one is not known
yet; a rerun may then resume from it, a newer step.)

A SIGTERM that arrives during such a wait is logged with the wait it is behind;
the process stops when the wait ends or, at the latest, at its deadline.

The deadline bounds each wait, not each request: a final checkpoint save waits
as long as its writing takes, so the deadline must cover writing the largest
checkpoint (the periodic saves overlap training; only their remainder is
waited for). Local work directories are not bounded: POSIX I/O keeps its
behaviour.
"""

from __future__ import annotations

import contextlib
import logging as pylogging
import os
import re
import sys
import threading
import time
import traceback
from typing import Any, Callable, Iterator

from optbench_jax import cli_errors
from optbench_jax import storage

# Storage clients' own error types (aiohttp: connections; gcsfs: HTTP errors after its retries;
# google: auth) and the status names tensorstore puts in the errors orbax re-raises.
_CLIENT_MODULES = ("aiohttp", "gcsfs", "google")
_UNAVAILABLE = re.compile(r"\b(UNAVAILABLE|DEADLINE_EXCEEDED)\b")


def is_storage_failure(error: BaseException) -> bool:
  """Whether ``error`` (or an exception it was raised from) says storage did not answer.

  An answer such as "not found" or "permission denied" is not one: callers handle those,
  and they keep their own one-line reports.
  """
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, (ConnectionError, TimeoutError)):
      return True
    if type(error).__module__.split(".")[0] in _CLIENT_MODULES:
      return True
    if _UNAVAILABLE.search(str(error)):
      return True
    error = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
  return False


def _first_line(error: BaseException) -> str:
  lines = str(error).strip().splitlines()
  return f"{type(error).__name__}: {lines[0][:200] if lines else ''}"


class StorageDeadline:
  """The watchdog of one run's work directory (see the module docstring); inert locally.

  ``with deadline.running(lock):`` watches ``lock`` (or nothing) and bounds the calling
  thread's ``storage`` calls while the run lasts; ``with deadline.bound("saving checkpoint
  60"):`` marks one wait; ``committed_step`` is a callable the error line asks for the
  newest step known to be committed.
  """

  def __init__(self, workdir: str, timeout_s: float):
    self.workdir = workdir
    self.timeout_s = float(timeout_s)
    self.enabled = storage.is_remote(workdir)
    self.committed_step: Callable[[], int | None] = lambda: None
    self._wait: tuple[str, float] | None = None   # (what, time.monotonic() at its start)
    self._lock: Any = None
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None
    self._failing = threading.Lock()

  def lock_options(self) -> dict[str, Any]:
    """Keyword arguments for ``workdir_lock.for_directory``: renewals under this deadline."""
    return dict(renew_timeout_s=self.timeout_s, on_lost=self.fail) if self.enabled else {}

  @contextlib.contextmanager
  def running(self, lock: Any = None) -> Iterator["StorageDeadline"]:
    if not self.enabled:
      yield self
      return
    self._lock = lock
    self._stop.clear()
    self._thread = threading.Thread(target=self._watch, name="storage-deadline", daemon=True)
    self._thread.start()
    try:
      with storage.bound_waits(self.bound):
        yield self
    finally:
      self._stop.set()
      self._thread.join()
      self._thread = None

  @contextlib.contextmanager
  def bound(self, what: str) -> Iterator[None]:
    """Bounds the wait inside the block; ``what`` completes "while ..." in the error line."""
    if not self.enabled:
      yield
      return
    what = what.replace(self.workdir + "/", "")   # "writing metrics.jsonl"
    outer, self._wait = self._wait, (what, time.monotonic())
    try:
      yield
    except Exception as e:  # pylint: disable=broad-except  (re-raised unless storage failed)
      if is_storage_failure(e):
        self.fail(f"storage {self.workdir} failed while {what} ({_first_line(e)})", e)
      raise
    finally:
      self._wait = outer

  def waiting_on(self) -> str | None:
    """The wait in progress and how long it may still take (for the SIGTERM log), or None."""
    wait = self._wait
    if wait is None:
      return None
    left = max(0.0, self.timeout_s - (time.monotonic() - wait[1]))
    return f"{wait[0]} (at most {left:.0f} s more: train.storage_timeout_s)"

  def _watch(self) -> None:
    poll_s = min(1.0, self.timeout_s / 10)
    while not self._stop.wait(poll_s):
      wait = self._wait
      if wait is not None and time.monotonic() - wait[1] > self.timeout_s:
        self.fail(f"storage {self.workdir} did not answer within {self.timeout_s:g} s while "
                  f"{wait[0]}")
      lock = self._lock
      # The heartbeat gives up at its deadline itself, naming its error; this is the backstop.
      if (lock is not None and lock.lost is None
          and time.time() > lock.renewal_deadline() + 2 * poll_s):
        self.fail(f"storage {self.workdir} did not answer within {self.timeout_s:g} s while "
                  "renewing the work directory's lock")

  def fail(self, reason: str, error: BaseException | None = None) -> None:
    """Prints the one error line and ends the process (any thread); never returns."""
    if not self._failing.acquire(blocking=False):
      while True:   # another thread is printing the line and ending the process
        time.sleep(1)
    try:
      step = self.committed_step()
    except Exception:  # pylint: disable=broad-except  (the line matters more than the step)
      step = None
    committed = ("no checkpoint of this run is known to be committed" if step is None else
                 f"the last checkpoint known to be committed is step {step}")
    pylogging.disable(pylogging.CRITICAL)   # nothing from other threads after our line
    if error is not None and cli_errors.verbose_requested():
      traceback.print_exception(error)
    print(f"error: {reason}; {committed}; rerun to resume", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(cli_errors.STORAGE_UNAVAILABLE)  # pylint: disable=protected-access
