"""optbench_jax.optim: optax-compatible optimizers for LLM pretraining.

Every optimizer is an ``optax.GradientTransformationExtraArgs`` recipe built
from a ``scale_by_<name>`` transformation with a NamedTuple state, followed by
decoupled weight decay and the learning rate. ``names()`` lists them and
``create(name, **hparams)`` builds one by name.
"""

from optbench_jax.optim import hyperparams
from optbench_jax.optim import labels
from optbench_jax.optim import schedules
from optbench_jax.optim.adam import adamw, nadamw
from optbench_jax.optim.labels import label_params, weight_decay_mask
from optbench_jax.optim.registry import create, names
