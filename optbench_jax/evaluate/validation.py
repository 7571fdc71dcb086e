"""Bits per byte of a trained model on its run's validation split.

The validation tokens are read exactly as the trainer's eval pass reads them
(``data.make_eval_iterator``): windows of ``seq_len + 1`` tokens that share
their boundary token, so every token after the first is a target once. Each
window is scored as (context = its first token, continuation = the rest) by
``inference.Model.loglikelihoods``, which gives the summed log-probabilities;
``--limit=N`` scores the first N windows only.

* ``nll_nats``: the total negative log-likelihood of the ``tokens`` targets.
* ``bits_per_token = nll_nats / ln 2 / tokens`` (the eval loss in bits).
* ``bits_per_byte = nll_nats / ln 2 / bytes``, ``bytes`` the number of UTF-8
  bytes the target tokens decode to (GPT-2 BPE is byte-level, so the bytes of
  the tokens are the bytes of the text). ``<|endoftext|>`` separates documents
  and is not text: it counts 0 bytes, but its NLL is in the total (predicting
  where a document ends is part of modelling the corpus). Tokenizer-free, so
  comparable across vocabularies.
* A synthetic corpus (``data.source='synthetic'``: Markov-chain token ids, no
  text) has no bytes: ``bits_per_byte`` and ``bytes`` are None and
  ``bits_per_token`` is the measure (``note`` says so).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

from optbench_jax import data as data_lib
from optbench_jax import inference
from optbench_jax.data import tokenizer as tokenizer_lib
from optbench_jax.train import preflight

SYNTHETIC_NOTE = ("synthetic corpus: tokens are Markov-chain ids, not text, so bits per byte is "
                  "undefined; bits_per_token is reported instead")


@functools.lru_cache(maxsize=1)
def gpt2_token_bytes() -> np.ndarray:
  """int [GPT2_VOCAB_SIZE]: the UTF-8 bytes of each GPT-2 token (0 for ``<|endoftext|>``)."""
  encoding = tokenizer_lib.gpt2_tokenizer()
  sizes = [len(encoding.decode_single_token_bytes(t)) for t in range(tokenizer_lib.GPT2_EOT_ID)]
  return np.asarray(sizes + [0], np.int64)


def validation_windows(model: inference.Model, workdir: str,
                       limit: int | None = None) -> tuple[Any, list[np.ndarray]]:
  """(the corpus manifest, the first ``limit`` (all) validation windows of ``seq_len + 1``)."""
  config = model.config
  manifest = preflight.prepare_data(config, workdir)
  seq_len, rows = config.data.seq_len, 64
  max_batches = None if limit is None else max(1, -(-limit // rows))
  windows = []
  for batch in data_lib.make_eval_iterator(str(manifest.directory), seq_len=seq_len,
                                           batch_size=rows, process_index=0, process_count=1,
                                           max_batches=max_batches, prefetch_threads=0):
    for inputs, targets, mask in zip(batch["inputs"], batch["targets"], batch["mask"]):
      n = int(mask.sum())
      if n and (limit is None or len(windows) < limit):
        windows.append(np.concatenate([inputs[:1], targets[:n]]))
  return manifest, windows


def validation_bits(model: inference.Model, workdir: str, limit: int | None = None,
                    batch_size: int = inference.DEFAULT_BATCH_SIZE) -> dict[str, Any]:
  """The validation record (module docstring) of ``model`` on ``workdir``'s run's corpus."""
  manifest, windows = validation_windows(model, workdir, limit)
  answers = model.loglikelihoods([(w[:1], w[1:]) for w in windows], batch_size=batch_size)
  nll = -math.fsum(logprob for logprob, _ in answers)
  targets = np.concatenate([w[1:] for w in windows]) if windows else np.zeros(0, np.int64)
  record = {"split": "val", "corpus": str(manifest.directory), "tokenizer": manifest.tokenizer,
            "sequences": len(windows), "tokens": int(targets.size), "nll_nats": nll,
            "bits_per_token": nll / math.log(2) / max(1, targets.size),
            "bytes": None, "bits_per_byte": None}
  if model.config.data.source == "synthetic":
    record["note"] = SYNTHETIC_NOTE
  else:
    num_bytes = int(gpt2_token_bytes()[targets].sum())
    record.update(bytes=num_bytes, bits_per_byte=nll / math.log(2) / max(1, num_bytes))
  return record
