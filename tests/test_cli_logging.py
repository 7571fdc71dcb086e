"""A run's console is ours: short log lines, no library chatter (``cli_logging``)."""

import json
import os
import re
import subprocess
import sys

from tests.train import tiny

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_cpu_run_prints_short_lines_and_no_library_noise(tmp_path):
  config = tiny.micro_config(tmp_path / "data", steps=3)
  path = tmp_path / "config.json"
  path.write_text(json.dumps(config.to_dict()))
  env = dict(os.environ, MPLCONFIGDIR=str(tmp_path / "mpl"))   # a fresh font cache: the worst case
  env.pop("XLA_FLAGS", None)                                   # one CPU device, as a user has
  result = subprocess.run(
      [sys.executable, "-m", "trainers.lm", f"--config=configs/from_json.py:{path}",
       f"--workdir={tmp_path / 'work'}"], cwd=REPO, env=env, capture_output=True, text=True,
      timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  err = result.stderr
  assert "Unable to initialize backend" not in err and "fontManager" not in err, err[-3000:]
  assert not re.search(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ ", err, re.M), err[-3000:]
  assert re.search(r"^\d\d:\d\d:\d\d loop: step 3/3 \| loss", err, re.M), err[-3000:]
  assert result.stdout.startswith("completed: 3 steps, final eval loss ")
