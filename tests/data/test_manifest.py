"""The shard-directory format: ShardWriter output and every read_manifest failure."""

import hashlib
import json

import numpy as np
import pytest

from optbench_jax.data import DataError, read_manifest
from optbench_jax.data import manifest as manifest_lib


def test_shard_writer_splits_and_hashes(tmp_path):
  tokens = np.random.default_rng(0).integers(0, 65536, size=2500).astype(np.uint16)
  writer = manifest_lib.ShardWriter(tmp_path, "train", shard_tokens=1000)
  for piece in np.array_split(tokens, 7):   # chunk borders unrelated to shard borders
    writer.write(piece)
  shards = writer.close()
  assert [s.file for s in shards] == ["train_00000.bin", "train_00001.bin", "train_00002.bin"]
  assert [s.num_tokens for s in shards] == [1000, 1000, 500]
  for i, shard in enumerate(shards):
    expected = tokens[i * 1000:(i + 1) * 1000].astype("<u2").tobytes()
    assert (tmp_path / shard.file).read_bytes() == expected
    assert shard.sha256 == hashlib.sha256(expected).hexdigest()


def test_shard_writer_rejects_ids_beyond_uint16(tmp_path):
  writer = manifest_lib.ShardWriter(tmp_path, "val", shard_tokens=10)
  with pytest.raises(DataError, match="uint16"):
    writer.write(np.array([1, 70000]))


def test_round_trip(make_corpus):
  path = make_corpus(np.arange(100), np.arange(10), shard_sizes={"train": [60, 40]},
                     vocab_size=200, eot_id=5, loss_floor_nats=1.5)
  m = read_manifest(path, verify="full")
  assert m.vocab_size == 200 and m.eot_id == 5 and m.loss_floor_nats == 1.5
  assert m.num_tokens("train") == 100 and m.num_tokens("val") == 10
  assert [s.file for s in m.split_shards("train")] == ["train_00000.bin", "train_00001.bin"]
  assert read_manifest(path / "manifest.json").shards == m.shards
  raw = json.loads((path / "manifest.json").read_text())
  assert raw["num_tokens"] == {"train": 100, "val": 10} and raw["dtype"] == "uint16"


def test_missing_and_empty_directories(tmp_path):
  with pytest.raises(DataError, match="nowhere.*does not exist"):
    read_manifest(tmp_path / "nowhere")
  (tmp_path / "empty").mkdir()
  with pytest.raises(DataError, match="empty.*is empty"):
    read_manifest(tmp_path / "empty")
  (tmp_path / "half").mkdir()
  (tmp_path / "half" / "train_00000.bin").write_bytes(b"\0\0")
  with pytest.raises(DataError, match="half has no manifest.json"):
    read_manifest(tmp_path / "half")


def test_shard_size_mismatch_names_the_file(make_corpus):
  path = make_corpus(np.arange(100), np.arange(10))
  with open(path / "train_00000.bin", "ab") as f:
    f.write(b"\0\0")
  with pytest.raises(DataError, match="train_00000.bin has 202 bytes"):
    read_manifest(path)
  (path / "train_00000.bin").write_bytes(np.arange(100).astype("<u2").tobytes())
  read_manifest(path, verify="full")
  (path / "val_00000.bin").unlink()
  read_manifest(path, verify="none")   # parsing alone does not touch the shards
  with pytest.raises(DataError, match="val_00000.bin listed in .* is missing"):
    read_manifest(path)


def test_hash_mismatch_found_by_full_verify(make_corpus):
  path = make_corpus(np.arange(100), np.arange(10))
  data = bytearray((path / "val_00000.bin").read_bytes())
  data[0] ^= 1
  (path / "val_00000.bin").write_bytes(bytes(data))
  read_manifest(path, verify="size")   # same size: the cheap check passes
  with pytest.raises(DataError, match="val_00000.bin has sha256"):
    read_manifest(path, verify="full")


def test_token_ids_beyond_vocab_found_by_full_verify(make_corpus):
  path = make_corpus(np.arange(100), np.arange(10), shard_sizes={"train": [50, 50]},
                     vocab_size=80)
  with pytest.raises(DataError, match=r"train_00001.bin holds token id 99 >= vocab_size 80"):
    read_manifest(path, verify="full")


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update(format="other"), "not an optbench_jax.token_shards manifest"),
    (lambda m: m.update(format_version=99), "format_version 99"),
    (lambda m: m.update(vocab_size=70000), "vocab_size 70000"),
    (lambda m: m["num_tokens"].update(train=5), r"num_tokens\['train'\]=5"),
    (lambda m: m["shards"][0].update(file="../x.bin"), "plain file name"),
    (lambda m: m["shards"][0].pop("sha256"), "malformed shard entry"),
])
def test_malformed_manifests(make_corpus, edit, message):
  path = make_corpus(np.arange(100), np.arange(10))
  raw = json.loads((path / "manifest.json").read_text())
  edit(raw)
  (path / "manifest.json").write_text(json.dumps(raw))
  with pytest.raises(DataError, match=message):
    read_manifest(path)


def test_invalid_json(make_corpus):
  path = make_corpus(np.arange(100), np.arange(10))
  (path / "manifest.json").write_text("{not json")
  with pytest.raises(DataError, match="manifest.json: not valid JSON"):
    read_manifest(path)
