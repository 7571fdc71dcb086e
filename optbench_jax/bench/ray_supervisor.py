"""The Ray actor beside one process of a sweep trial, on the trial's node.

``RayExecutor`` turns :class:`TrialSupervisor` into an actor class at run time
(``ray.remote``); the actors then unpickle it by reference, so each Ray worker
imports this module by its name, ``optbench_jax.bench.ray_supervisor`` (the
trial's ``runtime_env`` puts the repository on its ``PYTHONPATH``). Ray itself is
imported inside the methods, on the worker.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
from typing import Any, Callable, Sequence

from optbench_jax import process_group
from optbench_jax.bench import sweep_config, trial_process

WATCH_INTERVAL_S = 0.5         # the supervisor's divergence watch, on the trial's node


def localize(argv: Sequence[str], driver_python: str, driver_root: str) -> list[str]:
  """The driver's trainer command line for this node: its Python and repository
  where the driver's paths do not exist here."""
  out = []
  for arg in argv:
    if arg == driver_python and not os.path.exists(arg):
      arg = sys.executable
    elif driver_root != sweep_config.REPO_ROOT and not os.path.exists(driver_root):
      arg = arg.replace(driver_root, sweep_config.REPO_ROOT)
    out.append(arg)
  return out


class TrialSupervisor:
  """The Ray actor beside one process of a trial, on its node (``ray.remote``'d by the executor).

  Runs the shared supervisor, ``trial_process.TrialProcess``, for process
  ``process_id`` of the trial's job; with a ``divergence`` rule (process 0) a
  thread here watches metrics.jsonl and stops the trial when it diverges. Methods
  run on the actor's main thread, which forks the trainer: its parent-death
  signal then fires exactly when this actor's process dies.
  """

  def __init__(self):
    self.proc: trial_process.TrialProcess | None = None
    self._done = threading.Event()
    self._watch: threading.Thread | None = None

  def address(self) -> str:
    """A JAX coordinator address on this node (its Ray address, a free port)."""
    import ray  # pylint: disable=import-outside-toplevel
    ip = ray.util.get_node_ip_address()
    return f"{ip}:{process_group.free_port(ip)}"

  def start(self, trial_id: str, trial_dir: str, argv: Sequence[str],
            divergence: Callable[[list[dict[str, Any]]], str | None] | None, hosts: int,
            process_id: int, coordinator: str | None, driver_python: str,
            driver_root: str) -> dict[str, Any]:
    import ray  # pylint: disable=import-outside-toplevel
    self.proc = trial_process.TrialProcess(
        trial_id, trial_dir, localize(argv, driver_python, driver_root),
        divergence or (lambda records: None), hosts=hosts, process_ids=[process_id],
        coordinator=coordinator)
    if divergence is not None:
      self._watch = threading.Thread(target=self._watch_loop, daemon=True)
      self._watch.start()
    return {"node_id": ray.get_runtime_context().get_node_id(), "host": socket.gethostname(),
            "ip": ray.util.get_node_ip_address(), "pids": self.proc.group.pids}

  def _watch_loop(self) -> None:
    while not self._done.wait(WATCH_INTERVAL_S):
      if self.proc.group.poll() is not None:
        return
      self.proc.check_divergence()

  def status(self) -> dict[str, Any]:
    return {"code": self.proc.poll(), "diverged": self.proc.diverged}

  def stop(self) -> None:
    """SIGTERM (the trainer checkpoints), SIGKILL after ``trial_process.STOP_GRACE_S``."""
    if self.proc is not None:
      self.proc.stop()

  def close(self) -> None:
    self._done.set()
    if self._watch is not None:
      self._watch.join(timeout=10)
    if self.proc is not None:
      if self.proc.poll() is None:
        self.proc.stop()
      self.proc.close()
