"""optbench_jax.storage against the local GCS emulator (and the same calls on local paths)."""


import pytest

from optbench_jax import storage


@pytest.fixture(params=["local", "gs"])
def root(request, tmp_path):
  if request.param == "local":
    return str(tmp_path / "work")
  return request.getfixturevalue("gcs")()


def test_write_read_list_move(root):
  storage.makedirs(root)
  path = storage.join(root, "a", "summary.json")
  storage.makedirs(storage.parent(path))
  storage.write_json(path, {"x": 1})
  assert storage.read_json(path) == {"x": 1}
  assert storage.exists(path) and storage.isfile(path) and storage.isdir(storage.parent(path))
  assert storage.listdir(root) == ["a"] and storage.listdir(storage.join(root, "a")) == [
      "summary.json"]
  assert storage.read_bytes(path, start=2) == b'x": 1}\n'
  assert abs(storage.mtime(path) - __import__("time").time()) < 60
  storage.move(storage.join(root, "a"), storage.join(root, "b"))
  assert not storage.exists(path)
  assert storage.read_json(storage.join(root, "b", "summary.json")) == {"x": 1}
  storage.rmtree(storage.join(root, "b"))
  assert not storage.exists(storage.join(root, "b", "summary.json"))


def test_resolve_and_join():
  assert storage.resolve("gs://b//x/y/") == "gs://b/x/y"
  assert storage.join("gs://b/x", "c", "d.json") == "gs://b/x/c/d.json"
  assert storage.parent("gs://b/x/c") == "gs://b/x"
  with pytest.raises(storage.StorageError, match="names no bucket"):
    storage.resolve("gs:///x")


def test_preconditions(gcs):
  url = storage.join(gcs(), ".lock")
  first = storage.create_exclusive(url, b"one")
  assert first is not None
  assert storage.create_exclusive(url, b"two") is None          # exists: refused
  second = storage.replace_if_generation(url, b"two", first)
  assert second is not None and second != first
  assert storage.replace_if_generation(url, b"three", first) is None   # stale generation
  assert storage.stat_generation(url) == (second, b"two")
  assert not storage.delete_if_generation(url, first)
  assert storage.delete_if_generation(url, second)
  assert storage.stat_generation(url) is None


def test_unreachable_bucket_and_endpoint(gcs, monkeypatch):
  with pytest.raises(storage.StorageError, match="bucket gs://no-such-bucket does not exist"):
    storage.check_reachable("gs://no-such-bucket/run")
  monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:1")
  monkeypatch.setattr(storage, "_FS", None)
  with pytest.raises(storage.StorageError, match=r"cannot reach Cloud Storage at http://127.0.0.1:1"):
    storage.check_reachable("gs://test-bucket/run")
  monkeypatch.setattr(storage, "_FS", None)


def test_missing_extra_names_it(monkeypatch):
  import builtins
  real_import = builtins.__import__

  def no_gcsfs(name, *args, **kwargs):
    if name == "gcsfs":
      raise ImportError("no gcsfs")
    return real_import(name, *args, **kwargs)
  monkeypatch.setattr(builtins, "__import__", no_gcsfs)
  monkeypatch.setattr(storage, "_FS", None)
  with pytest.raises(storage.StorageError, match=r"optbench_jax\[gcs\]"):
    storage.exists("gs://bucket/run")
  monkeypatch.setattr(storage, "_FS", None)
