"""The criterion's edges: empty batches and maps, and targets as data.

- A kernel equals its plain algorithm on every input the plain one accepts,
  edge shapes included: an empty batch (B = 0) gives the plain matcher's
  values in every implementation (it raised an IndexError in the XLA:CPU
  matcher's loop).
- Full-mask mode (`num_points=None`) on an empty map is a ValueError naming
  the argument (it raised a ZeroDivisionError from `jax.image.resize`, or gave
  a silent NaN `loss_mask`); point mode samples an empty map as zeros, as
  `point_sample` does, and returns finite losses.
- No gradient flows into `target_masks`, in either mode (it flowed in
  full-mask mode), nor through `mask_matching_cost`.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmask

IMPLEMENTATIONS = (None, "plain", "xla_cpu")
MODES = (5, None)  # num_points: point mode, full-mask mode


def _inputs(L=2, B=2, Q=3, K=2, T=2, H=6, W=5, Ht=7, Wt=4, seed=0):
  rng = np.random.default_rng(seed)
  return dict(
      class_logits=rng.standard_normal((L, B, Q, K + 1)).astype(np.float32),
      mask_logits=rng.standard_normal((L, B, Q, H, W)).astype(np.float32),
      target_labels=rng.integers(0, K, (B, T)).astype(np.int32),
      target_masks=(rng.uniform(size=(B, T, Ht, Wt)) > 0.5).astype(np.float32),
      target_valid=np.ones((B, T), bool))


def _loss(inputs, num_points, implementation, max_total_targets=None):
  return jaxmask.mask2former_loss(
      jax.random.key(0), **inputs, num_points=num_points,
      num_matcher_points=8, max_total_targets=max_total_targets,
      implementation=implementation)


def _values(out):
  return {k: float(v) for k, v in out.losses.items()} | {"total": float(out.total)}


@pytest.mark.parametrize("num_points", MODES)
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("shape", [dict(B=0), dict(Q=0, T=0), dict(B=0, Q=0, T=0)],
                         ids=["no-image", "no-query", "nothing"])
def test_empty_batch_gives_the_plain_values_in_every_implementation(
    shape, implementation, num_points):
  inputs = _inputs(**shape)
  want = _values(_loss(inputs, num_points, "plain"))
  got = _values(_loss(inputs, num_points, implementation))
  # No valid target: `max_total_targets=0` packs none, with the same values.
  packed = _values(_loss(inputs, num_points, implementation, 0))
  assert got.keys() == want.keys() == packed.keys()
  for name in got:
    np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    np.testing.assert_array_equal(packed[name], want[name], err_msg=name)
  # As documented: the class loss is a weighted mean over no queries (NaN,
  # as PyTorch's), the mask losses are 0.
  for name, value in got.items():
    if name.startswith("loss_cross_entropy") or name == "total":
      assert np.isnan(value), name
    else:
      assert value == 0.0, name


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("sizes", [dict(H=0), dict(W=0), dict(H=0, W=0),
                                   dict(Ht=0), dict(Wt=0), dict(Ht=0, Wt=0)])
def test_full_mask_mode_on_an_empty_map_is_a_named_value_error(
    sizes, implementation):
  name = "mask_logits" if {"H", "W"} & sizes.keys() else "target_masks"
  with pytest.raises(ValueError, match=rf"\b{name}\b.*num_points=None"):
    _loss(_inputs(**sizes), None, implementation)


@pytest.mark.parametrize("sizes", [dict(H=0), dict(Ht=0, Wt=0)])
def test_point_mode_samples_an_empty_map_as_zeros(sizes):
  """Finite losses, the same in every implementation; an empty map reads 0."""
  inputs = _inputs(L=1, **sizes)
  want = _values(_loss(inputs, 5, "plain"))
  assert all(np.isfinite(v) for v in want.values())
  got = _values(_loss(inputs, 5, "xla_cpu"))
  np.testing.assert_allclose(list(got.values()), list(want.values()),
                             rtol=1e-6)
  if "Ht" in sizes or "Wt" in sizes:
    return
  # Empty predictions sample logit 0 everywhere: sigmoid CE log 2 per mask.
  np.testing.assert_allclose(want["loss_mask"], np.log(2), rtol=1e-6)


def test_full_mask_mode_without_targets_accepts_empty_maps():
  """T = 0 reads no map: nothing to refuse, the mask losses are 0."""
  out = _values(_loss(_inputs(T=0, Ht=0, Wt=0), None, "plain"))
  assert out["loss_mask"] == out["loss_dice"] == 0.0


@pytest.mark.parametrize("num_points", MODES)
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_no_gradient_flows_into_target_masks(implementation, num_points):
  inputs = _inputs(L=1)

  def total(mask_logits, target_masks):
    return _loss(inputs | dict(mask_logits=mask_logits,
                               target_masks=target_masks),
                 num_points, implementation).total

  d_logits, d_targets = jax.grad(total, argnums=(0, 1))(
      jnp.asarray(inputs["mask_logits"]),
      jnp.asarray(inputs["target_masks"]) * 0.8 + 0.1)  # soft targets
  assert np.abs(np.asarray(d_logits)).max() > 0  # the logits do learn
  np.testing.assert_array_equal(d_targets, np.zeros_like(d_targets))


def test_no_gradient_flows_into_the_matching_costs_targets():
  inputs = _inputs()
  points = np.random.default_rng(1).uniform(size=(9, 2)).astype(np.float32)

  def cost(mask_logits, target_masks):
    return jaxmask.mask_matching_cost(
        inputs["class_logits"][0, 0], mask_logits,
        inputs["target_labels"][0], target_masks, points).sum()

  d_logits, d_targets = jax.grad(cost, argnums=(0, 1))(
      jnp.asarray(inputs["mask_logits"][0, 0]),
      jnp.asarray(inputs["target_masks"][0]) * 0.8 + 0.1)
  assert np.abs(np.asarray(d_logits)).max() > 0
  np.testing.assert_array_equal(d_targets, np.zeros_like(d_targets))
