"""One SQLite results store per sweep: an append-only log of trial attempts.

Why SQLite: one file, atomic commits (a killed sweep never leaves half a
record), concurrent readers (the report can run while a sweep is going), and
queries without loading everything. Only the sweep's main process writes.

Layout:

* ``meta`` -- ``schema_version``, ``sweep_fingerprint`` (hash of the sweep
  config that produced the results), ``sweep_name``, ``created_at``.
* ``attempts`` -- one row per finished trial attempt, never updated or deleted:
  trial id, optimizer, budget (steps and tokens), seed, hyperparameters (JSON),
  status (``completed`` | ``diverged`` | ``failed``), the reason for anything
  but ``completed``, the final validation loss, the per-eval curve (JSON),
  wall time, steps, tokens, seconds per step, parameter count, the trial's
  workdir and its resolved trainer config (JSON).

``completed`` and ``diverged`` are *final*: a trial with a final attempt is
never run or recorded again (recording it twice raises). ``failed`` (the
process crashed) is kept as history; a later attempt of the same trial adds a
new row, so nothing is ever overwritten.

Opening a store written by another sweep (different fingerprint) or by a newer
schema version raises :class:`StoreMismatchError` before anything is read.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import sqlite3
from typing import Any, Iterable

SCHEMA_VERSION = 1
STORE_FILENAME = "results.sqlite"

COMPLETED = "completed"
DIVERGED = "diverged"
FAILED = "failed"
STATUSES = (COMPLETED, DIVERGED, FAILED)
FINAL_STATUSES = (COMPLETED, DIVERGED)


class StoreMismatchError(RuntimeError):
  """The store on disk belongs to another sweep or a newer schema version."""


class DuplicateResultError(RuntimeError):
  """A trial that already has a final result was recorded again."""


@dataclasses.dataclass(frozen=True)
class TrialResult:
  """Everything the analysis needs about one trial attempt."""
  trial_id: str
  optimizer: str
  budget_steps: int
  seed: int
  hparams: dict[str, Any]
  status: str
  reason: str = ""
  final_eval_loss: float = math.nan
  eval_curve: tuple[tuple[int, float], ...] = ()   # (step, eval_loss)
  wall_time_s: float = math.nan
  steps: int = 0
  tokens: int = 0
  budget_tokens: int = 0
  step_time_s: float = math.nan                     # measured seconds per optimizer step
  params: int = 0
  loss_floor: float = math.nan
  workdir: str = ""
  config: dict[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def objective(self) -> float:
    """The loss a tuner minimises: the final validation loss, +inf unless completed."""
    if self.status != COMPLETED or not math.isfinite(self.final_eval_loss):
      return math.inf
    return self.final_eval_loss


_CREATE = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS attempts (
  attempt INTEGER PRIMARY KEY AUTOINCREMENT,
  trial_id TEXT NOT NULL,
  optimizer TEXT NOT NULL,
  budget_steps INTEGER NOT NULL,
  budget_tokens INTEGER NOT NULL,
  seed INTEGER NOT NULL,
  hparams TEXT NOT NULL,
  status TEXT NOT NULL CHECK (status IN ('completed', 'diverged', 'failed')),
  reason TEXT NOT NULL,
  final_eval_loss REAL,
  eval_curve TEXT NOT NULL,
  wall_time_s REAL,
  steps INTEGER NOT NULL,
  tokens INTEGER NOT NULL,
  step_time_s REAL,
  params INTEGER NOT NULL,
  loss_floor REAL,
  workdir TEXT NOT NULL,
  config TEXT NOT NULL,
  recorded_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS attempts_trial ON attempts (trial_id);
"""

_COLUMNS = ("trial_id", "optimizer", "budget_steps", "budget_tokens", "seed", "hparams",
            "status", "reason", "final_eval_loss", "eval_curve", "wall_time_s", "steps",
            "tokens", "step_time_s", "params", "loss_floor", "workdir", "config")


def _real(x: float) -> float | None:
  # SQLite has no NaN: store NULL and read it back as NaN.
  return None if x is None or math.isnan(x) else float(x)


def _unreal(x: float | None) -> float:
  return math.nan if x is None else float(x)


class ResultsStore:
  """The append-only attempt log of one sweep (see the module docstring)."""

  def __init__(self, path: str, sweep_fingerprint: str, sweep_name: str = ""):
    """Opens (or creates) the store at ``path`` for the sweep ``sweep_fingerprint``.

    Raises:
      StoreMismatchError: the file was written by another sweep or a newer schema.
    """
    self.path = path
    self.sweep_fingerprint = sweep_fingerprint
    exists = os.path.exists(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    self._db = sqlite3.connect(path)
    try:
      if exists:
        self._check_meta(sweep_fingerprint)
      else:
        with self._db:
          self._db.executescript(_CREATE)
          now = datetime.datetime.now(datetime.timezone.utc).isoformat()
          self._db.executemany("INSERT INTO meta VALUES (?, ?)", [
              ("schema_version", str(SCHEMA_VERSION)),
              ("sweep_fingerprint", sweep_fingerprint),
              ("sweep_name", sweep_name),
              ("created_at", now)])
    except Exception:
      self._db.close()
      raise

  @classmethod
  def open_existing(cls, path: str) -> "ResultsStore":
    """Opens a store for reading whatever sweep wrote it (the report does this)."""
    if not os.path.exists(path):
      raise FileNotFoundError(f"no results store at {path}")
    meta = read_meta(path)
    return cls(path, meta["sweep_fingerprint"])

  def _check_meta(self, sweep_fingerprint: str) -> None:
    meta = read_meta(self.path, connection=self._db)
    version = int(meta.get("schema_version", -1))
    if version > SCHEMA_VERSION:
      raise StoreMismatchError(
          f"{self.path} has schema version {version}, newer than this code's "
          f"{SCHEMA_VERSION}; upgrade optbench_jax or use another --workdir")
    if version < 1:
      raise StoreMismatchError(f"{self.path} is not an optbench_jax results store")
    if meta.get("sweep_fingerprint") != sweep_fingerprint:
      raise StoreMismatchError(
          f"{self.path} belongs to another sweep (name {meta.get('sweep_name')!r}, "
          f"fingerprint {meta.get('sweep_fingerprint', '')[:12]}, this sweep's is "
          f"{sweep_fingerprint[:12]}): the sweep config changed since it was written. "
          "Use a new --workdir; results are never overwritten")

  def close(self) -> None:
    self._db.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  def record(self, result: TrialResult) -> None:
    """Appends one attempt. Raises DuplicateResultError if the trial is already final."""
    if result.status not in STATUSES:
      raise ValueError(f"status must be one of {STATUSES}, got {result.status!r}")
    if self.final_result(result.trial_id) is not None:
      raise DuplicateResultError(
          f"trial {result.trial_id} already has a final result; results are never overwritten")
    row = (result.trial_id, result.optimizer, int(result.budget_steps),
           int(result.budget_tokens), int(result.seed),
           json.dumps(result.hparams, sort_keys=True), result.status, result.reason,
           _real(result.final_eval_loss),
           json.dumps([[int(s), _real(l)] for s, l in result.eval_curve]),
           _real(result.wall_time_s), int(result.steps), int(result.tokens),
           _real(result.step_time_s), int(result.params), _real(result.loss_floor),
           result.workdir, json.dumps(result.config, sort_keys=True),
           datetime.datetime.now(datetime.timezone.utc).isoformat())
    with self._db:
      self._db.execute(
          f"INSERT INTO attempts ({', '.join(_COLUMNS)}, recorded_at) "
          f"VALUES ({', '.join('?' * (len(_COLUMNS) + 1))})", row)

  def attempts(self, trial_id: str | None = None) -> list[TrialResult]:
    """Every attempt (of one trial, if given), oldest first."""
    query = f"SELECT {', '.join(_COLUMNS)} FROM attempts"
    args: tuple = ()
    if trial_id is not None:
      query += " WHERE trial_id = ?"
      args = (trial_id,)
    rows = self._db.execute(query + " ORDER BY attempt", args).fetchall()
    return [_from_row(row) for row in rows]

  def final_result(self, trial_id: str) -> TrialResult | None:
    """The completed or diverged attempt of ``trial_id``, if any."""
    row = self._db.execute(
        f"SELECT {', '.join(_COLUMNS)} FROM attempts WHERE trial_id = ? AND status IN "
        "('completed', 'diverged') ORDER BY attempt LIMIT 1", (trial_id,)).fetchone()
    return None if row is None else _from_row(row)

  def latest(self) -> list[TrialResult]:
    """One result per trial: its final attempt, else its latest failure."""
    by_trial: dict[str, TrialResult] = {}
    for result in self.attempts():
      previous = by_trial.get(result.trial_id)
      if previous is None or previous.status not in FINAL_STATUSES:
        by_trial[result.trial_id] = result
    return list(by_trial.values())


def _from_row(row: Iterable[Any]) -> TrialResult:
  values = dict(zip(_COLUMNS, row))
  return TrialResult(
      trial_id=values["trial_id"], optimizer=values["optimizer"],
      budget_steps=values["budget_steps"], budget_tokens=values["budget_tokens"],
      seed=values["seed"], hparams=json.loads(values["hparams"]), status=values["status"],
      reason=values["reason"], final_eval_loss=_unreal(values["final_eval_loss"]),
      eval_curve=tuple((int(s), _unreal(l)) for s, l in json.loads(values["eval_curve"])),
      wall_time_s=_unreal(values["wall_time_s"]), steps=values["steps"],
      tokens=values["tokens"], step_time_s=_unreal(values["step_time_s"]),
      params=values["params"], loss_floor=_unreal(values["loss_floor"]),
      workdir=values["workdir"], config=json.loads(values["config"]))


def read_meta(path: str, connection: sqlite3.Connection | None = None) -> dict[str, str]:
  """The ``meta`` table of the store at ``path`` as a dict."""
  db = connection or sqlite3.connect(path)
  try:
    try:
      rows = db.execute("SELECT key, value FROM meta").fetchall()
    except sqlite3.DatabaseError as e:
      raise StoreMismatchError(f"{path} is not an optbench_jax results store ({e})") from e
    return dict(rows)
  finally:
    if connection is None:
      db.close()
