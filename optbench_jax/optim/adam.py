"""AdamW and NAdamW (Loshchilov & Hutter 2019; Dozat 2016).

With g_t the gradient, t >= 1:

    m_t = b1 m_{t-1} + (1 - b1) g_t            v_t = b2 v_{t-1} + (1 - b2) g_t^2
    m^_t = m_t / (1 - b1^t)                     v^_t = v_t / (1 - b2^t)
    u_t  = m^_t / (sqrt(v^_t + eps_root) + eps)
    p_t  = p_{t-1} - lr_t (u_t + wd p_{t-1})

NAdamW replaces m^_t by the Nesterov look-ahead
``b1 m_t / (1 - b1^{t+1}) + (1 - b1) g_t / (1 - b1^t)``.

Both are recipes over ``optax.scale_by_adam`` and so match ``optax.adamw`` /
``optax.nadamw`` with the same arguments bit for bit; they add argument
validation and accept a schedule for ``weight_decay``.
"""

from __future__ import annotations

from typing import Any

import optax

from optbench_jax.optim import hyperparams
from optbench_jax.optim.scaling import decay_and_scale
from optbench_jax.optim import width_rules


def _check_adam(b1, b2, eps, eps_root):
  hyperparams.check_beta("b1", b1)
  hyperparams.check_beta("b2", b2)
  hyperparams.check_positive("eps", eps)
  hyperparams.check_non_negative("eps_root", eps_root)


def adamw(learning_rate: Any, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
          eps_root: float = 0.0, mu_dtype: Any = None, weight_decay: Any = 1e-4,
          mask: Any = None, *, nesterov: bool = False
          ) -> optax.GradientTransformationExtraArgs:
  """AdamW. ``mask`` (pytree of bools or callable) selects the decayed leaves.

  Args:
    learning_rate: scalar or schedule, >= 0.
    b1, b2: moment decay rates in [0, 1) (defaults 0.9, 0.999).
    eps: > 0, added to sqrt(v^). eps_root: >= 0, added inside the sqrt.
    mu_dtype: dtype of the first moment (default: the parameter's).
    weight_decay: >= 0, scalar or schedule, multiplied by the learning rate.
    mask: which leaves are decayed (see ``labels.weight_decay_mask``).
    nesterov: use the NAdam first moment.
  """
  _check_adam(b1, b2, eps, eps_root)
  return optax.chain(
      optax.scale_by_adam(b1=b1, b2=b2, eps=eps, eps_root=eps_root, mu_dtype=mu_dtype,
                          nesterov=nesterov),
      decay_and_scale(learning_rate, weight_decay, mask),
  )


def nadamw(learning_rate: Any, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
           eps_root: float = 0.0, mu_dtype: Any = None, weight_decay: Any = 1e-4,
           mask: Any = None) -> optax.GradientTransformationExtraArgs:
  """NAdamW: AdamW with the Nesterov first moment (as ``optax.nadamw``)."""
  return adamw(learning_rate, b1, b2, eps, eps_root, mu_dtype, weight_decay, mask,
               nesterov=True)


# How each factory's learning rate moves with width (width_rules).
width_rules.declare(adamw, width_rules.ELEMENTWISE)
width_rules.declare(nadamw, width_rules.ELEMENTWISE)
