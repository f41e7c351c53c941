"""Careless and hostile input: a clear error naming the argument, or a documented outcome.

One test per finding of the adversarial pass. The rule (`jaxmask/_src/checks.py`):
shapes, dtypes and options raise at trace time; values whose range matters
(temperatures, normalisers, labels) raise when they are concrete (Python,
NumPy, or JAX arrays in an eager call); traced values out of range make the
result NaN. Empty input: a mean or a percentile over nothing is an error
(NumPy's percentile raises too); zero masks in the point-sampling path are a
normal case (an image with no matched target) and give empty results and zero
losses. Non-finite data follows the PyTorch originals where they define it.
"""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmask

KEY = jax.random.key(0)


def _masks(n=3, size=16, seed=0):
  pred = jax.random.normal(jax.random.key(seed), (n, size, size))
  return pred, (pred > 0).astype(jnp.float32)


# --------------------------------------------------- 1. labels outside [0, 1]


def test_0_255_targets_are_rejected_not_a_negative_loss(implementation):
  pred, target = _masks()
  with pytest.raises(ValueError, match=r"target_masks must hold values in \[0, 1\]"):
    jaxmask.point_mask_losses(KEY, pred, (target * 255).astype(jnp.uint8), 3.0,
                              num_points=64, implementation=implementation)
  # The documented remedy works, and 0/1 integer or bool targets are fine.
  for t in ((target * 255).astype(jnp.uint8) > 127, target.astype(jnp.int32)):
    losses = jaxmask.point_mask_losses(KEY, pred, t, 3.0, num_points=64,
                                       implementation=implementation)
    assert all(np.isfinite(v) and v >= 0 for v in losses)


@pytest.mark.parametrize("loss", [jaxmask.sigmoid_ce_loss, jaxmask.dice_loss])
def test_labels_outside_unit_interval(loss):
  logits = jnp.zeros((2, 5))
  for labels in (jnp.full((2, 5), 2.0), jnp.full((2, 5), -0.5),
                 np.full((2, 5), 255.0)):
    with pytest.raises(ValueError, match=r"labels must hold values in \[0, 1\]"):
      loss(logits, labels, 2.0)
  traced = jax.jit(lambda l: loss(logits, l, 2.0))(jnp.full((2, 5), 2.0))
  assert np.isnan(traced)
  assert np.isfinite(jax.jit(lambda l: loss(logits, l, 2.0))(jnp.ones((2, 5))))


@pytest.mark.parametrize("cost", [jaxmask.pairwise_sigmoid_ce_loss,
                                  jaxmask.pairwise_dice_loss])
def test_pairwise_labels_outside_unit_interval(cost):
  with pytest.raises(ValueError, match="labels must hold values in"):
    cost(jnp.zeros((2, 5)), jnp.full((3, 5), 255.0))
  assert np.isnan(jax.jit(cost)(jnp.zeros((2, 5)), jnp.full((3, 5), 2.0))).all()


# --------------------------------------------------------- 2. temperatures


@pytest.mark.parametrize("loss", [jaxmask.kd_loss, jaxmask.class_correlation_loss,
                                  jaxmask.batch_correlation_loss])
def test_temperature_concrete_checked_traced_nan(loss):
  s, t = jnp.ones((4, 3)), jnp.zeros((4, 3))
  for bad in (jnp.float32(-2.0), jnp.float32(0.0), np.float64(-1.0), 0,
              float("inf"), float("nan"), jnp.float32(jnp.inf)):
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
      loss(s, t, temperature=bad)
  traced = jax.jit(lambda T: loss(s, t, temperature=T))
  for bad in (-2.0, 0.0, np.inf, np.nan):
    assert np.isnan(traced(bad)), bad
  assert np.isfinite(traced(4.0))


def test_mlkd_temperature_checked():
  views = [jnp.ones((4, 3))] * 4
  with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
    jaxmask.mlkd_loss(*views, temperature=jnp.float32(-2.0))
  total = jax.jit(lambda T: jaxmask.mlkd_loss(*views, temperature=T).total)
  assert np.isnan(total(-2.0)) and np.isfinite(total(4.0))


# ------------------------------------------------------------- 3. num_masks


@pytest.mark.parametrize("loss", [jaxmask.sigmoid_ce_loss, jaxmask.dice_loss])
def test_num_masks_checked(loss):
  logits, labels = jnp.zeros((2, 5)), jnp.ones((2, 5))
  for bad in (0, -2, 0.0, jnp.float32(-1), float("inf"), float("nan")):
    with pytest.raises(ValueError, match="num_masks must be a finite number > 0"):
      loss(logits, labels, bad)
  with pytest.raises(ValueError, match="num_masks must be a scalar"):
    loss(logits, labels, jnp.ones(2))
  traced = jax.jit(lambda n: loss(logits, labels, n))
  assert np.isnan(traced(0.0)) and np.isnan(traced(-2.0))


def test_point_mask_losses_num_masks_checked(implementation):
  pred, target = _masks()
  with pytest.raises(ValueError, match="num_masks must be a finite number > 0"):
    jaxmask.point_mask_losses(KEY, pred, target, 0, num_points=64,
                              implementation=implementation)
  traced = jax.jit(lambda n: jaxmask.point_mask_losses(
      KEY, pred, target, n, num_points=64, implementation=implementation))
  assert all(np.isnan(v) for v in traced(-2.0))


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


# -------------------------------------------------- 5. -inf in both views


def test_kd_loss_with_a_masked_out_class():
  s = jnp.array([[1.0, -jnp.inf, 0.5], [0.2, -jnp.inf, -1.0]])
  t = jnp.array([[0.3, -jnp.inf, 2.0], [1.0, -jnp.inf, 0.0]])
  loss, grad = jax.value_and_grad(
      lambda s: jaxmask.kd_loss(s, t, temperature=2.0))(s)
  want = jaxmask.kd_loss(s[:, [0, 2]], t[:, [0, 2]], temperature=2.0)
  np.testing.assert_allclose(loss, want, rtol=1e-6)
  assert np.isfinite(grad).all()
  np.testing.assert_array_equal(grad[:, 1], 0.0)


# ---------------------------------------------------------- 6. traced q


def test_traced_q_follows_numpy_float32_arithmetic():
  v = np.random.default_rng(0).random(37).astype(np.float32)
  fn = jax.jit(lambda v, q: jaxmask.percentile_mask(v, q=q)[1])
  qs = np.linspace(0, 100, 401).astype(np.float32)
  got = np.array([fn(v, q) for q in qs])
  want = np.array([np.percentile(v, np.float32(q)) for q in qs])
  # Documented: NumPy's arithmetic for a float32 q, with q / 100 divided on
  # the device. Where the device divides exactly (IEEE, as XLA:CPU), equal.
  np.testing.assert_array_equal(got, want)


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
    (lambda: jaxmask.percentile(jnp.arange(3), 50), TypeError,
     "values must have a floating dtype"),
    (lambda: jaxmask.percentile(jnp.ones(3), float("nan")), ValueError,
     r"q must lie in \[0, 100\]"),
    (lambda: jaxmask.percentile(jnp.ones(0), 50), ValueError,
     "values must hold at least one value"),
    (lambda: jaxmask.percentile([1.0, 2.0], 50), TypeError,
     r"values must be an array of shape \[n\]"),
    (lambda: jaxmask.kd_loss(jnp.ones((2, 3)), jnp.ones((2, 3)), temperature="4"),
     TypeError, "temperature must be a real number"),
    (lambda: jaxmask.kd_loss(jnp.ones((2, 3)), jnp.ones((2, 3)),
                             temperature=jnp.ones(2)),
     ValueError, "temperature must be a scalar"),
    (lambda: jaxmask.mlkd_loss(*[jnp.ones((0, 3))] * 4), ValueError,
     r"student_weak must have shape \[batch, num_classes\] with batch >= 1"),
    (lambda: jaxmask.num_masks_normalizer(None), TypeError,
     "num_local_masks must be a real number"),
    (lambda: jaxmask.sample_points_using_uncertainty(
        0, jnp.zeros((1, 1, 4, 4)), num_points=4), TypeError,
     "key must be a jax.random key"),
    (lambda: jaxmask.sample_points_using_uncertainty(
        jax.random.split(KEY, 2), jnp.zeros((1, 1, 4, 4)), num_points=4),
     ValueError, "key must be a single key"),
    (lambda: jaxmask.point_mask_losses(
        jnp.zeros(3, jnp.uint32), jnp.zeros((1, 4, 4)), jnp.zeros((1, 4, 4)), 1.0),
     TypeError, "key must be a jax.random key"),
])
def test_unclear_errors_now_name_the_argument(call, err, match):
  with pytest.raises(err, match=match):
    call()


# ---------------------------------------------------------- 11. empty input


@pytest.mark.parametrize("shape", [(0, 3), (4, 0)])
def test_a_mean_over_nothing_is_an_error(shape):
  x = jnp.zeros(shape)
  for loss in (jaxmask.kd_loss, jaxmask.class_correlation_loss,
               jaxmask.batch_correlation_loss):
    with pytest.raises(ValueError, match=r"student_logits must have shape"
                       r" \[batch, num_classes\] with batch >= 1"):
      loss(x, x, temperature=1.0)
  with pytest.raises(ValueError, match=r"logits must have shape \[batch,"
                     r" num_classes\] with batch >= 1"):
    jaxmask.confidence_masks(x)


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
