"""Test-wide setup: 8 virtual CPU devices for the sharding tests.

Set before JAX initialises its backends (conftest is imported before any test
module), so ``pytest`` alone behaves like the README's command.
"""

import os

_FLAG = "--xla_force_host_platform_device_count=8"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import uuid

import pytest


@pytest.fixture(scope="session")
def gcs(tmp_path_factory):
  """A GCS emulator on 127.0.0.1 (tests/gcs_emulator.py) for the session, with this process's
  environment pointing gcsfs, tensorstore and child processes at it; always stopped.

  Yields a function ``prefix() -> "gs://test-bucket/<unique>"`` so tests never share objects.
  """
  import importlib.util  # pylint: disable=import-outside-toplevel
  for module in ("gcsfs", "gcp_storage_emulator"):   # not imported: gcsfs reads env at import
    if importlib.util.find_spec(module) is None:
      pytest.skip(f"{module} is not installed (pip install -e '.[test]')")
  from tests import gcs_emulator  # pylint: disable=import-outside-toplevel
  from optbench_jax import storage  # pylint: disable=import-outside-toplevel
  emulator = gcs_emulator.Emulator(["test-bucket"]).start()
  env = dict(emulator.env, OPTBENCH_CACHE_DIR=str(tmp_path_factory.mktemp("gcs_cache")))
  saved = {k: os.environ.get(k) for k in env}
  os.environ.update(env)
  storage._FS = None   # pylint: disable=protected-access  (a client made before this env)
  try:
    yield lambda: f"gs://test-bucket/{uuid.uuid4().hex[:10]}"
  finally:
    emulator.stop()
    storage._FS = None   # pylint: disable=protected-access
    for key, value in saved.items():
      if value is None:
        os.environ.pop(key, None)
      else:
        os.environ[key] = value


@pytest.fixture
def own_gcs(monkeypatch, tmp_path):
  """An emulator of this test's own, which it may freeze or stop without breaking the session's
  (``gcs``); this process's storage clients point at it during the test. Always stopped.

  Yields the ``tests.gcs_emulator.Emulator`` (bucket ``test-bucket``; ``.env`` for children).
  """
  import importlib.util  # pylint: disable=import-outside-toplevel
  for module in ("gcsfs", "gcp_storage_emulator"):
    if importlib.util.find_spec(module) is None:
      pytest.skip(f"{module} is not installed (pip install -e '.[test]')")
  from tests import gcs_emulator  # pylint: disable=import-outside-toplevel
  from optbench_jax import storage  # pylint: disable=import-outside-toplevel
  emulator = gcs_emulator.Emulator(["test-bucket"]).start()
  try:
    for key, value in emulator.env.items():
      monkeypatch.setenv(key, value)
    monkeypatch.setenv("OPTBENCH_CACHE_DIR", str(tmp_path / "gcs_cache"))
    monkeypatch.setattr(storage, "_FS", None)   # a client of another endpoint may be cached
    yield emulator
  finally:
    emulator.stop()
