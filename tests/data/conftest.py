"""Helpers for the data tests: tiny token-shard directories with known contents."""

import hashlib
import pathlib

import numpy as np
import pytest

from optbench_jax.data import manifest as manifest_lib


def write_corpus(directory, train, val, *, shard_sizes=None, vocab_size=65536, eot_id=None,
                 loss_floor_nats=None):
  """Writes ``train``/``val`` (uint16-valued arrays) as shards; returns the directory.

  ``shard_sizes`` maps a split to the list of shard lengths (default: one shard).
  Files and hashes are produced here with numpy + hashlib, independently of ShardWriter.
  """
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  shards = []
  for split, tokens in (("train", np.asarray(train)), ("val", np.asarray(val))):
    sizes = (shard_sizes or {}).get(split, [tokens.size])
    assert sum(sizes) == tokens.size
    start = 0
    for i, size in enumerate(sizes):
      data = tokens[start:start + size].astype("<u2").tobytes()
      name = f"{split}_{i:05d}.bin"
      (directory / name).write_bytes(data)
      shards.append(manifest_lib.Shard(name, split, size, hashlib.sha256(data).hexdigest()))
      start += size
  manifest_lib.write_manifest(manifest_lib.Manifest(
      directory=directory, tokenizer="test", vocab_size=vocab_size, eot_id=eot_id,
      shards=tuple(shards), loss_floor_nats=loss_floor_nats))
  return directory


@pytest.fixture
def make_corpus(tmp_path):
  counter = iter(range(1000))
  def make(train, val, **kwargs):
    return write_corpus(tmp_path / f"corpus{next(counter)}", train, val, **kwargs)
  return make
