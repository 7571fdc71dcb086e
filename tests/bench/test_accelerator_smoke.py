"""benchmarks/accelerator.py --smoke: every section runs on CPU and lands in the JSON and Markdown.

Structure only (performance is never asserted in a test): the kernels this
backend cannot run are recorded as unavailable with the reason, and the run
goes on.
"""

import json

from tests import benchmark_scripts


def _load():
  return benchmark_scripts.load("accelerator")


def test_smoke_writes_every_section(tmp_path):
  _load().main(["--smoke", "--budget_s", "120", "--out_dir", str(tmp_path)])
  result = json.loads((tmp_path / "accelerator.json").read_text())
  rows = {(r["model"], r["attention_impl"]): r for r in result["models"]}
  for model in ("124m", "520m"):
    ok = rows[(model, "xla")]
    assert ok["status"] == "ok" and ok["tokens_per_s"] > 0 and 0 < ok["mfu"], ok
    assert rows[(model, "cudnn")]["status"] == "unavailable"
    assert "needs a GPU" in rows[(model, "cudnn")]["reason"]
    assert rows[(model, "splash")]["status"] == "unavailable"
  optimizers = result["optimizers"]["optimizers"]
  assert optimizers["adamw"]["ratio_to_adamw"] == 1.0
  assert optimizers["muon"]["step_s"] > 0
  assert {r["dtype"] for r in result["newton_schulz"]} == {"float32", "bfloat16"}
  assert all(r["tflops"] > 0 for r in result["newton_schulz"])
  table = (tmp_path / "accelerator.md").read_text()
  assert "| 124m | xla | ok |" in table and "Newton-Schulz" in table and "| muon |" in table
