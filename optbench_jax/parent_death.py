"""Start a command that gets SIGTERM when the process that started it dies (Linux).

  python -m optbench_jax.parent_death PARENT_PID -- COMMAND [ARG ...]

sets the parent-death signal (``prctl(PR_SET_PDEATHSIG, SIGTERM)``) in this
process, exits at once if ``PARENT_PID`` is already gone, then ``exec``s the
command, which keeps the signal (and this pid). A sweep driver starts its trials
through :func:`wrap`, so a trial never outlives a dead driver.

Why not ``subprocess``'s ``preexec_fn``: with it, CPython runs the
``os.register_at_fork`` handlers in the parent, and JAX's warns that
``os.fork()`` in a multithreaded process may deadlock -- a real hazard, since a
forked copy of a JAX process runs Python before ``exec``. Without
``preexec_fn`` the child is started without running any Python in a forked
copy; the signal is set here, in a fresh interpreter, instead. The death signal
fires when the *thread* that started the child exits, so trials are launched
from the driver's main thread.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def wrap(argv: list[str]) -> list[str]:
  """``argv`` started through this module with this process as the parent (Linux), else as is."""
  if not sys.platform.startswith("linux"):
    return list(argv)
  return [sys.executable, "-m", "optbench_jax.parent_death", str(os.getpid()), "--", *argv]


def main(args: list[str]) -> None:
  if len(args) < 3 or args[1] != "--":
    sys.exit("usage: python -m optbench_jax.parent_death PARENT_PID -- COMMAND [ARG ...]")
  parent, command = int(args[0]), args[2:]
  libc = ctypes.CDLL(None, use_errno=True)
  libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
  if os.getppid() != parent:   # the parent died before the signal was set
    sys.exit(143)
  os.execvp(command[0], command)


if __name__ == "__main__":
  main(sys.argv[1:])
