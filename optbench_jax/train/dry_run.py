"""``dry_run(config)``: sizes, FLOPs and per-device memory of a run, nothing allocated."""

from __future__ import annotations

import dataclasses
from typing import Any

from optbench_jax import models
from optbench_jax.config import ConfigError
from optbench_jax.models import flops as flops_lib
from optbench_jax.models import sharding as sharding_lib
from optbench_jax.train import assembly
from optbench_jax.train import memory as memory_lib
from optbench_jax.train import mesh as mesh_lib
from optbench_jax.train import state as state_lib


def dry_run(config: Any, devices: list | None = None, device: str | None = None) -> dict:
  """Parameter count, FLOPs/token and per-device memory: params, optimizer state, gradients and
  activations (``train/memory.py``), and whether that fits each device of ``memory.DEVICES``.

  Uses ``jax.eval_shape`` only. When the config's mesh is larger than the local
  devices (e.g. planning a TPU pod run from a laptop) the figures are computed
  on an abstract mesh of the config's shape. ``device`` (e.g. 'h100'): check
  that device only, with ``model.attention_impl`` resolved for its platform
  (default: all of them; the attention of this machine's backend for the
  activation figure). A device it does not fit gets a WARNING line naming the
  remat / attention setting that fits.
  """
  if device is not None and device not in memory_lib.DEVICES:
    raise ConfigError(f"--dry_run_device={device!r}: one of {sorted(memory_lib.DEVICES)}")
  run_ = assembly.build(config, devices, abstract=True)
  config, mesh, abstract, shardings = (run_.config, run_.mesh, run_.abstract_state,
                                       run_.state_shardings)
  device_count = int(mesh.size)
  d = config.data
  report = dict(
      params=models.count_params(run_.model_spec)["total"],
      flops_per_token=float(flops_lib.flops_per_token(run_.model_spec, config.data.seq_len)),
      mesh={a: int(mesh.shape[a]) for a in mesh_lib.AXES}, devices=device_count,
      optimizer=config.optimizer.name,
      param_bytes_per_device=state_lib.per_device_bytes(abstract.params, shardings.params),
      opt_state_bytes_per_device=state_lib.per_device_bytes(abstract.opt_state,
                                                            shardings.opt_state),
      param_bytes_total=state_lib.total_bytes(abstract.params),
      opt_state_bytes_total=state_lib.total_bytes(abstract.opt_state))
  batch_shards = sharding_lib.batch_shards(mesh)
  micro_per_device = d.global_batch_size / d.grad_accum_steps / batch_shards
  grads = report["param_bytes_per_device"] * (2 if d.grad_accum_steps > 1 else 1)
  fixed = report["param_bytes_per_device"] + report["opt_state_bytes_per_device"] + grads
  qk_clip = config.optimizer.qk_clip_tau > 0
  tensor = int(mesh.shape["tensor"])
  activations = memory_lib.activation_bytes(run_.model_spec, d.seq_len, micro_per_device,
                                            run_.attention_impl, tensor, qk_clip)
  fits = {name: memory_lib.check_fit(name, run_.model_spec, d.seq_len, micro_per_device, tensor,
                                     fixed, qk_clip)
          for name in ([device] if device else memory_lib.DEVICES)}
  report.update(grad_bytes_per_device=grads, attention_impl=run_.attention_impl,
                remat=config.model.remat, activation_bytes_per_device=activations["total"],
                total_bytes_per_device=fixed + activations["total"],
                fits={name: dataclasses.asdict(f) for name, f in fits.items()})
  gib = 2.0**30
  counts = models.count_params(run_.model_spec)
  print(f"model: {config.model.kind}, {counts['total']:,} parameters "
        f"({counts['non_embedding'] / 1e6:.1f}M non-embedding), "
        f"{report['flops_per_token']:.4g} FLOPs/token (seq_len {config.data.seq_len})\n"
        f"mesh: {report['mesh']} ({device_count} devices), micro-batch {micro_per_device:g} x "
        f"{d.seq_len} tokens per device, remat={config.model.remat}\n"
        f"per device, any accelerator: params {report['param_bytes_per_device'] / gib:.3f} GiB, "
        f"optimizer state ({config.optimizer.name}) "
        f"{report['opt_state_bytes_per_device'] / gib:.3f} GiB, gradients {grads / gib:.3f} GiB "
        f"= {fixed / gib:.3f} GiB, plus activations:")
  if device is None:
    print(f"  this machine ({sharding_lib.platform_of(mesh)}, attention={run_.attention_impl}): "
          f"activations {activations['total'] / gib:.3f} GiB, "
          f"{report['total_bytes_per_device'] / gib:.3f} GiB per device in all")
  for name, fit in fits.items():
    where = f"{name} ({fit.hbm_bytes / gib:.0f} GiB HBM, {memory_lib.USABLE_FRACTION:.0%} usable)"
    if fit.fits:
      print(f"  {where}: {fit.needed_bytes / gib:.1f} GiB per device in all, with the attention "
            f"for its platform: fits")
    else:
      print(f"WARNING: {where}: {fit.needed_bytes / gib:.1f} GiB per device in all, with the "
            f"attention for its platform: does not fit; {fit.advice}")
  return report
