"""optbench_jax.inference: a trained run's parameters restored alone, its logits and likelihoods."""

import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from optbench_jax import cli_errors
from optbench_jax import data as data_lib
from optbench_jax import inference
from optbench_jax import train
from optbench_jax.train import checkpoint as checkpoint_lib
from tests import tiny_runs
from tests.train import tiny

KINDS = ("llama", "moe")


@pytest.fixture(scope="module", params=KINDS)
def workdir(request, tmp_path_factory):
  return tiny_runs.trained(tmp_path_factory, request.param)


def training_forward(workdir: str, step: int, tokens: np.ndarray) -> np.ndarray:
  """The trainer's own restore (whole train state, data iterator) and model.apply."""
  model = inference.load(workdir, step)
  run = train.build(model.config, tiny.one_device())
  d = model.config.data
  iterator = data_lib.make_train_iterator(d.path, seq_len=d.seq_len,
                                          global_batch_size=d.global_batch_size,
                                          seed=d.shuffle_seed, process_index=0, process_count=1,
                                          prefetch_threads=0)
  checkpointer = checkpoint_lib.Checkpointer(workdir, keep=1, read_only=True)
  state = checkpointer.restore(step, run.state_target(), iterator)
  checkpointer.close()
  return np.asarray(run.model.apply({"params": state.params}, tokens)[0])


def random_tokens(shape, vocab=128, seed=0):
  return np.random.RandomState(seed).randint(0, vocab, shape)


@pytest.mark.parametrize("step", [2, 3])
def test_logits_equal_the_training_forward_pass(workdir, step):
  model = inference.load(workdir, step)
  assert model.step == step and model.mesh.shape["data"] == len(jax.local_devices()) == 8
  tokens = random_tokens((5, 16))   # 5 rows over 8 devices: padded, then cut off
  logits = model.logits(tokens)
  assert logits.shape == (5, 16, model.vocab_size) and logits.dtype == np.float32
  np.testing.assert_allclose(logits, training_forward(workdir, step, tokens), atol=2e-5, rtol=0)


def test_latest_checkpoint_by_default(workdir):
  assert inference.load(workdir).step == tiny_runs.STEPS


def test_only_the_parameters_are_read(workdir, monkeypatch):
  """The optimizer state (here Adam's mu and nu: 2x the parameters) is never deserialised."""
  read = []
  real = ocp.type_handlers.ArrayHandler.deserialize

  async def spy(self, infos, args=None):
    read.extend(info.name for info in infos)
    return await real(self, infos, args)

  monkeypatch.setattr(ocp.type_handlers.ArrayHandler, "deserialize", spy)
  model = inference.load(workdir)
  assert read and all(name.startswith("params.") for name in read), read
  assert len(read) == len(jax.tree.leaves(model.params))


def test_loglikelihood_is_the_sum_of_the_continuations_log_probabilities(workdir):
  model = inference.load(workdir)
  context, continuation = [5, 17, 3, 99], [42, 7, 120]
  logits = model.logits(np.asarray([context + continuation]))[0].astype(np.float64)
  logprobs = logits - np.log(np.sum(np.exp(logits - logits.max(-1, keepdims=True)), -1,
                                    keepdims=True)) - logits.max(-1, keepdims=True)
  positions = range(len(context) - 1, len(context) + len(continuation) - 1)
  expected = sum(logprobs[p, t] for p, t in zip(positions, continuation))
  greedy = all(np.argmax(logits[p]) == t for p, t in zip(positions, continuation))
  logprob, is_greedy = model.loglikelihood(context, continuation)
  assert logprob == pytest.approx(expected, abs=1e-4)
  assert is_greedy == greedy


def test_greedy_continuation_is_recognised(workdir):
  model = inference.load(workdir)
  context = [1, 2, 3]
  continuation = []
  for _ in range(3):   # greedy decoding, one token at a time
    continuation.append(int(np.argmax(model.logits(np.asarray([context + continuation]))[0, -1])))
  assert model.loglikelihood(context, continuation)[1] is True
  wrong = continuation[:-1] + [(continuation[-1] + 1) % model.vocab_size]
  assert model.loglikelihood(context, wrong)[1] is False


def test_batched_loglikelihoods_equal_one_at_a_time(workdir):
  model = inference.load(workdir)
  rng = np.random.RandomState(1)
  requests = [(list(rng.randint(0, 128, rng.randint(1, 20))),
               list(rng.randint(0, 128, rng.randint(1, 6)))) for _ in range(11)]
  batched = model.loglikelihoods(requests, batch_size=4)
  single = [model.loglikelihood(c, x) for c, x in requests]
  assert [g for _, g in batched] == [g for _, g in single]
  np.testing.assert_allclose([lp for lp, _ in batched], [lp for lp, _ in single], atol=1e-4)


def test_bad_inputs_are_refused(workdir):
  model = inference.load(workdir)
  with pytest.raises(ValueError, match=r"token ids must be in \[0, 128\)"):
    model.logits(np.asarray([[1, 128]]))
  with pytest.raises(ValueError, match="integer array"):
    model.logits(np.zeros((2,), np.int32))
  with pytest.raises(ValueError, match="at least one token"):
    model.loglikelihood([], [1])


def _one_line(error) -> str:
  is_user, message = cli_errors.classify(error)
  assert is_user and "\n" not in message
  return message


def test_errors_are_one_line(tmp_path_factory, tmp_path):
  workdir = tiny_runs.trained(tmp_path_factory, "llama")
  with pytest.raises(inference.ModelLoadError) as missing_step:
    inference.load(workdir, step=7)
  assert _one_line(missing_step.value) == (
      f"{workdir} has no checkpoint at step 7; it has steps 2, 3")

  with pytest.raises(inference.ModelLoadError) as not_a_run:
    inference.load(str(tmp_path))
  assert "is not a training work directory" in _one_line(not_a_run.value)
  with pytest.raises(inference.ModelLoadError, match="does not exist"):
    inference.load(str(tmp_path / "nowhere"))

  started = tmp_path / "started"   # a run that has its record but saved no checkpoint yet
  started.mkdir()
  shutil.copy(os.path.join(workdir, "run_record.json"), started / "run_record.json")
  with pytest.raises(inference.ModelLoadError) as no_checkpoint:
    inference.load(str(started))
  assert "holds no checkpoint yet" in _one_line(no_checkpoint.value)
  assert not (started / "checkpoints").exists()   # reading creates nothing
