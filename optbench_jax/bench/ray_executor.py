"""Sweep trials on a Ray cluster (``--executor=ray``): gang-scheduled, supervised on their nodes.

The executor seam of ``bench.trial_process`` (``launch`` -> a handle with
``poll``/``stop``/``close``), with Ray underneath. The sweep driver is unchanged:
it proposes trials, classifies each finished one from its directory in the shared
workdir (NFS, a gcsfuse mount of ``gs://``: the same path on every node), and is
the only writer of the SQLite store, so results do not depend on the executor.

One trial of ``hosts_per_trial`` processes:

* a placement group of ``hosts_per_trial`` bundles of ``trial_resources`` each,
  ``STRICT_SPREAD`` (one per node) when there are several: the processes start
  together or not at all (gang scheduling);
* one :class:`TrialSupervisor` actor per bundle, holding the bundle's resources (so
  Ray sets ``CUDA_VISIBLE_DEVICES`` / the TPU chips for it); each runs the shared
  supervisor, ``trial_process.TrialProcess``, for one process of the job, on its
  node: process 0's actor serves the JAX coordinator at its node's address and
  watches metrics.jsonl for divergence (stopping the trial on the node); the driver
  polls the actors, and a stop goes to all of them.

Faults:

* an actor that dies (its node lost, its raylet killed) or a trial whose processes
  exit ``preempted`` without being asked (a spot / TPU VM preempted: the trainer
  checkpoints on SIGTERM) is a *node* failure: the trial's actors are stopped,
  the driver waits for the trial's workdir lock to be free (the old trainer gone),
  and schedules the trial again; it resumes from its checkpoint, and counts as one
  trial. After ``max_node_retries`` such losses it is recorded failed, saying so;
* a trainer that exits with an error is the trial's own failure: recorded
  ``failed`` with its log tail, as locally;
* the driver killed: the actors are owned by the driver (not detached), so Ray
  kills them with it; every trainer then gets SIGTERM (its parent-death signal)
  and checkpoints. A rerun skips the recorded trials and resumes the interrupted
  ones, after their workdir locks are free (``sweep._wait_for_live_copy``). The
  actors are named ``<trial id>/host<i>`` in a namespace per sweep workdir: a
  leftover of the same name is killed before its trial starts again, so no trial
  runs twice.

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
import sys
import threading
import time
from typing import Any, Callable, Mapping, Sequence

from optbench_jax import process_group
from optbench_jax import workdir_lock
from optbench_jax.bench import sweep_config, trial_process

INSTALL_HINT = 'pip install "optbench_jax[ray]"'
CONNECT_TIMEOUT_S = 30.0
STATUS_TIMEOUT_S = 60.0        # one round of status calls; a slower node is asked again later
WATCH_INTERVAL_S = 0.5         # the supervisor's divergence watch, on the trial's node
DEFAULT_MAX_NODE_RETRIES = 3
# A lost node's trainer may hold the trial's workdir lock until its lease or heartbeat
# goes stale (workdir_lock); the rescheduled trial waits that long at most.
RELEASE_WAIT_S = workdir_lock.STALE_AFTER_S + 60.0


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


class RayTrial:
  """The driver's handle on one trial on the cluster (the executor seam's handle).

  A small state machine advanced by :meth:`poll`: ``pending`` (placement group
  not yet placed) -> ``addressing`` (process 0's actor picks the coordinator;
  multi-host only) -> ``starting`` -> ``running`` -> ``done``; a lost node leads
  through ``releasing`` (old actors stopped) and ``unlocking`` (the workdir lock
  free) back to ``pending``. ``started`` is when the processes started (it follows
  the clock while waiting for resources, so ``--trial_timeout_s`` counts running
  time only).
  """

  def __init__(self, executor: RayExecutor, trial: Any, trial_dir: str, argv: Sequence[str],
               divergence: Callable[[list[dict[str, Any]]], str | None]):
    self.executor = executor
    self.ray = executor.ray
    self.trial = trial
    self.trial_dir = trial_dir
    self.argv = list(argv)
    self.divergence = divergence
    self.started = time.time()
    self.diverged: str | None = None
    self.timed_out: str | None = None
    self.node_losses = 0
    self.nodes: list[str] = []        # node ids of the current attempt, by process
    self._code: int | None = None
    self._stopping = False
    self._broken_since: float | None = None
    self._actors: list[Any] = []
    self._pg = None
    self._schedule()

  @property
  def trial_id(self) -> str:
    return getattr(self.trial, "trial_id", str(self.trial))

  # Attempts ---------------------------------------------------------------------------------
  def _schedule(self) -> None:
    from ray.util import placement_group  # pylint: disable=import-outside-toplevel
    hosts = self.executor.hosts
    self._pg = placement_group([dict(self.executor.bundle)] * hosts,
                               strategy="STRICT_SPREAD" if hosts > 1 else "PACK")
    self._ready = self._pg.ready()
    self._state = "pending"

  def _actor_name(self, index: int) -> str:
    return f"{self.trial_id}/host{index}"

  def _kill_leftover(self, name: str) -> None:
    """A live actor of this name (an earlier driver's or attempt's) is killed and waited for."""
    deadline = time.monotonic() + 30.0
    while time.monotonic() < deadline:
      try:
        old = self.ray.get_actor(name, namespace=self.executor.namespace)
      except ValueError:
        return
      self.executor.log(f"[sweep] {self.trial_id}: stopping a leftover supervisor {name}")
      self.ray.kill(old, no_restart=True)
      time.sleep(0.5)

  def _create_actors(self) -> None:
    from ray.util.scheduling_strategies import (  # pylint: disable=import-outside-toplevel
        PlacementGroupSchedulingStrategy)
    bundle = self.executor.bundle
    custom = {k: v for k, v in bundle.items() if k not in ("CPU", "GPU", "memory")}
    env = {"PYTHONPATH": os.pathsep.join(
        p for p in (sweep_config.REPO_ROOT, os.getcwd(), os.environ.get("PYTHONPATH", "")) if p)}
    self._actors = []
    for i in range(self.executor.hosts):
      name = self._actor_name(i)
      self._kill_leftover(name)
      options = dict(
          name=name, namespace=self.executor.namespace, max_restarts=0,
          num_cpus=bundle.get("CPU", 0), num_gpus=bundle.get("GPU", 0), resources=custom,
          runtime_env={"env_vars": env},
          scheduling_strategy=PlacementGroupSchedulingStrategy(
              self._pg, placement_group_bundle_index=i))
      if bundle.get("memory"):
        options["memory"] = bundle["memory"]
      self._actors.append(self.executor.supervisor_cls.options(**options).remote())

  def _start(self, coordinator: str | None) -> None:
    hosts = self.executor.hosts
    self._start_refs = [
        actor.start.remote(self.trial_id, self.trial_dir, self.argv,
                           self.divergence if i == 0 else None, hosts, i, coordinator,
                           sys.executable, sweep_config.REPO_ROOT)
        for i, actor in enumerate(self._actors)]
    self._state = "starting"

  def _note(self, line: str) -> None:
    """A line in the trial's log (the driver's view of the attempt) and the driver's log."""
    self.executor.log(f"[sweep] {self.trial_id}: {line}")
    try:
      with open(os.path.join(self.trial_dir, trial_process.host_log_name(0)), "a") as f:
        f.write(f"\n=== {time.ctime()} (ray executor): {line}\n")
    except OSError:
      pass

  def _lost(self, why: str) -> None:
    self.node_losses += 1
    retries = self.executor.max_node_retries
    self._note(f"node lost ({why}); " + (
        f"rescheduling, node retry {self.node_losses} of {retries}"
        if self.node_losses <= retries else "no node retries left"))
    self._release_refs = [a.stop.remote() for a in self._actors]
    self._release_deadline = time.monotonic() + trial_process.STOP_GRACE_S + 10.0
    self._state = "releasing"

  def _drop_attempt(self) -> None:
    for actor in self._actors:
      try:
        self.ray.kill(actor, no_restart=True)
      except Exception:  # pylint: disable=broad-except
        pass
    self._actors = []
    if self._pg is not None:
      try:
        from ray.util import remove_placement_group  # pylint: disable=import-outside-toplevel
        remove_placement_group(self._pg)
      except Exception:  # pylint: disable=broad-except
        pass
      self._pg = None

  def _preempted(self) -> bool:
    """The trainer's summary of this attempt says preempted (it got SIGTERM, not from us)."""
    path = os.path.join(self.trial_dir, "summary.json")
    try:
      if os.path.getmtime(path) < self.started - 1:
        return False
      with open(path) as f:
        return '"preempted"' in f.read()
    except OSError:
      return False

  # The state machine ------------------------------------------------------------------------
  def _advance(self) -> None:
    ray = self.ray
    if self._state == "pending":
      self.started = time.time()
      if not ray.wait([self._ready], timeout=0)[0]:
        return
      self._create_actors()
      if self.executor.hosts > 1:
        self._address_ref = self._actors[0].address.remote()
        self._state = "addressing"
      else:
        self._start(None)
    if self._state == "addressing":
      self.started = time.time()
      if not ray.wait([self._address_ref], timeout=0)[0]:
        return
      try:
        coordinator = ray.get(self._address_ref)
      except ray.exceptions.RayActorError as e:
        return self._lost(_first_line(e))
      self._start(coordinator)
    if self._state == "starting":
      self.started = time.time()
      if len(ray.wait(self._start_refs, num_returns=len(self._start_refs), timeout=0)[0]) < \
         len(self._start_refs):
        return
      try:
        infos = ray.get(self._start_refs)
      except ray.exceptions.RayActorError as e:
        return self._lost(_first_line(e))
      except ray.exceptions.RayError as e:    # the supervisor's own error, e.g. a bad trial dir
        self._note(f"error: the trial's supervisor failed to start it: {_first_line(e)}")
        self._code, self._state = 1, "done"
        return
      self.nodes = [info["node_id"] for info in infos]
      self._note("running on " + ", ".join(
          f"{info['ip']} ({info['host']}, node {info['node_id'][:8]}, pid {info['pids'][0]})"
          for info in infos))
      self.started = time.time()
      self._state = "running"
    if self._state == "running":
      self._check_running()
    if self._state == "releasing":
      done = ray.wait(self._release_refs, num_returns=len(self._release_refs), timeout=0)[0]
      if len(done) < len(self._release_refs) and time.monotonic() < self._release_deadline:
        return
      self._drop_attempt()
      self._unlock_deadline = time.monotonic() + RELEASE_WAIT_S
      self._state = "unlocking"
    if self._state == "unlocking":
      if self.node_losses > self.executor.max_node_retries:
        self._note(f"error: the trial's node was lost {self.node_losses} times; giving up "
                   f"(--max_node_retries={self.executor.max_node_retries})")
        self._code, self._state = 1, "done"
        return
      if (workdir_lock.read_holder(self.trial_dir) is not None and
          time.monotonic() < self._unlock_deadline):
        return
      self._schedule()

  def _check_running(self) -> None:
    ray = self.ray
    try:
      statuses = ray.get([a.status.remote() for a in self._actors], timeout=STATUS_TIMEOUT_S)
    except ray.exceptions.GetTimeoutError:
      return                                  # a busy or slow node: ask again next poll
    except ray.exceptions.RayActorError as e:
      return self._lost(_first_line(e))
    codes = [s["code"] for s in statuses]
    if statuses[0]["diverged"] and not self.diverged:
      self.diverged = statuses[0]["diverged"]   # process 0's supervisor stopped its process
      self._stopping = True
      for actor in self._actors[1:]:
        actor.stop.remote()
    if all(code is not None for code in codes):
      if not self._stopping and self._preempted():
        return self._lost("the trial's processes were stopped by SIGTERM (node preempted?)")
      self._code = next((code for code in codes if code != 0), 0)
      self._state = "done"
      return
    if any(code not in (None, 0) for code in codes):     # a member died: the job cannot finish
      self._broken_since = self._broken_since or time.monotonic()
      if time.monotonic() - self._broken_since > trial_process.BROKEN_GRACE_S:
        for actor in self._actors:
          actor.stop.remote()

  # The executor seam ------------------------------------------------------------------------
  def check_divergence(self) -> None:
    """Nothing here: the supervisor on the trial's node watches; :meth:`poll` reports it."""

  def poll(self) -> int | None:
    """None while the trial waits for resources or runs; then its exit status."""
    if self._state != "done":
      self._advance()
    return self._code if self._state == "done" else None

  def stop(self) -> None:
    """SIGTERM to every process of the trial (they checkpoint), SIGKILL after the grace."""
    self._stopping = True
    if self._state in ("running", "starting", "addressing"):
      refs = [a.stop.remote() for a in self._actors]
      try:
        self.ray.wait(refs, num_returns=len(refs), timeout=trial_process.STOP_GRACE_S + 15.0)
      except Exception:  # pylint: disable=broad-except
        pass
    elif self._state != "done":       # never started: nothing to stop
      self._drop_attempt()
      self._code, self._state = -15, "done"

  def close(self) -> None:
    """Closes the supervisors (logs), kills their actors and frees the placement group."""
    refs = [a.close.remote() for a in self._actors]
    if refs:
      try:
        self.ray.wait(refs, num_returns=len(refs), timeout=trial_process.STOP_GRACE_S + 15.0)
      except Exception:  # pylint: disable=broad-except
        pass
    self._drop_attempt()


def _first_line(error: BaseException) -> str:
  text = str(error).strip()
  return text.splitlines()[0][:300] if text else type(error).__name__
