"""Per-parameter learning-rate and weight-decay scaling rules for transfer across width and depth.

A model trained under ``mup`` or ``completep`` (``models/parametrization.py``)
is only half of µP: the other half is how each parameter group's learning rate
(and weight decay) moves as the model widens. That depends on the optimizer, so
each optimizer family declares its rule here as data (:func:`declare`, beside
its factory); the trainer applies whichever rule the run's optimizer has and
never names an optimizer.

**The spectral condition** (Yang, Simon & Bernstein 2023, "A Spectral Condition
for Feature Learning", arXiv 2310.17813; the derivation Qiu et al., arXiv
2512.05620, carry out for Shampoo, SOAP and Muon): a hidden matrix's step should
have spectral norm ``||dW||_2 ~ sqrt(fan_out / fan_in)``. If an optimizer's
unit-learning-rate step on a ``(fan_in, fan_out)`` matrix has spectral norm
``N(fan_in, fan_out)`` (up to a constant), the learning rate of that matrix is
multiplied by

    c = [sqrt(fo / fi) / N(fi, fo)]  /  [sqrt(bfo / bfi) / N(bfi, bfo)]

with ``(bfi, bfo)`` the matrix's shape at the base width, so ``c = 1`` at the
base width (µP's base shapes: there the model is the tuned one) and every rule
only moves rates away from it. The update models ``N``:

* ``ELEMENTWISE`` (Adam, sign methods, SOAP, Sophia, ...): entries of order one
  on a low-rank gradient, ``N = sqrt(fi fo)``, so ``c = bfi / fi``: µP's Adam
  rule (Tensor Programs V, arXiv 2203.03466, Table 3). SOAP is Adam in a
  rotated basis, so it takes Adam's rule whatever its ``max_precond_dim``
  (Qiu et al.: SOAP follows Adam's µP scaling).
* ``orthogonal(s)`` (Muon family, Dion, PSGD Kron with dense factors): a
  (nearly) orthogonal step scaled by the optimizer's own shape factor
  ``s(fi, fo)``, ``N = s(fi, fo)``. Option ``spectral`` is the rule above. Option
  ``rms_match`` is Moonlight's RMS matching (Liu et al., arXiv 2502.16982): the
  step is taken as ``0.2 sqrt(max(fi, fo))`` times the orthogonal factor, whose
  RMS equals AdamW's, and AdamW's width rule ``bfi / fi`` carried over; by the
  spectral condition this shrinks a square matrix's step as ``1 / sqrt(m_w)``
  (kept as an option so that a benchmark can show it).
* ``NATIVE`` (Scion, SPlus, Hyperball): the step is already scaled per shape by
  the method's design so that its learning rate transfers (their papers' claim),
  ``c = 1``.

Embeddings, vectors and the output layer keep their rate (``c = 1``; the output
layer's 1 / m_w lives in the model's logit multiplier, Tensor Programs V Table 3).
**Depth** (CompleteP, Dey et al. 2025, arXiv 2505.01618, Table 1): hidden
matrices and the blocks' vectors take ``m_L^(alpha - 1)`` with ``alpha`` the
model's residual-branch exponent (1 under ``completep``, so the learning rate
does not move with depth there; 0 otherwise, where depth is not transferred).
Not applied: CompleteP's and µP's Adam epsilon scaling (epsilon is one scalar
of each factory).

**Weight decay.** ``decoupled`` (the default and today's behaviour): the decay
is multiplied by the parameter's scaled rate, ``p <- p - c lr_t (u + wd p)``.
``independent`` (Qiu et al.: "independent weight decay scaled as 1/width"): the
factory runs without decay and every decayed parameter shrinks by the run's
rate times its decay, independent of ``c``, scaled as 1 / width:

    p <- p - c lr_t u - lr_t (wd / m_w) p,      m_w = d_model / base_width

Every scaled rate still follows the run's one schedule: ``c`` multiplies a step
that already carries ``lr_t``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import optax

HIDDEN, EMBEDDING, OUTPUT, VECTOR = "hidden", "embedding", "output", "vector"
DECAY_MODES = ("decoupled", "independent")
# optimizer.lr_scaling: "auto" picks the optimizer's default rule under mup / completep and
# none under standard; "none" applies no rule; any other value names one of the optimizer's.
AUTO, NONE = "auto", "none"


class RuleError(ValueError):
  """A scaling setting the run cannot have; the message names it."""


@dataclasses.dataclass(frozen=True)
class Geometry:
  """One parameter's place in the width / depth family (a pytree leaf).

  ``fan_in`` / ``fan_out``: of each matrix of the leaf (batch axes removed, >2-D
  kernels flattened as the matrix optimizers do); ``base_fan_in`` / ``base_fan_out``:
  the same at the base width. ``width_multiplier`` = d_model / base_width,
  ``depth_multiplier`` = num_layers / base_depth, ``depth_alpha``: the residual
  branches' exponent (branch x m_L^-alpha).
  """
  role: str
  fan_in: int
  fan_out: int
  base_fan_in: int
  base_fan_out: int
  width_multiplier: float = 1.0
  depth_multiplier: float = 1.0
  depth_alpha: float = 0.0
  in_block: bool = False      # inside a residual block (scaled by the depth rule)


# The spectral norm of a unit-learning-rate step on a (fan_in, fan_out) matrix, up to a
# constant, given the factory's bound hyperparameters.
UpdateNorm = Callable[[int, int, Mapping[str, Any]], float]


def _elementwise(fan_in: int, fan_out: int, hparams: Mapping[str, Any]) -> float:
  del hparams
  return math.sqrt(fan_in * fan_out)


def _rms_matched(fan_in: int, fan_out: int) -> float:
  return 0.2 * math.sqrt(max(fan_in, fan_out))


@dataclasses.dataclass(frozen=True)
class Rules:
  """An optimizer family's scaling rules.

  ``norm``: its update model (None: ``NATIVE``). ``options``: the rule names it
  accepts, the first its default. ``decay_args``: the factory arguments holding
  the decay of hidden matrices and of the other decayed leaves (for
  ``independent`` decay, which needs the factory's own decay off);
  ``()``: the method has no weight decay to make independent.
  """
  name: str
  norm: UpdateNorm | None
  options: tuple[str, ...]
  decay_args: tuple[str, ...] = ("weight_decay", "weight_decay")

  def multiplier(self, option: str, g: Geometry, hparams: Mapping[str, Any]) -> float:
    """The learning-rate multiplier ``c`` of one parameter (module docstring)."""
    depth = (g.depth_multiplier ** (g.depth_alpha - 1.0)
             if g.in_block and g.role in (HIDDEN, VECTOR) else 1.0)
    if g.role != HIDDEN or self.norm is None:
      return depth
    if option == "rms_match":
      matched = lambda fi, fo: _rms_matched(fi, fo) / self.norm(fi, fo, hparams)
      return (depth * matched(g.fan_in, g.fan_out) / matched(g.base_fan_in, g.base_fan_out)
              * g.base_fan_in / g.fan_in)
    spectral = lambda fi, fo: math.sqrt(fo / fi) / self.norm(fi, fo, hparams)
    return depth * spectral(g.fan_in, g.fan_out) / spectral(g.base_fan_in, g.base_fan_out)


ELEMENTWISE = Rules("elementwise", _elementwise, ("mup",))
NATIVE = Rules("native", None, ("native",))


def orthogonal(scale: Callable[[int, int], float], name: str = "orthogonal",
               decay_args: tuple[str, ...] = ("weight_decay", "adam_weight_decay")) -> Rules:
  """Rules of a (nearly) orthogonal step scaled by ``scale(fan_in, fan_out)``."""
  return Rules(name, lambda fi, fo, hparams: scale(fi, fo), ("spectral", "rms_match"),
               decay_args)


def declare(factory: Callable, rules: Rules) -> Callable:
  """Records ``rules`` on ``factory`` (an optimizer module does this beside its factory;
  a plugin factory may too). Returns the factory."""
  factory.width_rules = rules
  return factory


def rules_of(factory: Callable) -> Rules | None:
  """The rules a factory declared, or None."""
  return getattr(factory, "width_rules", None)


def resolve_option(optimizer: str, rules: Rules | None, lr_scaling: str,
                   parametrization: str) -> str | None:
  """The rule a run applies (None: no scaling), or :class:`RuleError` naming the setting."""
  if lr_scaling == NONE:
    return None
  if lr_scaling == AUTO and parametrization == "standard":
    return None
  if parametrization == "standard":
    raise RuleError(f"optimizer.lr_scaling={lr_scaling!r} scales rates away from "
                    f"model.base_width, which only model.parametrization 'mup' or 'completep' "
                    f"has; use 'none' or 'auto' under 'standard'")
  if rules is None:
    raise RuleError(f"optimizer {optimizer!r} has no width scaling rule (its learning rate "
                    f"is not a final step size), so it cannot transfer under "
                    f"{parametrization!r}; set optimizer.lr_scaling='none' to train it "
                    f"without one")
  if lr_scaling == AUTO or lr_scaling == "mup":
    return rules.options[0]
  if lr_scaling not in rules.options:
    raise RuleError(f"optimizer.lr_scaling={lr_scaling!r} is not a rule of optimizer "
                    f"{optimizer!r} ({rules.name}); its rules: "
                    f"{', '.join((AUTO, NONE) + rules.options)}")
  return lr_scaling


def _is_geometry(x) -> bool:
  return isinstance(x, Geometry)


def multipliers(rules: Rules, option: str, geometry: Any, hparams: Mapping[str, Any]) -> Any:
  """Pytree of learning-rate multipliers (Python floats) matching ``geometry``."""
  return jax.tree.map(lambda g: float(rules.multiplier(option, g, hparams)), geometry,
                      is_leaf=_is_geometry)


def scale_by_multipliers(factors: Any) -> optax.GradientTransformation:
  """Multiplies each leaf's final step by its (static) factor; a no-op leaf at 1.0."""

  def update_fn(updates, state, params=None):
    del params
    return jax.tree.map(lambda u, c: u if c == 1.0 else (u * c).astype(u.dtype),
                        updates, factors), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


class IndependentDecayState(NamedTuple):
  count: jax.Array


def add_independent_decay(schedule: optax.Schedule, decay: Any
                          ) -> optax.GradientTransformation:
  """``u <- u - schedule(t) * decay * p`` per leaf (``decay`` static floats; 0 skips a leaf).

  Applied after the factory's own step (which carries ``-c lr_t``), so the
  shrink is the run's rate times the decay, whatever the leaf's multiplier.
  """

  def init_fn(params):
    del params
    return IndependentDecayState(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError(optax.NO_PARAMS_MSG)
    rate = schedule(state.count)
    new = jax.tree.map(
        lambda u, p, wd: u if wd == 0.0 else (u - rate * wd * p).astype(u.dtype),
        updates, params, decay)
    return new, IndependentDecayState(count=optax.safe_increment(state.count))

  return optax.GradientTransformation(init_fn, update_fn)


def independent_decay(geometry: Any, mask: Any, hidden_decay: float, other_decay: float) -> Any:
  """Pytree of per-leaf independent decays: the role's decay / m_w on masked leaves, else 0."""
  return jax.tree.map(
      lambda g, on: (float(hidden_decay if g.role == HIDDEN else other_decay)
                     / g.width_multiplier if on else 0.0),
      geometry, mask, is_leaf=_is_geometry)
