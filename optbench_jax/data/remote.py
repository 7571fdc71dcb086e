"""A ``gs://`` token-shard corpus, copied once into a host-local cache and memory-mapped from there.

``fetch_corpus("gs://bucket/fineweb10B")`` downloads ``manifest.json`` (every
time: it is small and says what the shards must be), then each shard that the
cache does not already hold verified, into
``<cache>/corpora/<bucket>/<path>-<hash>/`` (``OPTBENCH_CACHE_DIR``, default
``~/.cache/optbench_jax``). A shard is downloaded to a temporary file, its
sha256 checked against the manifest, then renamed into place, and a
``<shard>.sha256`` marker records the verified hash; a cached shard whose marker
or size does not match the manifest (the corpus was re-prepared, a copy was cut
short) is fetched again. The loader then memory-maps local files, exactly as for
a local corpus.

Why a full local copy rather than ranged reads: the loader's global shuffle
draws each sequence from anywhere in the train stream, so ranged reads would be
``global_batch_size / hosts`` small random GETs per step per host, latency-bound
at tens of ms each; a corpus of 10^10 tokens is 20 GB, which a TPU VM's disk
holds (MaxText's and Levanter's loaders also stage or stream whole shards).
Every host fetches its own copy; concurrent fetches on one host are safe (each
writes its own temporary file and renames).
"""

from __future__ import annotations

import hashlib
import json
import os

from optbench_jax import storage
from optbench_jax.data import manifest as manifest_lib
from optbench_jax.data.manifest import DataError

_CHUNK = 1 << 24


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    while chunk := f.read(_CHUNK):
      digest.update(chunk)
  return digest.hexdigest()


def _cached(local: str, shard: manifest_lib.Shard) -> bool:
  marker = local + ".sha256"
  try:
    with open(marker) as f:
      verified = f.read().strip()
    size = os.path.getsize(local)
  except OSError:
    return False
  return verified == shard.sha256 and size == shard.num_tokens * manifest_lib.TOKEN_DTYPE.itemsize


def fetch_corpus(url: str, log=print) -> str:
  """The local directory holding a verified copy of the corpus at ``url`` (see module doc).

  Raises:
    DataError: no manifest at ``url``, a shard missing there, or a downloaded
      shard whose sha256 differs from the manifest's.
  """
  url = storage.resolve(url)
  local_dir = storage.local_cache_dir(url, "corpora")
  os.makedirs(local_dir, exist_ok=True)
  manifest_url = storage.join(url, manifest_lib.MANIFEST_NAME)
  try:
    raw = storage.read_bytes(manifest_url)
  except FileNotFoundError:
    raise DataError(f"no {manifest_lib.MANIFEST_NAME} at {url} (not a prepared corpus, or "
                    "not finished uploading)") from None
  try:
    json.loads(raw)
  except ValueError as e:
    raise DataError(f"{manifest_url}: not valid JSON ({e})") from None
  local_manifest = os.path.join(local_dir, manifest_lib.MANIFEST_NAME)
  # Parse it in the cache without shard checks first: the shards come next.
  tmp_dir = os.path.join(local_dir, ".manifest")
  os.makedirs(tmp_dir, exist_ok=True)
  with open(os.path.join(tmp_dir, manifest_lib.MANIFEST_NAME), "wb") as f:
    f.write(raw)
  manifest = manifest_lib.read_manifest(tmp_dir, verify="none")
  fetched = 0
  for shard in manifest.shards:
    local = os.path.join(local_dir, shard.file)
    if _cached(local, shard):
      continue
    source = storage.join(url, shard.file)
    try:
      storage.download(source, local + ".download")
    except FileNotFoundError:
      raise DataError(f"shard {source} listed in {manifest_url} is missing") from None
    digest = _sha256(local + ".download")
    if digest != shard.sha256:
      os.remove(local + ".download")
      raise DataError(f"shard {source} has sha256 {digest}, {manifest_url} says {shard.sha256} "
                      "(corrupted or replaced)")
    os.replace(local + ".download", local)
    with open(local + ".sha256", "w") as f:
      f.write(shard.sha256 + "\n")
    fetched += 1
  os.replace(os.path.join(tmp_dir, manifest_lib.MANIFEST_NAME), local_manifest)
  if fetched:
    log(f"fetched {fetched} shard(s) of {url} into {local_dir} (sha256 verified)")
  return local_dir
