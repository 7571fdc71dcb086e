"""optbench_jax.evaluate.harness: OptbenchLM agrees with lm-eval's own ``hf`` model (HFLM) on the
Hugging Face export of the same run, and with sums of log-probabilities taken by hand."""

import jax
import lm_eval
import numpy as np
import pytest
import scipy.special
from lm_eval.api.instance import Instance
from lm_eval.api.registry import get_model
from lm_eval.models.huggingface import HFLM

from optbench_jax import inference
from optbench_jax import models
from optbench_jax.data import tokenizer as tokenizer_lib
from optbench_jax.evaluate import EvaluationError
from optbench_jax.evaluate import harness
from optbench_jax.evaluate import tasks as tasks_lib
from tests import tiny_runs
from tests.evaluate import text_runs


@pytest.fixture(scope="module")
def model(text_workdir):
  return inference.load(text_workdir)


@pytest.fixture(scope="module")
def ours(model):
  return harness.OptbenchLM(model=model, batch_size=8)


@pytest.fixture(scope="module")
def theirs(hf_dir):
  return HFLM(pretrained=hf_dir, device="cpu", batch_size=8)


def loglikelihood_requests() -> list[Instance]:
  docs = text_runs.mixed_docs()
  requests = [Instance("loglikelihood", d, (d["question"], c), 0)
              for d in docs for c in d["choices"]]
  requests.append(Instance("loglikelihood", {}, ("", "An empty context"), 0))
  return requests


def accuracies(lm, task_dir: str) -> dict:
  manager, task_objects = tasks_lib.load_tasks(["tiny_mc"], task_dir)
  out = lm_eval.simple_evaluate(model=lm, tasks=task_objects, task_manager=manager,
                                log_samples=False)
  return {k: v for k, v in out["results"]["tiny_mc"].items() if k in ("acc,none", "acc_norm,none")}


def test_loglikelihoods_and_greedy_flags_match_hflm(ours, theirs):
  requests = loglikelihood_requests()
  assert max(len(ours.tok_encode(r.args[0])) for r in requests) > ours.max_length  # truncated
  a, b = ours.loglikelihood(requests), theirs.loglikelihood(requests)
  assert [x[1] for x in a] == [y[1] for y in b]
  np.testing.assert_allclose([x[0] for x in a], [y[0] for y in b], atol=1e-4, rtol=0)


def test_task_accuracy_matches_hflm(ours, theirs, task_dir):
  a, b = accuracies(ours, task_dir), accuracies(theirs, task_dir)
  assert set(a) == {"acc,none", "acc_norm,none"} and a == b


def test_tokenisation_matches_the_exported_tokenizer(ours, theirs):
  text = "Hello world <|endoftext|> naïve 日本 \n\n  spaces"
  assert ours.tok_encode(text) == theirs.tok_encode(text)
  assert ours.prefix_token_id == theirs.prefix_token_id == tokenizer_lib.GPT2_EOT_ID
  assert ours.max_length == theirs.max_length == text_runs.SEQ_LEN


def test_rolling_loglikelihood_is_the_sum_of_logprobs_by_hand(ours, model):
  text = " ".join(text_runs.documents(12, seed=3))
  tokens = ours.tok_encode(text)
  length, n = ours.max_length, len(tokens)
  assert n > 2 * length and n % length   # three windows or more, the last one partial
  sequence = [tokenizer_lib.GPT2_EOT_ID] + tokens
  total, start = 0.0, 0
  while start < n:   # predict tokens[start:end]; the inputs are the `length` tokens before `end`
    end = min(start + length, n)
    first = max(0, end - length)
    logits = model.logits(np.asarray([sequence[first:end]])).astype(np.float64)[0]
    logprobs = scipy.special.log_softmax(logits, axis=-1)
    total += sum(logprobs[j - first, tokens[j]] for j in range(start, end))
    start = end
  got = ours.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])
  assert got[0] == pytest.approx(total, rel=1e-6, abs=1e-3)


def test_greedy_generation_matches_hflm(ours, theirs):
  requests = [Instance("generate_until", {}, (context, kwargs), 0) for context, kwargs in [
      ("The cat", {"until": ["."], "max_gen_toks": 6}),
      ("The sky is blue. The sea", {"until": ["\n"], "max_gen_toks": 9}),
      ("A big bird", {"until": [" cat"], "max_gen_toks": 5, "do_sample": False})]]
  assert ours.generate_until(requests) == theirs.generate_until(requests)


def test_a_random_model_scores_near_chance(model, task_dir):
  """``tiny_balanced``: 200 questions, 4 one-token answers, each position correct 50 times; the
  standard error of a chance accuracy is sqrt(1/4 * 3/4 / 200) = 0.031, so 0.25 +- 0.12 (4 sigma)."""
  spec = model.spec
  params = models.init_params(spec, jax.random.PRNGKey(7))
  untrained = inference.Model(model.config, spec, params, model.mesh, step=0)
  manager, task_objects = tasks_lib.load_tasks(["tiny_balanced"], task_dir)
  out = lm_eval.simple_evaluate(model=harness.OptbenchLM(model=untrained), tasks=task_objects,
                                task_manager=manager, log_samples=False)
  result = out["results"]["tiny_balanced"]
  assert out["n-samples"]["tiny_balanced"]["effective"] == 200
  assert abs(result["acc,none"] - 0.25) < 0.12
  assert abs(result["acc_norm,none"] - 0.25) < 0.12


def test_registered_with_the_harness(text_workdir):
  cls = get_model("optbench_jax")
  assert cls is harness.OptbenchLM
  lm = cls.create_from_arg_string(f"workdir={text_workdir},step=3",
                                  {"batch_size": 4, "device": "cpu"})
  assert lm.model.step == 3 and lm.batch_size == 4


def test_a_synthetic_run_is_refused(tmp_path_factory):
  workdir = tiny_runs.trained(tmp_path_factory, "llama")
  with pytest.raises(EvaluationError, match="not trained on text"):
    harness.OptbenchLM(workdir=workdir)
