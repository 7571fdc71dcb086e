"""The token-shard directory format: ``manifest.json`` plus raw uint16 shard files.

Layout of a prepared corpus directory (FineWeb via ``prepare``, or the synthetic
language via ``synthetic``)::

  OUT_DIR/
    manifest.json
    train_00000.bin  train_00001.bin  ...
    val_00000.bin    ...

Each ``.bin`` is a flat little-endian uint16 array of token ids with no header
(``np.memmap(f, dtype="<u2")``). The shards of one split, in manifest order,
concatenate to that split's token stream; a document may straddle two shards.
Real corpora put ``eot_id`` after every document. ``manifest.json``::

  {"format": "optbench_jax.token_shards", "format_version": 1,
   "tokenizer": "gpt2", "vocab_size": 50257, "eot_id": 50256, "dtype": "uint16",
   "num_tokens": {"train": N_train, "val": N_val},
   "shards": [{"file": "train_00000.bin", "split": "train",
               "num_tokens": 100000000, "sha256": "..."}, ...],
   "loss_floor_nats": 1.83,        # optional: best achievable mean next-token
                                   # cross-entropy (synthetic corpora only)
   "metadata": {...}}              # provenance: source, flags, document counts

The manifest is written last (atomically), so its presence marks a complete
directory. ``read_manifest`` validates all of this and raises one ``DataError``
that names the offending file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
from typing import Any, Literal

import numpy as np

from optbench_jax import atomic_files

FORMAT = "optbench_jax.token_shards"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
TOKEN_DTYPE = np.dtype("<u2")
SPLITS = ("train", "val")
_VERIFY_CHUNK = 1 << 24   # tokens per read when hashing / range-checking (32 MB)


class DataError(ValueError):
  """A corpus directory, manifest or shard is missing, inconsistent or invalid."""


@dataclasses.dataclass(frozen=True)
class Shard:
  file: str          # file name inside the corpus directory
  split: str         # "train" | "val"
  num_tokens: int
  sha256: str


@dataclasses.dataclass(frozen=True)
class Manifest:
  """A parsed, validated ``manifest.json``; ``directory`` is where its shards live."""
  directory: pathlib.Path
  tokenizer: str
  vocab_size: int
  eot_id: int | None
  shards: tuple[Shard, ...]
  loss_floor_nats: float | None = None
  metadata: dict[str, Any] = dataclasses.field(default_factory=dict)
  format_version: int = FORMAT_VERSION

  def split_shards(self, split: str) -> tuple[Shard, ...]:
    if split not in SPLITS:
      raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return tuple(s for s in self.shards if s.split == split)

  def num_tokens(self, split: str) -> int:
    return sum(s.num_tokens for s in self.split_shards(split))

  def shard_path(self, shard: Shard) -> pathlib.Path:
    return self.directory / shard.file

  def to_json(self) -> dict[str, Any]:
    out = {
        "format": FORMAT,
        "format_version": self.format_version,
        "tokenizer": self.tokenizer,
        "vocab_size": self.vocab_size,
        "eot_id": self.eot_id,
        "dtype": "uint16",
        "num_tokens": {split: self.num_tokens(split) for split in SPLITS},
        "shards": [dataclasses.asdict(s) for s in self.shards],
        "metadata": self.metadata,
    }
    if self.loss_floor_nats is not None:
      out["loss_floor_nats"] = self.loss_floor_nats
    return out


def write_manifest(manifest: Manifest) -> pathlib.Path:
  """Writes ``manifest.json`` atomically (temp file + rename) and returns its path."""
  path = manifest.directory / MANIFEST_NAME
  atomic_files.write_json(path, manifest.to_json(), indent=1)
  return path


class ShardWriter:
  """Streams one split's tokens into ``<split>_NNNNN.bin`` files of ``shard_tokens`` each.

  Memory stays bounded: tokens go straight to the open file and its running
  sha256; a full shard is closed and the next one opened.
  """

  def __init__(self, directory: str | os.PathLike, split: str, shard_tokens: int):
    if split not in SPLITS:
      raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if shard_tokens < 1:
      raise ValueError(f"shard_tokens must be >= 1, got {shard_tokens}")
    self.directory = pathlib.Path(directory)
    self.directory.mkdir(parents=True, exist_ok=True)
    self.split = split
    self.shard_tokens = int(shard_tokens)
    self.shards: list[Shard] = []
    self.num_tokens = 0
    self._file = None
    self._hash = None
    self._in_shard = 0

  def _open_next(self):
    name = f"{self.split}_{len(self.shards):05d}.bin"
    self._file = open(self.directory / name, "wb")
    self._name, self._hash, self._in_shard = name, hashlib.sha256(), 0

  def _close_current(self):
    self._file.close()
    self.shards.append(Shard(self._name, self.split, self._in_shard, self._hash.hexdigest()))
    self._file = None

  def write(self, tokens: np.ndarray) -> None:
    tokens = np.asarray(tokens)
    if tokens.size and (tokens.min() < 0 or tokens.max() > np.iinfo(TOKEN_DTYPE).max):
      raise DataError(f"token ids must fit in uint16, got range [{tokens.min()}, {tokens.max()}]")
    tokens = tokens.astype(TOKEN_DTYPE, copy=False).ravel()
    while tokens.size:
      if self._file is None:
        self._open_next()
      take = min(tokens.size, self.shard_tokens - self._in_shard)
      data = tokens[:take].tobytes()
      self._file.write(data)
      self._hash.update(data)
      self._in_shard += take
      self.num_tokens += take
      tokens = tokens[take:]
      if self._in_shard == self.shard_tokens:
        self._close_current()

  def close(self) -> list[Shard]:
    """Flushes the last (partial) shard; returns every shard written."""
    if self._file is not None:
      self._close_current()
    return self.shards


def _hash_and_max(path: pathlib.Path, num_tokens: int) -> tuple[str, int]:
  digest = hashlib.sha256()
  max_id = -1
  data = np.memmap(path, dtype=TOKEN_DTYPE, mode="r", shape=(num_tokens,)) if num_tokens else ()
  for start in range(0, num_tokens, _VERIFY_CHUNK):
    chunk = np.asarray(data[start:start + _VERIFY_CHUNK])
    digest.update(chunk.tobytes())
    max_id = max(max_id, int(chunk.max()))
  return digest.hexdigest(), max_id


def _require(condition: bool, manifest_path: pathlib.Path, what: str):
  if not condition:
    raise DataError(f"{manifest_path}: {what}")


def read_manifest(path: str | os.PathLike,
                  verify: Literal["none", "size", "full"] = "size") -> Manifest:
  """Reads and validates a token-shard directory (see the module docstring).

  Args:
    path: the corpus directory (or its ``manifest.json``).
    verify: ``"none"`` parses the manifest only; ``"size"`` (default, cheap) also
      checks every shard exists with exactly ``2 * num_tokens`` bytes; ``"full"``
      also recomputes each shard's sha256 and checks every token id is
      ``< vocab_size`` (reads the whole corpus).

  Raises:
    DataError: missing or empty directory, malformed manifest, or a shard that
      is missing or does not match its size / hash / vocabulary (the message
      names the file).
  """
  if verify not in ("none", "size", "full"):
    raise ValueError(f"verify must be 'none', 'size' or 'full', got {verify!r}")
  path = pathlib.Path(path)
  directory = path.parent if path.name == MANIFEST_NAME else path
  manifest_path = directory / MANIFEST_NAME
  if not directory.is_dir():
    raise DataError(f"shard directory {directory} does not exist")
  if not manifest_path.is_file():
    if not any(directory.iterdir()):
      raise DataError(f"shard directory {directory} is empty: prepare a corpus with "
                      "`python -m optbench_jax.data.prepare` or use the synthetic corpus")
    raise DataError(f"shard directory {directory} has no {MANIFEST_NAME} (incomplete or "
                    "not prepared by optbench_jax.data.prepare)")
  try:
    raw = json.loads(manifest_path.read_text())
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise DataError(f"{manifest_path}: not valid JSON ({e})") from e
  _require(isinstance(raw, dict) and raw.get("format") == FORMAT, manifest_path,
           f"not an {FORMAT} manifest")
  _require(raw.get("format_version") == FORMAT_VERSION, manifest_path,
           f"format_version {raw.get('format_version')!r}, this code reads {FORMAT_VERSION}")
  _require(raw.get("dtype") == "uint16", manifest_path, f"dtype {raw.get('dtype')!r} != 'uint16'")
  vocab_size = raw.get("vocab_size")
  _require(isinstance(vocab_size, int) and 0 < vocab_size <= 65536, manifest_path,
           f"vocab_size {vocab_size!r} must be an int in [1, 65536]")
  eot_id = raw.get("eot_id")
  _require(eot_id is None or (isinstance(eot_id, int) and 0 <= eot_id < vocab_size),
           manifest_path, f"eot_id {eot_id!r} outside the vocabulary")
  floor = raw.get("loss_floor_nats")
  _require(floor is None or (isinstance(floor, (int, float)) and floor >= 0), manifest_path,
           f"loss_floor_nats {floor!r} must be a non-negative number")

  shards = []
  for entry in raw.get("shards") or []:
    try:
      shard = Shard(file=entry["file"], split=entry["split"], num_tokens=entry["num_tokens"],
                    sha256=entry["sha256"])
    except (TypeError, KeyError) as e:
      raise DataError(f"{manifest_path}: malformed shard entry {entry!r}") from e
    _require(isinstance(shard.file, str) and shard.file and pathlib.Path(shard.file).name == shard.file,
             manifest_path, f"shard file name {shard.file!r} must be a plain file name")
    _require(shard.split in SPLITS, manifest_path, f"shard {shard.file}: split {shard.split!r}")
    _require(isinstance(shard.num_tokens, int) and shard.num_tokens >= 0, manifest_path,
             f"shard {shard.file}: num_tokens {shard.num_tokens!r}")
    shards.append(shard)
  _require(len({s.file for s in shards}) == len(shards), manifest_path, "duplicate shard files")
  manifest = Manifest(directory=directory, tokenizer=str(raw.get("tokenizer")),
                      vocab_size=vocab_size, eot_id=eot_id, shards=tuple(shards),
                      loss_floor_nats=None if floor is None else float(floor),
                      metadata=dict(raw.get("metadata") or {}))
  totals = raw.get("num_tokens") or {}
  for split in SPLITS:
    _require(totals.get(split) == manifest.num_tokens(split), manifest_path,
             f"num_tokens[{split!r}]={totals.get(split)!r} but its shards hold "
             f"{manifest.num_tokens(split)}")

  if verify == "none":
    return manifest
  for shard in manifest.shards:
    shard_path = manifest.shard_path(shard)
    if not shard_path.is_file():
      raise DataError(f"shard {shard_path} listed in {manifest_path} is missing")
    size = shard_path.stat().st_size
    if size != shard.num_tokens * TOKEN_DTYPE.itemsize:
      raise DataError(f"shard {shard_path} has {size} bytes but {manifest_path} says "
                      f"{shard.num_tokens} uint16 tokens ({shard.num_tokens * 2} bytes)")
    if verify == "full":
      digest, max_id = _hash_and_max(shard_path, shard.num_tokens)
      if digest != shard.sha256:
        raise DataError(f"shard {shard_path} has sha256 {digest}, {manifest_path} says "
                        f"{shard.sha256} (corrupted or replaced)")
      if max_id >= vocab_size:
        raise DataError(f"shard {shard_path} holds token id {max_id} >= vocab_size {vocab_size}")
  return manifest
