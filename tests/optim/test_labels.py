"""Parameter labels and the weight-decay mask on the contract's tree naming."""

import jax
import jax.numpy as jnp
import pytest

from optbench_jax.optim import labels


def llama_like(tied=True):
  z = lambda *s: jnp.zeros(s)
  params = {"embed": {"embedding": z(50, 8)},
            "layers": {"attn_norm": {"scale": z(2, 8)},
                       "attn": {"q_proj": {"kernel": z(2, 8, 8)}, "o_proj": {"kernel": z(2, 8, 8)}},
                       "mlp": {"up_proj": {"kernel": z(2, 8, 16)}},
                       "moe": {"experts": {"up_proj": {"kernel": z(2, 4, 8, 16)}},
                               "router": {"kernel": z(2, 8, 4)}}},
            "final_norm": {"scale": z(8)}}
  if not tied:
    params["lm_head"] = {"kernel": z(8, 50)}
  return params


def batch_axes(path, leaf):
  del leaf
  names = labels.path_names(path)
  return 0 if names[0] != "layers" else (2 if "experts" in names else 1)


def test_labels_of_a_stacked_model():
  got = labels.label_params(llama_like(tied=False), batch_axes)
  assert got["embed"]["embedding"] == labels.EMBEDDING
  assert got["lm_head"]["kernel"] == labels.HEAD
  assert got["final_norm"]["scale"] == labels.VECTOR
  assert got["layers"]["attn_norm"]["scale"] == labels.VECTOR  # (L, d) is L vectors
  assert got["layers"]["attn"]["q_proj"]["kernel"] == labels.MATRIX
  assert got["layers"]["moe"]["experts"]["up_proj"]["kernel"] == labels.MATRIX
  assert got["layers"]["moe"]["router"]["kernel"] == labels.MATRIX


def test_batch_axes_are_explicit_not_guessed():
  params = {"w": jnp.zeros((3, 4, 5)), "b": jnp.zeros((3, 4))}
  assert labels.label_params(params) == {"w": labels.MATRIX, "b": labels.MATRIX}
  assert labels.label_params(params, 1) == {"w": labels.MATRIX, "b": labels.VECTOR}
  assert labels.label_params(params, {"w": 2, "b": 1}) == {"w": labels.VECTOR, "b": labels.VECTOR}


def test_weight_decay_mask_skips_embeddings_norms_biases():
  mask = labels.weight_decay_mask(llama_like(tied=False), batch_axes)
  assert mask["embed"]["embedding"] is False
  assert mask["final_norm"]["scale"] is False
  assert mask["layers"]["attn_norm"]["scale"] is False
  assert mask["lm_head"]["kernel"] is True
  assert mask["layers"]["mlp"]["up_proj"]["kernel"] is True
  assert labels.default_mask(batch_axes)(llama_like()) == labels.weight_decay_mask(
      llama_like(), batch_axes)


def test_bias_is_a_vector():
  params = {"dense": {"kernel": jnp.zeros((4, 3)), "bias": jnp.zeros((3,))}}
  assert labels.label_params(params) == {"dense": {"kernel": labels.MATRIX,
                                                   "bias": labels.VECTOR}}


def test_impossible_batch_axes_raise_naming_the_parameter():
  with pytest.raises(ValueError, match="final_norm/scale"):
    labels.label_params(llama_like(), 2)


def test_path_names_lowercase():
  paths = [p for p, _ in jax.tree_util.tree_leaves_with_path({"Embed": {"X": 1}})]
  assert labels.path_names(paths[0]) == ("embed", "x")
