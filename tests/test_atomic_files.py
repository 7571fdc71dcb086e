"""optbench_jax.atomic_files: whole files or none, never a torn one."""

import json
import os

import pytest

from optbench_jax import atomic_files


def test_write_json_round_trips_and_leaves_no_temp_files(tmp_path):
  path = tmp_path / "summary.json"
  atomic_files.write_json(path, {"loss": 1.5, "steps": 3}, indent=2)
  atomic_files.write_json(path, {"loss": 1.25})   # replaces, not appends
  assert json.loads(path.read_text()) == {"loss": 1.25}
  assert os.listdir(tmp_path) == ["summary.json"]


def test_failed_serialisation_keeps_the_old_file(tmp_path):
  path = tmp_path / "summary.json"
  atomic_files.write_json(path, {"ok": True})
  with pytest.raises(TypeError):
    atomic_files.write_json(path, {"bad": object()})
  assert json.loads(path.read_text()) == {"ok": True}
  assert os.listdir(tmp_path) == ["summary.json"]


def test_files_get_the_umask_mode_not_mkstemps_0600(tmp_path):
  """A shared manifest / summary must be readable by other users."""
  old = os.umask(0o022)
  try:
    atomic_files.write_json(tmp_path / "a.json", {"x": 1})
    os.umask(0o027)
    atomic_files.write_json(tmp_path / "b.json", {"x": 1})
  finally:
    os.umask(old)
  assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
  assert (tmp_path / "b.json").stat().st_mode & 0o777 == 0o640
