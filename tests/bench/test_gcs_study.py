"""A study whose work directory is gs:// (GCS emulator): a branched trial reads its source there."""

import json

import pytest

from optbench_jax import storage
from optbench_jax.bench import study, study_report, sweep, sweep_status
from optbench_jax.train import run_record
from tests.bench.test_study_smoke import micro_study


@pytest.mark.slow
def test_a_study_in_a_bucket_branches_reports_and_shows_its_status(gcs):
  workdir = storage.join(gcs(), "study")
  out = sweep.run_sweep(study.StudyProgram(micro_study([40, 80])), workdir, parallel=2,
                        log=lambda _: None)
  assert out.recorded["completed"] == 2, out
  trials = sorted(storage.listdir(storage.join(workdir, "trials")))
  short = next(t for t in trials if "-40steps-" in t)
  long = next(t for t in trials if "-80steps-" in t)
  record = run_record.read_record(storage.join(workdir, "trials", short))
  assert record["branched_from"] == {"workdir": storage.join(workdir, "trials", long),
                                     "step": 33}
  _, rows = sweep_status.collect(workdir)
  assert [r.state for r in rows] == ["completed", "completed"]
  study_report.write_study_dir(workdir, num_bootstrap=10)
  data = json.loads(storage.read_text(storage.join(workdir, "study.json")))
  assert data["compute"] == {"steps_trained": 80 + 40 - 33, "steps_if_separate": 120}
  assert storage.read_bytes(storage.join(workdir, "plots", "d_eff_vs_d.png"))[:4] == b"\x89PNG"
