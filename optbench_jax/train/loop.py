"""``run(config, workdir)``: the training loop, from config to ``summary.json``.

Order of work: validate the config, build the mesh, check the batch split, the
model, the optimizer (registry errors) and the data directory -- all before
anything is compiled. Then restore the latest checkpoint of ``workdir`` (or
initialise), train, evaluate every ``eval_every`` steps on ``eval_batches``
validation batches plus a full validation pass at the end, checkpoint every
``checkpoint_every`` steps and at the end, and write ``metrics.jsonl``,
``loss_curve.png`` and ``summary.json``. Weight averages
(``train.weight_averaging``) are evaluated in the same passes, as their own keys
(``eval_loss_ema``, ``eval_loss_tail``; summary ``final_eval_loss_ema`` /
``final_eval_loss_tail``); ``final_eval_loss`` is always the raw weights'.
Every ``train.dynamics_every`` steps the parameters before the step are copied
and ``train/dynamics.py`` measures the step's weight and update norms in its own
jitted function (the train step is unchanged); the record is written once the
next step is dispatched, and ``dynamics.png`` at the end. With
``logging.wandb`` on, process 0 also logs every record to Weights & Biases
(``train/wandb_sink.py``; a missing ``wandb`` fails before compiling).

Downstream tasks (``train.downstream``): this layer cannot run lm-eval (it sits
below ``evaluate``), so the caller passes ``run(..., downstream=evaluator)``, a
callable ``(params, step, model_spec, mesh) -> {task: {metric: value}}``
(``trainers.lm`` builds ``evaluate.in_training.DownstreamEvaluator``, whose
checks fail before training). It is called with the live parameters every
``train.downstream.every`` steps and once after the final eval; each result is a
``metrics.jsonl`` record ``downstream/<task>/<metric>`` at its step, and the
last one is the summary's ``downstream``. Tasks set without an evaluator are a
ConfigError. A SIGTERM before the final downstream evaluation stops the run as
preempted (rerun to evaluate); one during it waits for it.

Stops: SIGTERM saves a checkpoint and returns ``status="preempted"``, also
when it arrives during the final eval or save. With several processes a SIGTERM
to any of them goes through JAX's preemption sync point instead: every process
stops and saves at the same step (one arriving during the final eval lets the
eval finish). A dead process makes the others exit non-zero once JAX's
coordination heartbeat times out (``trainers.lm --heartbeat_timeout_s``); a NaN/Inf loss or update, or a training loss above 2 ln(vocab_size)
(worse than twice a uniform guess: the run left its healthy range), stops the
run with ``status="diverged"`` (the rule: ``optbench_jax/divergence.py``) without saving, so every kept checkpoint
(``kept_checkpoints`` in the summary) predates the divergence.

Reliability: the work directory is locked (``workdir_lock``), the
config is checked against the run's record (``run_record``), the data and the
checkpoints directory are checked before compiling (``preflight``), a damaged
newest checkpoint falls back to the previous one (``checkpoint``), a
rerun of a completed run reports it unchanged, and on a ``gs://`` work
directory no wait on storage outlasts ``train.storage_timeout_s``: the process
then exits with status 3 and one line (``storage_deadline``).

The loop dispatches step t+1 before pulling step t's metrics to the host, so
the device never waits for Python; it synchronises only at log, eval and
checkpoint steps.
"""

from __future__ import annotations

import logging as pylogging
import signal
import threading
import time
from typing import Any, Callable

import jax
import numpy as np
from absl import logging

from optbench_jax import data as data_lib
from optbench_jax import divergence
from optbench_jax import models
from optbench_jax import storage
from optbench_jax import workdir_files
from optbench_jax import workdir_lock
from optbench_jax.models import flops as flops_lib
from optbench_jax.train import assembly
from optbench_jax.train import branching
from optbench_jax.train import checkpoint as checkpoint_lib
from optbench_jax.train import dynamics as dynamics_lib
from optbench_jax import config as config_lib
from optbench_jax.train import mesh as mesh_lib
from optbench_jax.train import metrics as metrics_lib
from optbench_jax.train import preflight
from optbench_jax.train import profiling
from optbench_jax.train import run_record
from optbench_jax.train import storage_deadline
from optbench_jax.train import wandb_sink
from optbench_jax.train import weight_averaging
from optbench_jax.config import ConfigError

COMPLETED, DIVERGED, PREEMPTED = "completed", "diverged", "preempted"
DOWNSTREAM_PREFIX = "downstream/"   # metrics.jsonl keys downstream/<task>/<metric>

# (params, step, model_spec, mesh) -> {task: {metric: value}}: see the module docstring.
DownstreamEvaluator = Callable[[Any, int, Any, Any], dict]


class _StopSignal:
  """Turns SIGTERM into a flag the loop polls (the handler itself does no work).

  One process only. With several, each process could see its signal at a
  different step, so the stop must be agreed: JAX's preemption notifier (set up
  by ``jax.distributed.initialize``) catches SIGTERM instead, and the loop polls
  ``Checkpointer.reached_preemption(step)``, which is true on every process at the
  same step. Installing a Python handler there would replace JAX's.
  """

  def __init__(self, enabled: bool = True, waiting_on=lambda: None):
    """``waiting_on()``: the wait on storage in progress, if any, for the log line."""
    self.received = False
    self._previous = None
    self._enabled = enabled
    self._waiting_on = waiting_on

  def __enter__(self):
    if self._enabled and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    waiting = self._waiting_on()
    logging.warning("received signal %d: checkpointing and stopping%s", signum,
                    f" once storage answers: {waiting}" if waiting else "")
    self.received = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


class _DropOrbaxInfo(pylogging.Filter):
  def filter(self, record):
    return record.levelno >= pylogging.WARNING or "orbax" not in record.pathname


def _quiet_orbax() -> None:
  """Orbax logs several INFO lines per save through absl; keep its warnings only."""
  absl_logger = logging.get_absl_logger()
  if not any(isinstance(f, _DropOrbaxInfo) for f in absl_logger.filters):
    absl_logger.addFilter(_DropOrbaxInfo())


def _drain(checkpointer) -> None:
  """Closes ``checkpointer`` after a failure, waiting for its background writes; never raises."""
  try:
    checkpointer.close()
  except Exception:  # pylint: disable=broad-except  (the original error is the one to report)
    pass


def _to_global(batch: dict, sharding) -> dict:
  """Host-local numpy batch -> global jax.Arrays laid out by ``sharding``."""
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}


def run(config: Any, workdir: str, devices: list | None = None,
        allow_config_change: bool = False,
        downstream: DownstreamEvaluator | None = None) -> dict:
  """Trains ``config`` in ``workdir`` (resuming from its latest checkpoint); returns the summary.

  ``devices``: the devices of the mesh (default: all of ``jax.devices()``).
  ``allow_config_change``: resume although the config differs from the run's
  record (the change is recorded); otherwise such a resume raises ConfigError.
  ``downstream``: the evaluator of ``train.downstream.tasks`` (module docstring);
  required when tasks are set, ignored otherwise.
  Holds the work directory's lock throughout; a ConfigError leaves no empty
  work directory behind.
  """
  started = time.time(), time.perf_counter()
  devices = list(jax.devices() if devices is None else devices)
  run_ = assembly.build(config, devices)
  wandb_sink.check(run_.config)
  if config_lib.downstream_tasks(run_.config) and downstream is None:
    raise ConfigError("config.train.downstream.tasks is set but no evaluator was passed to "
                      "train.run: train through python -m trainers.lm, or pass downstream="
                      "optbench_jax.evaluate.in_training.DownstreamEvaluator(config)")
  if not config_lib.downstream_tasks(run_.config):
    downstream = None
  workdir = preflight.workdir_path(workdir)
  deadline = storage_deadline.StorageDeadline(workdir, run_.config.train.storage_timeout_s)
  created, lock, setup_failed = not storage.exists(workdir), None, False
  if jax.process_index() == 0:
    storage.makedirs(workdir)
    lock = workdir_lock.for_directory(workdir, "trainer", log=logging.warning,
                                      **deadline.lock_options()).acquire()
  try:
    with deadline.running(lock):
      return _run(run_, workdir, devices, allow_config_change, started, downstream, deadline)
  except ConfigError:
    setup_failed = True
    raise
  finally:
    if lock is not None:
      lock.release()
    if setup_failed and created:
      for leftover in (storage.join(workdir, "checkpoints"), workdir):
        storage.remove_empty_dir(leftover)


def _run(run_: assembly.Run, workdir: str, devices: list, allow_config_change: bool,
         started: tuple[float, float], downstream: DownstreamEvaluator | None,
         deadline: storage_deadline.StorageDeadline) -> dict:
  start_time, start_perf = started
  _quiet_orbax()
  is_writer = jax.process_index() == 0
  config, mesh, batch_sharding = run_.config, run_.mesh, run_.batch_sharding
  manifest = preflight.prepare_data(config, workdir)
  d, t = config.data, config.train
  micro_batch = d.global_batch_size // d.grad_accum_steps
  train_iter = data_lib.make_train_iterator(
      str(manifest.directory), seq_len=d.seq_len, global_batch_size=d.global_batch_size,
      seed=d.shuffle_seed, process_index=jax.process_index(),
      process_count=jax.process_count(), prefetch_threads=d.prefetch_threads)
  if is_writer:
    preflight.check_writable(storage.join(workdir, "checkpoints"))
  checkpointer = checkpoint_lib.Checkpointer(workdir, keep=t.keep_checkpoints,
                                             keep_steps=t.keep_steps, bound=deadline.bound)
  deadline.committed_step = lambda: checkpointer.committed_step
  latest = checkpointer.latest_step()
  if latest is None and t.branch_from:
    branching.check(config)   # before anything is compiled or restored
  run_record.check(workdir, config.to_dict(), latest, allow_config_change, logging.warning,
                   write=is_writer)
  preflight.check_resume_step(latest, t.steps)
  previous_summary = run_record.previous_summary(workdir)
  if run_record.already_completed(previous_summary, latest, t.steps) and not allow_config_change:
    logging.warning("%s already holds the completed run (%d steps, final eval loss %s); "
                    "reporting it unchanged", workdir, t.steps,
                    previous_summary["final_eval_loss"])
    checkpointer.close()
    return previous_summary
  if latest is not None:
    logging.info("restoring step %d from %s", latest, checkpointer.directory)
  resumed_from, state = checkpointer.restore_latest(
      run_.state_target(), train_iter, log=logging.error,
      primary=is_writer)
  if resumed_from is None and t.branch_from:
    state = branching.restore(config, run_.state_target(), train_iter)
    logging.info("branching from step %d of %s", t.branch_step, t.branch_from)
    if is_writer:
      branching.copy_metrics(config, workdir)
      run_record.note_branch(workdir, dict(workdir=storage.resolve(t.branch_from),
                                           step=t.branch_step))
  elif resumed_from is None:
    state = run_.create_state()
  step = int(jax.device_get(state.step))
  profiler = profiling.StepProfiler(t.profile and is_writer, workdir, step, t.steps)

  sink = wandb_sink.start(config, workdir) if is_writer else None
  writer = metrics_lib.MetricsWriter(workdir, enabled=is_writer, sink=sink)
  writer.truncate_after(step)
  train_step, eval_step = run_.train_step, run_.eval_step

  tokens_per_step = d.global_batch_size * d.seq_len
  flops_per_token = float(flops_lib.flops_per_token(run_.model_spec, d.seq_len))
  peak, peak_source = metrics_lib.peak_flops(devices)
  n_params = models.count_params(run_.model_spec)["total"]
  logging.info("%s: %s parameters, %.4g FLOPs/token, mesh %s, peak %.4g FLOP/s (%s)",
               config.model.kind, f"{n_params:,}", flops_per_token, dict(mesh.shape), peak,
               peak_source)

  def evaluate(max_batches, stop=None, averages=()):
    """``{"eval_loss": raw loss, "eval_loss_<average>": ...}`` for the weight averages
    named, in one pass over the data; None when ``stop`` (SIGTERM) arrives during it."""
    it = data_lib.make_eval_iterator(
        str(manifest.directory), seq_len=d.seq_len, batch_size=micro_batch,
        process_index=jax.process_index(), process_count=jax.process_count(),
        max_batches=max_batches)
    steps = {"eval_loss": eval_step,
             **{f"eval_loss_{name}": run_.average_eval_steps[name] for name in averages}}
    totals = dict.fromkeys(steps)
    for batch in it:
      if stop is not None and stop.received:
        return None
      batch = _to_global(batch, batch_sharding)
      for key, step_fn in steps.items():
        totals[key] = metrics_lib.merge(totals[key], jax.device_get(step_fn(state, batch)))
    return {key: metrics_lib.to_floats(total.compute())["eval_loss"]
            for key, total in totals.items()}

  def evaluate_downstream(at_step):
    """Runs the downstream tasks on the live parameters and writes their record."""
    scores = downstream(state.params, at_step, run_.model_spec, mesh)
    writer.write(at_step, {f"{DOWNSTREAM_PREFIX}{task}/{metric}": value
                           for task, metrics in scores.items() for metric, value in metrics.items()})
    logging.info("step %d | downstream %s", at_step, "; ".join(
        f"{task} " + ", ".join(f"{m} {v:.4f}" for m, v in metrics.items())
        for task, metrics in scores.items()))
    return scores

  downstream_every = t.downstream.every if downstream is not None else 0
  final_downstream = None
  dynamics = dynamics_lib.Recorder(t.dynamics_every, run_.state_shardings.params, mesh, writer)
  status, message = COMPLETED, ""
  final_evals = None
  pending, throughput, compile_time = None, [], None
  pending_steps = 0   # steps merged into ``pending``
  last_eval = None
  # Throughput counts only time spent training: eval and checkpoint time and the
  # first (compiling) step are excluded.
  interval_start, synced_step, timed_steps, timed_seconds = time.perf_counter(), step, 0, 0.0
  previous = None   # (step, device metrics) dispatched but not yet checked
  diverged_at = None
  healthy_loss_limit = divergence.healthy_limit(config.model.vocab_size)

  def check(step_metrics_pair):
    """Pulls one step's metrics to the host and merges them; False if not finite or if the
    loss left its healthy range."""
    nonlocal pending, pending_steps, diverged_at
    done_step, device_metrics = step_metrics_pair
    host = jax.device_get(device_metrics)
    values = (host.loss.total, host.update_norm.total, host.grad_norm.total)
    if not all(np.isfinite(v) for v in values):
      diverged_at = done_step
      return False, f"non-finite loss or update at step {done_step}"
    loss = float(np.asarray(host.loss.compute()))
    why = divergence.reason(loss, done_step, healthy_loss_limit,
                            limit_name="2 ln(vocab_size): the run left the healthy range")
    if why:
      diverged_at = done_step
      return False, why
    pending = metrics_lib.merge(pending, host)
    pending_steps += 1
    return True, ""

  def log(at_step):
    """Writes the metrics merged since the last record (and the throughput, if timed)."""
    nonlocal pending, pending_steps, timed_steps, timed_seconds
    if pending is None:
      return
    values = metrics_lib.to_floats(pending.compute())
    if pending_steps != t.log_every:
      # A shorter window than the others (after a resume or a stop, or the last record): the
      # averages are over these many steps.
      values["window_steps"] = pending_steps
    if timed_steps and timed_seconds > 0:
      step_time = timed_seconds / timed_steps
      tokens_per_s = tokens_per_step / step_time
      values.update(step_time_s=step_time, tokens_per_s=tokens_per_s,
                    mfu=flops_per_token * tokens_per_s / peak)
      throughput.append((timed_steps, tokens_per_s))
      timed_steps, timed_seconds = 0, 0.0
    values.update(metrics_lib.device_memory())
    writer.write(at_step, values)
    logging.info("step %d/%d | loss %.4f | lr %.3g | grad %.3g%s", at_step, t.steps,
                 values["loss"], values["lr"], values["grad_norm"],
                 f" | {values['tokens_per_s']:.0f} tok/s | MFU {values['mfu']:.1%}"
                 if "mfu" in values else "")
    pending, pending_steps = None, 0

  try:
    with _StopSignal(enabled=jax.process_count() == 1,
                     waiting_on=deadline.waiting_on) as stop:
      while step < t.steps:
        if stop.received or (jax.process_count() > 1 and checkpointer.reached_preemption(step)):
          ok, message = check(previous) if previous is not None else (True, "")
          previous = None
          if not ok:
            status = DIVERGED
            break
          dynamics.write()
          log(step)
          checkpointer.save(step, state, train_iter)
          writer.flush()
          status, message = PREEMPTED, f"stopped by signal at step {step}; checkpoint saved"
          break
        batch = _to_global(next(train_iter), batch_sharding)
        profiler.before_step(step)
        dynamics.before_step(step, state.params)
        state, device_metrics = train_step(state, batch)
        step += 1
        profiler.after_step(step, state)
        if previous is not None:   # step - 1 is done or nearly: check it while `step` runs
          ok, message = check(previous)
          if not ok:
            status = DIVERGED
            break
          dynamics.write()
        dynamics.after_step(step, state.params)
        previous = (step, device_metrics)

        is_last = step == t.steps
        log_now = step % t.log_every == 0 or is_last
        eval_now = t.eval_every > 0 and step % t.eval_every == 0 and not is_last
        downstream_now = downstream_every > 0 and step % downstream_every == 0 and not is_last
        save_now = ((t.checkpoint_every > 0 and step % t.checkpoint_every == 0) or is_last
                    or step in checkpointer.keep_steps)
        if not (log_now or eval_now or downstream_now or save_now or compile_time is None):
          continue
        ok, message = check(previous)
        previous = None
        if not ok:
          status = DIVERGED
          break
        dynamics.write()
        now = time.perf_counter()
        if compile_time is None:   # the first step of this process: compile + run
          compile_time = now - start_perf
        else:
          timed_seconds += now - interval_start
          timed_steps += step - synced_step
        synced_step = step
        if log_now:
          log(step)
        if eval_now:
          evals = evaluate(t.eval_batches, averages=run_.averaging.reported_at(step))
          last_eval = evals["eval_loss"]
          writer.write(step, {**evals, "eval_batches": t.eval_batches})
          logging.info("step %d | eval loss %.4f%s", step, last_eval, _averages_text(evals))
        if downstream_now:
          evaluate_downstream(step)
        if save_now:
          checkpointer.save(step, state, train_iter)
          writer.flush()
        interval_start = time.perf_counter()

      final_eval = None
      if status == COMPLETED:
        checkpointer.save(step, state, train_iter)   # on disk (async) before the long final eval
        writer.flush()
        final_evals = evaluate(None if t.full_eval_at_end else t.eval_batches, stop,
                               averages=run_.averaging.readouts)
        final_eval = None if final_evals is None else final_evals["eval_loss"]
        if final_eval is None:
          status, message = PREEMPTED, (f"stopped by signal during the final eval at step {step}; "
                                        "the final checkpoint is saved: rerun to evaluate")
        else:
          writer.write(step, {**final_evals, "full_eval": bool(t.full_eval_at_end)})
          floor = manifest.loss_floor_nats
          logging.info("final eval loss %.4f (%s)%s%s", final_eval,
                       "full validation split" if t.full_eval_at_end else
                       f"{t.eval_batches} batches",
                       "" if floor is None else
                       f"; loss floor {floor:.4f}, gap {final_eval - floor:.4f}",
                       _averages_text(final_evals))
          if downstream is not None and stop.received:
            status, message = PREEMPTED, (f"stopped by signal before the final downstream "
                                          f"evaluation at step {step}; the final checkpoint is "
                                          "saved: rerun to evaluate")
          elif downstream is not None:
            final_downstream = evaluate_downstream(step)
      elif status == DIVERGED:
        step = diverged_at if diverged_at is not None else step
      profiler.stop()
      checkpointer.wait()   # a SIGTERM now only sets the flag: the save completes
      kept = sorted(checkpointer.manager.all_steps())
      if status == DIVERGED:
        logging.error("training diverged: %s; kept checkpoints %s (all from before step %d) in %s",
                      message, kept, step, checkpointer.directory)
      checkpointer.close()
  except BaseException:
    # Let orbax's background writes finish (or fail) before the error reaches the caller,
    # so their own error output cannot come after the run's one `error:` line.
    profiler.stop()
    _drain(checkpointer)
    raise

  weighted = sum(n for n, _ in throughput)
  mean_tps = sum(n * tps for n, tps in throughput) / weighted if weighted else None
  summary = dict(
      status=status, message=message, final_eval_loss=final_eval, last_eval_loss=last_eval,
      **{f"final_eval_loss_{name}": (final_evals or {}).get(f"eval_loss_{name}")
         for name in weight_averaging.READOUTS},
      steps=step, tokens=step * tokens_per_step, wall_time_s=time.time() - start_time,
      compile_time_s=compile_time, resumed_from_step=resumed_from, params=n_params,
      branched_from=(run_record.read_record(workdir) or {}).get("branched_from"),
      loss_floor=manifest.loss_floor_nats, flops_per_token=flops_per_token,
      tokens_per_s=mean_tps, mfu=mean_tps * flops_per_token / peak if mean_tps else None,
      peak_flops=peak, peak_flops_source=peak_source, devices=len(devices),
      processes=jax.process_count(), mesh={a: int(mesh.shape[a]) for a in mesh_lib.AXES},
      workdir=workdir, config=config.to_dict(), kept_checkpoints=kept,
      diverged_at_step=diverged_at if status == DIVERGED else None)
  if downstream is not None:
    summary["downstream"] = final_downstream
  if resumed_from is not None and resumed_from == step:   # trained no step here
    run_record.carry_over(summary, previous_summary)
  if is_writer:
    writer.flush()
    records = workdir_files.read_metrics(workdir)
    title = f"{config.model.kind} / {config.optimizer.name}"
    metrics_lib.plot_loss_curve(records, workdir_files.path(workdir, workdir_files.LOSS_CURVE),
                                manifest.loss_floor_nats, title=title)
    if t.dynamics_every:
      dynamics_lib.plot(records, workdir_files.path(workdir, workdir_files.DYNAMICS_PLOT), title)
    storage.write_json(workdir_files.path(workdir, workdir_files.SUMMARY), summary, indent=2, default=str)
    if sink is not None:
      sink.finish(summary)
  writer.close()
  return summary


def _averages_text(evals: dict) -> str:
  """`` | ema 3.1234 | tail 3.1200``: the weight averages' eval losses, for the log line."""
  return "".join(f" | {key[len('eval_loss_'):]} {value:.4f}" for key, value in evals.items()
                 if key != "eval_loss")


def outcome_line(summary: dict) -> str:
  """The run's outcome in one line: status, steps, final eval loss and its gap to the loss
  floor when the corpus has one (4 decimals, as the log lines)."""
  line = f"{summary['status']}: {summary['steps']} steps"
  final, floor = summary.get("final_eval_loss"), summary.get("loss_floor")
  if final is not None:
    line += f", final eval loss {final:.4f}"
    if floor is not None:
      line += f" (loss floor {floor:.4f}, gap {final - floor:.4f})"
  elif summary.get("message"):
    line += f" ({summary['message']})"
  return line + f", workdir {summary['workdir']}"

