"""Reads a study's results table (and eval-curve table) from CSV, refusing bad ones clearly.

Results table: one row per run of a best configuration. Required columns
``optimizer, params, tokens, final_loss``; optional ``seed`` (default 0),
``model`` (default: params written like "130M" or "1.2B"), ``chinchilla``
(default tokens / (20 params), Hoffmann et al. 2022's compute-optimal ratio)
and ``batch_size`` (default none). ``final_loss`` may be ``inf`` or ``nan``
(a diverged run). The curves table has ``fraction`` and ``eval_loss`` in place
of ``final_loss``.

Every problem raises :class:`StudyInputError` with one line naming the file,
row and column (or the duplicate rows, or the size without reference runs).
"""

from __future__ import annotations

import csv
import math
import os
from typing import Sequence

RESULTS_COLUMNS = ("optimizer", "params", "tokens", "final_loss")
CURVES_COLUMNS = ("optimizer", "params", "tokens", "fraction", "eval_loss")
OPTIONAL_COLUMNS = ("seed", "model", "chinchilla", "batch_size")


class StudyInputError(Exception):
  """A results or curves table (or a flag about it) that cannot be analysed; the message says why."""


def model_label(params: float) -> str:
  """130000000 -> "130M", 1.2e9 -> "1.2B"."""
  for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
    if params >= scale:
      return f"{params / scale:.3g}{unit}"
  return f"{params:g}"


def _number(path, i, column, text, positive=False, integer=False) -> float:
  where = f"{path}, row {i} (line {i + 1}), column {column}"
  try:
    value = float(text)
  except (TypeError, ValueError):
    raise StudyInputError(f"{where}: {text!r} is not a number") from None
  if positive and not (math.isfinite(value) and value > 0):
    raise StudyInputError(f"{where}: {text!r} is not a positive number")
  if integer and not (math.isfinite(value) and value == int(value)):
    raise StudyInputError(f"{where}: {text!r} is not an integer")
  return value


def _read(path: str, required: Sequence[str]) -> list[tuple[int, dict]]:
  if not os.path.isfile(path):
    raise StudyInputError(f"{path}: no such file")
  with open(path, newline="", encoding="utf-8") as f:
    reader = csv.DictReader(f)
    header = [h.strip() for h in (reader.fieldnames or [])]
    missing = [c for c in required if c not in header]
    if not header:
      raise StudyInputError(f"{path}: the table is empty (no header, no rows)")
    if missing:
      raise StudyInputError(f"{path}: missing column{'s' if len(missing) > 1 else ''} "
                            f"{', '.join(missing)} (required: {', '.join(required)})")
    reader.fieldnames = header
    rows = [(i, {k: (v or "").strip() for k, v in row.items() if k is not None})
            for i, row in enumerate(reader, start=1)]
  if not rows:
    raise StudyInputError(f"{path}: the table has no rows")
  return rows


def _common(path: str, i: int, row: dict) -> dict:
  if not row["optimizer"]:
    raise StudyInputError(f"{path}, row {i} (line {i + 1}), column optimizer: empty")
  params = _number(path, i, "params", row["params"], positive=True)
  tokens = _number(path, i, "tokens", row["tokens"], positive=True)
  k = row.get("chinchilla", "")
  bs = row.get("batch_size", "")
  return {"optimizer": row["optimizer"], "params": int(round(params)), "tokens": tokens,
          "model": row.get("model") or model_label(params),
          "chinchilla": (_number(path, i, "chinchilla", k, positive=True) if k
                         else tokens / (20.0 * params)),
          "batch_size": int(_number(path, i, "batch_size", bs, positive=True, integer=True))
                        if bs else None,
          "seed": int(_number(path, i, "seed", row["seed"], integer=True))
                  if row.get("seed") else 0}


def read_results(path: str) -> list[dict]:
  """The rows of a results table (see the module docstring), checked."""
  rows, first_row = [], {}
  for i, raw in _read(path, RESULTS_COLUMNS):
    row = _common(path, i, raw)
    row["final_loss"] = _number(path, i, "final_loss", raw["final_loss"])
    key = (row["optimizer"], row["model"], row["batch_size"], row["tokens"], row["seed"])
    if key in first_row:
      raise StudyInputError(
          f"{path}: duplicate rows {first_row[key]} and {i} for optimizer {key[0]}, model "
          f"{key[1]}, batch size {key[2]}, tokens {key[3]:g}, seed {key[4]}")
    first_row[key] = i
    rows.append(row)
  return rows


def read_curves(path: str) -> list[dict]:
  """The evaluations of a curves table, checked (fraction in [0, 1])."""
  rows = []
  for i, raw in _read(path, CURVES_COLUMNS):
    row = _common(path, i, raw)
    row["fraction"] = _number(path, i, "fraction", raw["fraction"])
    if not 0 <= row["fraction"] <= 1:
      raise StudyInputError(f"{path}, row {i} (line {i + 1}), column fraction: "
                            f"{raw['fraction']!r} is not in [0, 1]")
    row["eval_loss"] = _number(path, i, "eval_loss", raw["eval_loss"])
    rows.append(row)
  return rows


def check_reference(rows: Sequence[dict], reference: str, path: str) -> None:
  """The reference optimizer has rows, and rows at every model size of the table."""
  names = sorted({r["optimizer"] for r in rows})
  if reference not in names:
    raise StudyInputError(f"--reference={reference}: no rows of that optimizer in {path} "
                          f"(optimizers: {', '.join(names)})")
  have = {r["params"] for r in rows if r["optimizer"] == reference}
  for params, model in sorted({(r["params"], r["model"]) for r in rows}):
    if params not in have:
      raise StudyInputError(f"{path}: no {reference} (reference) rows at size {model} "
                            f"({params} parameters); speedups there have nothing to compare to")
