"""The live progress of a running sweep: trials done / known, running, diverged, failed, time left.

On a terminal it is a ``rich`` progress bar that stays below the sweep's log
lines; when stdout is not a terminal (CI, ``nohup``, a pipe) it degrades to one
plain ``[sweep] progress: ...`` line each time the counts change.

"Known" trials: a tuner proposes trials as results arrive, so the total grows
during a sweep; the bar's total is the trials known so far (done + running +
queued). The time left is the mean wall time of the trials finished in this
invocation (skipped ones excluded), times the trials still to finish, divided by
the trials run at once.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Callable, TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn


@dataclasses.dataclass(frozen=True)
class Counts:
  done: int          # completed + diverged + failed, this invocation or earlier
  known: int         # done + running + queued
  running: int
  diverged: int
  failed: int


def format_duration(seconds: float | None) -> str:
  if seconds is None:
    return "?"
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  minutes, secs = divmod(rest, 60)
  return f"{hours}h{minutes:02d}m" if hours else (f"{minutes}m{secs:02d}s" if minutes
                                                   else f"{secs}s")


class SweepProgress:
  """Shows :class:`Counts` (module docstring). ``live``: None = when ``stream`` is a terminal."""

  def __init__(self, parallel: int, stream: TextIO | None = None, live: bool | None = None,
               log: Callable[[str], None] | None = None):
    self.parallel = max(1, parallel)
    self.stream = stream or sys.stdout
    self.live = self.stream.isatty() if live is None else live
    self.log = log or (lambda line: print(line, file=self.stream, flush=True))
    self._finished_walls: list[float] = []
    self._last: Counts | None = None
    self._progress: Progress | None = None
    self._task = None

  def __enter__(self) -> "SweepProgress":
    if self.live:
      self._progress = Progress(
          TextColumn("[bold]sweep"), BarColumn(), MofNCompleteColumn(),
          TextColumn("{task.fields[detail]}"), console=Console(file=self.stream),
          transient=False)
      self._progress.start()
      self._task = self._progress.add_task("sweep", total=None, detail="")
    return self

  def __exit__(self, *exc) -> None:
    if self._progress is not None:
      self._progress.stop()

  def trial_finished(self, wall_time_s: float) -> None:
    """A trial run by this invocation ended after ``wall_time_s`` (for the time left)."""
    self._finished_walls.append(wall_time_s)

  def eta_s(self, counts: Counts) -> float | None:
    if not self._finished_walls:
      return None
    mean = sum(self._finished_walls) / len(self._finished_walls)
    return mean * (counts.known - counts.done) / self.parallel

  def update(self, counts: Counts) -> None:
    if counts == self._last:
      return
    self._last = counts
    detail = (f"running {counts.running}, diverged {counts.diverged}, failed {counts.failed}, "
              f"left ~{format_duration(self.eta_s(counts))} (of the trials known so far)")
    if self._progress is not None:
      self._progress.update(self._task, total=counts.known, completed=counts.done, detail=detail)
    else:
      self.log(f"[sweep] progress: {counts.done}/{counts.known} done, {detail}")

