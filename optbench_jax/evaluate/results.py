"""Where an evaluation's results go: ``<workdir>/evals/<step>.json``.

The file is the dict ``lm_eval.simple_evaluate`` returns (``results``,
``groups``, ``group_subtasks``, ``configs``, ``versions``, ``n-shot``,
``higher_is_better``, ``n-samples``, ``config``, ...), made JSON-serialisable
as the harness's own CLI does (``lm_eval.utils.handle_non_serializable``),
plus two keys of ours:

* ``validation``: the bits-per-byte record of ``evaluate.validation``
  (absent with ``--no-bpb``);
* ``optbench_jax``: ``workdir``, ``step``, ``tasks``, ``limit``.
"""

from __future__ import annotations

import json
from typing import Any

from optbench_jax import storage
from optbench_jax.evaluate import EvaluationError

EVALS = "evals"


def evals_dir(workdir: str) -> str:
  return storage.join(storage.resolve(workdir), EVALS)


def result_path(workdir: str, step: int) -> str:
  return storage.join(evals_dir(workdir), f"{step}.json")


def check_writable(workdir: str) -> None:
  """Raises EvaluationError when ``<workdir>/evals`` cannot be created or written."""
  directory = evals_dir(workdir)
  probe = storage.join(directory, ".write_probe")
  try:
    storage.makedirs(directory)
    storage.write_text(probe, "probe")
    storage.remove(probe)
  except OSError as e:
    raise EvaluationError(f"cannot write the results to {directory}: "
                          f"{e.strerror or e}") from None


def to_json(results: dict[str, Any]) -> str:
  """``results`` as JSON text, the harness's way."""
  from lm_eval.utils import handle_non_serializable  # pylint: disable=import-outside-toplevel
  return json.dumps(results, indent=2, default=handle_non_serializable, ensure_ascii=False)


def write(workdir: str, step: int, results: dict[str, Any]) -> str:
  """Writes ``results`` to ``<workdir>/evals/<step>.json``; returns the path."""
  path = result_path(workdir, step)
  storage.write_text(path, to_json(results) + "\n")
  return path
