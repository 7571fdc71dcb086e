"""Atomic JSON files: a reader sees the old file or the whole new one, never half of it.

A sweep stops trials with a signal at any moment (divergence, timeouts); a
``summary.json`` written in place can then be left empty. Writing to a temporary
file in the same directory and ``os.replace``-ing it over the target is atomic on
POSIX file systems. The file gets the mode ``open()`` would give it (0666 less
the umask, usually 0644), not ``mkstemp``'s private 0600: a dataset manifest or a
run summary is read by other users and workers. Local files only: ``gs://`` paths go
through ``optbench_jax.storage`` (an object upload is atomic by itself).
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from typing import Any

_UMASK_LOCK = threading.Lock()


def _umask() -> int:
  # os.umask can only be read by setting it; the lock keeps other threads of this
  # module from seeing the temporary 0 (other code creating files meanwhile is rare).
  with _UMASK_LOCK:
    mask = os.umask(0o022)
    os.umask(mask)
  return mask


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
  """Writes ``data`` to ``path`` atomically (temp file + fsync + ``os.replace``)."""
  path = os.fspath(path)
  directory = os.path.dirname(path) or "."
  fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
  try:
    os.fchmod(fd, 0o666 & ~_umask())
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_text(path: str | os.PathLike, text: str) -> None:
  """Writes ``text`` (UTF-8) to ``path`` atomically (temp file + fsync + ``os.replace``)."""
  write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any, **dump_kwargs: Any) -> None:
  """Writes ``obj`` as JSON to ``path`` atomically (temp file + ``os.replace``)."""
  write_text(path, json.dumps(obj, **dump_kwargs) + "\n")
