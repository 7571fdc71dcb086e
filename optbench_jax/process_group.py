"""N processes of one command line, started the way the workers of a TPU slice run it.

Every process gets the same ``argv``; only its environment differs, in the
variables ``jax.distributed.initialize`` reads through
``optbench_jax.train.mesh.maybe_initialize_distributed``:

  JAX_COORDINATOR_ADDRESS = <host>:<port>   (the same for all: process 0 serves it)
  JAX_NUM_PROCESSES       = N
  JAX_PROCESS_ID          = i                (0 .. N-1)

On CPU each process is one "host" with ``local_device_count`` devices
(``--xla_force_host_platform_device_count`` in its XLA_FLAGS); JAX's CPU
collectives (gloo) connect them. The same launcher starts a multi-process
sweep trial on one machine (``bench.trial_process``) and the multi-host test
harness (``tests/multihost.py``).

Each process runs in its own session, so stopping it (SIGTERM to its process
group, SIGKILL after a grace period) also stops anything it started. A group
is one unit: :meth:`ProcessGroup.poll` is None while any process runs, and
the group's exit status is the first non-zero status of its processes (0 when
all exited 0). When one process dies the others cannot finish their
collectives; JAX's coordination service notices the missing heartbeat and
stops them (``--heartbeat_timeout_s`` of ``trainers.lm`` bounds the wait),
and :meth:`ProcessGroup.stop_if_broken` stops survivors after
``broken_grace_s`` in any case.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from typing import Callable, IO, Mapping, Sequence

COORDINATOR_ENV = "JAX_COORDINATOR_ADDRESS"
NUM_PROCESSES_ENV = "JAX_NUM_PROCESSES"
PROCESS_ID_ENV = "JAX_PROCESS_ID"
_DEVICE_COUNT_FLAG = re.compile(r"--xla_force_host_platform_device_count=\d+")


def free_port(host: str = "127.0.0.1") -> int:
  """A TCP port that was free on ``host`` a moment ago (for a coordinator)."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind((host, 0))
    return int(s.getsockname()[1])


def forced_device_count(env: Mapping[str, str] | None = None) -> int | None:
  """The ``--xla_force_host_platform_device_count`` in ``env``'s XLA_FLAGS, if any."""
  match = _DEVICE_COUNT_FLAG.search((env if env is not None else os.environ).get("XLA_FLAGS", ""))
  return int(match.group(0).split("=")[1]) if match else None


def process_env(base: Mapping[str, str], *, coordinator: str, num_processes: int,
                process_id: int, local_device_count: int | None = None) -> dict[str, str]:
  """``base`` plus the variables that make a process ``process_id`` of ``num_processes``."""
  if not 0 <= process_id < num_processes:
    raise ValueError(f"process_id {process_id} is outside 0..{num_processes - 1}")
  env = dict(base)
  env[COORDINATOR_ENV] = coordinator
  env[NUM_PROCESSES_ENV] = str(num_processes)
  env[PROCESS_ID_ENV] = str(process_id)
  if local_device_count is not None:
    flags = _DEVICE_COUNT_FLAG.sub("", env.get("XLA_FLAGS", "")).strip()
    env["XLA_FLAGS"] = (f"{flags} --xla_force_host_platform_device_count="
                        f"{int(local_device_count)}").strip()
  return env


class ProcessGroup:
  """``num_processes`` copies of ``argv`` forming one JAX job (see the module docstring).

  ``outputs[i]``: where process i writes stdout and stderr (a file object), or
  None to inherit. ``preexec_fn`` is run in every child (e.g. a parent-death
  signal). ``coordinator`` defaults to 127.0.0.1 at a free port.
  ``process_ids``: which of the job's processes start here (default all); a
  job spread over machines (``bench.ray_supervisor``) starts one on each, with
  ``outputs`` in that order.
  """

  def __init__(self, argv: Sequence[str], num_processes: int, *,
               local_device_count: int | None = None, env: Mapping[str, str] | None = None,
               cwd: str | None = None, outputs: Sequence[IO | None] | None = None,
               coordinator: str | None = None,
               preexec_fn: Callable[[], None] | None = None,
               process_ids: Sequence[int] | None = None):
    if num_processes < 1:
      raise ValueError(f"num_processes must be >= 1, got {num_processes}")
    ids = list(range(num_processes)) if process_ids is None else list(process_ids)
    if outputs is not None and len(outputs) != len(ids):
      raise ValueError(f"{len(outputs)} outputs for {len(ids)} processes")
    self.argv = list(argv)
    self.num_processes = num_processes
    self.coordinator = coordinator or f"127.0.0.1:{free_port()}"
    base = dict(os.environ if env is None else env)
    self.processes: list[subprocess.Popen] = []
    self._broken_since: float | None = None
    try:
      for k, i in enumerate(ids):
        child_env = process_env(base, coordinator=self.coordinator,
                                num_processes=num_processes, process_id=i,
                                local_device_count=local_device_count)
        if num_processes == 1:   # one process: a plain run, no coordinator
          for name in (COORDINATOR_ENV, NUM_PROCESSES_ENV, PROCESS_ID_ENV):
            child_env.pop(name, None)
        out = outputs[k] if outputs is not None else None
        self.processes.append(subprocess.Popen(
            self.argv, cwd=cwd, env=child_env, stdout=out,
            stderr=subprocess.STDOUT if out is not None else None,
            start_new_session=True, preexec_fn=preexec_fn))
    except BaseException:
      self.kill()
      raise

  @property
  def pids(self) -> list[int]:
    return [p.pid for p in self.processes]

  def returncodes(self) -> list[int | None]:
    return [p.poll() for p in self.processes]

  def poll(self) -> int | None:
    """None while any process runs; then the first non-zero exit status, else 0."""
    codes = self.returncodes()
    if any(code is None for code in codes):
      return None
    return next((code for code in codes if code != 0), 0)

  def wait(self, timeout: float) -> int:
    """Waits up to ``timeout`` seconds for every process; raises TimeoutError (all still running)."""
    deadline = time.monotonic() + timeout
    while (code := self.poll()) is None:
      if time.monotonic() > deadline:
        raise TimeoutError(f"processes {self.pids} still running after {timeout:g} s "
                           f"(exit codes so far {self.returncodes()})")
      time.sleep(0.05)
    return code

  def send_signal(self, signum: int, index: int | None = None) -> None:
    """Sends ``signum`` to process ``index``'s group (default: every process's)."""
    targets = self.processes if index is None else [self.processes[index]]
    for p in targets:
      if p.poll() is None:
        try:
          os.killpg(p.pid, signum)
        except ProcessLookupError:
          pass

  def stop(self, grace_s: float = 30.0) -> None:
    """SIGTERM to every process (a trainer checkpoints), SIGKILL to those left after ``grace_s``."""
    self.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while self.poll() is None and time.monotonic() < deadline:
      time.sleep(0.05)
    self.kill()

  def kill(self) -> None:
    """SIGKILL to every process still running, and reaps them all."""
    self.send_signal(signal.SIGKILL)
    for p in self.processes:
      try:
        p.wait(timeout=30)
      except subprocess.TimeoutExpired:
        pass

  def stop_if_broken(self, broken_grace_s: float) -> bool:
    """When a process exited non-zero and others still run after ``broken_grace_s``: stops them.

    Returns True when the group was stopped here. A job with a dead member cannot
    finish; this bounds the survivors' wait even if JAX's heartbeat does not.
    """
    codes = self.returncodes()
    if not any(code not in (None, 0) for code in codes) or all(c is not None for c in codes):
      self._broken_since = None
      return False
    if self._broken_since is None:
      self._broken_since = time.monotonic()
    if time.monotonic() - self._broken_since < broken_grace_s:
      return False
    self.stop(grace_s=5.0)
    return True

  def __enter__(self) -> "ProcessGroup":
    return self

  def __exit__(self, *exc) -> None:
    if self.poll() is None:
      self.stop(grace_s=10.0)
