"""The harness tasks of an evaluation, checked and loaded before the model is.

``load_tasks(names, include_path)`` builds lm-eval's tasks (``TaskManager``:
the installed tasks plus the YAML files under ``include_path``) and returns
the task and group objects for ``simple_evaluate``, so each dataset is read
once. It raises :class:`EvaluationError` with one line for

* a name no task, group or tag has (glob patterns such as ``mmlu_*`` are
  expanded as the harness's CLI does), naming the closest known names;
* a task whose dataset cannot be loaded: not in the local Hugging Face datasets
  cache while offline (``HF_DATASETS_OFFLINE=1``), or no network; the line
  says how to fix it.
"""

from __future__ import annotations

import difflib
import os
from typing import Any, Sequence

from optbench_jax.evaluate import EvaluationError

OFFLINE_FIX = ("fill the Hugging Face datasets cache once with network access (run the same "
               "command without HF_DATASETS_OFFLINE), or copy the data to local files named in "
               "a task YAML loaded with --include_path (dataset_path: json, dataset_kwargs: "
               "{data_files: ...})")


def task_manager(include_path: str | None = None):
  """lm-eval's ``TaskManager`` over the installed tasks and ``include_path``'s YAML files."""
  from lm_eval.tasks import TaskManager  # pylint: disable=import-outside-toplevel  (slow import)
  if include_path and not os.path.isdir(include_path):
    raise EvaluationError(f"--include_path {include_path} is not a directory")
  return TaskManager(include_path=include_path)


def expand_names(names: Sequence[str], manager) -> list[str]:
  """``names`` with glob patterns expanded; raises EvaluationError for an unknown name."""
  known = set(manager.all_tasks)
  expanded = []
  for name in names:
    if name in known or os.path.isfile(name):
      expanded.append(name)
      continue
    matches = manager.match_tasks([name]) if any(c in name for c in "*?[") else []
    if not matches:
      close = difflib.get_close_matches(name, manager.all_tasks, n=5, cutoff=0.6)
      hint = f"; the closest known names: {', '.join(close)}" if close else ""
      raise EvaluationError(f"unknown task {name!r}: no installed task, group or tag has that "
                            f"name (list them with `lm_eval ls tasks`; a task of your own needs "
                            f"--include_path=<dir of its YAML>){hint}")
    expanded += [m for m in matches if m not in expanded]
  return expanded


def _dataset_error(error: BaseException) -> bool:
  """Whether ``error`` (or what caused it) comes from reading a dataset."""
  while error is not None:
    module = type(error).__module__
    if module.startswith(("datasets", "huggingface_hub", "requests", "urllib3", "fsspec")):
      return True
    if isinstance(error, (ConnectionError, FileNotFoundError, TimeoutError)):
      return True
    error = error.__cause__ or error.__context__
  return False


def load_tasks(names: Sequence[str], include_path: str | None = None) -> tuple[Any, list[Any]]:
  """(the ``TaskManager``, the task / group objects of ``names``) with their datasets loaded."""
  manager = task_manager(include_path)
  loaded = []
  for name in expand_names(names, manager):
    try:
      built = manager.load([name])
    except Exception as e:  # pylint: disable=broad-except  (any dataset backend's error)
      if not _dataset_error(e):
        raise
      offline = os.environ.get("HF_DATASETS_OFFLINE") not in (None, "", "0") or os.environ.get(
          "HF_HUB_OFFLINE") not in (None, "", "0")
      why = "is not in the local datasets cache (offline mode)" if offline else (
          "could not be loaded")
      message = " ".join(str(e).split())[:300]
      raise EvaluationError(f"task {name!r}: its dataset {why} ({type(e).__name__}: {message}); "
                            f"{OFFLINE_FIX}") from None
    if name in built["groups"]:
      loaded.append(built["groups"][name])
    else:
      loaded += list(built["tasks"].values())
  return manager, loaded
