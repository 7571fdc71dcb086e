"""A trained model you can use elsewhere: ``load(workdir, step=None) -> Model``.

``load`` reads the run's own config (``run_record.json``, the config the
trainer started with; ``optbench_jax.config.resolve`` checks it) and restores
*only the parameters* of the given or latest checkpoint of a training work
directory (``Checkpointer.restore_params``: a partial restore, so the optimizer
state, 2-3x the parameters, is never read). Dense and MoE models alike.

The model runs on a mesh of the local devices with every device on the
``data`` axis: the parameters are replicated and a batch is split along
``data``. A batch that does not divide over the devices is padded with rows of
token 0 and the padding is cut off the results.

* ``Model.logits(tokens int [B, S]) -> float32 [B, S, V]`` (numpy; V the
  model's padded vocabulary), exactly the training forward pass.
* ``Model.loglikelihood(context, continuation) -> (logprob, is_greedy)``: the
  sum of log p(continuation token | everything before it), and whether greedy
  decoding from ``context`` produces exactly ``continuation`` (the two
  answers an lm-eval-harness ``loglikelihood`` request wants). ``context``
  must not be empty: prepend ``<|endoftext|>`` for an unconditional score.
* ``Model.loglikelihoods(requests, batch_size=...)``: the same for many
  ``(context, continuation)`` pairs, batched. The sequences of a batch are
  right-padded to a common length (causal attention: padding after a token
  never changes its logits), rounded up to a multiple of 16 so few shapes are
  compiled. For a capacity-factor MoE (``model.capacity_factor > 0``) padding
  tokens would compete for expert capacity, so only sequences of equal length
  share a batch there.
* ``Model.next_tokens(tokens, lengths) -> int [B]``: the greedy next token
  after the first ``lengths[i]`` tokens of each right-padded row (greedy
  decoding without moving ``[B, S, V]`` logits to the host).

Errors a user can make (no checkpoint, a step that does not exist, a directory
that is not a training work directory) raise :class:`ModelLoadError` with one line.
"""

from __future__ import annotations

import itertools
from typing import Any, Iterable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from optbench_jax import config as config_lib
from optbench_jax import models
from optbench_jax import storage
from optbench_jax import workdir_files
from optbench_jax.models import attention_kernels
from optbench_jax.models import sharding as sharding_lib
from optbench_jax.train import checkpoint as checkpoint_lib
from optbench_jax.train import run_record
from optbench_jax.train import state as state_lib

LENGTH_MULTIPLE = 16       # loglikelihoods pads a batch's length up to a multiple of this
DEFAULT_BATCH_SIZE = 32    # sequences per loglikelihoods batch (rounded up to the devices)


class ModelLoadError(ValueError):
  """The work directory holds no restorable model of the requested step; one line."""


class Model:
  """A trained model's parameters on a mesh of the local devices, and its forward passes.

  Attributes: ``config`` (the run's resolved config), ``spec`` (its
  ``ModelSpec``), ``params`` (the restored parameters), ``step`` (the
  checkpoint's step), ``mesh``, ``vocab_size``.
  """

  def __init__(self, config: ml_collections.ConfigDict, spec: models.ModelSpec, params: Any,
               mesh: jax.sharding.Mesh, step: int):
    self.config, self.spec, self.params, self.mesh, self.step = config, spec, params, mesh, step
    self._module = models.build_model(spec, mesh=mesh)
    self._batch_sharding = sharding_lib.batch_sharding(mesh)
    self._rows = sharding_lib.batch_shards(mesh)
    impl = attention_kernels.resolve(spec.attention_impl, sharding_lib.platform_of(mesh),
                                     spec.compute_dtype, spec.head_dim)
    # Splash attention takes only multiples of 128 tokens; right padding is harmless (causal).
    self._seq_multiple = attention_kernels.SPLASH_LANES if impl == "splash" else 1
    self._logits = jax.jit(self._forward)
    self._scores = jax.jit(self._token_scores)
    self._next = jax.jit(self._argmax_at)

  @property
  def vocab_size(self) -> int:
    return self.spec.vocab_size

  def _forward(self, params, tokens):
    return self._module.apply({"params": params}, tokens)[0]

  def _token_scores(self, params, inputs, targets):
    """log p(targets) [B, S] and whether each target is the argmax [B, S]."""
    logits = self._forward(params, inputs)
    logprobs = jax.nn.log_softmax(logits, axis=-1)
    picked = jnp.take_along_axis(logprobs, targets[..., None], axis=-1)[..., 0]
    return picked, jnp.argmax(logits, axis=-1) == targets

  def _argmax_at(self, params, tokens, positions):
    """argmax of the logits at ``positions[b, 0]`` of each row [B]."""
    logits = self._forward(params, tokens)
    last = jnp.take_along_axis(logits, positions[:, :, None], axis=1)[:, 0]
    return jnp.argmax(last, axis=-1)

  def _check_tokens(self, tokens: np.ndarray) -> None:
    if tokens.ndim != 2 or not np.issubdtype(tokens.dtype, np.integer):
      raise ValueError(f"tokens must be an integer array [batch, seq], got {tokens.dtype}"
                       f"{list(tokens.shape)}")
    if tokens.size and (tokens.min() < 0 or tokens.max() >= self.vocab_size):
      raise ValueError(f"token ids must be in [0, {self.vocab_size}) (the model's vocabulary), "
                       f"got [{tokens.min()}, {tokens.max()}]")

  def _put(self, tokens: np.ndarray) -> jax.Array:
    """``tokens`` padded to whole device rows and sequence blocks, sharded over ``data``."""
    b, s = tokens.shape
    rows = -(-b // self._rows) * self._rows
    length = -(-s // self._seq_multiple) * self._seq_multiple
    padded = np.zeros((rows, length), np.int32)
    padded[:b, :s] = tokens
    return jax.device_put(padded, self._batch_sharding)

  def logits(self, tokens: Any) -> np.ndarray:
    """float32 [B, S, V] logits of int tokens [B, S] (the training forward pass)."""
    tokens = np.asarray(tokens)
    self._check_tokens(tokens)
    b, s = tokens.shape
    return np.asarray(self._logits(self.params, self._put(tokens)))[:b, :s]

  def next_tokens(self, tokens: Any, lengths: Sequence[int]) -> np.ndarray:
    """int [B]: the greedy next token after the first ``lengths[b]`` (>= 1) tokens of row ``b``
    of int tokens [B, S]; what follows them in a row is ignored (causal attention)."""
    tokens = np.asarray(tokens)
    self._check_tokens(tokens)
    lengths = np.asarray(lengths, np.int32)
    if lengths.shape != tokens.shape[:1] or lengths.min() < 1 or lengths.max() > tokens.shape[1]:
      raise ValueError(f"lengths must hold one value in [1, {tokens.shape[1]}] per row")
    padded = self._put(tokens)
    positions = np.zeros((padded.shape[0], 1), np.int32)   # [B, 1]: sharded like the tokens
    positions[:len(lengths), 0] = lengths - 1
    return np.asarray(self._next(self.params, padded,
                                 jax.device_put(positions, self._batch_sharding)))[:len(lengths)]

  def loglikelihood(self, context: Sequence[int],
                    continuation: Sequence[int]) -> tuple[float, bool]:
    """(sum of log p(continuation | context), greedy decoding yields exactly continuation)."""
    return self.loglikelihoods([(context, continuation)])[0]

  def loglikelihoods(self, requests: Iterable[tuple[Sequence[int], Sequence[int]]],
                     batch_size: int = DEFAULT_BATCH_SIZE) -> list[tuple[float, bool]]:
    """:meth:`loglikelihood` of each ``(context, continuation)`` pair, in order, batched."""
    requests = [(list(c), list(x)) for c, x in requests]
    for i, (context, continuation) in enumerate(requests):
      if not context or not continuation:
        raise ValueError(f"request {i}: the context and the continuation must each hold at "
                         f"least one token (prepend <|endoftext|> for an unconditional score)")
    multiple = 1 if self.spec.kind == "moe" and self.spec.capacity_factor > 0 else LENGTH_MULTIPLE
    length = lambda i: -(-(len(requests[i][0]) + len(requests[i][1]) - 1) // multiple) * multiple
    batch_size = -(-max(1, batch_size) // self._rows) * self._rows
    results: list[tuple[float, bool] | None] = [None] * len(requests)
    order = sorted(range(len(requests)), key=length)
    for padded_length, group in itertools.groupby(order, key=length):
      group = list(group)
      for start in range(0, len(group), batch_size):
        chunk = group[start:start + batch_size]
        self._score_batch([requests[i] for i in chunk], padded_length, chunk, results)
    return results

  def _score_batch(self, requests, padded_length: int, indices: list[int], results: list) -> None:
    inputs = np.zeros((len(requests), padded_length), np.int32)
    targets = np.zeros_like(inputs)
    for row, (context, continuation) in enumerate(requests):
      sequence = np.asarray(context + continuation)
      inputs[row, :len(sequence) - 1] = sequence[:-1]
      targets[row, :len(sequence) - 1] = sequence[1:]
    self._check_tokens(inputs)
    self._check_tokens(targets)
    logprobs, greedy = jax.device_get(self._scores(self.params, self._put(inputs),
                                                   self._put(targets)))
    for row, (context, continuation) in enumerate(requests):
      span = slice(len(context) - 1, len(context) + len(continuation) - 1)
      results[indices[row]] = (float(np.sum(logprobs[row, span], dtype=np.float64)),
                               bool(np.all(greedy[row, span])))


def run_config(workdir: str) -> ml_collections.ConfigDict:
  """The resolved config of the training run in ``workdir`` (its ``run_record.json``)."""
  record = run_record.read_record(workdir)
  if not record or not isinstance(record.get("config"), dict):
    raise ModelLoadError(
        f"{workdir} is not a training work directory: it has no readable "
        f"{workdir_files.RUN_RECORD} (the trainer writes one when a run starts)")
  return config_lib.resolve(record["config"])


def load(workdir: str, step: int | None = None, devices: Sequence | None = None) -> Model:
  """The model of the checkpoint at ``step`` (default: the latest) of the run in ``workdir``.

  ``devices``: the devices of the mesh (default: ``jax.local_devices()``).
  Raises :class:`ModelLoadError` for a workdir that is not a training work
  directory, holds no checkpoint, or has none at ``step``.
  """
  workdir = storage.resolve(workdir)
  if not storage.isdir(workdir):
    raise ModelLoadError(f"{workdir} is not a training work directory: it does not exist")
  config = run_config(workdir)
  checkpointer = None
  if storage.isdir(workdir_files.path(workdir, workdir_files.CHECKPOINTS)):
    checkpointer = checkpoint_lib.Checkpointer(workdir, keep=1, async_save=False, read_only=True)
  steps = checkpointer.all_steps() if checkpointer else []
  if not steps:
    raise ModelLoadError(f"{workdir} holds no checkpoint yet (train.checkpoint_every="
                         f"{config.train.checkpoint_every}; a run also saves one at its end)")
  if step is None:
    step = steps[-1]
  elif step not in steps:
    raise ModelLoadError(f"{workdir} has no checkpoint at step {step}; it has steps "
                         f"{', '.join(map(str, steps))}")
  spec = models.ModelSpec.from_config(config.model)
  mesh = sharding_lib.make_mesh(data=-1, devices=list(devices or jax.local_devices()))
  target = state_lib.with_shardings(models.abstract_params(spec),
                                    sharding_lib.param_shardings(spec, mesh))
  params = checkpointer.restore_params(step, target)
  checkpointer.close()
  return Model(config, spec, params, mesh, step)
