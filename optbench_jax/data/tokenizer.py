"""The GPT-2 BPE tokenizer (tiktoken), built offline from a packaged rank file.

``tiktoken.get_encoding("gpt2")`` downloads its vocabulary on first use, which
fails on machines without network (TPU VMs behind a firewall, CI). The same
ranks ship here as ``assets/gpt2.tiktoken`` (the ``r50k_base``/GPT-2 rank file
from the MIT-licensed openai-whisper package, see ``assets/NOTICE``); the file's
sha256 is checked on every load so a corrupted or swapped asset fails loudly.
"""

from __future__ import annotations

import functools
import hashlib
import pathlib

import tiktoken
import tiktoken.load

GPT2_NAME = "gpt2"
GPT2_VOCAB_SIZE = 50257           # 50256 BPE ranks + <|endoftext|>
GPT2_EOT_ID = 50256
EOT_TEXT = "<|endoftext|>"
GPT2_RANKS_PATH = pathlib.Path(__file__).parent / "assets" / "gpt2.tiktoken"
GPT2_RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
# GPT-2's pre-tokenisation regex, in tiktoken's possessive form (same splits as
# the original r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+").
GPT2_SPLIT_PATTERN = (
    r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s""")


def _sha256_of_file(path: pathlib.Path) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


@functools.lru_cache(maxsize=None)
def gpt2_tokenizer() -> tiktoken.Encoding:
  """The GPT-2 BPE as a ``tiktoken.Encoding``, with no network access.

  Vocabulary 50257 (the models pad it to 50304); ``<|endoftext|>`` is 50256;
  ``encode_ordinary("Hello world") == [15496, 995]``. Cached per process.

  Raises:
    FileNotFoundError: the packaged rank file is missing.
    ValueError: its sha256 is not ``GPT2_RANKS_SHA256``.
  """
  if not GPT2_RANKS_PATH.is_file():
    raise FileNotFoundError(f"GPT-2 rank file {GPT2_RANKS_PATH} is missing from the package")
  actual = _sha256_of_file(GPT2_RANKS_PATH)
  if actual != GPT2_RANKS_SHA256:
    raise ValueError(f"GPT-2 rank file {GPT2_RANKS_PATH} has sha256 {actual}, "
                     f"expected {GPT2_RANKS_SHA256}: the asset is corrupted or replaced")
  ranks = tiktoken.load.load_tiktoken_bpe(str(GPT2_RANKS_PATH), expected_hash=GPT2_RANKS_SHA256)
  return tiktoken.Encoding(
      name=GPT2_NAME,
      pat_str=GPT2_SPLIT_PATTERN,
      mergeable_ranks=ranks,
      special_tokens={EOT_TEXT: GPT2_EOT_ID},
      explicit_n_vocab=GPT2_VOCAB_SIZE,
  )
