r"""Coordinate check: activation sizes across widths (or depths) during the first steps.

  python -m optbench_jax.bench.coord_check --config=configs/tiny.py --widths=32,64,128,256 \
      --steps=10 --out=runs/coord_check --config.model.parametrization=mup
  python -m optbench_jax.bench.coord_check --config=configs/tiny.py --depths=2,4,8 ...

The check of Tensor Programs V (Yang & Hu et al. 2021, arXiv 2203.03466,
Sec. D.1 / Fig. 5) and of CompleteP (Dey et al. 2025, arXiv 2505.01618) for
depth: train the config's model at each width (``model.d_model``) or depth
(``model.num_layers``) for a few steps with the config's optimizer, the
trainer's assembled run and jitted step (``train.assembly.build``; the
trainer's data pipeline; no checkpoints, nothing written but the results), and
record on a fixed probe batch (the first training batch) after t = 0..steps
steps, per kind of activation x_t:

  activation_rms = sqrt(mean(x_t^2)),   update_rms = sqrt(mean((x_t - x_0)^2)).

Kinds (``LanguageModel(report_activations=True)``): ``embedding`` (the embedding
output, after its multiplier), ``attention_output`` and ``mlp_output`` (each
branch's output before the residual-branch multiplier, RMS over all layers),
``residual_stream`` (after the last block, before the final norm) and ``logits``.
Under a parametrization that transfers, every curve is flat in width (depth);
under ``standard`` + Adam the logits and their updates grow with width.

µP's per-parameter learning rates are the optimizer's rule (``optim/width_rules.py``),
applied by the trainer's optimizer under ``optimizer.lr_scaling="auto"`` (the default): the
check trains exactly what a run trains. ``--config.optimizer.lr_scaling=none`` shows mup
without them (Adam's hidden outputs then grow with width, as theory says). The result
records the rule applied.

Resizing: with ``--widths`` the number of heads stays the config's (head_dim
grows with width, which exercises µP's 1 / hd attention) and ``ffn_dim`` keeps
the config's ratio ffn_dim / d_model; with ``--depths`` only ``num_layers``
changes. Writes ``OUT/coord_check.json`` ``{"widths" | "depths": [...],
"activation_rms": {kind: {size: [steps + 1 values]}}, "update_rms": {...}}``
and ``OUT/coord_check.png`` (``coord_check_plot``). The initial activations
of the probe batch stay on the device: use a small batch.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Sequence


import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from optbench_jax import config as config_lib
from optbench_jax import models
from optbench_jax.models import llama

KINDS = ("embedding", "attention_output", "mlp_output", "residual_stream", "logits")
AXES = ("widths", "depths")


class CoordCheckError(ValueError):
  """A bad ``--widths`` / ``--depths`` / ``--steps`` for the config; names the flag."""


def parse_sizes(flag: str, text: str) -> list[int]:
  """``"32,64,128"`` -> [32, 64, 128]: at least two distinct positive integers."""
  try:
    sizes = [int(part) for part in str(text).split(",") if part.strip()]
  except ValueError:
    raise CoordCheckError(f"--{flag} must be comma-separated integers, got {text!r}") from None
  if len(set(sizes)) < 2 or min(sizes) < 1:
    raise CoordCheckError(f"--{flag} must hold at least two distinct integers >= 1, got {text!r}")
  return sorted(set(sizes))


def sized_config(config: ml_collections.ConfigDict, axis: str,
                 size: int) -> ml_collections.ConfigDict:
  """``config`` (resolved) at width or depth ``size`` (module docstring); checked."""
  spec = models.ModelSpec.from_config(config.model)
  sized = ml_collections.ConfigDict(config.to_dict())
  if axis == "depths":
    sized.model.num_layers = size
  else:
    if size % spec.num_heads or (size // spec.num_heads) % 2:
      raise CoordCheckError(
          f"--widths: {size} must be a multiple of 2 x model.num_heads={spec.num_heads} "
          f"(the heads are kept; head_dim = width / num_heads must be even for RoPE)")
    sized.model.update(d_model=size, ffn_dim=max(1, round(size * spec.ffn_dim / spec.d_model)))
  return config_lib.resolve(sized)


def _rms(x) -> jax.Array:
  x = x.astype(jnp.float32)
  return jnp.sqrt(jnp.mean(x * x))


def _by_kind(sown: Any) -> dict[str, jax.Array]:
  """The sown activations ``{..., kind: (x,)}`` (nested under ``layers``) by kind."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(sown)[0]:
    kind = next(k.key for k in reversed(path) if getattr(k, "key", None) in KINDS)
    out[kind] = leaf
  return out


def measure(config: ml_collections.ConfigDict, steps: int, workdir: str,
            devices: Sequence | None = None) -> tuple[dict, dict, str | None]:
  """``(activation_rms, update_rms, width_rule)``: ``{kind: [steps + 1 floats]}`` for one
  trained model, and the learning-rate rule its optimizer applied (None: none).

  ``workdir`` holds the synthetic corpus when ``data.path`` is empty (as for the trainer).
  """
  # The trainer's modules, imported here: the flags must parse before JAX starts (main).
  from optbench_jax import data as data_lib   # pylint: disable=import-outside-toplevel
  from optbench_jax.train import assembly, preflight   # pylint: disable=import-outside-toplevel
  run = assembly.build(config, devices)
  d = run.config.data
  manifest = preflight.prepare_data(run.config, workdir)
  batches = data_lib.make_train_iterator(str(manifest.directory), seq_len=d.seq_len,
                                         global_batch_size=d.global_batch_size,
                                         seed=d.shuffle_seed, process_index=0, process_count=1,
                                         prefetch_threads=0)
  model = models.build_model(run.model_spec, mesh=run.mesh, report_activations=True)

  @jax.jit
  def activations(params, inputs):
    _, sown = model.apply({"params": params}, inputs, mutable=[llama.ACTIVATIONS])
    return _by_kind(sown[llama.ACTIVATIONS])

  @jax.jit
  def stats(params, inputs, initial):
    now = activations(params, inputs)
    return ({k: _rms(x) for k, x in now.items()},
            {k: _rms(x.astype(jnp.float32) - initial[k].astype(jnp.float32))
             for k, x in now.items()})

  state = run.create_state()
  first = jax.device_put(next(batches), run.batch_sharding)
  initial = activations(state.params, first["inputs"])
  activation_rms = {kind: [] for kind in KINDS}
  update_rms = {kind: [] for kind in KINDS}
  for step in range(steps + 1):
    rms, update = jax.device_get(stats(state.params, first["inputs"], initial))
    for kind in KINDS:
      activation_rms[kind].append(float(rms[kind]))
      update_rms[kind].append(float(update[kind]))
    if step < steps:   # the step donates the state: measured first
      batch = first if step == 0 else jax.device_put(next(batches), run.batch_sharding)
      state, _ = run.train_step(state, batch)
  return activation_rms, update_rms, run.optimizer.width_rule


def coord_check(config: Any, sizes: Sequence[int], steps: int, workdir: str, axis: str = "widths",
                devices: Sequence | None = None, log=print) -> dict:
  """The coordinate check of ``config`` over ``sizes`` (``axis``: widths | depths).

  Every config is resolved and checked before anything is compiled; raises
  ConfigError / CoordCheckError naming the key or flag.
  """
  if axis not in AXES:
    raise CoordCheckError(f"axis must be one of {list(AXES)}, got {axis!r}")
  if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
    raise CoordCheckError(f"--steps must be an integer >= 1, got {steps!r}")
  base = config_lib.resolve(config)
  if devices is None:
    devices = _mesh_devices(base)
  configs = {size: sized_config(base, axis, size) for size in sizes}
  result = {axis: list(sizes), "steps": steps,
            "parametrization": base.model.parametrization,
            "optimizer": base.optimizer.name, "lr_scaling": None,
            "activation_rms": {}, "update_rms": {}}
  for kind in KINDS:
    result["activation_rms"][kind], result["update_rms"][kind] = {}, {}
  for size, sized in configs.items():
    log(f"coord_check: {axis[:-1]} {size}")
    activation_rms, update_rms, result["lr_scaling"] = measure(sized, steps, workdir, devices)
    for kind in KINDS:
      result["activation_rms"][kind][str(size)] = activation_rms[kind]
      result["update_rms"][kind][str(size)] = update_rms[kind]
  return result


def _mesh_devices(config: ml_collections.ConfigDict) -> list:
  """All devices, or the first mesh-size many when the mesh fixes its size (no -1 axis)."""
  sizes = [config.mesh[axis] for axis in ("data", "fsdp", "tensor", "expert")]
  devices = jax.devices()
  return devices if -1 in sizes else devices[:int(np.prod(sizes))]


def spread(result: dict, table: str, kind: str, step: int = -1) -> float:
  """max / min over sizes of ``result[table][kind]`` at ``step``: 1 is perfectly flat."""
  values = [series[step] for series in result[table][kind].values()]
  return max(values) / min(values)


def write(result: dict, out: str) -> tuple[str, str]:
  """Writes ``out/coord_check.json`` and ``out/coord_check.png``; returns their paths."""
  from optbench_jax.bench import coord_check_plot   # pylint: disable=import-outside-toplevel
  os.makedirs(out, exist_ok=True)
  path = os.path.join(out, "coord_check.json")
  with open(path, "w") as f:
    json.dump(result, f, indent=1)
  return path, coord_check_plot.plot(result, os.path.join(out, "coord_check.png"))


def main(argv: Sequence[str] | None = None) -> int:
  """The command line (module docstring); flags parsed here, on their own FlagValues."""
  from absl import flags   # pylint: disable=import-outside-toplevel
  from ml_collections import config_flags   # pylint: disable=import-outside-toplevel
  fv, argv = flags.FlagValues(), list(sys.argv if argv is None else argv)
  defaults = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__)))), "configs", "tiny.py")
  config_flag = config_flags.DEFINE_config_file("config", defaults, "Trainer config file.",
                                                flag_values=fv, sys_argv=argv)
  widths = flags.DEFINE_string("widths", None, "Comma-separated d_model values.", flag_values=fv)
  depths = flags.DEFINE_string("depths", None, "Comma-separated num_layers values (instead "
                               "of --widths).", flag_values=fv)
  steps = flags.DEFINE_integer("steps", 10, "Training steps per size.", flag_values=fv)
  out = flags.DEFINE_string("out", "runs/coord_check", "Output directory (and the synthetic "
                            "corpus, in OUT/data, when data.path is empty).", flag_values=fv)
  flags.DEFINE_bool("verbose", False, "Print tracebacks with errors.", flag_values=fv)
  fv(argv)
  if (widths.value is None) == (depths.value is None):
    raise CoordCheckError("give exactly one of --widths and --depths")
  axis, text = ("widths", widths.value) if widths.value is not None else ("depths", depths.value)
  result = coord_check(config_flag.value, parse_sizes(axis, text), steps.value, out.value, axis)
  for path in write(result, out.value):
    print(f"wrote {path}")
  for kind in KINDS:
    print(f"{kind:18s} last-step activation RMS, max/min over {axis}: "
          f"{spread(result, 'activation_rms', kind):.2f}")
  return 0


if __name__ == "__main__":
  from optbench_jax import cli_errors   # pylint: disable=ungrouped-imports
  cli_errors.install_excepthook()
  sys.exit(cli_errors.run(main))
