"""Careless and hostile input to point sampling: a clear error or a documented outcome.

One test per finding of the adversarial pass (sections keep the findings'
numbers; the other findings are in the other concept folders'
test_<concept>_hostile.py). The rule (`jaxmask/_src/checks.py`): shapes,
dtypes and options raise at trace time; values whose range matters
(temperatures, normalisers, labels) raise when they are concrete (Python,
NumPy, or JAX arrays in an eager call); traced values out of range make the
result NaN. Non-finite data follows the PyTorch originals where they define
it. Zero masks in the point-sampling path are a normal case (an image with no
matched target) and give empty results and zero losses; repeated eager calls
do not recompile.
"""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmask
from _strategies import KEY
from _strategies import _masks

# ------------------------------------------------- 4. non-finite coordinates


def test_nan_and_inf_coordinates_sample_nan(implementation):
  maps = jax.random.normal(KEY, (2, 3, 8, 8))
  coords = jnp.array([[[0.5, 0.5], [jnp.nan, 0.3], [jnp.inf, 0.2],
                       [0.3, -jnp.inf]]] * 2)
  out = jaxmask.point_sample(maps, coords, implementation=implementation)
  assert np.isfinite(out[..., 0]).all()
  assert np.isnan(out[..., 1:]).all()

  def total(m, c):
    values = jaxmask.point_sample(m, c, implementation=implementation)
    return jnp.nansum(values)

  d_maps, d_coords = jax.grad(total, argnums=(0, 1))(maps, coords)
  assert np.isfinite(d_maps).all()  # a NaN point reads no pixel
  np.testing.assert_array_equal(d_coords[:, 1:], 0.0)  # x and y alike
  assert (d_coords[:, 0] != 0).all()


def test_nan_coordinates_match_grid_sample():
  torch = pytest.importorskip("torch")
  import torch_ref
  maps = np.random.default_rng(0).normal(size=(1, 1, 5, 5)).astype(np.float32)
  coords = np.array([[[np.nan, 0.5], [0.5, np.inf], [0.2, 0.7]]], np.float32)
  want = torch_ref.point_sample(torch.from_numpy(maps), torch.from_numpy(coords))
  got = jaxmask.point_sample(maps, coords)
  np.testing.assert_array_equal(np.isnan(got), np.isnan(want.numpy()))
  np.testing.assert_allclose(got[..., 2], want.numpy()[..., 2], atol=1e-6)


def test_nan_never_wins_a_selection(implementation):
  logits = jax.random.normal(KEY, (2, 1, 8, 8))
  coords = jax.random.uniform(jax.random.key(1), (2, 20, 2))
  coords = coords.at[:, :5, 0].set(jnp.nan)  # 5 NaN candidates per mask
  for fn in (jaxmask.calculate_uncertainty, lambda x: x, lambda x: jnp.abs(x)):
    kept = jaxmask.select_uncertain_points(
        logits, coords, num_uncertain=15, uncertainty_fn=fn,
        implementation=implementation)
    assert not np.isnan(kept).any()
  nan_logits = logits.at[0].set(jnp.nan)  # one mask all NaN: any 3 points
  kept = jaxmask.select_uncertain_points(nan_logits, coords, num_uncertain=3,
                                         implementation=implementation)
  assert kept.shape == (2, 3, 2)


# ------------------------------------------------------------ 7. zero masks


def test_zero_masks_are_a_normal_case(implementation):
  impl = dict(implementation=implementation)
  empty_logits = jnp.zeros((0, 1, 8, 8))
  assert jaxmask.point_sample(empty_logits, jnp.zeros((0, 5, 2)), **impl).shape == (0, 1, 5)
  assert jaxmask.select_uncertain_points(
      empty_logits, jnp.zeros((0, 5, 2)), num_uncertain=2, **impl).shape == (0, 2, 2)
  assert jaxmask.sample_points_using_uncertainty(
      KEY, empty_logits, num_points=10, **impl).shape == (0, 10, 2)
  losses = jaxmask.point_mask_losses(KEY, jnp.zeros((0, 8, 8)), jnp.zeros((0, 16, 16)),
                                     1.0, num_points=10, **impl)
  assert tuple(map(float, losses)) == (0.0, 0.0)
  grad = jax.grad(lambda p: sum(jaxmask.point_mask_losses(
      KEY, p, jnp.zeros((0, 16, 16)), 1.0, num_points=10, **impl)))(jnp.zeros((0, 8, 8)))
  assert grad.shape == (0, 8, 8)
  assert jaxmask.sigmoid_ce_loss(jnp.zeros((0, 5)), jnp.zeros((0, 5)), 1.0) == 0.0
  assert jaxmask.pairwise_dice_loss(jnp.zeros((0, 5)), jnp.zeros((3, 5))).shape == (0, 3)


# ------------------------------------------- 8. degenerate grids and ratios


def test_on_grid_with_an_empty_map_and_infinite_ratio():
  index, coords = jaxmask.uncertain_point_coords_on_grid(
      jnp.zeros((2, 1, 0, 5)), num_points=3)
  assert index.shape == (2, 0) and coords.shape == (2, 0, 2)
  with pytest.raises(ValueError, match="oversample_ratio must be a finite number"):
    jaxmask.sample_points_using_uncertainty(
        KEY, jnp.zeros((1, 1, 4, 4)), num_points=4, oversample_ratio=float("inf"))


# ----------------------------------------------------------- 9., 10. errors


@pytest.mark.parametrize("call,err,match", [
    (lambda: jaxmask.sample_points_using_uncertainty(
        0, jnp.zeros((1, 1, 4, 4)), num_points=4), TypeError,
     "key must be a jax.random key"),
    (lambda: jaxmask.sample_points_using_uncertainty(
        jax.random.split(KEY, 2), jnp.zeros((1, 1, 4, 4)), num_points=4),
     ValueError, "key must be a single key"),
])
def test_unclear_errors_now_name_the_argument(call, err, match):
  with pytest.raises(err, match=match):
    call()


# ------------------------------------------------ 12. eager calls are cached


def _compiles(fn, caplog):
  caplog.clear()
  with caplog.at_level(logging.WARNING), jax.log_compiles(True):
    jax.block_until_ready(fn())
  return [r.getMessage() for r in caplog.records
          if r.getMessage().startswith("Compiling")]


def test_repeated_eager_calls_do_not_recompile(caplog, implementation):
  pred, target = _masks(n=4, size=64)
  scores = jax.random.normal(KEY, (3, 5000))
  calls = [
      lambda: jaxmask.point_mask_losses(KEY, pred, target, 4.0, num_points=256,
                                        implementation=implementation),
      lambda: jaxmask.top_k_indices(scores, k=100, implementation=implementation),
      lambda: jaxmask.sample_points_using_uncertainty(
          KEY, pred[:, None], num_points=100, implementation=implementation),
  ]
  for call in calls:
    call()  # the first call compiles
    assert _compiles(call, caplog) == []
