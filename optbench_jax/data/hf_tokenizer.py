"""The packaged GPT-2 BPE as Hugging Face tokenizer files, converted offline.

``write_gpt2_files(directory)`` writes ``vocab.json``, ``merges.txt``,
``tokenizer_config.json`` and ``special_tokens_map.json`` so that
``transformers.AutoTokenizer.from_pretrained(directory)`` builds GPT-2's
byte-level BPE with no network, giving the same ids as
``tokenizer.gpt2_tokenizer()``.

The conversion (tiktoken -> Hugging Face byte-level BPE): a tiktoken rank file
maps each token's *bytes* to its rank, which is also its id. Hugging Face
spells a token's bytes as printable characters (GPT-2's ``bytes_to_unicode``
table), and lists the merges in priority order: the merge creating the token
of rank r is the pair of parts that BPE, restricted to ranks below r, splits
the token into. Only ``json`` and the rank file are needed.
"""

from __future__ import annotations

import json
import os

from optbench_jax.data import tokenizer as tokenizer_lib

MODEL_MAX_LENGTH = 1024   # GPT-2's context; the tokenizer only warns beyond it


def bytes_to_unicode() -> dict[int, str]:
  """GPT-2's byte -> printable character table (``openai/gpt-2`` ``encoder.py``)."""
  printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) +
               list(range(ord("®"), ord("ÿ") + 1)))
  chars, extra = list(printable), 0
  for b in range(256):
    if b not in printable:
      printable.append(b)
      chars.append(256 + extra)
      extra += 1
  return {b: chr(c) for b, c in zip(printable, chars)}


def _merge_parts(ranks: dict[bytes, int], token: bytes, max_rank: int) -> list[bytes]:
  """``token`` split by BPE using only the merges of rank below ``max_rank``."""
  parts = [bytes([b]) for b in token]
  while True:
    best, best_rank = None, None
    for i in range(len(parts) - 1):
      rank = ranks.get(parts[i] + parts[i + 1])
      if rank is not None and rank < max_rank and (best_rank is None or rank < best_rank):
        best, best_rank = i, rank
    if best is None:
      return parts
    parts = parts[:best] + [parts[best] + parts[best + 1]] + parts[best + 2:]


def vocab_and_merges(ranks: dict[bytes, int]) -> tuple[dict[str, int], list[tuple[str, str]]]:
  """Hugging Face's ``vocab.json`` mapping and merge list of tiktoken ``ranks``."""
  spell = bytes_to_unicode()
  text = lambda token: "".join(spell[b] for b in token)
  vocab = {text(token): rank for token, rank in ranks.items()}
  merges = []
  for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
    if len(token) == 1:
      continue
    parts = _merge_parts(ranks, token, rank)
    if len(parts) != 2:
      raise ValueError(f"token {token!r} (rank {rank}) is not one merge of lower-ranked tokens")
    merges.append((text(parts[0]), text(parts[1])))
  return vocab, merges


def write_gpt2_files(directory: str) -> list[str]:
  """Writes GPT-2's Hugging Face tokenizer files into ``directory``; returns their names."""
  encoding = tokenizer_lib.gpt2_tokenizer()
  vocab, merges = vocab_and_merges(encoding._mergeable_ranks)  # pylint: disable=protected-access
  eot = tokenizer_lib.EOT_TEXT
  vocab[eot] = tokenizer_lib.GPT2_EOT_ID
  special = dict(bos_token=eot, eos_token=eot, unk_token=eot)
  files = {
      "vocab.json": json.dumps(vocab, ensure_ascii=False),
      "merges.txt": "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
      "tokenizer_config.json": json.dumps(dict(
          tokenizer_class="GPT2Tokenizer", model_max_length=MODEL_MAX_LENGTH,
          add_prefix_space=False, add_bos_token=False, errors="replace", **special), indent=1),
      "special_tokens_map.json": json.dumps(special, indent=1),
  }
  os.makedirs(directory, exist_ok=True)
  for name, content in files.items():
    with open(os.path.join(directory, name), "w", encoding="utf-8") as f:
      f.write(content)
  return sorted(files)
