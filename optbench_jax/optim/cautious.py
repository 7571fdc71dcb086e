"""Cautious optimizers (Liang et al. 2024, "Cautious Optimizers: Improving
Training with One Line of Code", arXiv:2411.16085).

Keep only the coordinates of the optimizer's update direction u that agree in
sign with the current gradient g, and rescale to preserve the update's size:

    phi = 1[u * g > 0]                          (per coordinate)
    u'  = u * phi / max(mean(phi), eps)         (mean per parameter tensor)

``cautious(inner)`` wraps any optax transformation. Sign convention: by default
``inner`` is a *direction* transformation (a ``scale_by_*``: its output points
along the gradient and is later multiplied by ``-learning_rate``), so agreement
is ``u * g > 0``. For a complete optimizer (``optax.adam(...)``, whose output is
already the step ``-lr * u`` added to the parameters), pass
``inner_is_step=True``: agreement is then ``step * g < 0``. Comparing signs,
not magnitudes, makes the mask independent of the (positive) learning rate.

``c_adamw`` / ``c_lion`` mask the Adam / Lion direction only; decoupled weight
decay is added afterwards, unmasked, exactly as the paper's C-AdamW code
(which decays the weights separately and masks ``exp_avg / denom``). The mean
of the mask is taken per parameter tensor as in that code, where every layer
is a tensor of its own: a stacked ``(L, ...)`` leaf with ``batch_axes`` 1 is L
tensors, each normalised by its own mean (a mean over the whole stack would
let one layer's agreement rescale another's step). The paper's code normalises by
``numel / (sum + 1)``; we use ``1 / max(mean, eps)`` (the form of its Algorithm
and of our REFERENCE), which differs only by the ``+1`` (< 1e-6 relative on
real-sized tensors).

Cost: mean(phi) must be known before any coordinate is written, so the mask is
one more pass over the tensor, not one more elementwise op. On XLA:CPU the bare
C-AdamW update moves 60 bytes per parameter against AdamW's 40 (1.5x; 52 B, 1.3x,
is the floor), and the full train step is 1.00-1.03x AdamW's (BUILD_NOTES, the
cautious step-time measurements).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optbench_jax.optim import hyperparams, labels, sign
from optbench_jax.optim.scaling import decay_and_scale
from optbench_jax.optim import width_rules


class CautiousState(NamedTuple):
  inner_state: Any


def cautious_mask(update: jax.Array, grad: jax.Array, eps: float = 1e-8,
                  inner_is_step: bool = False, sign_source: jax.Array | None = None,
                  n_batch: int = 0) -> jax.Array:
  """Returns ``update`` masked to the coordinates aligned with ``grad``, rescaled.

  ``sign_source``: an array with the signs of ``update`` (default ``update``
  itself), e.g. Adam's first moment for the Adam direction. ``n_batch``:
  leading batch axes (stacked layers); the mean of the mask is taken over the
  other axes, once per layer.
  """
  source = update if sign_source is None else sign_source
  agree = (source * grad < 0) if inner_is_step else (source * grad > 0)
  axes = tuple(range(n_batch, update.ndim))
  kept = jnp.mean(agree.astype(jnp.float32), axis=axes, keepdims=True)
  return jnp.where(agree, update * (1.0 / jnp.maximum(kept, eps)), 0).astype(update.dtype)


def cautious(inner: optax.GradientTransformation, eps: float = 1e-8, *,
             inner_is_step: bool = False, sign_source: Callable[[Any], Any] | None = None,
             batch_axes: labels.BatchAxesSpec = None) -> optax.GradientTransformationExtraArgs:
  """Applies the Cautious mask to the output of any ``inner`` transformation.

  Args:
    inner: the transformation whose update is masked (extra args are forwarded).
    eps: > 0, floor of the fraction of kept coordinates.
    inner_is_step: ``inner`` already includes ``-learning_rate`` (a full optax
      optimizer) rather than being a ``scale_by_*`` direction.
    sign_source: optional ``inner_state -> tree`` whose leaves have the signs
      of ``inner``'s output (after its update), read instead of the output for
      the mask. A speed option: the mask pass then reads an array the update
      writes anyway (C-AdamW: Adam's first moment), so XLA need not store the
      direction for a second pass (it saves a read and a write of the direction
      per parameter on XLA:CPU).
    batch_axes: leading stacked axes per leaf (int, pytree or callable, see
      ``labels``); every layer of a stack is masked and rescaled on its own.
  """
  hyperparams.check_positive("eps", eps)
  inner = optax.with_extra_args_support(inner)
  axes_of = labels.batch_axes_fn(batch_axes)

  def init_fn(params):
    return CautiousState(inner_state=inner.init(params))

  def update_fn(updates, state, params=None, **extra_args):
    out, inner_state = inner.update(updates, state.inner_state, params, **extra_args)
    sources = out if sign_source is None else sign_source(inner_state)
    out = jax.tree_util.tree_map_with_path(
        lambda path, u, g, s: cautious_mask(u, g, eps, inner_is_step, s, axes_of(path, u)),
        out, updates, sources)
    return out, CautiousState(inner_state=inner_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def c_adamw(learning_rate: Any, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
            eps_root: float = 0.0, mu_dtype: Any = None, weight_decay: Any = 1e-4,
            mask: Any = None, cautious_eps: float = 1e-8,
            batch_axes: labels.BatchAxesSpec = None) -> optax.GradientTransformationExtraArgs:
  """C-AdamW: the Cautious mask on the Adam direction, then decoupled weight decay.

  Arguments as :func:`optbench_jax.optim.adamw`; ``cautious_eps`` floors the
  fraction of kept coordinates; ``batch_axes`` (leading stacked axes, see
  ``labels``) makes every layer of a stack a tensor of its own for the mask.
  """
  hyperparams.check_beta("b1", b1)
  hyperparams.check_beta("b2", b2)
  hyperparams.check_positive("eps", eps)
  hyperparams.check_non_negative("eps_root", eps_root)
  hyperparams.check_positive("cautious_eps", cautious_eps)
  # The Adam direction mu_hat / (sqrt(nu_hat) + eps) has the signs of mu (eps > 0,
  # bias corrections > 0), so the mask reads mu (sign_source). Exact, except
  # where the direction underflows to 0 while mu does not: such a coordinate
  # counts as kept in mean(phi) (its update is 0 either way).
  return optax.chain(
      cautious(optax.scale_by_adam(b1=b1, b2=b2, eps=eps, eps_root=eps_root,
                                   mu_dtype=mu_dtype), cautious_eps,
               sign_source=lambda state: state.mu, batch_axes=batch_axes),
      decay_and_scale(learning_rate, weight_decay, mask),
  )


def c_lion(learning_rate: Any, b1: float = 0.9, b2: float = 0.99, mu_dtype: Any = None,
           weight_decay: Any = 1e-3, mask: Any = None, cautious_eps: float = 1e-8,
           batch_axes: labels.BatchAxesSpec = None) -> optax.GradientTransformationExtraArgs:
  """C-Lion: the Cautious mask on the Lion direction, then decoupled weight decay.

  Arguments as :func:`optbench_jax.optim.lion`; ``cautious_eps`` and
  ``batch_axes`` as in :func:`c_adamw`.
  """
  hyperparams.check_beta("b1", b1)
  hyperparams.check_beta("b2", b2)
  hyperparams.check_positive("cautious_eps", cautious_eps)
  return optax.chain(
      cautious(sign.scale_by_lion(b1, b2, mu_dtype), cautious_eps, batch_axes=batch_axes),
      decay_and_scale(learning_rate, weight_decay, mask),
  )


# How each factory's learning rate moves with width (width_rules).
width_rules.declare(c_adamw, width_rules.ELEMENTWISE)
width_rules.declare(c_lion, width_rules.ELEMENTWISE)
