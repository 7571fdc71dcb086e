r"""A local Cloud Storage emulator for the gs:// tests: ``gcp-storage-emulator`` on 127.0.0.1.

  python -m tests.gcs_emulator --port 9023 --bucket test-bucket    # by hand, for debugging
  export STORAGE_EMULATOR_HOST=http://127.0.0.1:9023               # then gs://test-bucket/...

The tests start it as a subprocess (``Emulator``, used by the ``gcs`` fixture in
tests/conftest.py) on a free port, in memory, and always stop it. What the
emulator (2026.7.19) lacks and this wrapper adds, as real GCS behaves:

* the ``ifGenerationMatch`` precondition on object uploads and deletes (412
  Precondition Failed; the emulator ignores it): the gs:// workdir lock relies
  on it, and tensorstore's OCDBT manifest writes use it;
* on reads, the ``x-goog-generation`` response header and the
  ``ifGenerationMatch`` / ``ifGenerationNotMatch`` conditions (412 / 304):
  tensorstore tracks each object's generation from that header and revalidates
  cached reads with ``ifGenerationNotMatch``; without them orbax's second save
  of a run fails with "Malformed StorageGeneration".

Everything else (JSON API, multipart and resumable uploads, ranged reads,
prefix listings) the emulator serves as is.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from http import HTTPStatus


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def client_env(url: str) -> dict[str, str]:
  """The environment that points gcsfs, tensorstore and optbench_jax at the emulator."""
  return {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url,
          "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator", "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
          # No metadata-server probing (there is none here): fail at once.
          "GCE_METADATA_HOST": "127.0.0.1:1", "GCE_METADATA_ROOT": "127.0.0.1:1",
          "NO_GCE_CHECK": "True"}


def _add_preconditions() -> None:
  """Makes the emulator honour ``ifGenerationMatch`` on object insert and delete."""
  from gcp_storage_emulator import server  # pylint: disable=import-outside-toplevel
  from gcp_storage_emulator.handlers import objects  # pylint: disable=import-outside-toplevel

  def current_generation(storage, bucket, name) -> int:
    try:
      return int(storage.get_file_obj(bucket, name)["generation"])
    except Exception:  # pylint: disable=broad-except  (NotFound)
      return 0

  def guarded(handler, name_of):
    def wrapper(request, response, storage, *args, **kwargs):
      wanted = request.query.get("ifGenerationMatch")
      if wanted:
        name = name_of(request)
        if name is not None and current_generation(
            storage, request.params["bucket_name"], name) != int(wanted[0]):
          response.status = HTTPStatus.PRECONDITION_FAILED
          response.json({"error": {"code": 412, "message": "Precondition Failed"}})
          return None
      return handler(request, response, storage, *args, **kwargs)
    return wrapper

  def insert_name(request):
    if "name" in request.query:
      return request.query["name"][0]
    data = request.data
    return data.get("meta", {}).get("name") if isinstance(data, dict) else None

  original_download = objects.download

  def download(request, response, storage, *args, **kwargs):
    """Reads carry the generation (``x-goog-generation``, which tensorstore tracks) and honour
    ``ifGenerationMatch`` (412) / ``ifGenerationNotMatch`` (304 Not Modified)."""
    generation = current_generation(storage, request.params["bucket_name"],
                                    request.params["object_id"])
    if generation:
      response["x-goog-generation"] = str(generation)
      response["x-goog-metageneration"] = "1"
      match = request.query.get("ifGenerationMatch")
      not_match = request.query.get("ifGenerationNotMatch")
      if match and int(match[0]) != generation:
        response.status = HTTPStatus.PRECONDITION_FAILED
        return None
      if not_match and int(not_match[0]) == generation:
        response.status = HTTPStatus.NOT_MODIFIED
        return None
    return original_download(request, response, storage, *args, **kwargs)

  objects.download = download   # objects.get(alt=media) calls it by this name
  for _, methods in server.HANDLERS:
    for method, handler in list(methods.items()):
      if handler is objects.insert:
        methods[method] = guarded(handler, insert_name)
      elif handler is objects.delete:
        methods[method] = guarded(handler, lambda r: r.params["object_id"])
      elif handler is original_download:
        methods[method] = download


def serve(port: int, buckets: list[str]) -> None:
  import logging  # pylint: disable=import-outside-toplevel
  if os.environ.get("GCS_EMULATOR_LOG"):   # debugging: every request, to stderr
    from gcp_storage_emulator import server  # pylint: disable=import-outside-toplevel
    server.RequestHandler.log_message = (
        lambda self, fmt, *a: sys.stderr.write(f"{self.command} {self.path} -> {a[1:2]}\n"))
  else:
    logging.disable(logging.CRITICAL)   # it logs every 404 as an error
  from gcp_storage_emulator.handlers.buckets import create_bucket  # pylint: disable=import-outside-toplevel
  from gcp_storage_emulator.server import create_server  # pylint: disable=import-outside-toplevel
  _add_preconditions()
  srv = create_server("127.0.0.1", port, in_memory=True)
  for bucket in buckets:
    create_bucket(bucket, srv._storage)  # pylint: disable=protected-access
  srv.run()


class Emulator:
  """``with Emulator(["bucket"]) as emu:`` -- ``emu.url``, ``emu.env``; stopped on exit.

  ``freeze()`` / ``thaw()``: the in-memory objects survive a freeze (tests of storage
  that stops answering, tests/train/test_storage_deadline.py).
  """

  def __init__(self, buckets=("test-bucket",), startup_timeout_s: float = 30.0):
    self.port = _free_port()
    self.url = f"http://127.0.0.1:{self.port}"
    self.env = client_env(self.url)
    self.buckets = list(buckets)
    self.startup_timeout_s = startup_timeout_s
    self.process: subprocess.Popen | None = None

  def start(self) -> "Emulator":
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    self.process = subprocess.Popen(
        [sys.executable, "-m", "tests.gcs_emulator", "--port", str(self.port),
         *(f"--bucket={b}" for b in self.buckets)],
        cwd=root, stdout=subprocess.DEVNULL,
        stderr=open(os.environ["GCS_EMULATOR_LOG"], "w") if os.environ.get("GCS_EMULATOR_LOG")
        else subprocess.DEVNULL)
    deadline = time.time() + self.startup_timeout_s
    while True:
      try:
        with urllib.request.urlopen(f"{self.url}/storage/v1/b/{self.buckets[0]}", timeout=2):
          return self
      except OSError:
        if self.process.poll() is not None or time.time() > deadline:
          self.stop()
          raise RuntimeError(f"the GCS emulator did not start on {self.url}")
        time.sleep(0.1)

  def freeze(self) -> None:
    """Stops answering, connections and all (SIGSTOP): storage that hangs, not one that refuses."""
    os.kill(self.process.pid, signal.SIGSTOP)

  def thaw(self) -> None:
    os.kill(self.process.pid, signal.SIGCONT)

  def stop(self) -> None:
    if self.process is not None and self.process.poll() is None:
      self.thaw()   # a frozen process would hold SIGTERM pending
      self.process.terminate()
      try:
        self.process.wait(timeout=10)
      except subprocess.TimeoutExpired:
        self.process.kill()
        self.process.wait()
    self.process = None

  def __enter__(self) -> "Emulator":
    return self.start()

  def __exit__(self, *exc) -> None:
    self.stop()


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--port", type=int, default=9023)
  p.add_argument("--bucket", action="append", default=[])
  args = p.parse_args()
  serve(args.port, args.bucket or ["test-bucket"])
  return 0


if __name__ == "__main__":
  sys.exit(main())
