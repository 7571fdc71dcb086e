"""Atomic JSON files: a reader sees the old file or the whole new one, never half of it.

A sweep stops trials with a signal at any moment (divergence, timeouts); a
``summary.json`` written in place can then be left empty. Writing to a temporary
file in the same directory and ``os.replace``-ing it over the target is atomic on
POSIX file systems.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any


def write_json(path: str | os.PathLike, obj: Any, **dump_kwargs: Any) -> None:
  """Writes ``obj`` as JSON to ``path`` atomically (temp file + ``os.replace``)."""
  path = os.fspath(path)
  directory = os.path.dirname(path) or "."
  fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
  try:
    with os.fdopen(fd, "w") as f:
      json.dump(obj, f, **dump_kwargs)
      f.write("\n")
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
