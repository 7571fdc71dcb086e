"""Test-wide setup: 8 virtual CPU devices for the sharding tests.

Set before JAX initialises its backends (conftest is imported before any test
module), so ``pytest`` alone behaves like the README's command.
"""

import os

_FLAG = "--xla_force_host_platform_device_count=8"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
