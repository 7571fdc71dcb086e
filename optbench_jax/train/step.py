"""The jitted train and eval steps.

Train step, for a global batch split into A = ``grad_accum_steps`` micro-batches:

    g = (1/A) sum_a grad L_a(params),  L = lm_loss (+ z-loss) + MoE aux losses
    updates, opt_state = tx.update(g, opt_state, params[, hessian_grads=h])
    params = params + updates

    params = qk_clip(params, S, tau)                   (only if optimizer.qk_clip_tau > 0)
    averages = update(averages, params, step + 1)      (only if train.weight_averaging is on)

where ``tx`` already chains global-norm clipping before the optimizer, and
S [L, H] is the largest pre-softmax attention logit per layer and head of the
step's forward passes (the max over micro-batches, not the mean;
``train/qk_clip.py``; the model reports it only when QK-clip is on).
Micro-batches run in a ``lax.scan`` so that memory is one micro-batch's
activations. Each micro-batch takes every A-th row of the global batch
(reshape [B, S] -> [B/A, A, S]), so the rows a device holds stay on it.

Every optimizer's ``update`` also gets two functions it may call (optax extra
arguments; optimizers that do not take them never see them):

* ``hessian_grads_fn()``: the gradient of the LM loss on labels sampled from
  the model's own logits ("Gauss-Newton-Bartlett", Sophia-G, Liu et al. 2024,
  Alg. 2), over the whole batch. Nothing is computed unless the optimizer
  calls it; Sophia calls it inside its own refresh ``lax.cond``, so its
  ``update_interval`` alone decides when the extra backward pass runs.
* ``obj_fn(params)``: the training loss of the current batch (Sophia-H's
  Hessian-vector products).

Metrics: ``grad_norm`` = ||g|| (before clipping) and ``update_norm`` =
||params_new - params|| in float32, the change the step applied (before
QK-clip). The norm of ``updates`` itself would equal it up to the rounding of
params + updates (relative 1e-6 for fp32 params and Adam-sized steps), but
it is dearer: ``updates`` then has a second reader and XLA:CPU stores it
instead of fusing it into the parameter write, which cost 8-10% of the 124M
CPU step (BUILD_NOTES, CPU throughput). A non-finite update still shows as a
non-finite ``update_norm`` (the loop's divergence check).

The step is one ``jax.jit`` with the state donated; shardings of state and
batch are given explicitly (the state's from ``state.state_shardings``).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from optbench_jax import models
from optbench_jax.models import losses
from optbench_jax.train import metrics as metrics_lib
from optbench_jax.train import qk_clip
from optbench_jax.train import weight_averaging
from optbench_jax.train.optimizer import Optimizer, eval_params
from optbench_jax.train.state import TrainState

AUX_KEYS = ("moe_aux_loss", "router_z_loss")


def split_micro_batches(batch: dict, accum: int, mesh, batch_spec: P) -> dict:
  """[B, ...] -> [A, B/A, ...]: micro-batch a holds rows a, a+A, a+2A, ..."""
  def split(x):
    x = x.reshape(x.shape[0] // accum, accum, *x.shape[1:]).swapaxes(0, 1)
    spec = P(None, *batch_spec) if len(batch_spec) else P()
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))
  return jax.tree.map(split, batch)


def accumulate(fn: Callable, params: Any, batch: dict, accum: int, mesh,
               batch_spec: P, *args) -> Any:
  """Mean of ``fn(params, micro_batch, *args)`` (any pytree) over ``accum`` micro-batches."""
  return accumulate_mean_max(lambda *a: (fn(*a), None), params, batch, accum, mesh,
                             batch_spec, *args)[0]


def accumulate_mean_max(fn: Callable, params: Any, batch: dict, accum: int, mesh,
                        batch_spec: P, *args) -> tuple[Any, Any]:
  """``fn(params, micro_batch, *args) -> (m, x)``: (mean of m, elementwise max of x) over
  the ``accum`` micro-batches (x: e.g. the attention max logits)."""
  if accum == 1:
    return fn(params, batch, *args)
  micro = split_micro_batches(batch, accum, mesh, batch_spec)

  def body(carry, micro_batch):
    mean_part, max_part = fn(params, micro_batch, *args)
    return (jax.tree.map(jnp.add, carry[0], mean_part),
            jax.tree.map(jnp.maximum, carry[1], max_part)), None

  first = jax.eval_shape(fn, params, jax.tree.map(lambda x: x[0], micro), *args)
  init = (jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), first[0]),
          jax.tree.map(lambda s: jnp.full(s.shape, -jnp.inf, s.dtype), first[1]))
  (total, maximum), _ = jax.lax.scan(body, init, micro)
  return jax.tree.map(lambda x: x / accum, total), maximum


def make_loss_fn(model, z_loss: float) -> Callable:
  """``(params, batch) -> (total loss, (cross-entropy, aux losses, attention max logits))``.

  The max logits are the model's ``aux['attn_max_logits']`` [L, H], or None
  when the model does not report them.
  """
  def loss_fn(params, batch):
    logits, model_aux = model.apply({"params": params}, batch["inputs"])
    loss, parts = losses.lm_loss(logits, batch["targets"], batch.get("mask"), z_loss=z_loss)
    aux = {key: jnp.asarray(model_aux.get(key, 0.0), jnp.float32) for key in AUX_KEYS}
    return loss + sum(aux.values()), (parts["cross_entropy"], aux,
                                      model_aux.get("attn_max_logits"))
  return loss_fn


def make_sampled_label_loss(model) -> Callable:
  """``(params, batch, key) -> LM loss on labels drawn from the model's own softmax``."""
  def loss_fn(params, batch, key):
    logits, _ = model.apply({"params": params}, batch["inputs"])
    labels = jax.random.categorical(key, jax.lax.stop_gradient(logits).astype(jnp.float32))
    loss, _ = losses.lm_loss(logits, labels, batch.get("mask"))
    return loss
  return loss_fn


def make_train_step(model, model_spec: models.ModelSpec, optimizer: Optimizer, config, mesh,
                    state_shardings: TrainState, batch_sharding: NamedSharding) -> Callable:
  """``train_step(state, batch) -> (state, TrainMetrics)``, jitted, state donated."""
  accum = config.data.grad_accum_steps
  batch_spec = batch_sharding.spec
  tau = float(config.optimizer.qk_clip_tau)
  spec = model_spec
  if tau > 0 and not getattr(model, "report_max_logits", False):
    raise ValueError("optimizer.qk_clip_tau > 0 needs a model built with "
                     "report_max_logits=True (train.build does this)")
  loss_fn = make_loss_fn(model, spec.z_loss)
  value_and_grad = jax.value_and_grad(loss_fn, has_aux=True)
  sampled_grad_fn = jax.grad(make_sampled_label_loss(model))
  hessian_key = jax.random.PRNGKey(config.seed + 1)
  averaging = weight_averaging.Spec.from_config(config.train)

  def grad_fn(params, batch):   # -> (mean part, max part) for accumulate_mean_max
    (loss, (lm, aux, max_logits)), grads = value_and_grad(params, batch)
    return ((loss, (lm, aux)), grads), (max_logits if tau > 0 else None)

  def train_step(state: TrainState, batch: dict):
    ((loss, (lm, aux)), grads), max_logits = accumulate_mean_max(
        grad_fn, state.params, batch, accum, mesh, batch_spec)
    key = jax.random.fold_in(hessian_key, state.step)

    def hessian_grads_fn():
      return accumulate(sampled_grad_fn, state.params, batch, accum, mesh, batch_spec, key)

    def obj_fn(params):
      return accumulate(lambda p, b: loss_fn(p, b)[0], params, batch, accum, mesh, batch_spec)

    updates, opt_state = optimizer.tx.update(grads, state.opt_state, state.params,
                                             hessian_grads_fn=hessian_grads_fn, obj_fn=obj_fn)
    params = optax.apply_updates(state.params, updates)
    applied = jax.tree.map(lambda new, old: new.astype(jnp.float32) - old.astype(jnp.float32),
                           params, state.params)
    values = dict(loss=loss, lm_loss=lm, grad_norm=optax.tree.norm(grads),
                  update_norm=optax.tree.norm(applied),
                  lr=jnp.asarray(optimizer.schedule(state.step), jnp.float32), **aux)
    collection = metrics_lib.TrainMetrics
    if tau > 0:
      params = qk_clip.clip(params, max_logits, tau, spec.num_heads, spec.num_kv_heads)
      values.update(max_attn_logit=jnp.max(max_logits),
                    qk_clipped_heads=qk_clip.clipped_heads(max_logits, tau))
      collection = metrics_lib.QKClipTrainMetrics
    step_metrics = collection.single_from_model_output(**values)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    if averaging.enabled:
      new_state = new_state.replace(averages=weight_averaging.update(
          averaging, state.averages, params, new_state.step))
    return new_state, step_metrics

  replicated = NamedSharding(mesh, P())
  return jax.jit(train_step, in_shardings=(state_shardings, batch_sharding),
                 out_shardings=(state_shardings, replicated), donate_argnums=0)


def make_eval_step(model, optimizer: Optimizer, mesh, state_shardings: TrainState,
                   batch_sharding: NamedSharding, readout: str = "raw") -> Callable:
  """``eval_step(state, batch) -> EvalMetrics`` (token-weighted; padding masked out).

  ``readout``: "raw" evaluates the optimizer's eval parameters (its ``eval_params``
  hook, else the parameters); "ema" / "tail" the state's weight average of that name.
  """
  def eval_step(state: TrainState, batch: dict):
    if readout == "raw":
      params = eval_params(state.opt_state, state.params)
    else:
      params = weight_averaging.as_params(state.averages[readout], state.params)
    logits, _ = model.apply({"params": params}, batch["inputs"])
    mask = batch.get("mask")
    loss, _ = losses.lm_loss(logits, batch["targets"], mask)
    tokens = (jnp.sum(mask.astype(jnp.float32)) if mask is not None
              else jnp.asarray(batch["targets"].size, jnp.float32))
    loss_sum = jnp.where(tokens > 0, loss * tokens, 0.0)
    return metrics_lib.EvalMetrics.single_from_model_output(loss_sum=loss_sum, tokens=tokens)

  replicated = NamedSharding(mesh, P())
  return jax.jit(eval_step, in_shardings=(state_shardings, batch_sharding),
                 out_shardings=replicated)
