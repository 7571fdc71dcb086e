"""The offline GPT-2 tokenizer: known ids, the special token, and the hash check."""

import shutil

import pytest

from optbench_jax.data import gpt2_tokenizer
from optbench_jax.data import tokenizer as tokenizer_lib


def test_known_gpt2_ids():
  enc = gpt2_tokenizer()
  assert enc.encode_ordinary("Hello world") == [15496, 995]
  # Ids from the published GPT-2 vocabulary (encoder.json).
  assert enc.encode_ordinary("The quick brown fox") == [464, 2068, 7586, 21831]
  assert enc.encode_ordinary(" the") == [262]
  assert enc.encode_ordinary("it's") == [270, 338]   # the split regex separates "'s"
  assert enc.n_vocab == 50257
  assert enc.eot_token == 50256


def test_special_token_only_when_allowed():
  enc = gpt2_tokenizer()
  assert enc.encode("<|endoftext|>", allowed_special="all") == [50256]
  ordinary = enc.encode_ordinary("<|endoftext|>")
  assert 50256 not in ordinary and enc.decode(ordinary) == "<|endoftext|>"


@pytest.mark.parametrize("text", ["héllo wörld 🙂\n\n  tabs\tand   spaces", "日本語のテキスト", ""])
def test_round_trip(text):
  enc = gpt2_tokenizer()
  assert enc.decode(enc.encode_ordinary(text)) == text


def test_corrupted_rank_file_is_rejected(tmp_path, monkeypatch):
  bad = tmp_path / "gpt2.tiktoken"
  shutil.copy(tokenizer_lib.GPT2_RANKS_PATH, bad)
  with open(bad, "ab") as f:
    f.write(b"IQ== 99999\n")
  monkeypatch.setattr(tokenizer_lib, "GPT2_RANKS_PATH", bad)
  tokenizer_lib.gpt2_tokenizer.cache_clear()
  try:
    with pytest.raises(ValueError, match="gpt2.tiktoken has sha256"):
      tokenizer_lib.gpt2_tokenizer()
    monkeypatch.setattr(tokenizer_lib, "GPT2_RANKS_PATH", tmp_path / "missing.tiktoken")
    with pytest.raises(FileNotFoundError, match="missing.tiktoken"):
      tokenizer_lib.gpt2_tokenizer()
  finally:
    tokenizer_lib.gpt2_tokenizer.cache_clear()
