"""optbench_jax.evaluate.validation: bits per byte on the validation split, checked by hand."""

import math

import numpy as np
import pytest
import scipy.special

from optbench_jax import data as data_lib
from optbench_jax import inference
from optbench_jax.data import prepare
from optbench_jax.data import tokenizer as tokenizer_lib
from optbench_jax.evaluate import validation
from tests import tiny_runs
from tests.evaluate import text_runs


def validation_tokens(model: inference.Model) -> np.ndarray:
  manifest = data_lib.read_manifest(model.config.data.path)
  return np.concatenate([np.fromfile(manifest.shard_path(s), dtype="<u2")
                         for s in manifest.split_shards("val")]).astype(np.int64)


def nll_by_hand(model: inference.Model, tokens: np.ndarray, windows: int | None = None) -> float:
  """The summed NLL (nats) of tokens[1:], each scored after the window of seq_len it ends."""
  s = model.config.data.seq_len
  total, starts = 0.0, list(range(0, len(tokens) - 1, s))[:windows]
  for start in starts:
    window = tokens[start:start + s + 1]
    logits = model.logits(window[None, :-1]).astype(np.float64)[0]
    logprobs = scipy.special.log_softmax(logits, axis=-1)
    total -= logprobs[np.arange(len(window) - 1), window[1:]].sum()
  return total


def test_bits_per_byte_by_hand(text_workdir):
  model = inference.load(text_workdir)
  tokens = validation_tokens(model)
  record = validation.validation_bits(model, text_workdir, batch_size=4)
  nll = nll_by_hand(model, tokens)
  encoding = tokenizer_lib.gpt2_tokenizer()
  targets = tokens[1:]
  num_bytes = len(encoding.decode_bytes([t for t in targets if t != tokenizer_lib.GPT2_EOT_ID]))
  # The same count from the documents themselves: the validation documents' UTF-8 bytes,
  # less the first token's (it is never a target).
  docs = [d for d in text_runs.documents(400) if prepare.is_validation_document(d, 0.05, 0)]
  first = len(encoding.decode_single_token_bytes(int(tokens[0])))
  assert num_bytes == sum(len(d.encode()) for d in docs) - first
  assert record["tokens"] == len(tokens) - 1 and record["bytes"] == num_bytes
  assert record["nll_nats"] == pytest.approx(nll, rel=1e-6)
  assert record["bits_per_byte"] == pytest.approx(nll / math.log(2) / num_bytes, rel=1e-6)
  assert record["bits_per_token"] == pytest.approx(nll / math.log(2) / (len(tokens) - 1),
                                                   rel=1e-6)
  assert "note" not in record


def test_limit_scores_the_first_sequences(text_workdir):
  model = inference.load(text_workdir)
  tokens = validation_tokens(model)
  record = validation.validation_bits(model, text_workdir, limit=2)
  s = model.config.data.seq_len
  assert record["sequences"] == 2 and record["tokens"] == 2 * s
  assert record["nll_nats"] == pytest.approx(nll_by_hand(model, tokens, windows=2), rel=1e-6)


def test_a_synthetic_corpus_reports_bits_per_token(tmp_path_factory):
  workdir = tiny_runs.trained(tmp_path_factory, "llama")
  model = inference.load(workdir)
  record = validation.validation_bits(model, workdir, limit=3)
  assert record["bits_per_byte"] is None and record["bytes"] is None
  assert "bits per byte is undefined" in record["note"]
  assert record["bits_per_token"] == pytest.approx(
      record["nll_nats"] / math.log(2) / record["tokens"])
  assert record["tokens"] == 3 * model.config.data.seq_len
