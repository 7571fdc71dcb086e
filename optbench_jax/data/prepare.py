"""Tokenise a text corpus (FineWeb parquet, the Hugging Face hub, or text files) into token shards.

  python -m optbench_jax.data.prepare --source=parquet \\
      --input='fineweb/sample/10BT/*.parquet' --output=/data/fineweb10B --workers=16
  python -m optbench_jax.data.prepare --source=hf --dataset=HuggingFaceFW/fineweb \\
      --hf_config=sample-10BT --output=/data/fineweb10B      # needs `pip install datasets`
  python -m optbench_jax.data.prepare --source=text --input='corpus/**/*.txt' \\
      [--text_per_line] --output=/data/mytext

Pipeline (streaming, memory bounded regardless of corpus size): documents are
read lazily, grouped into tasks of ``--docs_per_task`` documents and tokenised
by a pool of ``--workers`` processes (GPT-2 BPE, ``<|endoftext|>`` appended
after every document; document text is encoded as ordinary text, so a literal
"<|endoftext|>" inside a document is not turned into the special token). At
most ``2 * workers`` tasks are in flight and results are consumed in
submission order, so the output is identical for any worker count. Tokens go
straight into ``ShardWriter``s (``--shard_tokens`` per file) for the train and
validation splits, and the manifest (``optbench_jax.data.manifest``) is written
last.

Validation split: a document goes to ``val`` when
``blake2b(text, key=split_seed) / 2**64 < val_fraction`` (default 1e-4, as in
Semenov et al.). The decision depends only on the document's text and the
seed, so it is stable across runs, worker counts, input order and corpus
subsets, and duplicated documents never straddle the split.
"""

from __future__ import annotations

import argparse
import collections
import glob
import hashlib
import itertools
import multiprocessing
import os
import pathlib
import re
import sys
import time
from typing import Iterable, Iterator, Sequence

import numpy as np

from optbench_jax.data import manifest as manifest_lib
from optbench_jax.data import tokenizer as tokenizer_lib
from optbench_jax.data.manifest import DataError

DEFAULT_SHARD_TOKENS = 100_000_000   # 200 MB per shard, as nanoGPT/llm.c FineWeb scripts
_SHARD_FILE = re.compile(r"^(train|val)_\d{5}\.bin$")


# ----------------------------------------------------------------------------- document sources

def _expand_glob(pattern: str) -> list[str]:
  files = sorted(p for p in glob.glob(os.path.expanduser(pattern), recursive=True)
                 if os.path.isfile(p))
  if not files:
    raise DataError(f"--input={pattern!r} matches no files")
  return files


def iter_parquet_documents(files: Sequence[str], text_column: str = "text") -> Iterator[str | None]:
  """Yields the ``text_column`` of every row of the parquet files, streaming by record batch.

  Every file's schema is checked here, before the first document is read.
  """
  try:
    import pyarrow.parquet as pq
  except ImportError as e:
    raise DataError("--source=parquet needs pyarrow: pip install 'optbench_jax[parquet]'") from e
  for path in files:
    try:
      columns = pq.read_schema(path).names
    except Exception as e:   # pyarrow raises several types for non-parquet files
      raise DataError(f"{path} is not a readable parquet file ({e})") from e
    if text_column not in columns:
      raise DataError(f"{path} has no column {text_column!r} (columns: {columns}); "
                      "set --text_column")

  def rows():
    for path in files:
      for batch in pq.ParquetFile(path).iter_batches(batch_size=1024, columns=[text_column]):
        yield from batch.column(0).to_pylist()
  return rows()


def iter_text_documents(files: Sequence[str], per_line: bool = False) -> Iterator[str]:
  """Yields each file as one document, or each line (without its newline) with ``per_line``.

  Files are decoded as UTF-8; undecodable bytes become U+FFFD rather than
  aborting a long run, and each such file is named in one warning on stderr
  (binary input, or another encoding, would otherwise be tokenised silently).
  """
  for path in files:
    replaced = 0
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
      if per_line:
        for line in f:
          replaced += line.count("\ufffd")
          yield line.rstrip("\r\n")
      else:
        text = f.read()
        replaced += text.count("\ufffd")
        yield text
    if replaced:
      print(f"warning: {path} is not UTF-8 text ({replaced} undecodable bytes or U+FFFD "
            "characters were tokenised as U+FFFD)", file=sys.stderr, flush=True)


def iter_hf_documents(dataset: str, config: str | None, split: str = "train",
                      text_column: str = "text") -> Iterator[str | None]:
  """Streams a Hugging Face hub dataset (e.g. HuggingFaceFW/fineweb, sample-10BT).

  Needs the optional ``datasets`` package and the hub (or its local cache).
  """
  try:
    import datasets   # optional extra: pip install 'optbench_jax[hf]'
  except ImportError as e:
    raise DataError("--source=hf needs the Hugging Face `datasets` package (pip install "
                    "'optbench_jax[hf]'); alternatively download the parquet files and use "
                    "--source=parquet") from e
  stream = datasets.load_dataset(dataset, name=config, split=split, streaming=True)

  def rows():
    for row in stream:
      if text_column not in row:
        raise DataError(f"{dataset} ({config}) rows have no column {text_column!r} "
                        f"(columns: {sorted(row)}); set --text_column")
      yield row[text_column]
  return rows()


# ----------------------------------------------------------------------------- tokenisation

def is_validation_document(text: str, val_fraction: float, split_seed: int) -> bool:
  """The stable, seeded split rule (module docstring)."""
  key = split_seed.to_bytes(8, "little", signed=False)
  digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), key=key, digest_size=8).digest()
  return int.from_bytes(digest, "little") < val_fraction * 2.0**64


def tokenize_documents(texts: Sequence[str], val_fraction: float,
                       split_seed: int) -> tuple[np.ndarray, np.ndarray, int, int, int]:
  """Tokenises a task of documents (runs in a worker process).

  Returns ``(train_tokens, val_tokens, num_train_docs, num_val_docs, num_bytes)``;
  each token array is the documents of that split in input order, each
  followed by ``<|endoftext|>``.
  """
  encoding = tokenizer_lib.gpt2_tokenizer()
  eot = tokenizer_lib.GPT2_EOT_ID
  splits = ([], [])
  docs = [0, 0]
  num_bytes = 0
  for text in texts:
    which = int(is_validation_document(text, val_fraction, split_seed))
    splits[which].extend(encoding.encode_ordinary(text))
    splits[which].append(eot)
    docs[which] += 1
    num_bytes += len(text.encode("utf-8", "surrogatepass"))
  train, val = (np.asarray(s, dtype=manifest_lib.TOKEN_DTYPE) for s in splits)
  return train, val, docs[0], docs[1], num_bytes


class _Progress:
  """tqdm when installed, else a line on stderr every ``interval`` seconds."""

  def __init__(self, enabled: bool, interval: float = 10.0):
    self.enabled, self.interval = enabled, interval
    self.start = self.last = time.time()
    self.docs = self.tokens = self.bytes = 0
    self._bar = None
    if enabled:
      try:
        import tqdm
        self._bar = tqdm.tqdm(unit="B", unit_scale=True, desc="prepare", file=sys.stderr)
      except ImportError:
        pass

  def update(self, docs: int, tokens: int, num_bytes: int):
    self.docs += docs
    self.tokens += tokens
    self.bytes += num_bytes
    if not self.enabled:
      return
    if self._bar is not None:
      self._bar.update(num_bytes)
      self._bar.set_postfix(docs=self.docs, tokens=self.tokens, refresh=False)
    elif time.time() - self.last >= self.interval:
      self.last = time.time()
      print(f"prepare: {self.line()}", file=sys.stderr, flush=True)

  def line(self) -> str:
    elapsed = max(time.time() - self.start, 1e-9)
    return (f"{self.docs:,} docs, {self.tokens:,} tokens, {self.bytes / 1e6:,.1f} MB text "
            f"in {elapsed:,.1f} s ({self.bytes / 1e6 / elapsed:,.2f} MB/s)")

  def close(self):
    if self._bar is not None:
      self._bar.close()
    if self.enabled:
      print(f"prepare: done: {self.line()}", file=sys.stderr, flush=True)


def _tasks(documents: Iterable[str | None], docs_per_task: int, max_documents: int | None,
           skipped: list[int]) -> Iterator[list[str]]:
  if max_documents is not None:
    documents = itertools.islice(documents, max_documents)
  task = []
  for text in documents:
    if not text:   # None (null parquet cell) or empty: nothing to learn, and no lone EOT
      skipped[0] += 1
      continue
    task.append(text)
    if len(task) == docs_per_task:
      yield task
      task = []
  if task:
    yield task


def prepare_corpus(documents: Iterable[str | None], output: str | os.PathLike, *,
                   val_fraction: float = 1e-4, split_seed: int = 0, workers: int = 1,
                   shard_tokens: int = DEFAULT_SHARD_TOKENS, docs_per_task: int = 256,
                   max_documents: int | None = None, overwrite: bool = False,
                   metadata: dict | None = None, progress: bool = True) -> manifest_lib.Manifest:
  """Tokenises ``documents`` into a token-shard directory at ``output``; returns its manifest.

  ``workers=0`` tokenises in this process; ``workers>=1`` uses a process pool.
  Raises ``DataError`` when ``output`` already holds a prepared corpus (unless
  ``overwrite``) or when there are no documents.
  """
  if not 0.0 <= val_fraction < 1.0:
    raise DataError(f"--val_fraction must be in [0, 1), got {val_fraction}")
  for name, value, low in (("workers", workers, 0), ("shard_tokens", shard_tokens, 1),
                           ("docs_per_task", docs_per_task, 1)):
    if value < low:
      raise DataError(f"--{name} must be >= {low}, got {value}")
  output = pathlib.Path(output)
  if output.exists() and not output.is_dir():
    raise DataError(f"--output {output} exists and is not a directory")
  if (output / manifest_lib.MANIFEST_NAME).exists() and not overwrite:
    raise DataError(f"{output} already holds a prepared corpus ({manifest_lib.MANIFEST_NAME}); "
                    "pass --overwrite or choose another --output")
  output.mkdir(parents=True, exist_ok=True)
  (output / manifest_lib.MANIFEST_NAME).unlink(missing_ok=True)
  for stale in output.iterdir():   # shards of an earlier, interrupted or replaced run
    if _SHARD_FILE.match(stale.name):
      stale.unlink()

  writers = {split: manifest_lib.ShardWriter(output, split, shard_tokens)
             for split in manifest_lib.SPLITS}
  counts = collections.Counter()
  skipped = [0]
  bar = _Progress(progress)

  def consume(result):
    train, val, train_docs, val_docs, num_bytes = result
    writers["train"].write(train)
    writers["val"].write(val)
    counts.update(train_documents=train_docs, val_documents=val_docs, bytes=num_bytes)
    bar.update(train_docs + val_docs, train.size + val.size, num_bytes)

  tasks = _tasks(documents, docs_per_task, max_documents, skipped)
  try:
    if workers == 0:
      for task in tasks:
        consume(tokenize_documents(task, val_fraction, split_seed))
    else:
      # apply_async with a bounded, ordered window instead of Pool.imap: imap's feeder
      # thread would read the whole corpus ahead into memory when reading outpaces BPE.
      # spawn, not fork: the parent may hold threads (pyarrow, JAX) that fork would clone.
      with multiprocessing.get_context("spawn").Pool(workers) as pool:
        pending = collections.deque()
        for task in tasks:
          pending.append(pool.apply_async(tokenize_documents, (task, val_fraction, split_seed)))
          if len(pending) >= 2 * workers:
            consume(pending.popleft().get())
        while pending:
          consume(pending.popleft().get())
  finally:
    bar.close()
  shards = writers["train"].close() + writers["val"].close()
  if counts["train_documents"] + counts["val_documents"] == 0:
    raise DataError(f"no (non-empty) documents to prepare into {output}")
  if val_fraction > 0 and counts["val_documents"] == 0:
    for shard in shards:   # no manifest, so the trainer cannot pick up a corpus it must refuse
      (output / shard.file).unlink(missing_ok=True)
    raise DataError(
        f"the validation split is empty: none of the {counts['train_documents']:,} documents "
        f"fell into it at --val_fraction={val_fraction:g} (the trainer evaluates on it); use a "
        "larger --val_fraction or more documents, or --val_fraction=0 for a train-only corpus")
  info = dict(metadata or {})
  info.update(val_fraction=val_fraction, split_seed=split_seed,
              train_documents=counts["train_documents"], val_documents=counts["val_documents"],
              skipped_empty_documents=skipped[0], text_bytes=counts["bytes"])
  result = manifest_lib.Manifest(
      directory=output, tokenizer=tokenizer_lib.GPT2_NAME,
      vocab_size=tokenizer_lib.GPT2_VOCAB_SIZE, eot_id=tokenizer_lib.GPT2_EOT_ID,
      shards=tuple(shards), metadata=info)
  manifest_lib.write_manifest(result)
  return result


# ----------------------------------------------------------------------------- command line

def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m optbench_jax.data.prepare",
                              description=__doc__.split("\n\n")[0])
  p.add_argument("--source", required=True, choices=("parquet", "text", "hf"))
  p.add_argument("--input", help="glob of input files (parquet, text); quote it")
  p.add_argument("--output", required=True, help="output token-shard directory")
  p.add_argument("--text_column", default="text", help="parquet / hf column holding the text")
  p.add_argument("--text_per_line", action="store_true",
                 help="text: every line is a document (default: every file is one)")
  p.add_argument("--dataset", default="HuggingFaceFW/fineweb", help="hf: dataset name")
  p.add_argument("--hf_config", default="sample-10BT", help="hf: config, e.g. sample-100BT")
  p.add_argument("--hf_split", default="train", help="hf: split to stream")
  p.add_argument("--val_fraction", type=float, default=1e-4)
  p.add_argument("--split_seed", type=int, default=0)
  p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                 help="tokeniser processes (0 = in this process)")
  p.add_argument("--shard_tokens", type=int, default=DEFAULT_SHARD_TOKENS)
  p.add_argument("--docs_per_task", type=int, default=256)
  p.add_argument("--max_documents", type=int, default=None, help="stop after this many")
  p.add_argument("--overwrite", action="store_true", help="replace an existing prepared corpus")
  p.add_argument("--no_progress", action="store_true")
  p.add_argument("--verbose", action="store_true", help="print tracebacks with errors")
  return p


def main(argv: Sequence[str] | None = None) -> manifest_lib.Manifest:
  args = _parser().parse_args(argv)
  metadata = dict(source=args.source)
  if args.source in ("parquet", "text"):
    if not args.input:
      raise DataError(f"--source={args.source} needs --input='GLOB'")
    files = _expand_glob(args.input)
    metadata.update(input=args.input, num_files=len(files))
    if args.source == "parquet":
      metadata.update(text_column=args.text_column)
      documents = iter_parquet_documents(files, args.text_column)
    else:
      metadata.update(text_per_line=args.text_per_line)
      documents = iter_text_documents(files, args.text_per_line)
  else:
    metadata.update(dataset=args.dataset, hf_config=args.hf_config, hf_split=args.hf_split,
                    text_column=args.text_column)
    documents = iter_hf_documents(args.dataset, args.hf_config, args.hf_split, args.text_column)
  if args.max_documents is not None:
    metadata.update(max_documents=args.max_documents)
  result = prepare_corpus(
      documents, args.output, val_fraction=args.val_fraction, split_seed=args.split_seed,
      workers=args.workers, shard_tokens=args.shard_tokens, docs_per_task=args.docs_per_task,
      max_documents=args.max_documents, overwrite=args.overwrite, metadata=metadata,
      progress=not args.no_progress)
  print(f"wrote {result.directory}: {result.num_tokens('train'):,} train and "
        f"{result.num_tokens('val'):,} val tokens in {len(result.shards)} shards")
  return result


if __name__ == "__main__":
  from optbench_jax import cli_errors  # pylint: disable=import-outside-toplevel
  sys.exit(cli_errors.run(main))
