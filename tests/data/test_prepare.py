"""End-to-end preparation of small parquet and text corpora, and every bad-input error."""

import hashlib
import pathlib
import os
import subprocess
import sys
import types

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from optbench_jax.data import DataError, gpt2_tokenizer, read_manifest
from optbench_jax.data import prepare

EOT = 50256
REPO_ROOT = pathlib.Path(prepare.__file__).resolve().parents[2]
WORDS = ["the", "cat", "sat", "on", "a", "mat", "Über", "naïve", "🙂", "1234", "it's", "\n", "  "]


def _documents(n, seed=0):
  rng = np.random.default_rng(seed)
  return [" ".join(rng.choice(WORDS, size=rng.integers(3, 60))) + f" doc{i}." for i in range(n)]


def _in_val(text, fraction, seed):
  """The documented split rule, written out independently."""
  digest = hashlib.blake2b(text.encode("utf-8"), key=seed.to_bytes(8, "little"),
                           digest_size=8).digest()
  return int.from_bytes(digest, "little") < fraction * 2**64


def _split_tokens(manifest, split):
  pieces = [np.fromfile(manifest.shard_path(s), dtype="<u2") for s in manifest.split_shards(split)]
  return np.concatenate(pieces) if pieces else np.zeros(0, np.uint16)


def _decoded_documents(manifest, split):
  tokens = _split_tokens(manifest, split).tolist()
  assert not tokens or tokens[-1] == EOT   # every document ends with EOT
  docs, current = [], []
  for t in tokens:
    if t == EOT:
      docs.append(gpt2_tokenizer().decode(current))
      current = []
    else:
      current.append(t)
  return docs


def _write_parquet(path, docs, rows_per_group=40):
  table = pa.table({"id": list(range(len(docs))), "text": docs})
  pq.write_table(table, path, row_group_size=rows_per_group)


def test_parquet_end_to_end_with_a_worker_pool(tmp_path):
  docs = _documents(300)
  _write_parquet(tmp_path / "a.parquet", docs[:170])
  _write_parquet(tmp_path / "b.parquet", docs[170:] + [None, ""])   # null and empty rows skipped
  out = tmp_path / "out"
  m = prepare.main(["--source=parquet", f"--input={tmp_path}/*.parquet", f"--output={out}",
                    "--val_fraction=0.1", "--split_seed=3", "--workers=2", "--shard_tokens=2000",
                    "--docs_per_task=16", "--no_progress"])
  m = read_manifest(out, verify="full")   # hashes and vocabulary range
  assert m.tokenizer == "gpt2" and m.vocab_size == 50257 and m.eot_id == EOT
  expected_val = [d for d in docs if _in_val(d, 0.1, 3)]
  expected_train = [d for d in docs if not _in_val(d, 0.1, 3)]
  assert 15 <= len(expected_val) <= 50   # ~10% of 300
  assert _decoded_documents(m, "train") == expected_train   # order kept, round trip exact
  assert _decoded_documents(m, "val") == expected_val
  assert m.metadata["train_documents"] == len(expected_train)
  assert m.metadata["val_documents"] == len(expected_val)
  assert m.metadata["skipped_empty_documents"] == 2
  assert m.metadata["text_bytes"] == sum(len(d.encode()) for d in docs)
  train_shards = m.split_shards("train")
  assert len(train_shards) > 2 and all(s.num_tokens == 2000 for s in train_shards[:-1])
  # Same corpus in-process, other worker count and task size: identical shards.
  again = prepare.prepare_corpus(docs, tmp_path / "again", val_fraction=0.1, split_seed=3,
                                 workers=0, shard_tokens=2000, docs_per_task=7, progress=False)
  assert [s.sha256 for s in again.shards] == [s.sha256 for s in m.shards]


def test_split_is_stable_and_has_the_requested_fraction():
  texts = [f"document number {i}" for i in range(20000)]
  chosen = [prepare.is_validation_document(t, 0.1, 0) for t in texts]
  assert chosen == [_in_val(t, 0.1, 0) for t in texts]
  assert abs(np.mean(chosen) - 0.1) < 0.01   # 4.7 standard deviations
  other_seed = [prepare.is_validation_document(t, 0.1, 1) for t in texts]
  assert chosen != other_seed
  assert not any(prepare.is_validation_document(t, 0.0, 0) for t in texts[:100])


def test_text_one_document_per_file_and_per_line(tmp_path):
  docs = _documents(12, seed=1)
  (tmp_path / "in").mkdir()
  for i, d in enumerate(docs):
    (tmp_path / "in" / f"{i:02d}.txt").write_text(d, encoding="utf-8")
  m = prepare.main(["--source=text", f"--input={tmp_path}/in/*.txt", f"--output={tmp_path}/files",
                    "--val_fraction=0", "--workers=0", "--no_progress"])
  assert _decoded_documents(m, "train") == docs and m.num_tokens("val") == 0

  lines = [d.replace("\n", " ") for d in docs]
  (tmp_path / "lines.txt").write_text("\n".join(lines[:6]) + "\n\n" + "\r\n".join(lines[6:]) + "\n")
  m = prepare.main(["--source=text", "--text_per_line", f"--input={tmp_path}/lines.txt",
                    f"--output={tmp_path}/lines", "--val_fraction=0", "--workers=0",
                    "--no_progress"])
  assert _decoded_documents(m, "train") == lines
  assert m.metadata["skipped_empty_documents"] == 1


def test_command_line_entry_point(tmp_path):
  (tmp_path / "doc.txt").write_text("Hello world")
  result = subprocess.run(
      [sys.executable, "-m", "optbench_jax.data.prepare", "--source=text",
       f"--input={tmp_path}/*.txt", f"--output={tmp_path}/out", "--workers=0",
       "--val_fraction=0"],
      capture_output=True, text=True, check=True, cwd=REPO_ROOT)
  assert "prepare: done: 1 docs, 3 tokens" in result.stderr   # the progress report
  assert _split_tokens(read_manifest(tmp_path / "out"), "train").tolist() == [15496, 995, EOT]
  failed = subprocess.run(
      [sys.executable, "-m", "optbench_jax.data.prepare", "--source=text",
       f"--input={tmp_path}/*.nothing", f"--output={tmp_path}/out2"],
      capture_output=True, text=True, cwd=REPO_ROOT)
  assert failed.returncode == 2 and failed.stderr.strip().splitlines()[-1].startswith("error: ")
  assert "matches no files" in failed.stderr and "Traceback" not in failed.stderr


def test_bad_inputs(tmp_path):
  _write_parquet(tmp_path / "ok.parquet", ["some text"])
  out = f"--output={tmp_path}/out"
  with pytest.raises(DataError, match=r"'\S*\*.parquet' matches no files"):
    prepare.main(["--source=parquet", f"--input={tmp_path}/none/*.parquet", out])
  with pytest.raises(DataError, match=r"ok.parquet has no column 'content'"):
    prepare.main(["--source=parquet", f"--input={tmp_path}/ok.parquet", "--text_column=content",
                  out])
  (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
  with pytest.raises(DataError, match="junk.parquet is not a readable parquet file"):
    prepare.main(["--source=parquet", f"--input={tmp_path}/*.parquet", out])
  with pytest.raises(DataError, match="needs --input"):
    prepare.main(["--source=text", out])
  (tmp_path / "empty.txt").write_text("")
  with pytest.raises(DataError, match="no \\(non-empty\\) documents"):
    prepare.main(["--source=text", f"--input={tmp_path}/empty.txt", out, "--workers=0",
                  "--no_progress"])
  prepare.main(["--source=parquet", f"--input={tmp_path}/ok.parquet", out, "--workers=0",
                "--no_progress", "--val_fraction=0"])
  with pytest.raises(DataError, match="already holds a prepared corpus"):
    prepare.main(["--source=parquet", f"--input={tmp_path}/ok.parquet", out, "--workers=0"])
  prepare.main(["--source=parquet", f"--input={tmp_path}/ok.parquet", out, "--workers=0",
                "--overwrite", "--no_progress", "--val_fraction=0"])
  with pytest.raises(DataError, match="val_fraction"):
    prepare.prepare_corpus(["x"], tmp_path / "o3", val_fraction=1.5)


def _cli(*args, cwd=REPO_ROOT):
  return subprocess.run([sys.executable, "-m", "optbench_jax.data.prepare", *args],
                        capture_output=True, text=True, cwd=cwd, timeout=120)


def test_cli_errors_are_one_line_and_small_corpora_need_a_validation_split(tmp_path):
  """Bad input to prepare: an empty val split, --output a file, --val_fraction=1.5 and
  binary input end in one `error:` / `warning:` line, not a traceback or a silent exit 0."""
  (tmp_path / "doc.txt").write_text("Hello world")
  (tmp_path / "afile").write_text("")
  (tmp_path / "blob.bin").write_bytes(bytes(range(256)) * 4)
  inp = f"--input={tmp_path}/doc.txt"
  cases = [
      ([inp, f"--output={tmp_path}/out"], "the validation split is empty"),
      ([inp, f"--output={tmp_path}/afile"], "exists and is not a directory"),
      ([inp, f"--output={tmp_path}/o", "--val_fraction=1.5"], "--val_fraction must be in [0, 1)"),
  ]
  for args, message in cases:
    result = _cli("--source=text", "--workers=0", "--no_progress", *args)
    assert result.returncode == 2, (args, result.stderr)
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert message in result.stderr and "Traceback" not in result.stderr, result.stderr
  assert not (tmp_path / "out" / "manifest.json").exists()
  assert not [p for p in os.listdir(tmp_path / "out") if p.endswith(".bin")]   # shards removed
  binary = _cli("--source=text", f"--input={tmp_path}/blob.bin", f"--output={tmp_path}/b",
                "--workers=0", "--no_progress", "--val_fraction=0")
  assert binary.returncode == 0, binary.stderr
  assert f"warning: {tmp_path}/blob.bin is not UTF-8 text" in binary.stderr


def test_hf_source_without_datasets_is_a_clear_error(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "datasets", None)    # `import datasets` raises ImportError
  with pytest.raises(DataError, match="needs the Hugging Face `datasets` package"):
    prepare.main(["--source=hf", "--dataset=HuggingFaceFW/fineweb", "--hf_config=sample-10BT",
                  f"--output={tmp_path}/out"])
  assert not (tmp_path / "out").exists()   # failed before touching the output


class _StandInDatasets(types.ModuleType):
  """TEST DOUBLE for the `datasets` package (no hub here): `load_dataset(...,
  streaming=True)` yields FineWeb-like rows, and records how it was called."""

  def __init__(self, rows):
    super().__init__("datasets")
    self.rows, self.calls = rows, []

  def load_dataset(self, path, name=None, split=None, streaming=False):
    self.calls.append(dict(path=path, name=name, split=split, streaming=streaming))
    return iter(self.rows)


def test_hf_source_streams_rows_like_the_text_source(tmp_path, monkeypatch):
  docs = _documents(120, seed=4)
  rows = [{"text": d, "id": f"<urn:{i}>", "dump": "CC-MAIN-2024-10"} for i, d in enumerate(docs)]
  fake = _StandInDatasets(rows)
  monkeypatch.setitem(sys.modules, "datasets", fake)
  hf = prepare.main(["--source=hf", "--dataset=HuggingFaceFW/fineweb", "--hf_config=sample-10BT",
                     f"--output={tmp_path}/hf", "--val_fraction=0.1", "--workers=1",
                     "--no_progress"])
  assert fake.calls == [dict(path="HuggingFaceFW/fineweb", name="sample-10BT", split="train",
                             streaming=True)]
  (tmp_path / "docs").mkdir()
  for i, doc in enumerate(docs):          # one document per file, in the same order
    (tmp_path / "docs" / f"{i:04d}.txt").write_text(doc, encoding="utf-8")
  text = prepare.main(["--source=text", f"--input={tmp_path}/docs/*.txt",
                       f"--output={tmp_path}/txt", "--val_fraction=0.1", "--workers=1",
                       "--no_progress"])
  for split in ("train", "val"):
    np.testing.assert_array_equal(_split_tokens(read_manifest(hf.directory), split),
                                  _split_tokens(read_manifest(text.directory), split))
  assert read_manifest(hf.directory).metadata["hf_config"] == "sample-10BT"


def test_hf_rows_without_the_text_column_name_it(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "datasets", _StandInDatasets([{"content": "a b c"}]))
  with pytest.raises(DataError, match="no column 'text'.*content.*--text_column"):
    prepare.main(["--source=hf", f"--output={tmp_path}/out", "--workers=1", "--no_progress"])
