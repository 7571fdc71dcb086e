"""optbench_jax.data.hf_tokenizer: GPT-2's tiktoken ranks as Hugging Face files, same ids."""

import transformers

from optbench_jax.data import hf_tokenizer
from optbench_jax.data import tokenizer as tokenizer_lib


def test_tokenizer_files_give_our_ids(tmp_path):
  assert hf_tokenizer.write_gpt2_files(str(tmp_path)) == [
      "merges.txt", "special_tokens_map.json", "tokenizer_config.json", "vocab.json"]
  theirs = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
  ours = tokenizer_lib.gpt2_tokenizer()
  text = ("Hello world, it's 2024!  Ünïcødé — naïve café 😀 tabs\tand\nnew lines   "
          "<|endoftext|>The end.")
  ids = ours.encode(text, allowed_special="all")
  assert theirs(text)["input_ids"] == ids
  assert theirs.decode(ids) == text
  assert len(theirs) == tokenizer_lib.GPT2_VOCAB_SIZE
  assert theirs.eos_token_id == tokenizer_lib.GPT2_EOT_ID


def test_merges_are_in_rank_order_and_rebuild_every_token():
  ranks = {b"a": 0, b"b": 1, b"c": 2, b"ab": 3, b"abc": 4, b"bc": 5}
  vocab, merges = hf_tokenizer.vocab_and_merges(ranks)
  assert vocab == {"a": 0, "b": 1, "c": 2, "ab": 3, "abc": 4, "bc": 5}
  assert merges == [("a", "b"), ("ab", "c"), ("b", "c")]   # abc = (ab)c: ab outranks bc
  space = hf_tokenizer.bytes_to_unicode()
  assert len(set(space.values())) == 256 and space[ord(" ")] == "Ġ" and space[ord("a")] == "a"
