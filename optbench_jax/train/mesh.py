"""The device mesh (data, fsdp, tensor, expert) and multi-host start-up.

Axis sizes come from ``config.mesh``; one axis may be -1 ("fill with the
remaining devices"). The product must equal the device count. Axes are
``AxisType.Auto`` so GSPMD propagates shardings from the annotated parameters
and batch (``jax.make_mesh`` defaults to Explicit axes in this JAX).
"""

from __future__ import annotations

import math
import os
from typing import Mapping, Sequence

import jax
from jax.sharding import AxisType, Mesh

from optbench_jax.config import ConfigError

AXES = ("data", "fsdp", "tensor", "expert")

# Environment variables that mean "this process is one of several" (set by a
# launcher). Cloud TPU VMs with several workers are detected by JAX itself once
# ``jax.distributed.initialize()`` is called, so ``--multihost`` forces it.
MULTIHOST_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES")


def resolve_axis_sizes(mesh_config: Mapping[str, int], device_count: int) -> dict[str, int]:
  """``{axis: size}`` with the -1 axis filled; raises ConfigError if they cannot fit."""
  sizes = {axis: int(mesh_config[axis]) for axis in AXES}
  fill = [axis for axis, size in sizes.items() if size == -1]
  bad = [axis for axis, size in sizes.items() if size == 0 or size < -1]
  if bad:
    raise ConfigError(f"config.mesh.{bad[0]} must be a positive size or -1, got {sizes[bad[0]]}")
  if len(fill) > 1:
    raise ConfigError(f"at most one mesh axis may be -1 (fill), got {fill}")
  fixed = math.prod(size for size in sizes.values() if size != -1)
  shape = " x ".join(f"{a}={s}" for a, s in sizes.items())
  if fixed > device_count or device_count % fixed:
    raise ConfigError(
        f"mesh {shape} needs {fixed} devices{' times the fill axis' if fill else ''}, "
        f"but {device_count} device(s) are available")
  if fill:
    sizes[fill[0]] = device_count // fixed
  elif fixed != device_count:
    raise ConfigError(
        f"mesh {shape} has {fixed} devices but {device_count} are available; the product "
        f"must equal the device count (set one axis to -1 to fill)")
  return sizes


def make_mesh(mesh_config: Mapping[str, int], devices: Sequence | None = None) -> Mesh:
  """The (data, fsdp, tensor, expert) mesh over ``devices`` (default: all)."""
  devices = list(jax.devices() if devices is None else devices)
  sizes = resolve_axis_sizes(mesh_config, len(devices))
  return jax.make_mesh(tuple(sizes[a] for a in AXES), AXES,
                       axis_types=(AxisType.Auto,) * len(AXES), devices=devices)


def abstract_mesh(mesh_config: Mapping[str, int], device_count: int) -> jax.sharding.AbstractMesh:
  """A device-free mesh of the config's shape, for dry runs of larger machines."""
  sizes = resolve_axis_sizes(mesh_config, device_count)
  return jax.sharding.AbstractMesh(tuple(sizes[a] for a in AXES), AXES,
                                   axis_types=(AxisType.Auto,) * len(AXES))


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
  jax.distributed.initialize(**kwargs)
