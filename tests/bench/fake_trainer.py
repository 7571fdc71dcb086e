"""TEST DOUBLE for the trainer (not a trainer): writes what `python -m trainers.lm` writes.

Used only by tests/bench/test_sweep.py so sweep-runner tests take seconds. It
reads the trial's config.json and "trains" for ``train.steps`` steps along a
planted curve, writing ``metrics.jsonl`` (``step``/``loss`` and
``step``/``eval_loss`` records), a checkpoint file it resumes from, and
``summary.json`` at the end, following the trainer's contract.

Planted behaviour (so tests know the right answers):
  final loss = 1.5 + (log10(lr) + 2.5)^2 + 4 / sqrt(k * steps)   (best lr 10^-2.5)
  with k = 2 for nadamw and 1 otherwise: at the best lr the loss is the power law
  L(D) = alpha D^-0.5 + 1.5 and nadamw's token speedup is exactly 2; nadamw also
  reports half the throughput (step-time overhead 2, wall-clock speedup 1).
  lr == 0.5  -> crashes with exit code 1 at step 2 (a "failed" trial)
  lr == 0.3  -> training loss becomes NaN at step 3 (a "diverged" trial)
  lr == 0.2  -> training loss stays at 9.0 (diverged by the loss-threshold rule); each
               step then takes 0.1 s so the runner stops it well before the end
  lr == 0.1  -> hangs (sleeps) after step 1, ignoring SIGTERM (a deadlocked trial)
Environment:
  FAKE_PREEMPT_AT=k  -> stop at step k with status "preempted" unless resuming
  FAKE_STORAGE_OUT_AT=k -> checkpoint at step k, then exit 3 (storage stopped answering)
                          without a summary, unless resuming
  FAKE_STEP_SLEEP=s  -> seconds per step (default 0.002)
  FAKE_EVENTS=path   -> append "start <id> <time>" / "end <id> <time>" lines
"""

import json
import math
import os
import sys
import time

from optbench_jax import atomic_files


def main(config_path, workdir):
  with open(config_path) as f:
    config = json.load(f)
  os.makedirs(workdir, exist_ok=True)
  events = os.environ.get("FAKE_EVENTS")
  trial = os.path.basename(workdir)
  if events:
    with open(events, "a") as f:
      f.write(f"start {trial} {time.time()}\n")
  lr = float(config["optimizer"]["learning_rate"])
  steps = int(config["train"]["steps"])
  eval_every = int(config["train"]["eval_every"])
  checkpoint = os.path.join(workdir, "checkpoint.json")
  start = 0
  resumed = os.path.exists(checkpoint)
  if resumed:
    with open(checkpoint) as f:
      start = json.load(f)["step"]
  preempt_at = int(os.environ.get("FAKE_PREEMPT_AT", "0"))
  storage_out_at = int(os.environ.get("FAKE_STORAGE_OUT_AT", "0"))
  sleep = float(os.environ.get("FAKE_STEP_SLEEP", "0.002"))
  speedup = 2.0 if config["optimizer"]["name"] == "nadamw" else 1.0
  final = 1.5 + (math.log10(lr) + 2.5) ** 2 + 4.0 / math.sqrt(speedup * steps)
  began = time.time()
  status = "completed"
  with open(os.path.join(workdir, "metrics.jsonl"), "a") as metrics:
    for step in range(start + 1, steps + 1):
      time.sleep(sleep)
      if lr == 0.1 and step == 2:
        import signal
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        time.sleep(3600)
      if lr == 0.5 and step == 2:
        print("fake trainer: simulated crash", file=sys.stderr)
        sys.exit(1)
      loss = final + 3.0 * (1 - step / steps)
      if lr == 0.3 and step >= 3:
        loss = float("nan")
      if lr == 0.2:
        loss = 9.0
        time.sleep(0.1)
      metrics.write(json.dumps({"step": step, "loss": loss, "tokens_per_s": 1000.0 / speedup}) + "\n")
      if step % eval_every == 0 or step == steps:
        metrics.write(json.dumps({"step": step, "eval_loss": loss}) + "\n")
      metrics.flush()
      if not math.isfinite(loss):
        status = "diverged"
        break
      if storage_out_at and step == storage_out_at and not resumed:
        with open(checkpoint, "w") as f:
          json.dump({"step": step}, f)
        print("error: storage did not answer within 3 s; rerun to resume", file=sys.stderr)
        sys.exit(3)
      if preempt_at and step == preempt_at and not resumed:
        with open(checkpoint, "w") as f:
          json.dump({"step": step}, f)
        status = "preempted"
        break
  summary = dict(final_eval_loss=final if status == "completed" else float("nan"),
                 steps=step, tokens=step * 64, wall_time_s=time.time() - began, params=1234,
                 loss_floor=1.5, status=status, config=config)
  atomic_files.write_json(os.path.join(workdir, "summary.json"), summary)   # as the trainer does
  if events:
    with open(events, "a") as f:
      f.write(f"end {trial} {time.time()}\n")


if __name__ == "__main__":
  main(sys.argv[1], sys.argv[2])
