"""Tiny trained runs (a dense Llama and a MoE, 3 steps, checkpoints at 2 and 3) shared by the
tests of what reads a finished run (``inference``, ``export``); trained once per session."""

from optbench_jax import train
from tests.train import tiny

STEPS, CHECKPOINTS = 3, [2, 3]


def config(kind: str, data_dir: str):
  """The micro config of ``kind`` ('llama' | 'moe': 4 experts, top 2, dropless)."""
  c = tiny.micro_config(data_dir, steps=STEPS, checkpoint_every=2)
  if kind == "moe":
    c.model.update(kind="moe", num_experts=4, experts_top_k=2)
  return c


def trained(tmp_path_factory, kind: str) -> str:
  """The work directory of the session's tiny ``kind`` run, trained on first use."""
  root = tmp_path_factory.getbasetemp() / "tiny_runs"
  workdir = root / kind
  if not (workdir / "summary.json").exists():
    summary = train.run(config(kind, str(root / "corpus")), str(workdir),
                        devices=tiny.one_device())
    assert summary["status"] == "completed", summary
  return str(workdir)
