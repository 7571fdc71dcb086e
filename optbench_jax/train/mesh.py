"""The device mesh (data, fsdp, tensor, expert) and multi-host start-up.

Axis sizes come from ``config.mesh``; one axis may be -1 ("fill with the
remaining devices"). The product must equal the device count. Axes are
``AxisType.Auto`` so GSPMD propagates shardings from the annotated parameters
and batch (``jax.make_mesh`` defaults to Explicit axes in this JAX).
"""

from __future__ import annotations

import errno
import os
import socket
import time
from typing import Mapping, Sequence

from absl import logging

import jax
from jax.sharding import Mesh

from optbench_jax.config import ConfigError
from optbench_jax.models import sharding as sharding_lib

AXES = sharding_lib.MESH_AXES

# Environment variables that mean "this process is one of several" (set by a
# launcher). Cloud TPU VMs with several workers are detected by JAX itself once
# ``jax.distributed.initialize()`` is called, so ``--multihost`` forces it.
MULTIHOST_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES")


def resolve_axis_sizes(mesh_config: Mapping[str, int], device_count: int) -> dict[str, int]:
  """``{axis: size}`` with the -1 axis filled; raises ConfigError if they cannot fit."""
  try:
    return sharding_lib.axis_sizes({axis: mesh_config[axis] for axis in AXES}, device_count)
  except ValueError as e:
    raise ConfigError(f"config.{e}" if str(e).startswith("mesh.") else str(e)) from None


def make_mesh(mesh_config: Mapping[str, int], devices: Sequence | None = None) -> Mesh:
  """The config's (data, fsdp, tensor, expert) mesh over ``devices`` (default: all)."""
  devices = list(jax.devices() if devices is None else devices)
  sizes = resolve_axis_sizes(mesh_config, len(devices))
  return sharding_lib.make_mesh(**sizes, devices=devices)


def abstract_mesh(mesh_config: Mapping[str, int], device_count: int) -> jax.sharding.AbstractMesh:
  """A device-free mesh of the config's shape, for dry runs of larger machines."""
  return sharding_lib.abstract_mesh(resolve_axis_sizes(mesh_config, device_count))


def multihost_requested(force: bool = False) -> bool:
  """True when a launcher (or ``--multihost``) says this is one of several processes."""
  if force:
    return True
  if any(os.environ.get(name) for name in MULTIHOST_ENV):
    return True
  # Cloud TPU VMs list every worker of a multi-host slice.
  workers = os.environ.get("TPU_WORKER_HOSTNAMES", "")
  return len([w for w in workers.split(",") if w]) > 1


def maybe_initialize_distributed(force: bool = False, heartbeat_timeout_s: int | None = None,
                                 initialization_timeout_s: int | None = None) -> None:
  """Calls ``jax.distributed.initialize()`` (auto-detected cluster) when multi-host.

  Must run before anything touches a JAX backend. Coordinator, process count and
  index come from the environment (Cloud TPU, SLURM, or JAX_COORDINATOR_ADDRESS /
  JAX_NUM_PROCESSES / JAX_PROCESS_ID). ``heartbeat_timeout_s`` bounds how long the
  other processes wait on a dead one before JAX's coordination service stops them;
  ``initialization_timeout_s`` how long they wait for each other at start (JAX
  defaults: 100 s and 300 s).
  """
  if not multihost_requested(force):
    return
  kwargs = {}
  if os.environ.get("JAX_COORDINATOR_ADDRESS"):
    kwargs["coordinator_address"] = os.environ["JAX_COORDINATOR_ADDRESS"]
  if os.environ.get("JAX_NUM_PROCESSES"):
    kwargs["num_processes"] = int(os.environ["JAX_NUM_PROCESSES"])
  if os.environ.get("JAX_PROCESS_ID"):
    kwargs["process_id"] = int(os.environ["JAX_PROCESS_ID"])
  if heartbeat_timeout_s:
    kwargs["heartbeat_timeout_seconds"] = int(heartbeat_timeout_s)
  if initialization_timeout_s:
    kwargs["initialization_timeout"] = int(initialization_timeout_s)
  address, index = kwargs.get("coordinator_address"), kwargs.get("process_id")
  if address and index == 0:
    check_coordinator_address(address)
  wait_s = kwargs.get("initialization_timeout", 300)
  if address and index:
    # JAX's client aborts the process (a C++ fatal error) when the coordinator's port answers
    # but is not the coordinator, and waits silently otherwise: wait here, bounded and said.
    logging.info("process %d: waiting up to %d s for the coordinator at %s", index, wait_s,
                 address)
    if not wait_for_coordinator(address, wait_s):
      raise ConfigError(
          f"no coordinator answered at {address} within {wait_s} s: process 0 did not start "
          "it (its log says why, e.g. the port is in use) or cannot be reached")
  jax.distributed.initialize(**kwargs)


# An HTTP/2 client's connection preface and an empty SETTINGS frame: a gRPC server (JAX's
# coordination service) answers with a SETTINGS frame of its own.
_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])


def _speaks_grpc(address: str, timeout_s: float) -> bool:
  host, _, port = address.rpartition(":")
  try:
    with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s) as conn:
      conn.sendall(_HTTP2_PREFACE)
      header = conn.recv(9)
      return len(header) >= 4 and header[3] == 4
  except (OSError, ValueError):
    return False


def wait_for_coordinator(address: str, timeout_s: float) -> bool:
  """Whether a gRPC server answers at ``address`` within ``timeout_s`` seconds."""
  deadline = time.monotonic() + timeout_s
  while True:
    if _speaks_grpc(address, min(2.0, max(0.1, deadline - time.monotonic()))):
      return True
    if time.monotonic() >= deadline:
      return False
    time.sleep(0.5)


def check_coordinator_address(address: str) -> None:
  """Process 0 serves the coordinator at ``address``: refuse at once a port another listener
  holds (JAX's own error names neither the port nor the cause)."""
  host, _, port = address.rpartition(":")
  try:
    number = int(port)
  except ValueError:
    raise ConfigError(f"JAX_COORDINATOR_ADDRESS={address!r} is not host:port") from None
  with socket.socket(socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET,
                     socket.SOCK_STREAM) as probe:
    try:
      probe.bind((host.strip("[]") or "0.0.0.0", number))
    except OSError as e:
      if e.errno == errno.EADDRINUSE:
        raise ConfigError(f"the coordinator address {address} (JAX_COORDINATOR_ADDRESS) is in "
                          "use by another listener: choose a free port") from None
      # Not ours to bind (another host's address): the coordinator runs there.
