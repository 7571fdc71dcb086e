"""Data pipeline throughput: the grain train loader and the tokeniser of `prepare`.

  python benchmarks/data_loader.py [--tokens=50000000] [--text_mb=40]

1. Loader: a random-token corpus (uint16 < 50257, several shards) read with
   the 124M settings (seq_len 512, 256 sequences per batch), with 2 and 0
   prefetch threads, against the ~0.5M tokens/s that the 124M trainer consumes
   on one H100 (llm.c: ~470k tokens/s/GPU). The margin is loader / trainer.
2. prepare: GPT-2 tokenisation of ~``text_mb`` MB of text (Python standard-library
   sources, cut into ~4 KB documents, as parquet) with 2 worker processes and
   in-process, in MB of UTF-8 text per second, end to end (parquet read,
   BPE, split hashing, shard writing).
Runs side by side in one process; prints one line per measurement. Besides
wall-clock rates it prints rates per CPU-second (``resource.getrusage`` of this
process and its finished children), which stay meaningful when other jobs
share the cores.
"""

import argparse
import pathlib
import resource
import sys
import sysconfig
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from optbench_jax.data import make_train_iterator  # noqa: E402
from optbench_jax.data import manifest as manifest_lib  # noqa: E402
from optbench_jax.data import prepare  # noqa: E402

H100_124M_TOKENS_PER_S = 0.5e6


def cpu_seconds():
  """CPU time (user + system) of this process and its reaped children."""
  own = resource.getrusage(resource.RUSAGE_SELF)
  children = resource.getrusage(resource.RUSAGE_CHILDREN)
  return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def loader_throughput(directory, threads, batches=150):
  it = make_train_iterator(directory, seq_len=512, global_batch_size=256, seed=0,
                           process_index=0, process_count=1, prefetch_threads=threads)
  for _ in range(10):   # warm up: thread start, page cache
    next(it)
  start, cpu_start = time.perf_counter(), cpu_seconds()
  for _ in range(batches):
    batch = next(it)
  elapsed, cpu = time.perf_counter() - start, cpu_seconds() - cpu_start
  it.close()
  tokens = batches * batch["inputs"].size
  return tokens / elapsed, tokens / cpu


def write_random_corpus(directory, num_tokens):
  rng = np.random.default_rng(0)
  writer = manifest_lib.ShardWriter(directory, "train", shard_tokens=num_tokens // 4 + 1)
  for start in range(0, num_tokens, 1 << 22):
    writer.write(rng.integers(0, 50257, size=min(1 << 22, num_tokens - start), dtype=np.uint16))
  val = manifest_lib.ShardWriter(directory, "val", shard_tokens=1 << 20)
  val.write(rng.integers(0, 50257, size=100_000, dtype=np.uint16))
  manifest_lib.write_manifest(manifest_lib.Manifest(
      directory=pathlib.Path(directory), tokenizer="random", vocab_size=50257, eot_id=None,
      shards=tuple(writer.close() + val.close())))


def text_documents(megabytes):
  stdlib = pathlib.Path(sysconfig.get_paths()["stdlib"])
  docs, total = [], 0
  for path in sorted(stdlib.rglob("*.py")):
    text = path.read_text(encoding="utf-8", errors="replace")
    for start in range(0, len(text), 4096):
      doc = text[start:start + 4096]
      docs.append(doc)
      total += len(doc.encode("utf-8"))
      if total >= megabytes * 1e6:
        return docs, total
  return docs, total


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--tokens", type=int, default=50_000_000)
  parser.add_argument("--text_mb", type=float, default=40)
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as tmp:
    tmp = pathlib.Path(tmp)
    write_random_corpus(tmp / "random", args.tokens)
    for threads in (2, 0):
      rate, per_cpu = loader_throughput(tmp / "random", threads)
      print(f"loader seq_len=512 batch=256 prefetch_threads={threads}: {rate / 1e6:.1f}M tokens/s "
            f"wall ({per_cpu / 1e6:.1f}M per CPU-second) = {rate / H100_124M_TOKENS_PER_S:.0f}x "
            f"(per CPU-second: {per_cpu / H100_124M_TOKENS_PER_S:.0f}x) the 124M trainer on one "
            "H100 (0.5M tokens/s)")

    import pyarrow as pa
    import pyarrow.parquet as pq
    docs, num_bytes = text_documents(args.text_mb)
    (tmp / "text").mkdir()
    pq.write_table(pa.table({"text": docs}), tmp / "text" / "docs.parquet")
    del docs
    for workers in (2, 0):
      start, cpu_start = time.perf_counter(), cpu_seconds()
      m = prepare.main(["--source=parquet", f"--input={tmp}/text/*.parquet",
                        f"--output={tmp}/out{workers}", f"--workers={workers}",
                        "--val_fraction=1e-3", "--no_progress"])
      elapsed, cpu = time.perf_counter() - start, cpu_seconds() - cpu_start
      tokens = m.num_tokens("train") + m.num_tokens("val")
      print(f"prepare workers={workers}: {num_bytes / 1e6:.1f} MB text -> {tokens / 1e6:.1f}M tokens "
            f"in {elapsed:.1f} s wall, {cpu:.1f} CPU-s: {num_bytes / 1e6 / elapsed:.2f} MB/s wall, "
            f"{num_bytes / 1e6 / cpu:.2f} MB per CPU-second, {tokens / 1e6 / elapsed:.2f}M tokens/s")


if __name__ == "__main__":
  main()
