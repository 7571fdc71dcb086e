"""The sweep driver's handle on one trial on a Ray cluster: scheduling, actors, node loss, polling.

One trial of ``hosts_per_trial`` processes:

* a placement group of ``hosts_per_trial`` bundles of ``trial_resources`` each,
  ``STRICT_SPREAD`` (one per node) when there are several: the processes start
  together or not at all (gang scheduling);
* one ``ray_supervisor.TrialSupervisor`` actor per bundle, holding the bundle's
  resources (so Ray sets ``CUDA_VISIBLE_DEVICES`` / the TPU chips for it); each
  runs the shared supervisor, ``trial_process.TrialProcess``, for one process of
  the job, on its node: process 0's actor serves the JAX coordinator at its node's
  address and watches metrics.jsonl for divergence (stopping the trial on the
  node); the driver polls the actors, and a stop goes to all of them.

Faults:

* an actor that dies (its node lost, its raylet killed) or a trial whose processes
  exit ``preempted`` without being asked (a spot / TPU VM preempted: the trainer
  checkpoints on SIGTERM) is a *node* failure: the trial's actors are stopped,
  the driver waits for the trial's workdir lock to be free (the old trainer gone),
  and schedules the trial again; it resumes from its checkpoint, and counts as one
  trial. After ``max_node_retries`` such losses it is recorded failed, saying so;
* the head lost (its GCS silent, ``ray_executor.HeadWatch``): not a node failure,
  since no trial can be rescheduled without it. :meth:`RayTrial.poll` (and the
  node-loss path, before it counts a retry) raises ``ray_executor.ClusterGone``;
  the runner stops, and :meth:`RayTrial.stop` / :meth:`RayTrial.close` then only
  send the stop to the trial's actors (those on the nodes left still hear it):
  placement groups and kills would wait on the dead GCS; the runner's
  :meth:`RayTrial.settle` clears the trial's rescheduling marker, as for every trial;
* a trainer that exits with an error is the trial's own failure: recorded
  ``failed`` with its log tail, as locally;
* the driver killed: the actors are owned by the driver (not detached), so Ray
  kills them with it; every trainer then gets SIGTERM (its parent-death signal)
  and checkpoints. A rerun skips the recorded trials and resumes the interrupted
  ones, after their workdir locks are free (``sweep._wait_for_live_copy``). The
  actors are named ``<trial id>/host<i>`` in a namespace per sweep workdir: a
  leftover of the same name is killed before its trial starts again, so no trial
  runs twice.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Callable, Sequence

from optbench_jax import storage
from optbench_jax import workdir_files
from optbench_jax import workdir_lock
from optbench_jax.bench import sweep_config, trial_process

STATUS_TIMEOUT_S = 60.0        # one round of status calls; a slower node is asked again later
# A lost node's trainer may hold the trial's workdir lock until its lease or heartbeat
# goes stale (workdir_lock); the rescheduled trial waits that long at most.
RELEASE_WAIT_S = workdir_lock.STALE_AFTER_S + 60.0


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

  def __init__(self, executor: Any, trial: Any, trial_dir: str, argv: Sequence[str],
               divergence: Callable[[list[dict[str, Any]]], str | None]):
    self.executor = executor          # the RayExecutor that launched it (ray, actor options)
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
    self.stop_refs: list[Any] = []    # stops sent after the head was lost (the executor waits)
    self._schedule()

  @property
  def trial_id(self) -> str:
    return getattr(self.trial, "trial_id", str(self.trial))

  # Attempts ---------------------------------------------------------------------------------
  def _schedule(self) -> None:
    self._pg, self._ready = self.executor.head.call(self._place_group)
    self._state = "pending"

  def _place_group(self) -> tuple[Any, Any]:
    from ray.util import placement_group  # pylint: disable=import-outside-toplevel
    hosts = self.executor.hosts
    pg = placement_group([dict(self.executor.bundle)] * hosts,
                         strategy="STRICT_SPREAD" if hosts > 1 else "PACK")
    return pg, pg.ready()

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
    self._log_line(line)

  def _log_line(self, line: str) -> None:
    try:
      with open(os.path.join(self.trial_dir, trial_process.host_log_name(0)), "a") as f:
        f.write(f"\n=== {time.ctime()} (ray executor): {line}\n")
    except OSError:
      pass

  def _lost(self, why: str) -> None:
    self.executor.head.confirm()      # a dead head is the cluster gone, not a node to retry
    self.node_losses += 1
    retries = self.executor.max_node_retries
    if self.node_losses <= retries:   # (before the note: --status never sees one without it)
      self._mark_rescheduling({"retry": self.node_losses, "of": retries, "time": time.time()})
    else:                             # the driver gives the trial up: it is not rescheduled
      self._mark_rescheduling(None)
    self._note(f"node lost ({why}); " + (
        f"rescheduling, node retry {self.node_losses} of {retries}"
        if self.node_losses <= retries else "no node retries left"))
    self._release_refs = [a.stop.remote() for a in self._actors]
    self._release_deadline = time.monotonic() + trial_process.STOP_GRACE_S + 10.0
    self._state = "releasing"

  def _mark_rescheduling(self, value: dict | None) -> None:
    """``--status`` reads this: a trial between attempts (and while its next attempt starts)
    is the live driver's to restart, not an interrupted one to rerun by hand. Kept until the
    runner has settled the trial's outcome (:meth:`settle`: its result recorded, or counted
    interrupted), so no moment after the last attempt shows it as one to rerun; a running
    attempt's lock holder shows it as running meanwhile. ``--status`` ignores a marker older
    than the live driver (one left by a driver that was killed)."""
    path = workdir_files.path(self.trial_dir, workdir_files.RESCHEDULING)
    try:
      if value is not None:
        storage.write_json(path, value)
      elif storage.exists(path):
        storage.remove(path)
    except OSError:
      pass

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
    path = workdir_files.path(self.trial_dir, workdir_files.SUMMARY)
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
      self.executor.head.call(self._create_actors)
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
      self.executor.head.call(self._drop_attempt)
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
    """None while the trial waits for resources or runs; then its exit status. Raises
    ``ray_executor.ClusterGone`` once the cluster's head is gone."""
    if self._state != "done":
      self.executor.head.check()
      self._advance()
    return self._code if self._state == "done" else None

  def stop(self) -> None:
    """SIGTERM to every process of the trial (they checkpoint), SIGKILL after the grace."""
    self._stopping = True
    if self.executor.head.gone:
      # Actor calls go to the actors' own nodes; the ones left deliver the stop, and the
      # executor waits for them once for all trials.
      self.stop_refs = [a.stop.remote() for a in self._actors]
      return
    if self._state in ("running", "starting", "addressing"):
      refs = [a.stop.remote() for a in self._actors]
      try:
        self.ray.wait(refs, num_returns=len(refs), timeout=trial_process.STOP_GRACE_S + 15.0)
      except Exception:  # pylint: disable=broad-except
        pass
    elif self._state != "done":       # never started: nothing to stop
      self._code, self._state = -15, "done"
      self._drop_quietly()

  def settle(self) -> None:
    """The runner has recorded the trial's result, or counted it interrupted: the driver no
    longer restarts it."""
    self._mark_rescheduling(None)

  def close(self) -> None:
    """Closes the supervisors (logs), kills their actors and frees the placement group."""
    if self.executor.head.gone:
      if self._state != "done":
        self._log_line(f"interrupted: {self.executor.head.gone}; the trial resumes from its "
                       "last checkpoint when the sweep is rerun")
        self._state = "done"
      return
    refs = [a.close.remote() for a in self._actors]
    if refs:
      try:
        self.ray.wait(refs, num_returns=len(refs), timeout=trial_process.STOP_GRACE_S + 15.0)
      except Exception:  # pylint: disable=broad-except
        pass
    self._drop_quietly()

  def _drop_quietly(self) -> None:
    """Frees the attempt; a head lost meanwhile is the next poll's or launch's to report."""
    try:
      self.executor.head.call(self._drop_attempt)
    except trial_process.ExecutorGone:
      pass


def _first_line(error: BaseException) -> str:
  text = str(error).strip()
  return text.splitlines()[0][:300] if text else type(error).__name__
