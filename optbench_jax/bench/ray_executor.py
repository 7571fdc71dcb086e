"""Sweep trials on a Ray cluster (``--executor=ray``): gang-scheduled, supervised on their nodes.

The executor seam of ``bench.trial_process`` (``launch`` -> a handle with
``poll``/``stop``/``close``), with Ray underneath. The sweep driver is unchanged:
it proposes trials, classifies each finished one from its directory in the shared
workdir (NFS, a gcsfuse mount of ``gs://``: the same path on every node), and is
the only writer of the SQLite store, so results do not depend on the executor.

This module connects to the cluster, checks it can ever hold a trial and watches
its head; one trial's scheduling, actors and faults are ``bench.ray_trial``, the
actor beside each of its processes ``bench.ray_supervisor``.

Before any trial: Ray missing, an unreachable ``--ray_address`` (time-boxed) and
``trial_resources`` that no node (or too few distinct nodes) can ever hold raise
one :class:`sweep_config.SweepConfigError` each. On an autoscaling cluster pass
``autoscaling=True``: the check against the nodes alive now is skipped and
trials wait for the autoscaler.

A dead head is not a lost node. With the head's GCS gone no trial can be
rescheduled (placement groups, actors and kills all go through it), and Ray's own
driver waits about a minute for it before aborting the process with a C++ error.
So the driver watches the head (:class:`HeadWatch`: a TCP connect to the GCS, or
to the Ray client server for ``ray://``, every ``HEAD_PROBE_S`` while trials run,
and at once when a node is lost; the calls that go through the head run in a
thread while it does, :meth:`HeadWatch.call`); when it has not answered for
``HEAD_GRACE_S`` the executor raises :class:`ClusterGone`
(``trial_process.ExecutorGone``), the runner stops, and from then on the executor
makes no call through the head.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from typing import Any, Callable, Mapping, Sequence

from optbench_jax.bench import sweep_config, trial_process
from optbench_jax.bench.ray_supervisor import TrialSupervisor
from optbench_jax.bench.ray_trial import RayTrial

INSTALL_HINT = 'pip install "optbench_jax[ray]"'
CONNECT_TIMEOUT_S = 30.0
DEFAULT_MAX_NODE_RETRIES = 3
# The head is probed this often while trials run (a TCP connect, bounded by PROBE_TIMEOUT_S),
# and declared gone after not answering for HEAD_GRACE_S: long enough to ride out one dropped
# connection, short against Ray's own ~60 s wait for a GCS that will not come back.
HEAD_PROBE_S = 1.0
PROBE_TIMEOUT_S = 1.0
HEAD_GRACE_S = 3.0
# With the head gone: how long the driver waits for its stop requests to reach the trials on
# the nodes left (their trainers then checkpoint on SIGTERM), and for Ray's disconnect, which
# waits on the dead GCS for ~15 s and finishes in the background after this.
GONE_STOP_WAIT_S = 2.0
GONE_SHUTDOWN_WAIT_S = 0.5


class ClusterGone(trial_process.ExecutorGone):
  """The cluster's head stopped answering: no trial can run or be rescheduled on it."""


def import_ray():
  """The ``ray`` module, or one SweepConfigError naming the extra."""
  try:
    import ray  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise sweep_config.SweepConfigError(
        f"--executor=ray needs Ray, which is not installed here ({e}); install the extra: "
        f"{INSTALL_HINT}") from None
  return ray


def check_reachable(address: str | None, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
  """Raises SweepConfigError when nothing answers at ``address`` ("host:port" or
  "ray://host:port") within ``timeout_s``; "auto" / None are left to Ray."""
  if address in (None, "", "auto", "local"):
    return
  host, _, port = address.split("://", 1)[-1].rpartition(":")
  if not host or not port.isdigit():
    raise sweep_config.SweepConfigError(
        f"--ray_address={address!r} is not host:port, ray://host:port or 'auto'")
  try:
    socket.create_connection((host, int(port)), timeout=timeout_s).close()
  except OSError as e:
    raise sweep_config.SweepConfigError(
        f"no Ray cluster answers at --ray_address={address} ({e}; waited up to "
        f"{timeout_s:g} s): start one (`ray start --head`) or fix the address") from None


def answers(address: str, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
  """None when something accepts a TCP connection at ``address`` (host:port), else why not."""
  host, _, port = address.rpartition(":")
  try:
    socket.create_connection((host, int(port)), timeout=timeout_s).close()
  except OSError as e:
    return e.strerror or str(e) or type(e).__name__
  return None


class HeadWatch:
  """Whether the cluster's head still answers (see the module docstring).

  ``cluster``: the address the user gave (named in the message); ``head``: host:port
  to probe (None: nothing to probe, the head is taken as alive). :meth:`check` is
  cheap to call every poll; :meth:`confirm` waits for an answer after a node loss.
  """

  def __init__(self, cluster: str, head: str | None, probe: Callable[[str], str | None] = answers,
               every_s: float = HEAD_PROBE_S, grace_s: float = HEAD_GRACE_S):
    self.cluster, self.head = cluster, head
    self.probe, self.every_s, self.grace_s = probe, every_s, grace_s
    self.gone: str | None = None    # the message, once the head is gone
    self._next = 0.0
    self._failing_since: float | None = None

  def check(self) -> None:
    """Raises ClusterGone once the head has not answered for ``grace_s`` (probes at most
    every ``every_s``)."""
    if self.gone:
      raise ClusterGone(self.gone)
    now = time.monotonic()
    if self.head is None or now < self._next:
      return
    self._next = now + self.every_s
    why = self.probe(self.head)
    if why is None:
      self._failing_since = None
      return
    if self._failing_since is None:
      self._failing_since = now
    if now - self._failing_since >= self.grace_s:
      where = "" if self.head == self.cluster else f" ({self.head})"
      self.gone = (f"the Ray cluster at {self.cluster} is gone: its head{where} has not "
                   f"answered for {now - self._failing_since:.0f} s ({why})")
      raise ClusterGone(self.gone)

  def call(self, fn: Callable[..., Any], *args) -> Any:
    """``fn(*args)`` for a Ray call that goes through the head (placement groups, actor
    creation, lookups and kills): Ray waits on a dead GCS for about a minute, then aborts the
    process. So the call runs in a thread while this one keeps probing; when the head is
    gone, ClusterGone is raised and the call is left behind."""
    result: dict[str, Any] = {}

    def run():
      try:
        result["value"] = fn(*args)
      except BaseException as e:  # pylint: disable=broad-except
        result["error"] = e
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    while True:
      thread.join(self.every_s)
      if not thread.is_alive():
        break
      self.check()
    if "error" in result:
      raise result["error"]
    return result.get("value")

  def confirm(self) -> None:
    """After a lost node: returns once the head answers, raises ClusterGone if it stays
    silent for ``grace_s`` (a dead head takes its own node's trials with it)."""
    self._next = 0.0
    while True:
      self.check()
      if self._failing_since is None:
        return
      time.sleep(max(0.0, self._next - time.monotonic()))


def bundle_of(resources: Mapping[str, float]) -> dict[str, float]:
  """One host's placement-group bundle: the resources it needs, zeros left out."""
  return {k: float(v) for k, v in resources.items() if v > 0}


def unsatisfiable(nodes: Sequence[Mapping[str, Any]], bundle: Mapping[str, float],
                  hosts: int) -> str | None:
  """Why no placement of ``hosts`` bundles (distinct nodes when > 1) exists on ``nodes``
  (``ray.nodes()`` records), or None."""
  alive = [n for n in nodes if n.get("Alive")]
  fits = [n for n in alive if all(n["Resources"].get(k, 0) >= v for k, v in bundle.items())]
  if len(fits) >= hosts:
    return None
  short = {k: v for k, v in bundle.items()
           if max((n["Resources"].get(k, 0) for n in alive), default=0) < v}
  if short:
    return "no node has " + ", ".join(
        f"{k} >= {v:g} (the most any node has: "
        f"{max((n['Resources'].get(k, 0) for n in alive), default=0):g})"
        for k, v in sorted(short.items()))
  return (f"hosts_per_trial={hosts} needs {hosts} distinct nodes with {dict(bundle)}, "
          f"the cluster has {len(fits)} (of {len(alive)} alive)")


def capacity(nodes: Sequence[Mapping[str, Any]], bundle: Mapping[str, float], hosts: int) -> int:
  """How many trials fit on ``nodes`` at once (at least 1)."""
  per_node = [min(int(n["Resources"].get(k, 0) // v) for k, v in bundle.items())
              for n in nodes if n.get("Alive")]
  if hosts == 1:
    return max(1, sum(per_node))
  trials = 0                      # each trial takes one bundle on `hosts` distinct nodes
  while sum(1 for c in per_node if c > 0) >= hosts:
    per_node.sort(reverse=True)
    for i in range(hosts):
      per_node[i] -= 1
    trials += 1
  return max(1, trials)


def namespace_for(workdir: str) -> str:
  """The Ray namespace of the sweep in ``workdir``: its trials' actor names live there."""
  return "optbench-" + hashlib.sha1(os.path.abspath(workdir).encode()).hexdigest()[:12]


class RayExecutor:
  """Runs sweep trials on a Ray cluster; see the module docstring.

  ``address``: as ``ray.init`` takes it (None: ``RAY_ADDRESS``, else a cluster
  started on this machine, else a new local one). ``log``: the driver's log.
  """

  def __init__(self, hosts_per_trial: int = 1, trial_resources: Mapping[str, float] | None = None,
               address: str | None = None, namespace: str = "optbench",
               max_node_retries: int = DEFAULT_MAX_NODE_RETRIES, autoscaling: bool = False,
               connect_timeout_s: float = CONNECT_TIMEOUT_S,
               log: Callable[[str], None] = print):
    if not (isinstance(max_node_retries, int) and max_node_retries >= 0):
      raise sweep_config.SweepConfigError(
          f"--max_node_retries must be an integer >= 0, got {max_node_retries!r}")
    self.ray = ray = import_ray()
    self.hosts = hosts_per_trial
    self.bundle = bundle_of(trial_resources or {"CPU": 1})
    self.namespace = namespace
    self.max_node_retries = max_node_retries
    self.log = log
    self._owns_connection = not ray.is_initialized()
    if self._owns_connection:
      check_reachable(address, connect_timeout_s)
      self._connect(address, connect_timeout_s)
    self.supervisor_cls = ray.remote(TrialSupervisor)
    self.trials: list[RayTrial] = []
    head = self._head_address(address)
    self.head = HeadWatch(head if address in (None, "", "auto") else address, head)
    try:
      nodes = ray.nodes()
      why = unsatisfiable(nodes, self.bundle, self.hosts)
      if why and not autoscaling:
        raise sweep_config.SweepConfigError(
            f"trial_resources={dict(trial_resources or {'CPU': 1})} x hosts_per_trial="
            f"{self.hosts} can never be placed on this Ray cluster: {why} (on an autoscaling "
            "cluster pass --ray_autoscaling)")
      if why:
        log(f"[sweep] ray: {why} now; trials wait for the autoscaler")
      self.capacity = capacity(nodes, self.bundle, self.hosts)
    except BaseException:
      self.close()
      raise
    log(f"[sweep] ray: {sum(bool(n.get('Alive')) for n in nodes)} node(s); each trial: "
        f"{self.hosts} x {self.bundle}; {self.capacity} at once")

  @classmethod
  def for_sweep(cls, plain: Mapping[str, Any], workdir: str, **options) -> "RayExecutor":
    return cls(plain["hosts_per_trial"], plain["trial_resources"],
               namespace=namespace_for(workdir), **options)

  def _connect(self, address: str | None, timeout_s: float) -> None:
    """``ray.init``, time-boxed: a listener that is not Ray must not hang the sweep."""
    result: dict[str, BaseException] = {}

    def connect():
      try:
        self.ray.init(address=address, logging_level="WARNING", log_to_driver=False,
                      configure_logging=True)
      except BaseException as e:  # pylint: disable=broad-except
        result["error"] = e
    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
      raise sweep_config.SweepConfigError(
          f"could not connect to Ray at --ray_address={address} within {timeout_s:g} s")
    if "error" in result:
      raise sweep_config.SweepConfigError(
          f"could not connect to Ray at --ray_address={address}: "
          f"{str(result['error']).splitlines()[0] if str(result['error']) else result['error']!r}")

  def _head_address(self, address: str | None = None) -> str | None:
    """host:port that answers while the head lives: the Ray client server for ``ray://``,
    else the GCS this driver is connected to (None when Ray cannot say)."""
    if address and address.startswith("ray://"):
      return address[len("ray://"):]
    try:
      return self.ray.get_runtime_context().gcs_address
    except Exception:  # pylint: disable=broad-except
      return None

  def launch(self, trial: Any, trial_dir: str, argv: Sequence[str],
             divergence: Callable[[list[dict[str, Any]]], str | None],
             log_dir: str | None = None) -> "RayTrial":
    """``log_dir`` (the driver's local copy for a gs:// trial) is not used: the logs are
    written on the trial's node, and uploaded into a gs:// ``trial_dir`` when it ends."""
    del log_dir
    self.head.check()     # a placement group asked of a dead GCS blocks until Ray aborts
    run = RayTrial(self, trial, trial_dir, argv, divergence)
    self.trials.append(run)
    return run

  def close(self) -> None:
    gone = self.head.gone
    for run in self.trials:
      run.close()
    stops = [ref for run in self.trials for ref in run.stop_refs]
    self.trials = []
    if gone and stops:       # the trials on the nodes left: their stop requests delivered
      try:
        self.ray.wait(stops, num_returns=len(stops), timeout=GONE_STOP_WAIT_S)
      except Exception:  # pylint: disable=broad-except
        pass
    if self._owns_connection and self.ray.is_initialized():
      if gone:   # bounded: the driver reports now, Ray finishes its disconnect behind it
        thread = threading.Thread(target=self.ray.shutdown, daemon=True)
        thread.start()
        thread.join(GONE_SHUTDOWN_WAIT_S)
      else:
        self.ray.shutdown()
