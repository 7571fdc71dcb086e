"""Grain pipelines over token shards: a shuffled, resumable train iterator and a full-pass eval iterator.

Windows. A split's shards concatenate to one token stream ``t[0..N)``. Window
``k`` is the ``seq_len + 1`` tokens ``t[k S : k S + S + 1)`` (``S = seq_len``),
giving ``inputs = t[kS : kS+S]`` and ``targets = t[kS+1 : kS+S+1]``.
Consecutive windows share only their boundary token, so the targets of
different windows never overlap and every token is a target exactly once per
pass (the papers' non-overlapping sequences, without losing one token in
``S + 1`` to window starts). Windows may span shard boundaries.

Train (``make_train_iterator``): the ``(N - 1) // S`` full windows are
shuffled with a seeded permutation that changes every epoch and repeated
forever (``MapDataset.shuffle(seed).repeat()``); the last ``< S`` tokens of the
split, which do not fill a window, are not used. Global batch ``t`` is
windows ``[t B, (t + 1) B)`` of that stream (``B = global_batch_size``) and
host ``h`` of ``P`` gets rows ``[h B/P, (h + 1) B/P)`` of it, so the union over
hosts is the global batch and the batches do not depend on the number of hosts.
Threads prefetch batches (grain ``ReadOptions``). The iterator's state is the
number of batches consumed (plus a fingerprint of the settings checked on
restore), so it is checkpointed with ``grain.checkpoint.CheckpointSave`` /
``CheckpointRestore`` inside an orbax ``CheckpointManager``, and a resumed run
sees exactly the batches of the uninterrupted run.

Eval (``make_eval_iterator``): all ``ceil((N - 1) / S)`` windows in order,
once; the last window may be short and the last batch partial. Both are padded
with token 0 and ``mask = 0``, so ``sum(mask) == N - 1`` (every validation
token after the first is scored exactly once) and shapes stay static for jit.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import os
from typing import Any, Iterator

import grain
import numpy as np

from optbench_jax.data import manifest as manifest_lib
from optbench_jax.data.manifest import DataError

_PREFETCH_BATCHES_PER_THREAD = 2


class SplitStream:
  """Random access to one split's concatenated token stream (memory-mapped shards).

  Every read checks that token ids are ``< vocab_size`` and names the shard
  when one is not. Picklable (memmaps are reopened), for grain worker processes.
  """

  def __init__(self, manifest: manifest_lib.Manifest, split: str):
    self.vocab_size = manifest.vocab_size
    shards = [s for s in manifest.split_shards(split) if s.num_tokens]
    self.paths = [str(manifest.shard_path(s)) for s in shards]
    self.starts = np.cumsum([0] + [s.num_tokens for s in shards]).tolist()
    self.num_tokens = self.starts[-1]
    self._open()

  def _open(self):
    self._arrays = [np.memmap(p, dtype=manifest_lib.TOKEN_DTYPE, mode="r") for p in self.paths]

  def __getstate__(self):
    state = dict(self.__dict__)
    del state["_arrays"]
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._open()

  def read(self, start: int, stop: int) -> np.ndarray:
    """Tokens ``[start, stop)`` of the stream as a new uint16 array."""
    pieces = []
    shard = bisect.bisect_right(self.starts, start) - 1
    while start < stop:
      begin = start - self.starts[shard]
      end = min(stop, self.starts[shard + 1]) - self.starts[shard]
      piece = np.array(self._arrays[shard][begin:end])
      if piece.max() >= self.vocab_size:
        raise DataError(f"shard {self.paths[shard]} holds token id {int(piece.max())} "
                        f">= vocab_size {self.vocab_size}")
      pieces.append(piece)
      start = self.starts[shard + 1]
      shard += 1
    return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)


class TrainWindows:
  """Random-access source of the full ``seq_len + 1`` windows of a split (grain data source)."""

  def __init__(self, stream: SplitStream, seq_len: int):
    self.stream = stream
    self.seq_len = seq_len

  def __len__(self) -> int:
    return (self.stream.num_tokens - 1) // self.seq_len

  def __getitem__(self, index: int) -> np.ndarray:
    start = index * self.seq_len
    return self.stream.read(start, start + self.seq_len + 1)


def _split_batch(windows: np.ndarray) -> dict[str, np.ndarray]:
  windows = windows.astype(np.int32)
  return {"inputs": windows[:, :-1], "targets": windows[:, 1:]}


def _process_slot(process_index, process_count) -> tuple[int, int]:
  if process_index is None or process_count is None:
    import jax   # only for the defaults: the process topology of this JAX runtime
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f"need 0 <= process_index < process_count, got process_index="
                     f"{process_index}, process_count={process_count}")
  return int(process_index), int(process_count)


def _host_batch(batch_size: int, process_count: int, setting: str) -> int:
  if batch_size < 1:
    raise ValueError(f"{setting} must be >= 1, got {batch_size}")
  if batch_size % process_count:
    raise ValueError(f"{setting}={batch_size} does not divide across process_count="
                     f"{process_count} hosts")
  return batch_size // process_count


def _open_split(path, split: str, seq_len: int) -> tuple[manifest_lib.Manifest, SplitStream]:
  if seq_len < 1:
    raise ValueError(f"seq_len must be >= 1, got {seq_len}")
  manifest = manifest_lib.read_manifest(path, verify="size")
  return manifest, SplitStream(manifest, split)


def _corpus_fingerprint(manifest: manifest_lib.Manifest, split: str) -> str:
  digest = hashlib.sha256()
  for shard in manifest.split_shards(split):
    digest.update(f"{shard.file}:{shard.num_tokens}:{shard.sha256};".encode())
  return digest.hexdigest()[:16]


class TrainIterator(grain.DatasetIterator):
  """The train pipeline's iterator, with a settings fingerprint in its checkpoint state.

  ``get_state() == {"pipeline": <grain state>, "settings": {...}}``; ``set_state``
  refuses a state saved with another corpus, seq_len, global batch or seed
  (resuming would silently change the data), naming the setting. The number
  of hosts may change between save and restore: batches are defined globally.
  """

  def __init__(self, parent: grain.DatasetIterator, settings: dict[str, Any]):
    super().__init__(parent)
    self._settings = settings

  def __next__(self) -> dict[str, np.ndarray]:
    return next(self._parent)

  def get_state(self) -> dict[str, Any]:
    return {"pipeline": self._parent.get_state(), "settings": dict(self._settings)}

  def set_state(self, state: dict[str, Any]) -> None:
    saved = state.get("settings", {})
    changed = [f"{k}: saved {saved.get(k)!r}, now {v!r}" for k, v in self._settings.items()
               if saved.get(k) != v]
    if changed:
      raise DataError("cannot resume the data iterator, its settings changed: " + "; ".join(changed))
    self._parent.set_state(state["pipeline"])


def make_train_iterator(path: str | os.PathLike, *, seq_len: int, global_batch_size: int,
                        seed: int, process_index: int | None = None,
                        process_count: int | None = None,
                        prefetch_threads: int = 2) -> TrainIterator:
  """An endless, shuffled, checkpointable iterator of this host's training batches.

  Args:
    path: a token-shard directory (``optbench_jax.data.manifest``).
    seq_len: tokens per sequence ``S``; windows hold ``S + 1`` tokens.
    global_batch_size: sequences per step across all hosts ``B``.
    seed: shuffle seed in [0, 2**32); epoch ``e`` uses a permutation seeded by ``seed + e``.
    process_index, process_count: this host's slot; default ``jax.process_index()``
      / ``jax.process_count()``.
    prefetch_threads: grain reader threads (0 = read synchronously in the caller).

  Yields:
    ``{"inputs": int32[B / P, S], "targets": int32[B / P, S]}`` with
    ``targets[:, i] == inputs[:, i + 1]`` inside a window (module docstring).

  Raises:
    DataError: bad directory / manifest / shards, or a train split too short
      for one window of ``seq_len + 1`` tokens.
    ValueError: ``global_batch_size`` not divisible by ``process_count``, or a
      setting out of range.
  """
  process_index, process_count = _process_slot(process_index, process_count)
  host_batch = _host_batch(global_batch_size, process_count, "global_batch_size")
  if not 0 <= seed < 2**32:
    raise ValueError(f"seed must be in [0, 2**32), got {seed}")
  if prefetch_threads < 0:
    raise ValueError(f"prefetch_threads must be >= 0, got {prefetch_threads}")
  manifest, stream = _open_split(path, "train", seq_len)
  windows = TrainWindows(stream, seq_len)
  if len(windows) < 1:
    raise DataError(f"seq_len={seq_len} is larger than the train split of {manifest.directory} "
                    f"({stream.num_tokens} tokens; one window needs seq_len + 1)")
  dataset = (grain.MapDataset.source(windows)
             .shuffle(seed=seed)
             .repeat()                                   # new permutation every epoch
             .batch(host_batch)                          # chunk c = host (c % P) of step c // P
             .slice(slice(process_index, None, process_count))
             .map(_split_batch))
  read_options = grain.ReadOptions(
      num_threads=prefetch_threads,
      prefetch_buffer_size=_PREFETCH_BATCHES_PER_THREAD * prefetch_threads)
  settings = dict(corpus=_corpus_fingerprint(manifest, "train"), seq_len=seq_len,
                  global_batch_size=global_batch_size, seed=seed)
  return TrainIterator(iter(dataset.to_iter_dataset(read_options)), settings)


def num_eval_batches(path: str | os.PathLike, *, seq_len: int, batch_size: int,
                     max_batches: int | None = None) -> int:
  """How many batches ``make_eval_iterator`` yields with these settings."""
  manifest = manifest_lib.read_manifest(path, verify="none")
  return _num_eval_batches(manifest.num_tokens("val"), seq_len, batch_size, max_batches)


def _num_eval_batches(num_tokens: int, seq_len: int, batch_size: int, max_batches) -> int:
  num_windows = math.ceil((num_tokens - 1) / seq_len)
  total = math.ceil(num_windows / batch_size)
  return total if max_batches is None else min(total, max_batches)


class _EvalBatches:
  """Builds host batch ``i`` of the ordered eval pass, padding with mask 0."""

  def __init__(self, stream: SplitStream, seq_len: int, batch_size: int, host_batch: int,
               process_index: int):
    self.stream, self.seq_len = stream, seq_len
    self.batch_size, self.host_batch, self.process_index = batch_size, host_batch, process_index

  def __call__(self, batch_index: int) -> dict[str, np.ndarray]:
    s, n = self.seq_len, self.stream.num_tokens
    inputs = np.zeros((self.host_batch, s), np.int32)
    targets = np.zeros((self.host_batch, s), np.int32)
    mask = np.zeros((self.host_batch, s), np.float32)
    first_window = batch_index * self.batch_size + self.process_index * self.host_batch
    for row in range(self.host_batch):
      start = (first_window + row) * s
      if start >= n - 1:
        break   # padding rows past the end of the split
      tokens = self.stream.read(start, min(start + s + 1, n)).astype(np.int32)
      length = tokens.size - 1
      inputs[row, :length] = tokens[:-1]
      targets[row, :length] = tokens[1:]
      mask[row, :length] = 1.0
    return {"inputs": inputs, "targets": targets, "mask": mask}


def make_eval_iterator(path: str | os.PathLike, *, seq_len: int, batch_size: int,
                       process_index: int | None = None, process_count: int | None = None,
                       max_batches: int | None = None,
                       prefetch_threads: int = 1) -> Iterator[dict[str, np.ndarray]]:
  """One ordered pass over the validation split ("full eval"), deterministic.

  Args:
    path: a token-shard directory.
    seq_len: tokens per sequence.
    batch_size: sequences per eval step across all hosts; each host gets
      ``batch_size / process_count`` rows of every batch.
    process_index, process_count: as in ``make_train_iterator``.
    max_batches: stop after this many batches (a partial eval); ``None`` = all
      ``num_eval_batches(...)`` batches.
    prefetch_threads: grain reader threads.

  Yields:
    ``{"inputs": int32[b, S], "targets": int32[b, S], "mask": float32[b, S]}``;
    ``mask`` is 1 for real target tokens and 0 for padding, so summing
    ``loss * mask`` over a full pass (all hosts) counts each of the split's
    ``N - 1`` targets exactly once. Every host yields the same number of batches.

  Raises:
    DataError: bad directory / shards, or a validation split with fewer than 2 tokens.
    ValueError: ``batch_size`` not divisible by ``process_count``; bad settings.
  """
  process_index, process_count = _process_slot(process_index, process_count)
  host_batch = _host_batch(batch_size, process_count, "eval batch_size")
  if max_batches is not None and max_batches < 1:
    raise ValueError(f"max_batches must be >= 1 or None, got {max_batches}")
  manifest, stream = _open_split(path, "val", seq_len)
  if stream.num_tokens < 2:
    raise DataError(f"the validation split of {manifest.directory} has {stream.num_tokens} "
                    "tokens; evaluation needs at least 2 (raise --val_fraction when preparing)")
  count = _num_eval_batches(stream.num_tokens, seq_len, batch_size, max_batches)
  build = _EvalBatches(stream, seq_len, batch_size, host_batch, process_index)
  read_options = grain.ReadOptions(
      num_threads=prefetch_threads,
      prefetch_buffer_size=_PREFETCH_BATCHES_PER_THREAD * prefetch_threads)
  return iter(grain.MapDataset.range(count).map(build).to_iter_dataset(read_options))
