"""Where work directories live: a local path or a ``gs://bucket/prefix`` URL, behind one API.

Every path into a work directory (the trainer's, a sweep's, a report's) and a
``gs://`` corpus goes through this module; nothing else calls ``open()`` or
``os.path`` on them. Local paths keep their POSIX behaviour exactly (atomic
writes are temp file + fsync + ``os.replace``, ``atomic_files``). ``gs://`` URLs
go through ``gcsfs`` (the optional ``gcs`` extra); checkpoints go through
orbax's own GCS support (tensorstore's ``gcs`` driver), which takes the URL
unchanged.

What the operations mean on Cloud Storage:

* ``write_bytes`` / ``write_text`` / ``write_json`` are atomic there too: an
  object upload (single request or resumable) is all-or-nothing, and a reader
  sees the previous object until the new one is committed, never part of it.
  GCS reads after writes and listings are strongly consistent.
* there are no directories: ``makedirs`` does nothing, ``isdir`` means "some
  object has this prefix", ``rmtree`` deletes the prefix, ``move`` is copy then
  delete (not atomic; used only to set damaged checkpoints aside).
* there is no append: ``metrics.MetricsWriter`` rewrites the whole object at
  its flush points (see there).
* ``create_exclusive`` / ``replace_if_generation`` / ``delete_if_generation``
  are GCS preconditions (``ifGenerationMatch``): the workdir lock's mechanism.

An emulator (e.g. ``gcp-storage-emulator``, fake-gcs-server) is used when
``STORAGE_EMULATOR_HOST`` is set, the Google client libraries' convention:
gcsfs honours it, and this module points tensorstore at the same endpoint
(``TENSORSTORE_GCS_HTTP_URL``) with a dummy token, since tensorstore does not
read that variable. On a Cloud TPU VM nothing is needed: both find the VM's
service account credentials.

Errors: a ``gs://`` path without gcsfs installed, an endpoint that does not
answer and a missing or forbidden bucket raise ``StorageError`` (one line,
naming the extra, endpoint or bucket), reported by ``cli_errors`` like a
ConfigError. The precondition calls take ``timeout_s`` and raise ``TimeoutError``
when the service does not answer within it (the lock's renewal must not wait
forever); ``bound_waits`` runs every other gs:// call of a thread inside the
caller's bound (the trainer's deadline, ``train/storage_deadline.py``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
from typing import Any, Callable, ContextManager, Iterator

from optbench_jax import atomic_files

GS = "gs://"
EMULATOR_ENV = "STORAGE_EMULATOR_HOST"
CACHE_ENV = "OPTBENCH_CACHE_DIR"
EXTRA_HINT = "pip install 'optbench_jax[gcs]'"


class StorageError(RuntimeError):
  """A gs:// path cannot be used: the extra is missing, the endpoint or bucket is unreachable."""


def is_remote(path: str | os.PathLike | None) -> bool:
  return path is not None and str(path).startswith(GS)


def resolve(path: str | os.PathLike) -> str:
  """The canonical form: an absolute local path, or ``gs://bucket/key`` without a trailing ``/``."""
  path = os.fspath(path)
  if not is_remote(path):
    return os.path.abspath(path)
  bucket, key = split(path)
  return f"{GS}{bucket}/{key}" if key else f"{GS}{bucket}"


def split(url: str) -> tuple[str, str]:
  """``gs://bucket/a/b`` -> ("bucket", "a/b")."""
  rest = url[len(GS):]
  bucket, _, key = rest.partition("/")
  if not bucket:
    raise StorageError(f"{url!r} names no bucket (expected gs://BUCKET/PATH)")
  return bucket, "/".join(part for part in key.split("/") if part)


def join(base: str, *parts: str) -> str:
  if not is_remote(base):
    return os.path.join(base, *parts)
  return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts if p)])


def parent(path: str) -> str:
  if not is_remote(path):
    return os.path.dirname(path)
  return path.rstrip("/").rsplit("/", 1)[0]


def basename(path: str) -> str:
  return path.rstrip("/").rsplit("/", 1)[-1] if is_remote(path) else os.path.basename(path)


def _endpoint() -> str:
  host = os.environ.get(EMULATOR_ENV, "")
  if not host:
    return "https://storage.googleapis.com"
  return host if host.startswith(("http://", "https://")) else f"http://{host}"


def configure_clients() -> None:
  """Points tensorstore (and gcsfs's optional gRPC path) at an emulator named by the env.

  Called before the first gs:// access; the variables it sets are inherited by
  child processes (sweep trials). Without an emulator it changes nothing.
  """
  host = os.environ.get(EMULATOR_ENV, "")
  if not host:
    return
  os.environ.setdefault("TENSORSTORE_GCS_HTTP_URL", _endpoint())
  # tensorstore otherwise looks for credentials (and a metadata server); an emulator takes any.
  os.environ.setdefault("GOOGLE_AUTH_TOKEN_FOR_TESTING", "emulator")
  # gcsfs's bucket-type probe speaks gRPC to the real service and waits 60 s per bucket on an
  # emulator; it only matters for zonal / hierarchical-namespace buckets (read at import).
  os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")


_FS = None


def _fs():
  """The process's gcsfs filesystem (listing cache off: other processes write the same bucket)."""
  global _FS
  if _FS is None:
    configure_clients()
    try:
      import gcsfs  # pylint: disable=import-outside-toplevel
      import gcsfs.core  # pylint: disable=import-outside-toplevel
    except ImportError:
      raise StorageError(f"gs:// paths need gcsfs, the 'gcs' extra: {EXTRA_HINT}") from None
    # gcsfs logs every request that ran out of retries with its whole aiohttp traceback, then
    # raises the error to us; our caller reports it in one line, so its log is only noise.
    logging.getLogger("gcsfs").setLevel(logging.CRITICAL)
    if os.environ.get(EMULATOR_ENV):
      # The plain client: the zonal / HNS one probes each bucket over gRPC (see above).
      _FS = gcsfs.core.GCSFileSystem(token="anon", use_listings_cache=False, retries=2,
                                     skip_instance_cache=True)
    else:
      _FS = gcsfs.GCSFileSystem(use_listings_cache=False, skip_instance_cache=True)
  return _FS


def _key(url: str) -> str:
  bucket, key = split(url)
  return f"{bucket}/{key}" if key else bucket


def check_reachable(url: str) -> None:
  """Raises StorageError unless the bucket of ``url`` answers (names endpoint and bucket)."""
  bucket, _ = split(url)
  fs = _fs()
  _check_endpoint(bucket)
  try:
    fs.call("GET", "b/{}", bucket, json_out=True)
  except FileNotFoundError:
    raise StorageError(f"bucket gs://{bucket} does not exist (at {_endpoint()})") from None
  except OSError as e:
    if "Forbidden" in str(e) or "403" in str(e) or "401" in str(e):
      raise StorageError(f"no access to bucket gs://{bucket} at {_endpoint()}: "
                         f"{str(e).splitlines()[0]}") from None
    raise StorageError(f"cannot reach Cloud Storage at {_endpoint()} for gs://{bucket}: "
                       f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
  except Exception as e:  # pylint: disable=broad-except  (aiohttp / auth errors: many types)
    raise StorageError(f"cannot reach Cloud Storage at {_endpoint()} for gs://{bucket}: "
                       f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None


def _check_endpoint(bucket: str, timeout_s: float = 10.0) -> None:
  """Fails fast where the endpoint does not answer (gcsfs would retry with back-off for ~30 s)."""
  import urllib.error  # pylint: disable=import-outside-toplevel
  import urllib.request  # pylint: disable=import-outside-toplevel
  try:
    urllib.request.urlopen(f"{_endpoint()}/storage/v1/b/{bucket}", timeout=timeout_s).close()
  except urllib.error.HTTPError:
    pass   # it answered (401/403/404 are judged with credentials below)
  except OSError as e:
    reason = getattr(e, "reason", e)
    raise StorageError(f"cannot reach Cloud Storage at {_endpoint()} for gs://{bucket}: "
                       f"{reason}") from None


# Bounded waits -----------------------------------------------------------------------------
# The bound on one thread's gs:// calls, while ``bound_waits`` lasts: (thread id, bound).
_BOUND: tuple[int, Callable[[str], ContextManager[Any]]] | None = None


@contextlib.contextmanager
def bound_waits(bound: Callable[[str], ContextManager[Any]]) -> Iterator[None]:
  """Runs each gs:// call of the calling thread inside ``bound(what)`` while the block lasts,
  ``what`` saying what waits ("writing gs://b/w/summary.json"); other threads are unaffected.

  The trainer passes its deadline (``train/storage_deadline.py``), so that none of
  its waits on these calls can outlast it; a new call site is covered without a
  change.
  """
  global _BOUND
  outer, _BOUND = _BOUND, (threading.get_ident(), bound)
  try:
    yield
  finally:
    _BOUND = outer


def _waiting(what: str, url: str) -> ContextManager[Any]:
  found = _BOUND
  if found is None or found[0] != threading.get_ident():
    return contextlib.nullcontext()
  return found[1](f"{what} {url}")


# Queries ------------------------------------------------------------------------------------
def exists(path: str) -> bool:
  if not is_remote(path):
    return os.path.exists(path)
  with _waiting("reading", path):
    return _fs().exists(_key(path))


def isfile(path: str) -> bool:
  if not is_remote(path):
    return os.path.isfile(path)
  with _waiting("reading", path):
    return _fs().isfile(_key(path))


def isdir(path: str) -> bool:
  """Locally a directory; on GCS any object under the prefix (or the bucket itself)."""
  if not is_remote(path):
    return os.path.isdir(path)
  bucket, key = split(path)
  with _waiting("listing", path):
    if not key:
      return _fs().exists(bucket)
    return bool(_fs().ls(_key(path), detail=False)) if _fs().isdir(_key(path)) else False


def listdir(path: str) -> list[str]:
  """Entry names (files and sub-directories) directly under ``path``."""
  if not is_remote(path):
    return os.listdir(path)
  try:
    with _waiting("listing", path):
      return sorted({basename(p) for p in _fs().ls(_key(path), detail=False)})
  except FileNotFoundError:
    return []


def mtime(path: str) -> float:
  """Last modification time, seconds since the epoch (GCS: the object's ``updated``)."""
  if not is_remote(path):
    return os.path.getmtime(path)
  with _waiting("reading", path):
    info = _fs().info(_key(path))
  stamp = info.get("mtime") or info.get("updated")
  if hasattr(stamp, "timestamp"):
    return stamp.timestamp()
  return float(stamp or 0.0)


# Reads --------------------------------------------------------------------------------------
def read_bytes(path: str, start: int = 0) -> bytes:
  """The file's bytes from offset ``start`` (a ranged read on GCS)."""
  if not is_remote(path):
    with open(path, "rb") as f:
      f.seek(start)
      return f.read()
  with _waiting("reading", path):
    return _fs().cat_file(_key(path), start=start or None)


def read_text(path: str) -> str:
  return read_bytes(path).decode("utf-8", errors="replace")


def read_json(path: str) -> Any:
  return json.loads(read_bytes(path))


# Writes -------------------------------------------------------------------------------------
def makedirs(path: str) -> None:
  if not is_remote(path):
    os.makedirs(path, exist_ok=True)


def write_bytes(path: str, data: bytes) -> None:
  """Atomic: a reader sees the old content or all of the new one (see the module docstring)."""
  if not is_remote(path):
    atomic_files.write_bytes(path, data)
    return
  with _waiting("writing", path):
    _fs().pipe_file(_key(path), bytes(data))


def write_text(path: str, text: str) -> None:
  write_bytes(path, text.encode("utf-8"))


def write_json(path: str, obj: Any, **dump_kwargs: Any) -> None:
  write_text(path, json.dumps(obj, **dump_kwargs) + "\n")


def remove_empty_dir(path: str) -> None:
  """Removes a local directory if it is empty (GCS has no empty directories: nothing to do)."""
  if not is_remote(path) and os.path.isdir(path) and not os.listdir(path):
    os.rmdir(path)


def remove(path: str) -> None:
  if not is_remote(path):
    os.remove(path)
    return
  with _waiting("deleting", path):
    _fs().rm_file(_key(path))


def rmtree(path: str) -> None:
  if not is_remote(path):
    shutil.rmtree(path)
  elif exists(path):
    with _waiting("deleting", path):
      _fs().rm(_key(path), recursive=True)


def move(source: str, target: str) -> None:
  """Renames locally; on GCS copies every object then deletes the source (not atomic)."""
  if not is_remote(source):
    shutil.move(source, target)
    return
  with _waiting("moving", source):
    _fs().copy(_key(source), _key(target), recursive=True)
    _fs().rm(_key(source), recursive=True)


def download(url: str, local_path: str) -> None:
  """Copies one object to a local file, atomically (temp file + rename)."""
  os.makedirs(os.path.dirname(local_path) or ".", exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(local_path)}.", suffix=".part",
                             dir=os.path.dirname(local_path) or ".")
  os.close(fd)
  try:
    with _waiting("downloading", url):
      _fs().get_file(_key(url), tmp)
    os.replace(tmp, local_path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def upload(local_path: str, url: str) -> None:
  """Copies a local file to one object (all-or-nothing, like every object upload)."""
  with _waiting("writing", url):
    _fs().put_file(local_path, _key(url))


@contextlib.contextmanager
def local_file_for_writing(path: str) -> Iterator[str]:
  """A local file name to write (e.g. a plot); it becomes ``path`` atomically on exit."""
  fd, tmp = tempfile.mkstemp(suffix=os.path.splitext(basename(path))[1] or ".tmp")
  os.close(fd)
  try:
    yield tmp
    with open(tmp, "rb") as f:
      write_bytes(path, f.read())
  finally:
    os.remove(tmp)


# Preconditions (GCS ifGenerationMatch) -------------------------------------------------------
# ``timeout_s`` bounds the whole call (fsspec cancels the request and raises a TimeoutError
# subclass); None waits as long as gcsfs's own retries do.
def stat_generation(url: str, timeout_s: float | None = None) -> tuple[int, bytes] | None:
  """(generation, content) of an object, or None when it does not exist."""
  fs = _fs()
  bucket, key = split(url)
  try:
    meta = fs.call("GET", "b/{}/o/{}", bucket, key, json_out=True, timeout=timeout_s)
    data = fs.cat_file(_key(url), timeout=timeout_s)
  except FileNotFoundError:
    return None
  return int(meta["generation"]), data


def _upload_if(url: str, data: bytes, if_generation_match: int,
               timeout_s: float | None) -> int | None:
  """Uploads when the object's generation is ``if_generation_match`` (0: absent); else None."""
  fs = _fs()
  bucket, key = split(url)
  metadata = json.dumps({"name": key})
  body = (f"--==0==\nContent-Type: application/json; charset=UTF-8\n\n{metadata}\n--==0==\n"
          "Content-Type: application/octet-stream\n\n").encode() + data + b"\n--==0==--"
  try:
    reply = fs.call("POST", f"{fs._location}/upload/storage/v1/b/{bucket}/o",  # pylint: disable=protected-access
                    uploadType="multipart", ifGenerationMatch=str(if_generation_match),
                    headers={"Content-Type": 'multipart/related; boundary="==0=="'},
                    data=body, json_out=True, timeout=timeout_s)
  except FileExistsError:   # gcsfs maps 412 Precondition Failed to FileExistsError
    return None
  return int(reply["generation"])


def create_exclusive(url: str, data: bytes, timeout_s: float | None = None) -> int | None:
  """Creates the object only if absent; its generation, or None when it already exists."""
  return _upload_if(url, data, 0, timeout_s)


def replace_if_generation(url: str, data: bytes, generation: int,
                          timeout_s: float | None = None) -> int | None:
  """Overwrites the object only if it is still at ``generation``; the new one, or None."""
  return _upload_if(url, data, generation, timeout_s)


def delete_if_generation(url: str, generation: int, timeout_s: float | None = None) -> bool:
  fs = _fs()
  bucket, key = split(url)
  try:
    fs.call("DELETE", "b/{}/o/{}", bucket, key, ifGenerationMatch=str(generation),
            timeout=timeout_s)
  except (FileExistsError, FileNotFoundError):
    return False
  return True


# Host-local caches -------------------------------------------------------------------------
def cache_root() -> str:
  return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache",
                                                   "optbench_jax")


def local_cache_dir(url: str, kind: str) -> str:
  """A host-local directory for ``url`` (``<cache>/<kind>/<bucket>/<key>-<hash>``).

  The short hash of the whole URL (with the endpoint) keeps two emulators' or
  projects' buckets of one name apart.
  """
  bucket, key = split(url)
  digest = hashlib.sha256(f"{_endpoint()} {resolve(url)}".encode()).hexdigest()[:10]
  name = (key.replace("/", "_") or "_root") + f"-{digest}"
  return os.path.join(cache_root(), kind, bucket, name)
