"""Training dynamics: per-matrix weight and update norms every ``train.dynamics_every`` steps.

For every parameter leaf, and for leaves stacked along the layer axis
(``params['layers']``, leading axis L; MoE experts add a second stacked axis
that stays inside the layer's tensor) for every layer index, with
theta = theta_t (before the step), theta' = theta_{t+1} (after), and
D = theta' - theta the update the step actually applied:

    weight_norm     = ||theta'||_F
    update_norm     = ||D||_F
    relative_update = ||D||_F / ||theta||_F
    angular_update  = angle(theta, theta') = arccos(<theta, theta'> / (||theta|| ||theta'||))
    update_rms      = ||D||_F / sqrt(numel)                    (2-D matrices only)
    update_top_sv   = sigma_max(D), K power iterations          (2-D matrices only)

The angle is computed as 2 atan2(||u - u'||, ||u + u'||) with u = theta/||theta||,
u' = theta'/||theta'|| (Kahan, "How futile are mindless assessments of roundoff",
2006, section 12): the same angle, but accurate for the tiny angles of one step,
where the arccos of a float32 cosine near 1 cannot resolve angles below ~3e-4
rad. The top singular value is the Rayleigh estimate ||D v_K|| after K = 8
power iterations on D^T D from a fixed Gaussian start (PRNGKey(0)):
deterministic, a lower bound that converges as (sigma_2 / sigma_1)^(2K) (the
spectral norm is what Muon-type optimizers control; Bernstein and Newhouse
2024, "Old optimizer, new norm", arXiv 2409.20325).

Keys: ``dynamics/<path>/<metric>`` with the path's keys joined by '.', the
layer index after ``layers`` (``dynamics/layers.3.attn.q_proj.kernel/angular_update``).
The measurement is its own jitted function of (params before, params after):
the train step is untouched, and with ``dynamics_every = 0`` nothing here runs.
The loop copies the parameters before a measured step (the step donates them).
"""

from __future__ import annotations

import collections
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from optbench_jax import models
from optbench_jax import storage
from optbench_jax.optim import labels

PREFIX = "dynamics/"
POWER_ITERATIONS = 8
METRICS = ("weight_norm", "update_norm", "relative_update", "angular_update", "update_rms",
           "update_top_sv")
PLOTTED = ("relative_update", "angular_update")


def _name(keys: tuple[str, ...], layer: int | None) -> str:
  if layer is None:
    return ".".join(keys)
  at = keys.index("layers") + 1
  return ".".join((*keys[:at], str(layer), *keys[at:]))


def _top_singular_value(d: jax.Array) -> jax.Array:
  """sigma_max of each [..., m, n] matrix, by power iteration (module docstring)."""
  v = jax.random.normal(jax.random.PRNGKey(0), d.shape[-1:], jnp.float32)
  v = jnp.broadcast_to(v / jnp.linalg.norm(v), (*d.shape[:-2], d.shape[-1]))

  def body(_, v):
    w = jnp.einsum("...mn,...m->...n", d, jnp.einsum("...mn,...n->...m", d, v))
    return w / jnp.maximum(jnp.linalg.norm(w, axis=-1, keepdims=True), 1e-30)

  v = jax.lax.fori_loop(0, POWER_ITERATIONS, body, v)
  return jnp.linalg.norm(jnp.einsum("...mn,...n->...m", d, v), axis=-1)


def _leaf_metrics(before: jax.Array, after: jax.Array, stacked: bool) -> dict[str, jax.Array]:
  """The metrics of one leaf: scalars, or [L] vectors for a layer-stacked leaf."""
  old, new = before.astype(jnp.float32), after.astype(jnp.float32)
  delta = new - old
  axes = tuple(range(1 if stacked else 0, old.ndim))

  def norm(x):
    return jnp.sqrt(jnp.sum(jnp.square(x), axis=axes))

  old_norm, new_norm, update_norm = norm(old), norm(new), norm(delta)
  tiny = jnp.float32(1e-30)

  def unit(x, n):
    return x / jnp.maximum(n, tiny).reshape(n.shape + (1,) * (x.ndim - n.ndim))

  u, u_new = unit(old, old_norm), unit(new, new_norm)
  values = dict(weight_norm=new_norm, update_norm=update_norm,
                relative_update=update_norm / jnp.maximum(old_norm, tiny),
                angular_update=2 * jnp.arctan2(norm(u - u_new), norm(u + u_new)))
  if old.ndim - (1 if stacked else 0) == 2:
    numel = old.shape[-1] * old.shape[-2]
    values.update(update_rms=update_norm / np.sqrt(numel),
                  update_top_sv=_top_singular_value(delta))
  return values


def measure(before: Any, after: Any) -> dict[str, jax.Array]:
  """``{"dynamics/<path>/<metric>": float32 scalar}`` for the step ``before -> after``."""
  out = {}
  stacked = models.param_batch_axes(before)
  for (path, old), new, n_stacked in zip(jax.tree_util.tree_flatten_with_path(before)[0],
                                          jax.tree.leaves(after), jax.tree.leaves(stacked)):
    keys = labels.path_keys(path)
    values = _leaf_metrics(old, new, n_stacked > 0)
    layers = range(old.shape[0]) if n_stacked > 0 else [None]
    for layer in layers:
      name = _name(keys, layer)
      for metric, value in values.items():
        out[f"{PREFIX}{name}/{metric}"] = value if layer is None else value[layer]
  return out


def make_measure(param_shardings: Any, mesh) -> tuple[Callable, Callable]:
  """``(copy, measure)``, jitted: ``copy(params)`` keeps theta_t past the donating step,
  ``measure(before, after)`` gives the replicated scalars of :func:`measure`."""
  copy = jax.jit(lambda p: jax.tree.map(jnp.copy, p), in_shardings=(param_shardings,),
                 out_shardings=param_shardings)
  measured = jax.jit(measure, in_shardings=(param_shardings, param_shardings),
                     out_shardings=NamedSharding(mesh, P()))
  return copy, measured


class Recorder:
  """The loop's side: every ``every`` steps (0 = never) copy theta_t before the step,
  measure after it, and write the record once pulled to the host (``write``: the loop
  calls it after dispatching the next step, so the device never waits for Python)."""

  def __init__(self, every: int, param_shardings: Any, mesh, writer):
    self.every, self.writer = every, writer
    self._copy, self._measure = make_measure(param_shardings, mesh) if every else (None, None)
    self._before = None
    self._pending = None   # (step, device values) measured, not yet written

  def before_step(self, step: int, params: Any) -> None:
    """Before the step that takes ``step`` to ``step + 1`` (it donates ``params``)."""
    if self.every and (step + 1) % self.every == 0:
      self._before = self._copy(params)

  def after_step(self, step: int, params: Any) -> None:
    if self._before is not None:
      self._pending = (step, self._measure(self._before, params))
      self._before = None

  def write(self) -> None:
    if self._pending is not None:
      step, values = self._pending
      self.writer.write(step, to_record(jax.device_get(values)))
      self._pending = None


def to_record(values: dict) -> dict[str, float]:
  """Host floats of :func:`measure`'s output, keys in order (a metrics.jsonl record)."""
  return {k: float(np.asarray(v)) for k, v in sorted(values.items())}


def layer_kind(name: str) -> str:
  """``layers.3.attn.q_proj.kernel`` -> ``layers.attn.q_proj.kernel`` (no layer index)."""
  return ".".join(part for part in name.split(".") if not part.isdigit())


def kind_series(records: Iterable[dict], metric: str) -> dict[str, list[tuple[int, float]]]:
  """``{layer kind: [(step, mean over its layers of metric)]}`` from metrics records."""
  series = collections.defaultdict(list)
  suffix = f"/{metric}"
  for record in records:
    per_kind = collections.defaultdict(list)
    for key, value in record.items():
      if key.startswith(PREFIX) and key.endswith(suffix):
        per_kind[layer_kind(key[len(PREFIX):-len(suffix)])].append(value)
    for kind, values in per_kind.items():
      series[kind].append((record["step"], float(np.mean(values))))
  return dict(sorted(series.items()))


def plot(records: Iterable[dict], out_path: str, title: str = "") -> bool:
  """Relative and angular update against step, one line per layer kind (mean over its
  layers); False (nothing written) when the records hold no dynamics."""
  records = [r for r in records if any(k.startswith(PREFIX) for k in r)]
  if not records:
    return False
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, axes = plt.subplots(1, len(PLOTTED), figsize=(7 * len(PLOTTED), 4.8), squeeze=False)
  for ax, metric in zip(axes[0], PLOTTED):
    for i, (kind, points) in enumerate(kind_series(records, metric).items()):
      steps, values = zip(*points)   # past the 10 default colours, a new line style
      ax.plot(steps, values, ("-", "--", ":")[i // 10 % 3], lw=1.1, label=kind)
    if ax.lines and all(np.min(np.asarray(line.get_ydata())) > 0 for line in ax.lines):
      ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(metric.replace("_", " ") + (" (rad)" if metric == "angular_update" else ""))
    ax.set_title(f"{title}: {metric.replace('_', ' ')}" if title else metric)
    ax.grid(alpha=0.3, which="both")
  axes[0][-1].legend(fontsize=6, loc="best")
  fig.tight_layout()
  with storage.local_file_for_writing(out_path) as local:
    fig.savefig(local, dpi=120, format="png")
  plt.close(fig)
  return True
