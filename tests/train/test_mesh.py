import jax
import pytest

from optbench_jax.train import mesh as mesh_lib
from optbench_jax.config import ConfigError


def test_fill_axis_takes_the_remaining_devices():
  sizes = mesh_lib.resolve_axis_sizes(dict(data=-1, fsdp=2, tensor=1, expert=1), 8)
  assert sizes == dict(data=4, fsdp=2, tensor=1, expert=1)


@pytest.mark.parametrize("mesh, message", [
    (dict(data=4, fsdp=4, tensor=1, expert=1), "needs 16 devices"),
    (dict(data=2, fsdp=1, tensor=1, expert=1), "product must equal the device count"),
    (dict(data=-1, fsdp=-1, tensor=1, expert=1), "at most one mesh axis"),
    (dict(data=-1, fsdp=3, tensor=1, expert=1), "needs 3 devices"),
    (dict(data=0, fsdp=1, tensor=1, expert=1), "config.mesh.data"),
])
def test_impossible_meshes_fail_with_one_clear_message(mesh, message):
  with pytest.raises(ConfigError, match=message):
    mesh_lib.resolve_axis_sizes(mesh, 8)


def test_make_mesh_uses_auto_axes_in_order():
  mesh = mesh_lib.make_mesh(dict(data=2, fsdp=2, tensor=2, expert=1), jax.devices()[:8])
  assert mesh.axis_names == mesh_lib.AXES
  assert dict(mesh.shape) == dict(data=2, fsdp=2, tensor=2, expert=1)
  assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)


def test_multihost_detection(monkeypatch):
  for name in (*mesh_lib.MULTIHOST_ENV, "TPU_WORKER_HOSTNAMES"):
    monkeypatch.delenv(name, raising=False)
  assert not mesh_lib.multihost_requested()
  assert mesh_lib.multihost_requested(force=True)
  monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "10.0.0.1")
  assert not mesh_lib.multihost_requested()
  monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "10.0.0.1,10.0.0.2")
  assert mesh_lib.multihost_requested()
