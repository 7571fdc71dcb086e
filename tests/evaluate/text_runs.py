"""A tiny run on GPT-2 tokens (a prepared text corpus, vocabulary 50304) and tiny local harness
tasks, shared by the tests of ``optbench_jax.evaluate``; the run is trained once per session."""

import json
import pathlib

import numpy as np

from optbench_jax import train
from optbench_jax.data import prepare
from tests.train import tiny

SEQ_LEN = 48
COLORS = [" red", " green", " blue", " yellow"]
_WORDS = ("the cat dog sky sea tree sun moon bird fish is was a an big small red green blue "
          "yellow runs sleeps sees eats near under over and then").split()


def documents(count: int, seed: int = 0) -> list[str]:
  """``count`` short English-like documents (a few sentences of common words)."""
  rng = np.random.default_rng(seed)
  return [" ".join(" ".join(rng.choice(_WORDS, size=rng.integers(4, 10))).capitalize() + "."
                   for _ in range(rng.integers(2, 6)))
          for _ in range(count)]


def corpus(root: pathlib.Path) -> str:
  """A prepared GPT-2 token-shard corpus of 400 documents (about 20 in the validation split)."""
  out = root / "text_corpus"
  if not (out / "manifest.json").exists():
    prepare.prepare_corpus(documents(400), out, val_fraction=0.05, workers=0, progress=False)
  return str(out)


def config(data_dir: str, steps: int = 3):
  """A 1-layer d=32 Llama on GPT-2 tokens (vocabulary 50304), ``seq_len`` 48."""
  c = tiny.micro_config(data_dir, steps=steps, checkpoint_every=steps)
  c.model.update(vocab_size=50304)
  c.data.update(source="shards", seq_len=SEQ_LEN, global_batch_size=8)
  return c


def trained(tmp_path_factory) -> str:
  """The work directory of the session's tiny GPT-2-token run, trained on first use."""
  root = tmp_path_factory.getbasetemp() / "text_runs"
  workdir = root / "llama"
  if not (workdir / "summary.json").exists():
    summary = train.run(config(corpus(root)), str(workdir), devices=tiny.one_device())
    assert summary["status"] == "completed", summary
  return str(workdir)


def write_task(directory: pathlib.Path, name: str, docs: list[dict]) -> pathlib.Path:
  """A multiple-choice task ``name`` over ``docs`` (``question``, ``choices``, ``label``):
  ``directory/<name>.yaml`` and its JSON lines data file; returns ``directory``."""
  directory.mkdir(parents=True, exist_ok=True)
  data = directory / f"{name}.jsonl"
  data.write_text("".join(json.dumps(d) + "\n" for d in docs))
  (directory / f"{name}.yaml").write_text(
      f"task: {name}\n"
      "dataset_path: json\n"
      f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
      "test_split: test\n"
      "output_type: multiple_choice\n"
      "doc_to_text: \"{{question}}\"\n"
      "doc_to_choice: \"{{choices}}\"\n"
      "doc_to_target: label\n"
      "metric_list:\n  - metric: acc\n  - metric: acc_norm\n")
  return directory


def mixed_docs(count: int = 20) -> list[dict]:
  """Questions with choices of different lengths, contexts ending in a space, and one
  context longer than ``SEQ_LEN`` tokens (truncated from the left)."""
  rng = np.random.default_rng(1)
  docs = []
  for i in range(count):
    story = documents(1, seed=100 + i)[0]
    if i == 0:
      story = " ".join(documents(6, seed=7))   # > SEQ_LEN tokens
    question = f"{story}\nQuestion: what color is the thing?\nAnswer:" + (" " if i % 3 == 0 else "")
    choices = ["red", "green and blue", "a small yellow bird", "blue"]
    if i % 3 != 0:
      choices = [" " + c for c in choices]
    docs.append({"question": question, "choices": choices, "label": int(rng.integers(4))})
  return docs


def balanced_docs(count: int = 200) -> list[dict]:
  """One-token color answers, the correct one equally often at each position: any model
  that prefers a choice regardless of the question scores exactly 1/4."""
  docs = []
  for i, story in enumerate(documents(count, seed=5)):
    question = " ".join(story.split()[:4]) + " Color:"   # short: 200 x 4 requests stay fast
    docs.append({"question": question, "choices": COLORS, "label": i % len(COLORS)})
  return docs


def write_uncached_task(directory) -> None:
  """``remote_mc.yaml``: a multiple-choice task whose dataset is on the Hub, never cached here."""
  (directory / "remote_mc.yaml").write_text(
      "task: remote_mc\ndataset_path: optbench-test/not-a-cached-dataset\ntest_split: test\n"
      "output_type: multiple_choice\ndoc_to_text: \"{{q}}\"\ndoc_to_choice: [\"a\", \"b\"]\n"
      "doc_to_target: 0\nmetric_list:\n  - metric: acc\n")
