"""One place that turns a command's exceptions into ``error: ...`` and an exit status.

Every entry point (``trainers.lm``, ``trainers.sweep``, ``optbench_jax.bench.report``,
``optbench_jax.data.prepare``) runs its main through :func:`run`:

* an input or environment error (a bad config or flag, bad data, a locked or
  unwritable work directory, a damaged checkpoint, a full disk, a dead peer
  process of a multi-host run) prints one line,
  ``error: <what is wrong>``, and exits 2;
* anything else is a bug: the traceback is printed, then ``error: internal
  error: ...``, exit 1;
* ``--verbose`` prints the traceback in both cases.

Exit 3 (``STORAGE_UNAVAILABLE``) is the trainer's alone: its ``gs://`` storage
did not answer within ``train.storage_timeout_s`` (or failed) in the middle of
the run; one ``error: storage ...`` line names the wait and the last committed
checkpoint, and a rerun resumes from it (``train/storage_deadline.py``, which
exits itself, since threads stuck in the storage clients cannot be stopped).

``install_excepthook`` covers errors raised while the command line is parsed at
import time (ml_collections applies ``--config.x=v`` overrides then, so a
misspelled key fails before ``main``).
"""

from __future__ import annotations

import errno
import gc
import logging as pylogging
import os
import re
import sys
import traceback
import warnings
from typing import Callable

USER_ERROR, INTERNAL_ERROR = 2, 1
STORAGE_UNAVAILABLE = 3   # see the module docstring: storage stopped answering; rerun to resume
_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS,
                       errno.ENOENT, errno.EISDIR, errno.ENOTDIR, errno.EEXIST, errno.ENOTEMPTY}


# A collective or the coordination service lost a peer process (multi-host runs).
_PEER_FAILURE = re.compile(r"Gloo|heartbeat|coordination service|Connection reset by peer|"
                           r"Connection refused|Socket closed", re.IGNORECASE)


PEER_DIED = ("another process of this multi-process run died or became unreachable (its own "
             "log says why)")


def verbose_requested(argv: list[str] | None = None) -> bool:
  return any(a in ("--verbose", "-v", "--verbose=true", "--verbose=True")
             for a in (sys.argv if argv is None else argv))


# The input / environment error classes of the package (matched by name: an entry
# point run with ``python -m`` defines its classes in ``__main__``).
USER_ERROR_NAMES = frozenset({
    "ConfigError",          # optbench_jax.config (+ preflight, run_record)
    "DataError",            # optbench_jax.data.manifest
    "SweepConfigError",     # optbench_jax.bench.sweep_config
    "SearchSpaceError",     # optbench_jax.bench.search_space
    "StoreMismatchError",   # optbench_jax.bench.results_store
    "CheckpointError",      # optbench_jax.train.checkpoint
    "ReportError",          # optbench_jax.bench.report
    "StudyInputError",      # optbench_jax.bench.study_table
    "StudyConfigError",     # optbench_jax.bench.study_config
    "WorkdirLockedError",   # optbench_jax.workdir_lock
    "StatusError",          # optbench_jax.bench.sweep_status
    "StorageError",         # optbench_jax.storage (gs:// extra, endpoint, bucket)
    "ModelLoadError",       # optbench_jax.inference
    "ExportError",          # optbench_jax.export
    "EvaluationError",      # optbench_jax.evaluate
    "CoordCheckError",      # optbench_jax.bench.coord_check
})


def _is_user_error(error: BaseException) -> bool:
  return any(c.__name__ in USER_ERROR_NAMES and c.__module__.startswith(("optbench_jax", "__main__"))
             for c in type(error).__mro__)


def _chain(error: BaseException):
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    yield error
    error = error.__cause__ or error.__context__


def _from_config_flags(error: BaseException) -> bool:
  frames = traceback.extract_tb(error.__traceback__)
  return any("ml_collections/config_flags" in f.filename.replace("\\", "/") for f in frames)


def _text(error: BaseException) -> str:
  if isinstance(error, KeyError) and error.args and isinstance(error.args[0], str):
    text = error.args[0]   # KeyError's str() adds quotes around the whole message
  else:
    text = str(error)
  return "; ".join(line.strip() for line in text.strip().splitlines() if line.strip())


def classify(error: BaseException) -> tuple[bool, str]:
  """(is an input/environment error, the one-line message)."""
  chain = list(_chain(error))
  for e in chain:
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
      return True, f"disk full: {_text(e)}"
    if "No space left on device" in str(e):
      return True, f"disk full: {_text(e)}"
  if _is_user_error(error):
    return True, _text(error)
  if type(error).__name__ == "JaxRuntimeError" and _PEER_FAILURE.search(str(error)):
    return True, f"{PEER_DIED}: {_text(error)[:400]}"
  if _from_config_flags(error):
    message = _text(error)
    for e in chain:
      missing = re.search(r"No such file or directory: '([^']*)'", str(e))
      if isinstance(e, OSError) and missing:
        message = (f"no config file {missing.group(1)!r} (a relative --config is resolved "
                   f"from the current directory, {os.getcwd()})")
        break
      if isinstance(e, KeyError):
        message = f"unknown config key {_text(e)}"
        break
    return True, f"--config: {message}"
  if isinstance(error, OSError) and error.errno in _ENVIRONMENT_ERRNOS:
    return True, _text(error)
  return False, f"internal error: {type(error).__name__}: {_text(error)}"


def report(error: BaseException, verbose: bool = False) -> int:
  """Prints ``error`` as described in the module docstring; returns the exit status."""
  is_user, message = classify(error)
  if verbose or not is_user:
    traceback.print_exception(error)
  # A failed async write (orbax/tensorstore) leaves asyncio futures whose "exception was never
  # retrieved" is logged when they are collected, and coroutines that were never awaited,
  # warned about when collected: collect them now, before our line, and silence both
  # reports at interpreter exit, so `error: ...` stays the last line.
  gc.collect()
  pylogging.getLogger("asyncio").disabled = True
  warnings.filterwarnings("ignore", message=r"coroutine .* was never awaited",
                          category=RuntimeWarning)
  print(f"error: {message}", file=sys.stderr, flush=True)
  return USER_ERROR if is_user else INTERNAL_ERROR


def run(main: Callable[..., int | None], *args, verbose: bool | None = None) -> int:
  """``main(*args)``'s exit status (an int; anything else is 0), or :func:`report`'s."""
  try:
    status = main(*args)
    return status if isinstance(status, int) else 0
  except SystemExit:
    raise
  except KeyboardInterrupt:
    print("error: interrupted", file=sys.stderr, flush=True)
    return 130
  except Exception as e:  # pylint: disable=broad-except
    status = report(e, verbose_requested() if verbose is None else verbose)
    if classify(e)[1].startswith(PEER_DIED):
      # With a peer gone, JAX's shutdown at interpreter exit waits on the coordination service
      # and then aborts (SIGABRT, a C++ error and a thread dump after our line): leave now.
      sys.stdout.flush()
      sys.stderr.flush()
      os._exit(status)  # pylint: disable=protected-access
    return status


def install_excepthook() -> None:
  """Errors escaping to the top level (e.g. at flag-parsing time) are reported the same way."""
  def hook(kind, error, tb):
    if not isinstance(error, Exception):
      sys.__excepthook__(kind, error, tb)
      return
    status = report(error.with_traceback(tb), verbose_requested())
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)  # pylint: disable=protected-access
  sys.excepthook = hook
