"""A user's optimizer in about 20 lines: AdamW whose update is rescaled to unit RMS per tensor.

  python -m optbench_jax.optim.check examples.my_optimizer:rms_adamw --tree=small
  python -m trainers.sweep --config=examples/sweep_my_optimizer.py --workdir=runs/mine
"""

import jax
import jax.numpy as jnp
import optax


def scale_by_unit_rms(batch_axes=None, eps: float = 1e-8) -> optax.GradientTransformation:
  """u / max(rms(u), eps) per tensor; a stacked leaf's leading ``batch_axes`` are separate tensors."""
  def unit(u, n):
    axes = tuple(range(n, u.ndim))
    return u / jnp.maximum(jnp.sqrt(jnp.mean(jnp.square(u), axis=axes, keepdims=True)), eps)

  def update_fn(updates, state, params=None):
    del params
    axes = (jax.tree.map(lambda _: batch_axes or 0, updates)
            if batch_axes is None or isinstance(batch_axes, int) else batch_axes)
    return jax.tree.map(unit, updates, axes), state
  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def rms_adamw(learning_rate, weight_decay: float = 0.0, b1: float = 0.9, b2: float = 0.99,
              mask=None, batch_axes=None) -> optax.GradientTransformation:
  """AdamW direction, unit RMS per tensor, decoupled weight decay, then -learning_rate."""
  return optax.chain(optax.scale_by_adam(b1=b1, b2=b2), scale_by_unit_rms(batch_axes),
                     optax.add_decayed_weights(weight_decay, mask),
                     optax.scale_by_learning_rate(learning_rate))
