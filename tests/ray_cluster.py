r"""A real Ray cluster of ``ray start`` nodes on 127.0.0.1, for tests; torn down by the pids it started.

Each node is one ``ray start --block`` process (its own session) with the Ray
services it starts as its children; :meth:`LocalRayCluster.stop_node` and
:meth:`LocalRayCluster.shutdown` stop those processes by pid (SIGTERM, SIGKILL
after a grace period), never ``ray stop``, which would stop every Ray on the
machine. Every port is a free one, so two nodes (and other users' clusters)
share the machine; ``--temp-dir`` keeps the sessions' files in the test's tmp dir.

By hand (prints the address, Ctrl-C stops it):

  python -m tests.ray_cluster --temp_dir=/tmp/rc --nodes=2
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from typing import Mapping

import psutil

from optbench_jax.process_group import free_port

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RAY = os.path.join(os.path.dirname(sys.executable), "ray")
START_TIMEOUT_S = 90.0
# Loopback only. Ray rewrites the literal 127.0.0.1 (a node's address, and the address a
# node joins) into the machine's outward address on Linux, so the nodes use other loopback
# addresses, which it keeps: the head 127.0.0.2, worker nodes 127.0.0.3, 127.0.0.4, ...
DRIVER_ENV = {"RAY_USAGE_STATS_ENABLED": "0"}


class LocalRayCluster:
  """A head node plus worker nodes; each node gets ``resources`` (a custom resource names it)."""

  def __init__(self, temp_dir: str, env: Mapping[str, str] | None = None, num_cpus: int = 2):
    self.temp_dir = temp_dir
    self.num_cpus = num_cpus
    self.env = dict(os.environ if env is None else env)
    self.env["PYTHONPATH"] = os.pathsep.join(
        p for p in (REPO_ROOT, self.env.get("PYTHONPATH", "")) if p)
    self.env.update(DRIVER_ENV)
    # A killed raylet is noticed within ~2 s, not Ray's default ~30 s.
    self.env.update(RAY_health_check_period_ms="500", RAY_health_check_timeout_ms="1000",
                    RAY_health_check_failure_threshold="3")
    self.port = free_port()
    self.address = f"127.0.0.2:{self.port}"
    self.nodes: dict[str, subprocess.Popen] = {}      # name -> its `ray start --block`
    self.ips: dict[str, str] = {}
    self._logs: dict[str, object] = {}
    self._seen: dict[str, set[psutil.Process]] = {}   # every process seen under each node

  def _start(self, name: str, head: bool, resources: Mapping[str, float]) -> None:
    ports = ["--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
             "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port"]
    ip = self.ips.setdefault(name, f"127.0.0.{2 + len(self.ips)}")   # the head first
    argv = [RAY, "start", "--block", f"--node-ip-address={ip}", f"--num-cpus={self.num_cpus}",
            f"--resources={json.dumps(dict(resources))}", "--disable-usage-stats"]
    argv += [f"{flag}={free_port()}" for flag in ports]
    if head:
      argv += [f"--port={self.port}", "--head", f"--temp-dir={self.temp_dir}",
               "--include-dashboard=false", f"--ray-client-server-port={free_port()}"]
    else:
      argv += [f"--address={self.address}"]
    os.makedirs(self.temp_dir, exist_ok=True)
    log = open(os.path.join(self.temp_dir, f"ray_start_{name}.log"), "a")
    self._logs[name] = log
    self.nodes[name] = subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)

  def start(self, workers: Mapping[str, Mapping[str, float]],
            head_resources: Mapping[str, float]) -> "LocalRayCluster":
    """Starts the head, then the workers; returns once every node is alive (or raises)."""
    self._start("head", True, head_resources)
    self._wait_for_nodes(1)
    for name, resources in workers.items():
      self._start(name, False, resources)
    self._wait_for_nodes(1 + len(workers))
    for name in self.nodes:
      self.processes(name)
    return self

  def restart(self, name: str, resources: Mapping[str, float]) -> None:
    """Starts worker node ``name`` again (after :meth:`stop_node`)."""
    self._start(name, False, resources)
    self._wait_for_nodes(len(self.nodes))

  def _alive_nodes(self) -> int:
    out = subprocess.run(
        [sys.executable, "-c", "import ray, sys; ray.init(address=sys.argv[1], "
         "logging_level='ERROR'); print(sum(n['Alive'] for n in ray.nodes()))", self.address],
        env=self.env, capture_output=True, text=True, timeout=60)
    return int(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else 0

  def _wait_for_nodes(self, count: int) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
      dead = {n: p.returncode for n, p in self.nodes.items() if p.poll() is not None}
      if dead:
        raise RuntimeError(f"ray start exited: {dead}; see {self.temp_dir}/ray_start_*.log")
      if self._alive_nodes() >= count:
        return
      if time.monotonic() > deadline:
        raise TimeoutError(f"{count} Ray nodes not alive after {START_TIMEOUT_S:g} s")
      time.sleep(0.5)

  def processes(self, name: str) -> list[psutil.Process]:
    """Node ``name``'s ``ray start`` process and every process below it."""
    try:
      root = psutil.Process(self.nodes[name].pid)
      procs = [root] + root.children(recursive=True)
    except psutil.NoSuchProcess:
      procs = []
    self._seen.setdefault(name, set()).update(procs)
    return procs

  def raylet_pid(self, name: str) -> int:
    for p in self.processes(name):
      try:
        if "raylet" in p.name():
          return p.pid
      except psutil.NoSuchProcess:
        continue
    raise RuntimeError(f"no raylet under node {name}")

  def kill_raylet(self, name: str) -> None:
    """Node ``name`` lost: SIGKILL to its raylet (its ``ray start`` then stops the rest)."""
    os.kill(self.raylet_pid(name), signal.SIGKILL)   # raylet_pid also records the others

  def kill_services(self, name: str, services=("gcs_server", "raylet")) -> list[int]:
    """SIGKILL to node ``name``'s processes of these names (the head's: the whole cluster
    gone); returns their pids."""
    pids = []
    for p in self.processes(name):
      try:
        if p.name() in services:
          p.kill()
          pids.append(p.pid)
      except psutil.NoSuchProcess:
        continue
    return pids

  def stop_node(self, name: str, grace_s: float = 15.0) -> None:
    """SIGTERM to node ``name``'s processes (by pid), SIGKILL to those left after ``grace_s``."""
    self.processes(name)
    procs = [p for p in self._seen.get(name, ()) if p.is_running()]   # pid + start time
    for p in procs:
      try:
        p.send_signal(signal.SIGTERM)
      except psutil.NoSuchProcess:
        pass
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for p in alive:
      try:
        p.kill()
      except psutil.NoSuchProcess:
        pass
    psutil.wait_procs(alive, timeout=10)
    self.nodes[name].wait(timeout=10)
    self._seen.pop(name, None)
    self._logs.pop(name).close()

  def shutdown(self, grace_s: float = 15.0) -> None:
    """Every node, workers first; every process this cluster started is gone afterwards."""
    for name in [n for n in self.nodes if n != "head"] + ["head"]:
      if name in self._logs:
        self.stop_node(name, grace_s)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--temp_dir", required=True)
  parser.add_argument("--nodes", type=int, default=2)
  parser.add_argument("--num_cpus", type=int, default=2)
  args = parser.parse_args()
  cluster = LocalRayCluster(args.temp_dir, num_cpus=args.num_cpus)
  try:
    cluster.start({f"worker{i}": {f"node{i}": 1, "trial_slot": 1} for i in range(1, args.nodes)},
                  {"node0": 1, "trial_slot": 1})
    print(f"Ray cluster at {cluster.address} ({args.nodes} nodes); Ctrl-C stops it", flush=True)
    while True:
      time.sleep(3600)
  except KeyboardInterrupt:
    pass
  finally:
    cluster.shutdown()


if __name__ == "__main__":
  main()
