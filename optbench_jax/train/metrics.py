"""Training metrics: clu collections, MFU, device memory, JSONL / TensorBoard, plots.

The train step returns a ``clu.metrics`` collection per step; the loop merges
them over a log interval and writes one JSON object per record to
``<workdir>/metrics.jsonl`` (``{"step", "loss", ...}`` for training,
``{"step", "eval_loss", ...}`` for evaluation). ``clu.metric_writers`` imports
TensorFlow, so the JSONL writer is our own; TensorBoard event files are added
when ``tensorboardX`` is installed (local workdirs only). Only process 0 writes.

On a ``gs://`` workdir, where objects cannot be appended to, the writer keeps
the run's records in memory and rewrites the whole ``metrics.jsonl`` object
(one atomic upload) at its flush points: every checkpoint save (the loop calls
``flush``), at most ``flush_interval_s`` after a record, and on close. So the
object always holds every record up to the newest checkpoint, which is what a
resume keeps (``truncate_after``); a killed process loses only records past its
last checkpoint, which the resumed run rewrites. The total upload grows
quadratically with the run's records, but at one rewrite per 30 s or
checkpoint that is a few MB per rewrite even for 10^4 records.

MFU = model FLOPs per token x tokens/s / peak FLOP/s. Model FLOPs per token
are counted as MaxText does (``models.flops.flops_per_token``: 6 N_matmul plus
causal attention; optimizer FLOPs excluded). The peak is the dense bf16 figure
of the accelerator times the device count, or on CPU the float32 matmul rate
measured at start-up (virtual CPU devices share the host's cores, so the host
peak is not multiplied by the device count).
"""

# No `from __future__ import annotations`: clu reads the metric classes from the
# dataclass annotations at run time.
import functools
import json
import math
import os
import time
from typing import Any, Iterable

import flax
import jax
import jax.numpy as jnp
import numpy as np
from clu import metrics as clu_metrics

from optbench_jax import storage
from optbench_jax import workdir_files


@flax.struct.dataclass
class TrainMetrics(clu_metrics.Collection):
  loss: clu_metrics.Average.from_output("loss")
  lm_loss: clu_metrics.Average.from_output("lm_loss")
  moe_aux_loss: clu_metrics.Average.from_output("moe_aux_loss")
  router_z_loss: clu_metrics.Average.from_output("router_z_loss")
  grad_norm: clu_metrics.Average.from_output("grad_norm")
  update_norm: clu_metrics.Average.from_output("update_norm")
  lr: clu_metrics.LastValue.from_output("lr")


@flax.struct.dataclass
class Maximum(clu_metrics.Metric):
  """The largest value seen (merges by max)."""
  value: jax.Array

  @classmethod
  def from_model_output(cls, value: jax.Array, **_) -> "Maximum":
    return cls(value=jnp.asarray(value, jnp.float32))

  def merge(self, other: "Maximum") -> "Maximum":
    return type(self)(value=jnp.maximum(self.value, other.value))

  def compute(self) -> jax.Array:
    return self.value


# TrainMetrics of a run with QK-clip (optimizer.qk_clip_tau > 0; train/qk_clip.py):
# ``max_attn_logit``, the largest pre-softmax attention logit (any layer and head)
# of the interval's forward passes, before clipping; ``qk_clipped_heads``, the
# (layer, head) pairs clipped per step, interval mean. (clu reads a collection's
# fields from its own annotations, so this is a new collection, not a subclass.)
QKClipTrainMetrics = clu_metrics.Collection.create(
    **TrainMetrics.__annotations__,
    max_attn_logit=Maximum.from_output("max_attn_logit"),
    qk_clipped_heads=clu_metrics.Average.from_output("qk_clipped_heads"))


@flax.struct.dataclass
class TokenAverage(clu_metrics.Average):
  """Token-weighted mean from per-batch ``loss_sum`` and ``tokens`` (padding excluded)."""

  @classmethod
  def from_model_output(cls, loss_sum: jax.Array, tokens: jax.Array, **_) -> "TokenAverage":
    return cls(total=loss_sum.astype(jnp.float32), count=tokens.astype(jnp.int32))


@flax.struct.dataclass
class EvalMetrics(clu_metrics.Collection):
  eval_loss: TokenAverage


def merge(total: Any, update: Any) -> Any:
  return update if total is None else total.merge(update)


def to_floats(computed: dict) -> dict:
  return {k: float(np.asarray(v)) for k, v in computed.items()}


# Dense bf16 peak FLOP/s per device, matched against ``device.device_kind``
# (lower case, first match wins).
PEAK_FLOPS = (
    ("h200", 989e12), ("h100", 989e12), ("gh200", 989e12), ("a100", 312e12),
    ("l4", 121e12), ("a10", 125e12), ("v100", 125e12),
    ("tpu v6", 918e12), ("tpu v5p", 459e12), ("tpu v5 lite", 197e12), ("tpu v5e", 197e12),
    ("tpu v5", 459e12), ("tpu v4", 275e12), ("tpu v3", 123e12),
)


@functools.lru_cache(maxsize=None)
def measure_matmul_peak(size: int = 2048, repeats: int = 3) -> float:
  """FLOP/s of a jitted float32 ``size^3`` matmul on the default device (best of ``repeats``)."""
  a = jnp.ones((size, size), jnp.float32)
  matmul = jax.jit(lambda x, y: x @ y)
  matmul(a, a).block_until_ready()
  best = math.inf
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a, a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * size**3 / best


def device_peak_flops(device) -> float | None:
  kind = device.device_kind.lower()
  for name, flops in PEAK_FLOPS:
    if name in kind:
      return flops
  return None


def peak_flops(devices: list) -> tuple[float, str]:
  """Total peak FLOP/s of ``devices`` and where the figure comes from."""
  if devices[0].platform == "cpu":
    return measure_matmul_peak(), "measured fp32 matmul (host)"
  per_device = device_peak_flops(devices[0])
  if per_device is None:
    return measure_matmul_peak() * len(devices), f"measured fp32 matmul x {len(devices)}"
  return per_device * len(devices), f"{devices[0].device_kind} bf16 table x {len(devices)}"


def device_memory() -> dict:
  """Bytes in use / peak on the most loaded local device (empty where unsupported)."""
  in_use, peak = [], []
  for device in jax.local_devices():
    try:
      stats = device.memory_stats()
    except Exception:  # pylint: disable=broad-except
      stats = None
    if stats:
      in_use.append(stats.get("bytes_in_use", 0))
      peak.append(stats.get("peak_bytes_in_use", 0))
  if not in_use:
    return {}
  return {"memory_bytes_in_use": max(in_use), "memory_peak_bytes": max(peak)}


class MetricsWriter:
  """Appends records to ``metrics.jsonl`` (and TensorBoard when available, and ``sink``:
  anything with ``log(step, values)``, e.g. ``wandb_sink.WandbSink``); process 0 only."""

  def __init__(self, workdir: str, enabled: bool = True, flush_interval_s: float = 30.0,
               sink: Any = None):
    self.enabled = enabled
    self.sink = sink if enabled else None
    self.path = workdir_files.path(workdir, workdir_files.METRICS)
    self.remote = storage.is_remote(workdir)
    self.flush_interval_s = flush_interval_s
    self._records: list[dict] | None = None   # gs:// only: the whole file, in memory
    self._dirty, self._flushed_at = False, time.monotonic()
    self._tb = None
    if enabled and not self.remote:
      try:
        import tensorboardX  # pylint: disable=import-outside-toplevel
        self._tb = tensorboardX.SummaryWriter(os.path.join(workdir, "tensorboard"))
      except ImportError:
        pass

  def _remote_records(self) -> list[dict]:
    if self._records is None:
      self._records = read_records(self.path) if storage.exists(self.path) else []
    return self._records

  def truncate_after(self, step: int) -> None:
    """Drops records an interrupted or finished earlier process wrote past ``step``.

    That is every record past ``step`` and the final-eval record at ``step``
    (the run now resuming there will write its own). A torn last line (the
    process was killed or the disk filled mid-write) is dropped too. The file is
    replaced atomically, so a kill during this rewrite loses nothing.
    """
    if not self.enabled or not storage.exists(self.path):
      return
    kept = [r for r in read_records(self.path)
            if r["step"] < step or (r["step"] == step and "full_eval" not in r)]
    if self.remote:
      self._records = kept
    storage.write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))

  def write(self, step: int, values: dict) -> None:
    if not self.enabled:
      return
    record = {"step": int(step), **values}
    if self.remote:
      self._remote_records().append(record)
      self._dirty = True
      if time.monotonic() - self._flushed_at >= self.flush_interval_s:
        self.flush()
    else:
      with open(self.path, "a") as f:
        f.write(json.dumps(record) + "\n")
    if self._tb is not None:
      for key, value in values.items():
        if isinstance(value, (int, float)):
          self._tb.add_scalar(key, value, step)
    if self.sink is not None:
      self.sink.log(step, values)

  def flush(self) -> None:
    """Uploads the records (gs://: one whole-object rewrite); local appends need nothing."""
    if self.enabled and self.remote and self._dirty:
      storage.write_text(self.path, "".join(json.dumps(r) + "\n" for r in self._records))
      self._dirty, self._flushed_at = False, time.monotonic()

  def close(self) -> None:
    self.flush()
    if self._tb is not None:
      self._tb.close()


def read_records(path: str) -> list[dict]:
  """The records of the metrics.jsonl at ``path`` (``workdir_files.parse_metrics``)."""
  return workdir_files.parse_metrics(storage.read_text(path))


def plot_loss_curve(records: Iterable[dict], out_path: str, loss_floor: float | None = None,
                    title: str = "") -> None:
  """Train and eval loss against step, with the corpus's entropy floor when known.

  The loss falls by most of its range in the first steps, which on a linear axis
  squeezes the approach to the floor into a thin band: the loss is drawn on a
  log axis, and with a known floor a second panel shows the gap to it (loss -
  floor, log scale), the part that tells optimizers apart.
  """
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  records = list(records)
  train = [(r["step"], r["loss"]) for r in records if "loss" in r]
  evals = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
  panels = 2 if loss_floor is not None else 1
  fig, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 4.5), squeeze=False)
  ax = axes[0][0]
  if train:
    ax.plot(*zip(*train), label="train loss", lw=1.2)
  if evals:
    ax.plot(*zip(*evals), "o-", label="eval loss", lw=1.2, ms=4)
  if loss_floor is not None:
    ax.axhline(loss_floor, color="k", ls="--", lw=0.8, label=f"entropy floor {loss_floor:.3f}")
  if all(v > 0 for _, v in train + evals):
    ax.set_yscale("log")
  ax.set_xlabel("step")
  ax.set_ylabel("loss (nats/token)")
  ax.set_title(title)
  ax.grid(alpha=0.3, which="both")
  ax.legend()
  if loss_floor is not None:
    gap_ax = axes[0][1]
    for points, style, label in ((train, "-", "train"), (evals, "o-", "eval")):
      gaps = [(s, v - loss_floor) for s, v in points if v - loss_floor > 0]
      if gaps:
        gap_ax.plot(*zip(*gaps), style, label=f"{label} loss - floor", lw=1.2, ms=4)
    gap_ax.set_yscale("log")
    gap_ax.set_xlabel("step")
    gap_ax.set_ylabel("gap to the entropy floor (nats/token)")
    gap_ax.set_title("gap to the floor")
    gap_ax.grid(alpha=0.3, which="both")
    if gap_ax.lines:
      gap_ax.legend()
  fig.tight_layout()
  with storage.local_file_for_writing(out_path) as local:
    fig.savefig(local, dpi=120, format="png")
  plt.close(fig)
