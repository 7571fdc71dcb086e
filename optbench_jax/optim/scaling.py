"""The tail every optimizer shares: decoupled weight decay, then the learning rate.

``decay_and_scale(lr, wd, mask)`` is ``chain(add_decayed_weights(wd, mask),
scale_by_learning_rate(lr))``, so the final step is

    p <- p - lr_t * (u_t + wd_t * p)

exactly as ``optax.adamw`` and ``torch.optim.AdamW`` apply it (weight decay is
multiplied by the learning rate). Both ``lr`` and ``wd`` may be schedules.
"""

from __future__ import annotations

from typing import Any

import optax

from optbench_jax.optim import hyperparams


def decay_and_scale(learning_rate: Any, weight_decay: Any = 0.0,
                    mask: Any = None) -> optax.GradientTransformation:
  """Decoupled weight decay (masked, schedulable) followed by ``-learning_rate``."""
  hyperparams.check_learning_rate("learning_rate", learning_rate)
  hyperparams.check_non_negative("weight_decay", weight_decay)
  return optax.chain(
      optax.add_decayed_weights(weight_decay, mask),
      optax.scale_by_learning_rate(learning_rate),
  )
