"""The console log of the command-line tools: our lines, short, and nothing else's chatter.

absl's default prefix (``I1203 16:58:20.262747 139647514405760 loop.py:312]``)
becomes ``16:58:20 loop:`` (a warning or error says so); and the INFO lines of
libraries that are noise on every run are raised to WARNING: JAX's backend
probing (``Unable to initialize backend 'tpu'`` on any machine without a TPU)
and matplotlib's font cache (``generated new fontManager``). Their warnings
still show.
"""

from __future__ import annotations

import logging

from absl import logging as absl_logging

QUIET_AT_INFO = ("jax._src.xla_bridge", "matplotlib", "matplotlib.font_manager")


class _ShortFormatter(logging.Formatter):
  def format(self, record: logging.LogRecord) -> str:
    level = "" if record.levelno <= logging.INFO else f"{record.levelname.lower()}: "
    module = record.module if record.module != "<string>" else record.name
    return f"{self.formatTime(record, '%H:%M:%S')} {module}: {level}{record.getMessage()}" + (
        "\n" + self.formatException(record.exc_info) if record.exc_info else "")


def configure(verbosity: int = absl_logging.INFO) -> None:
  """Short log lines at ``verbosity`` on stderr; library chatter at WARNING."""
  absl_logging.set_verbosity(verbosity)
  absl_logging.get_absl_handler().setFormatter(_ShortFormatter())
  for name in QUIET_AT_INFO:
    logging.getLogger(name).setLevel(logging.WARNING)
