"""Fixtures of the ``optbench_jax.evaluate`` tests: the tiny GPT-2-token run, its Hugging Face
export and the local tasks (``tiny_mc``: mixed choices; ``tiny_balanced``: one-token colors)."""

import pytest

from optbench_jax import export
from tests.evaluate import text_runs


@pytest.fixture(scope="session")
def text_workdir(tmp_path_factory):
  return text_runs.trained(tmp_path_factory)


@pytest.fixture(scope="session")
def hf_dir(text_workdir, tmp_path_factory):
  out = tmp_path_factory.mktemp("hf_export")
  written = export.export(text_workdir, str(out), tokenizer="gpt2")
  assert "vocab.json" in written
  return str(out)


@pytest.fixture(scope="session")
def task_dir(tmp_path_factory):
  directory = tmp_path_factory.mktemp("tasks")
  text_runs.write_task(directory, "tiny_mc", text_runs.mixed_docs())
  text_runs.write_task(directory, "tiny_balanced", text_runs.balanced_docs())
  return str(directory)


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
  """Nothing in these tests reaches the network."""
  monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
