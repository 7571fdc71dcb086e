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
from optbench_jax.optim.adam_mini import adam_mini
from optbench_jax.optim.adamuon import adamuon
from optbench_jax.optim.ademamix import ademamix
from optbench_jax.optim.adopt import adopt
from optbench_jax.optim.evaluation import eval_params
from optbench_jax.optim.cautious import c_adamw, c_lion, cautious
from optbench_jax.optim.conda import conda
from optbench_jax.optim.dion import dion
from optbench_jax.optim.hyperball import adamh, hyperball, muonh
from optbench_jax.optim.mars import mars
from optbench_jax.optim.muon import d_muon, muon
from optbench_jax.optim.normuon import normuon
from optbench_jax.optim.prodigy import prodigy
from optbench_jax.optim.schedule_free import schedule_free_adamw, schedule_free_eval_params
from optbench_jax.optim.scion import scion
from optbench_jax.optim.sign import lion, signum
from optbench_jax.optim.kron import kron
from optbench_jax.optim.soap import soap
from optbench_jax.optim.sophia import sophia
from optbench_jax.optim.splus import splus
from optbench_jax.optim.labels import label_params, weight_decay_mask
from optbench_jax.optim.registry import create, names, register
