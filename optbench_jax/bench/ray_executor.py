"""Sweep trials on a Ray cluster (``--executor=ray``): gang-scheduled, supervised on their nodes.

The executor seam of ``bench.trial_process`` (``launch`` -> a handle with
``poll``/``stop``/``close``), with Ray underneath. The sweep driver is unchanged:
it proposes trials, classifies each finished one from its directory in the shared
workdir (NFS, a gcsfuse mount of ``gs://``: the same path on every node), and is
the only writer of the SQLite store, so results do not depend on the executor.

This module connects to the cluster and checks it can ever hold a trial; one
trial's scheduling, actors and faults are ``bench.ray_trial``, the actor beside
each of its processes ``bench.ray_supervisor``.

Before any trial: Ray missing, an unreachable ``--ray_address`` (time-boxed) and
``trial_resources`` that no node (or too few distinct nodes) can ever hold raise
one :class:`sweep_config.SweepConfigError` each. On an autoscaling cluster pass
``autoscaling=True``: the check against the nodes alive now is skipped and
trials wait for the autoscaler.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
from typing import Any, Callable, Mapping, Sequence

from optbench_jax.bench import sweep_config
from optbench_jax.bench.ray_supervisor import TrialSupervisor
from optbench_jax.bench.ray_trial import RayTrial

INSTALL_HINT = 'pip install "optbench_jax[ray]"'
CONNECT_TIMEOUT_S = 30.0
DEFAULT_MAX_NODE_RETRIES = 3


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

  def launch(self, trial: Any, trial_dir: str, argv: Sequence[str],
             divergence: Callable[[list[dict[str, Any]]], str | None],
             log_dir: str | None = None) -> "RayTrial":
    """``log_dir`` (the driver's local copy for a gs:// trial) is not used: the logs are
    written on the trial's node, and uploaded into a gs:// ``trial_dir`` when it ends."""
    del log_dir
    run = RayTrial(self, trial, trial_dir, argv, divergence)
    self.trials.append(run)
    return run

  def close(self) -> None:
    for run in self.trials:
      run.close()
    self.trials = []
    if self._owns_connection and self.ray.is_initialized():
      self.ray.shutdown()
