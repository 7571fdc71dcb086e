"""lm-evaluation-harness's language-model interface for a trained run (``OptbenchLM``).

``OptbenchLM(model=inference.load(W))`` (or ``OptbenchLM(workdir=W, step=N)``) is an
``lm_eval.api.model.LM`` registered as ``"optbench_jax"``, so
``lm_eval.simple_evaluate(model=OptbenchLM(...), tasks=[...])`` (or, once this
module is imported, ``model="optbench_jax", model_args="workdir=W"``) runs any
harness task unchanged. It reproduces the harness's ``hf`` model (``HFLM``) on the
Hugging Face export of the same run, token for token:

* Text is tokenised with the packaged GPT-2 BPE (``data.tokenizer``), special
  tokens in the text included, as the exported GPT-2 tokenizer does; no BOS is
  added. ``<|endoftext|>`` is the end-of-text and the prefix token (the
  context of an empty-context request).
* ``loglikelihood``: lm-eval's ``TemplateLM`` splits a request as HFLM does
  (trailing spaces of the context move to the continuation; the context and
  the whole text are encoded and the continuation is the whole's tokens past
  the context's). Context + continuation are truncated from the left to
  ``seq_len + 1`` tokens (``config.data.seq_len``, the exported
  ``max_position_embeddings``); the sums of log-probabilities and the greedy
  flags come from ``inference.Model.loglikelihoods``, in batches.
* ``loglikelihood_rolling``: the document's tokens in the windows of
  ``lm_eval.utils.get_rolling_token_windows`` (``seq_len`` tokens, context 1,
  prefix ``<|endoftext|>``) made disjoint by ``make_disjoint_window``; the
  windows' sums are added.
* ``generate_until``: greedy decoding, one token per forward pass over a
  window of the last ``seq_len`` tokens (``Model.next_tokens``), until
  ``<|endoftext|>``, a stop string or ``max_gen_toks`` tokens; the text is cut
  at the first stop string (``postprocess_generated_text``). Where context +
  generation exceed ``seq_len`` the window slides instead of HFLM's
  truncation of the context to ``seq_len - max_gen_toks``. Correct, not fast:
  no KV cache.

The model must have been trained on GPT-2 tokens (a vocabulary of at least
50257, ``data.source='shards'``): a synthetic-corpus run's tokens are not text.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models import utils as model_utils

from optbench_jax import inference
from optbench_jax.data import tokenizer as tokenizer_lib
from optbench_jax.evaluate import EvaluationError

DEFAULT_MAX_GEN_TOKS = 256   # HFLM's default


def check_text_model(vocab_size: int) -> None:
  """Raises EvaluationError when a model of ``vocab_size`` was not trained on GPT-2 tokens."""
  if vocab_size < tokenizer_lib.GPT2_VOCAB_SIZE:
    raise EvaluationError(
        f"the model's vocabulary ({vocab_size}) is smaller than GPT-2's "
        f"({tokenizer_lib.GPT2_VOCAB_SIZE}): it was not trained on text (a synthetic-corpus "
        f"run), so harness tasks cannot be scored; only the validation bits per token can")


@register_model("optbench_jax")
class OptbenchLM(TemplateLM):
  """lm-eval's ``LM`` over an ``inference.Model`` (module docstring).

  Args:
    model: a loaded model; or ``workdir`` (and ``step``) to load one.
    batch_size: sequences per forward pass (rounded up to the devices).
    max_gen_toks: the default generation length of ``generate_until``.
    **unused: what the harness passes every model (``device``, ``max_batch_size``).
  """

  def __init__(self, model: inference.Model | None = None, workdir: str | None = None,
               step: int | str | None = None, batch_size: int | str = inference.DEFAULT_BATCH_SIZE,
               max_gen_toks: int | str = DEFAULT_MAX_GEN_TOKS, **unused: Any):
    super().__init__()
    del unused
    if model is None:
      if not workdir:
        raise EvaluationError("OptbenchLM needs a model or a workdir")
      model = inference.load(workdir, None if step in (None, "") else int(step))
    check_text_model(model.vocab_size)
    self.model = model
    self.encoding = tokenizer_lib.gpt2_tokenizer()
    # "auto" (the harness's batch-size search) has no meaning here: the default then.
    self.batch_size = int(batch_size) if str(batch_size).isdigit() else inference.DEFAULT_BATCH_SIZE
    self.max_gen_toks = int(max_gen_toks)

  @property
  def eot_token_id(self) -> int:
    return tokenizer_lib.GPT2_EOT_ID

  @property
  def max_length(self) -> int:
    """The longest sequence the model scores at once: the run's ``data.seq_len``."""
    return int(self.model.config.data.seq_len)

  @property
  def tokenizer_name(self) -> str:
    return tokenizer_lib.GPT2_NAME

  def tok_encode(self, string: str, add_special_tokens: bool | None = None,
                 **kwargs: Any) -> list[int]:
    del add_special_tokens, kwargs   # GPT-2 adds no special tokens
    return self.encoding.encode(string, allowed_special="all")

  def tok_decode(self, tokens: Sequence[int]) -> str:
    """The text of ``tokens``, ``<|endoftext|>`` left out (HF's ``skip_special_tokens``)."""
    return self.encoding.decode([t for t in tokens if t < tokenizer_lib.GPT2_EOT_ID],
                                errors="replace")

  def _truncate(self, context: list[int], continuation: list[int]) -> tuple[list[int], list[int]]:
    """HFLM's left truncation of context + continuation to ``max_length + 1`` tokens."""
    if len(continuation) > self.max_length:
      raise EvaluationError(f"a continuation of {len(continuation)} tokens is longer than the "
                            f"model's sequence length ({self.max_length})")
    kept = (context + continuation)[-(self.max_length + 1):]
    return kept[:len(kept) - len(continuation)], continuation

  def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False,
                            **kwargs: Any) -> list[tuple[float, bool]]:
    del disable_tqdm, kwargs
    pairs = [self._truncate(list(context), list(continuation))
             for _, context, continuation in requests]
    answers = self.model.loglikelihoods(pairs, batch_size=self.batch_size)
    for (request, _, _), answer in zip(requests, answers):
      if request is not None:
        self.cache_hook.add_partial("loglikelihood", request, answer)
    return answers

  def rolling_windows(self, text: str) -> list[tuple[list[int], list[int]]]:
    """The disjoint (context, continuation) windows that score every token of ``text`` once."""
    return [lm_utils.make_disjoint_window(window)
            for window in lm_utils.get_rolling_token_windows(
                token_list=self.tok_encode(text), prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length, context_len=1)]

  def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
    del disable_tqdm
    windows, owners = [], []
    for index, (text,) in enumerate(request.args for request in requests):
      for window in self.rolling_windows(text):
        windows.append(window)
        owners.append(index)
    totals = [0.0] * len(requests)
    for owner, (logprob, _) in zip(owners, self.model.loglikelihoods(windows, self.batch_size)):
      totals[owner] += logprob
    for request, total in zip(requests, totals):
      self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
    return totals

  def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
    del disable_tqdm
    results: list[str | None] = [None] * len(requests)
    eos = self.encoding.decode([self.eot_token_id])
    for start in range(0, len(requests), self.batch_size):
      chunk = list(range(start, min(start + self.batch_size, len(requests))))
      for index, text in zip(chunk, self._generate([requests[i].args for i in chunk], eos)):
        results[index] = text
        self.cache_hook.add_partial("generate_until", requests[index].args, text)
    return results

  def _generate(self, requests: list[tuple[str, dict]], eos: str) -> list[str]:
    """Greedy continuations of a batch of ``(context, gen_kwargs)`` requests."""
    contexts, stops, budgets = [], [], []
    for context, gen_kwargs in requests:
      kwargs = model_utils.normalize_gen_kwargs(dict(gen_kwargs), self.max_gen_toks)
      if kwargs.get("do_sample"):
        raise EvaluationError("generate_until: only greedy decoding is implemented "
                              "(the task asks for do_sample=True)")
      stops.append(model_utils.handle_stop_sequences(kwargs.get("until"), eos=eos))
      budgets.append(int(kwargs["max_gen_toks"]))
      contexts.append(self.tok_encode(context) or [self.prefix_token_id])
    generated = [[] for _ in requests]
    active = [budget > 0 for budget in budgets]
    window = self.max_length
    while any(active):
      rows = [i for i, a in enumerate(active) if a]
      tokens = np.zeros((len(rows), window), np.int32)
      lengths = []
      for row, i in enumerate(rows):
        sequence = (contexts[i] + generated[i])[-window:]
        tokens[row, :len(sequence)] = sequence
        lengths.append(len(sequence))
      for i, token in zip(rows, self.model.next_tokens(tokens, lengths)):
        token = int(token)
        if token == self.eot_token_id:
          active[i] = False
          continue
        generated[i].append(token)
        text = self.tok_decode(generated[i])
        if len(generated[i]) >= budgets[i] or any(s and s in text for s in stops[i]):
          active[i] = False
    return [model_utils.postprocess_generated_text(self.tok_decode(g), stop, None)
            for g, stop in zip(generated, stops)]
