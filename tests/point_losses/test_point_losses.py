"""Tests for jaxmask._src.point_losses that need no PyTorch.

Oracles are float64 NumPy transcriptions of the formulas of Mask2Former's
criterion and matcher (`mask2former/modeling/criterion.py`, `matcher.py`);
parity with torch_ref is in test_point_losses_parity.py. Tolerance: rtol
1e-5 for float32 losses against float64. optax's binary losses are a second
oracle for the per-mask losses. point_mask_losses runs over both
implementations of the sampling (the `implementation` fixture: the plain
algorithm and the XLA:CPU kernel).
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, PartitionSpec

import jaxmask

sigmoid_ce_loss = jax.jit(jaxmask.sigmoid_ce_loss)
dice_loss = jax.jit(jaxmask.dice_loss)
pairwise_sigmoid_ce_loss = jax.jit(jaxmask.pairwise_sigmoid_ce_loss)
pairwise_dice_loss = jax.jit(jaxmask.pairwise_dice_loss)
point_sample = jax.jit(jaxmask.point_sample,
                       static_argnames=("implementation",))
sample_points = jax.jit(jaxmask.sample_points_using_uncertainty,
                        static_argnames=("num_points", "implementation"))
point_mask_losses = jax.jit(
    jaxmask.point_mask_losses,
    static_argnames=("num_points", "oversample_ratio",
                     "importance_sample_ratio", "implementation"))


def np_bce(x, t):
  x, t = np.float64(x), np.float64(t)
  return np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x)))


def np_sigmoid(x):
  return 1 / (1 + np.exp(-np.float64(x)))


def _points(seed, n=5, p=300, t=None):
  rng = np.random.default_rng(seed)
  logits = (rng.normal(size=(n, p)) * 4).astype(np.float32)
  labels = rng.uniform(size=(t or n, p)).astype(np.float32)  # soft targets
  return logits, labels


def test_sigmoid_ce_and_dice_match_formulas(variant):
  logits, labels = _points(0)
  expected_ce = np_bce(logits, labels).mean(1).sum() / 3.0
  p = np_sigmoid(logits)
  expected_dice = (1 - (2 * (p * labels).sum(1) + 1) /
                   (p.sum(1) + labels.sum(1) + 1)).sum() / 3.0
  ce = variant(jaxmask.sigmoid_ce_loss)(logits, labels, 3.0)
  dice = variant(jaxmask.dice_loss)(logits, labels, 3.0)
  assert ce.dtype == dice.dtype == jnp.float32 and ce.shape == ()
  np.testing.assert_allclose(ce, expected_ce, rtol=1e-5)
  np.testing.assert_allclose(dice, expected_dice, rtol=1e-5)


def test_losses_equal_optax_binary_losses():
  """dice_loss is optax's binary dice at smooth=0.5 (see its docstring);
  sigmoid_ce_loss is optax's sigmoid cross-entropy, per-mask mean."""
  for seed, n in ((11, 5), (12, 1)):
    logits, labels = _points(seed, n=n, p=300)
    for hard in (False, True):
      if hard:
        labels = (labels > 0.5).astype(np.float32)
      np.testing.assert_allclose(
          dice_loss(logits, labels, 3.0),
          optax.losses.binary_dice_loss(logits, labels, smooth=0.5).sum()
          / 3.0, rtol=1e-6)
      np.testing.assert_allclose(
          sigmoid_ce_loss(logits, labels, 3.0),
          optax.sigmoid_binary_cross_entropy(logits, labels).mean(1).sum()
          / 3.0, rtol=1e-6)


def test_perfect_and_extreme_predictions():
  labels = np.array([[1.0, 0.0, 1.0, 0.0]], np.float32)
  logits = (labels * 2 - 1) * 1e9
  np.testing.assert_allclose(sigmoid_ce_loss(logits, labels, 1.0), 0.0,
                             atol=1e-7)
  # Dice of a perfect mask: 1 - (2*2 + 1) / (2 + 2 + 1) = 0.
  np.testing.assert_allclose(dice_loss(logits, labels, 1.0), 0.0, atol=1e-7)
  # Completely wrong at +-1e9: CE is 1e9 per point, finite.
  np.testing.assert_allclose(sigmoid_ce_loss(-logits, labels, 1.0), 1e9,
                             rtol=1e-6)
  assert np.isfinite(pairwise_sigmoid_ce_loss(-logits, labels)).all()


def test_pairwise_costs_match_formulas_and_diagonal():
  logits, labels = _points(1, n=6, p=200, t=4)
  p = np_sigmoid(logits)
  expected_ce = (np_bce(logits[:, None], labels[None]).mean(-1))
  expected_dice = 1 - (2 * p @ labels.T.astype(np.float64) + 1) / (
      p.sum(1)[:, None] + labels.sum(1)[None] + 1)
  ce = pairwise_sigmoid_ce_loss(logits, labels)
  dice = pairwise_dice_loss(logits, labels)
  assert ce.shape == dice.shape == (6, 4)
  np.testing.assert_allclose(ce, expected_ce, rtol=1e-5)
  np.testing.assert_allclose(dice, expected_dice, rtol=1e-5)
  # Entry [q, t] is the per-mask loss of prediction q against target t.
  np.testing.assert_allclose(
      ce[2, 3], sigmoid_ce_loss(logits[2:3], labels[3:4], 1.0), rtol=1e-5)
  np.testing.assert_allclose(
      dice[2, 3], dice_loss(logits[2:3], labels[3:4], 1.0), rtol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_inputs_give_finite_float32_losses(dtype):
  # P = 12544 points at large logits: float16 would overflow a plain sum.
  rng = np.random.default_rng(2)
  logits = jnp.asarray(rng.normal(size=(4, 12544)) * 30, dtype)
  labels = jnp.asarray(rng.uniform(size=(3, 12544)) > 0.5, dtype)
  rounded = np.asarray(logits, np.float32)
  for f in (pairwise_sigmoid_ce_loss, pairwise_dice_loss):
    out = f(logits, labels)
    assert out.dtype == jnp.float32 and np.isfinite(out).all()
    np.testing.assert_allclose(out, f(rounded, np.float32(labels)), rtol=1e-6)
  for f in (sigmoid_ce_loss, dice_loss):
    out = f(logits, labels[:1].repeat(4, 0), 4.0)
    assert out.dtype == jnp.float32 and np.isfinite(out)
    np.testing.assert_allclose(out, f(rounded, np.float32(labels[:1]).repeat(
        4, 0), 4.0), rtol=1e-6)
  grad = jax.jit(jax.grad(lambda x: jaxmask.dice_loss(
      x, labels[:1].repeat(4, 0), 4.0)))(logits)
  assert grad.dtype == dtype and np.isfinite(np.float32(grad)).all()


def test_loss_gradients_check_grads():
  logits, labels = _points(3, n=3, p=40)
  for f in (jaxmask.sigmoid_ce_loss, jaxmask.dice_loss):
    jax.test_util.check_grads(lambda x, f=f: f(x, labels, 2.0),
                              (jnp.asarray(logits),), order=1, modes=("rev",),
                              atol=1e-2, rtol=1e-2)
  logits, labels = _points(4, n=3, p=40, t=2)
  for f in (jaxmask.pairwise_sigmoid_ce_loss, jaxmask.pairwise_dice_loss):
    jax.test_util.check_grads(lambda x, f=f: f(x, labels),
                              (jnp.asarray(logits),), order=1, modes=("rev",),
                              atol=1e-2, rtol=1e-2)


def test_loss_vmap_and_no_recompilation():
  logits, labels = _points(5, n=5, p=50)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def f(x, t):
    return jaxmask.sigmoid_ce_loss(x, t, 5.0), jaxmask.dice_loss(x, t, 5.0)

  chex.clear_trace_counter()
  f(logits, labels)
  f(logits + 1, labels)
  # vmap over a leading batch equals per-batch calls.
  batched = jax.vmap(lambda x, t: jaxmask.dice_loss(x, t, 5.0))(
      np.stack([logits, -logits]), np.stack([labels, labels]))
  np.testing.assert_allclose(batched[1], dice_loss(-logits, labels, 5.0),
                             rtol=1e-6)


# ---------------------------------------------------------- point_mask_losses


def _masks(seed, n=4, h=16, w=12, th=24, tw=20):
  rng = np.random.default_rng(seed)
  pred = (rng.normal(size=(n, h, w)) * 3).astype(np.float32)
  target = (rng.uniform(size=(n, th, tw)) > 0.5).astype(np.float32)
  return pred, target


def test_point_mask_losses_returns_named_tuple(implementation):
  pred, target = _masks(6)
  losses = point_mask_losses(jax.random.key(11), pred, target, 4.0,
                             num_points=30, implementation=implementation)
  assert isinstance(losses, jaxmask.PointMaskLosses)
  assert isinstance(losses, tuple) and len(losses) == 2
  assert jaxmask.PointMaskLosses._fields == ("loss_mask", "loss_dice")
  assert losses.loss_mask is losses[0] and losses.loss_dice is losses[1]
  for loss in losses:
    assert loss.shape == () and loss.dtype == jnp.float32
  # A pytree like any NamedTuple: it goes through transformations.
  assert isinstance(jax.tree.map(lambda x: x + 1, losses),
                    jaxmask.PointMaskLosses)


def test_point_mask_losses_equals_documented_composition(variant,
                                                        implementation):
  pred, target = _masks(6)
  key = jax.random.key(11)
  losses = variant(jaxmask.point_mask_losses, num_points=30,
                   implementation=implementation)(key, pred, target, 4.0)
  coords = sample_points(key, pred[:, None], num_points=30,
                         implementation=implementation)
  logits = point_sample(pred[:, None], coords,
                        implementation=implementation)[:, 0]
  labels = point_sample(target[:, None], coords,
                        implementation=implementation)[:, 0]
  np.testing.assert_allclose(losses.loss_mask,
                             sigmoid_ce_loss(logits, labels, 4.0), rtol=1e-6)
  np.testing.assert_allclose(losses.loss_dice,
                             dice_loss(logits, labels, 4.0), rtol=1e-6)
  # Boolean targets are cast: same losses.
  np.testing.assert_allclose(
      point_mask_losses(key, pred, target > 0.5, 4.0, num_points=30,
                        implementation=implementation),
      losses, rtol=1e-6)


def test_point_mask_losses_implementations_agree():
  """The same points (as sets) give the same sums: equal to rounding."""
  pred, target = _masks(14, n=6, h=40, w=36, th=60, tw=50)
  key = jax.random.key(14)
  want = point_mask_losses(key, pred, target, 6.0, num_points=200,
                           implementation="plain")
  for implementation in ("xla_cpu", None):
    np.testing.assert_allclose(
        point_mask_losses(key, pred, target, 6.0, num_points=200,
                          implementation=implementation), want, rtol=1e-5)


def test_point_mask_losses_no_masks(implementation):
  losses = jaxmask.point_mask_losses(
      jax.random.key(0), np.zeros((0, 8, 8), np.float32),
      np.zeros((0, 8, 8), np.float32), 1.0, num_points=10,
      implementation=implementation)
  np.testing.assert_array_equal(losses, (0.0, 0.0))


def test_point_mask_losses_gradient_only_through_sampled_logits(
    implementation):
  pred, target = _masks(7)
  key = jax.random.key(12)
  grad_pred, grad_target = jax.jit(jax.grad(
      lambda p, t: sum(jaxmask.point_mask_losses(
          key, p, t, 4.0, num_points=30, implementation=implementation)),
      argnums=(0, 1)))(pred, target)
  np.testing.assert_array_equal(grad_target, np.zeros_like(target))
  # Same gradient as the losses at frozen coordinates and labels.
  coords = sample_points(key, pred[:, None], num_points=30,
                         implementation=implementation)
  labels = point_sample(target[:, None], coords,
                        implementation=implementation)[:, 0]

  @jax.jit
  def frozen(p):
    logits = jaxmask.point_sample(p[:, None], coords,
                                  implementation=implementation)[:, 0]
    return (jaxmask.sigmoid_ce_loss(logits, labels, 4.0)
            + jaxmask.dice_loss(logits, labels, 4.0))

  np.testing.assert_allclose(grad_pred, jax.grad(frozen)(pred),
                             atol=1e-7)
  assert np.abs(grad_pred).sum() > 0
  jax.test_util.check_grads(frozen, (jnp.asarray(pred),), order=1,
                            modes=("rev",), atol=1e-2, rtol=1e-2)


def test_point_mask_losses_bfloat16_finite(implementation):
  pred, target = _masks(8)
  losses = point_mask_losses(jax.random.key(13), pred.astype(jnp.bfloat16),
                             target, 4.0, num_points=30,
                             implementation=implementation)
  for loss in losses:
    assert loss.dtype == jnp.float32 and np.isfinite(loss)


@pytest.mark.parametrize("pred,target,err,match", [
    (np.zeros((2, 1, 8, 8), np.float32), np.zeros((2, 8, 8), np.float32),
     ValueError, r"pred_masks must have shape \[num_masks, height, width\],"
     r" got \(2, 1, 8, 8\)\."),
    (np.zeros((2, 8, 8), np.float32), np.zeros((2, 8), np.float32),
     ValueError, r"target_masks must have shape \[num_masks, target_height,"
     r" target_width\], got \(2, 8\)\."),
    (np.zeros((2, 8, 8), np.float32), np.zeros((3, 8, 8), np.float32),
     ValueError, "pred_masks and target_masks must have the same num_masks"),
    (np.zeros((2, 8, 8), np.int32), np.zeros((2, 8, 8), np.float32),
     TypeError, "pred_masks must have a floating dtype, got int32."),
    (np.zeros((2, 8, 8), np.float32), np.full((2, 8, 8), 255, np.uint8),
     ValueError, r"target_masks must hold values in \[0, 1\]"),
])
def test_point_mask_losses_bad_input(pred, target, err, match):
  with pytest.raises(err, match=match):
    jaxmask.point_mask_losses(jax.random.key(0), pred, target, 2.0,
                              num_points=10)


@pytest.mark.parametrize("key,num_masks,kwargs,err,match", [
    (jax.random.key(0), 2.0, dict(num_points=10, oversample_ratio=0.5),
     ValueError, r"oversample_ratio must be a finite number in \[1.0, "),
    (jax.random.key(0), 2.0, dict(num_points=10, oversample_ratio=np.inf),
     ValueError, "oversample_ratio must be a finite number in .*, got inf"),
    (jax.random.key(0), 2.0, dict(num_points=10.5), TypeError,
     "num_points must be a Python int, got 10.5"),
    (jax.random.key(0), 2.0, dict(num_points=0), ValueError,
     "num_points must be >= 1, got 0"),
    (jax.random.key(0), 2.0, dict(num_points=10, importance_sample_ratio=2.0),
     ValueError, r"importance_sample_ratio must be a finite number in"
     r" \[0.0, 1.0\], got 2.0"),
    (jax.random.key(0), 2.0, dict(num_points=10, implementation="gpu"),
     ValueError, r"implementation must be one of \(None, 'plain', 'xla_cpu'\),"
     " got 'gpu'"),
    (0, 2.0, dict(num_points=10), TypeError, "key must be a jax.random key"),
    (jax.random.split(jax.random.key(0), 3), 2.0, dict(num_points=10),
     ValueError, "key must be a single key"),
    (jax.random.key(0), 0.0, dict(num_points=10), ValueError,
     "num_masks must be a finite number > 0, got 0.0"),
    (jax.random.key(0), np.ones(2), dict(num_points=10), ValueError,
     r"num_masks must be a scalar, got shape \(2,\)"),
])
def test_point_mask_losses_bad_options(key, num_masks, kwargs, err, match):
  pred, target = _masks(9)
  with pytest.raises(err, match=match):
    jaxmask.point_mask_losses(key, pred, target, num_masks, **kwargs)


@pytest.mark.parametrize("call,err,match", [
    (lambda: jaxmask.sigmoid_ce_loss(np.zeros((2, 5), np.int32),
                                     np.zeros((2, 5)), 1.0),
     TypeError, "logits must have a floating dtype, got int32."),
    (lambda: jaxmask.dice_loss(np.zeros((2, 5)), np.zeros((2, 4)), 1.0),
     ValueError, r"logits and labels must have the same shape \[num_masks,"
     r" num_points\], got \(2, 5\) and \(2, 4\)\."),
    (lambda: jaxmask.dice_loss(np.zeros((5,)), np.zeros((5,)), 1.0),
     ValueError, r"logits must have shape \[num_masks, num_points\], got"
     r" \(5,\)\."),
    (lambda: jaxmask.sigmoid_ce_loss(np.zeros((2, 5)), np.zeros((2, 5)),
                                     np.ones(2)),
     ValueError, r"num_masks must be a scalar, got shape \(2,\)"),
    (lambda: jaxmask.pairwise_dice_loss(np.zeros((2, 5)), np.zeros((3, 4))),
     ValueError, "must have the same num_points"),
    (lambda: jaxmask.pairwise_sigmoid_ce_loss(np.zeros((2, 5)),
                                              np.zeros((3, 5, 1))),
     ValueError, r"labels must have shape \[num_masks, num_points\], got"
     r" \(3, 5, 1\)\."),
    (lambda: jaxmask.num_masks_normalizer(np.ones(3)),
     ValueError, r"num_local_masks must be a scalar, got shape \(3,\)"),
])
def test_loss_bad_input(call, err, match):
  with pytest.raises(err, match=match):
    call()


# ------------------------------------------------------- num_masks_normalizer


def test_num_masks_normalizer_single_device():
  assert float(jaxmask.num_masks_normalizer(5)) == 5.0
  assert float(jaxmask.num_masks_normalizer(0)) == 1.0  # clamped
  assert float(jaxmask.num_masks_normalizer(jnp.int32(3))) == 3.0


@pytest.mark.parametrize("counts", [[0, 1, 2, 3, 4, 5, 6, 7], [0] * 8,
                                    [0, 0, 0, 0, 0, 0, 0, 3]])
def test_num_masks_normalizer_across_8_devices(counts):
  devices = np.array(jax.devices()[:8])
  assert devices.size == 8, "tests/conftest.py sets 8 CPU devices"
  mesh = Mesh(devices, ("data",))

  def per_device(local_counts):
    return jaxmask.num_masks_normalizer(local_counts[0],
                                        axis_name="data")[None]

  out = jax.jit(jax.shard_map(per_device, mesh=mesh,
                              in_specs=PartitionSpec("data"),
                              out_specs=PartitionSpec("data")))(
                                  jnp.asarray(counts, jnp.int32))
  expected = max(sum(counts) / 8, 1.0)  # Mask2Former: clamp(total / 8, 1)
  np.testing.assert_array_equal(out, np.full(8, expected, np.float32))


@pytest.mark.parametrize("labels_shape", [(3, 4, 50), (1, 4, 50)])
def test_ce_and_dice_hand_written_gradient(labels_shape):
  """The criterion's per-mask losses: values and hand-written VJP.

  Against float64 central differences of NumPy transcriptions of the two
  losses (`sigmoid_ce_loss` without the mean over masks, `dice_loss`),
  for labels of the logits' shape and broadcast over the first axis (the
  full-mask criterion's); soft labels, so the labels' gradient is checked too.
  """
  from jaxmask._src import point_losses

  rng = np.random.default_rng(5)
  x = rng.normal(size=(3, 4, 50)) * 3
  y = rng.random(labels_shape)
  w_ce, w_dice = rng.normal(size=(2, 3, 4))

  def np_losses(x, y):
    y = np.broadcast_to(y, x.shape)
    ce = (np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x)))).mean(-1)
    p = 1 / (1 + np.exp(-x))
    dice = 1 - (2 * (p * y).sum(-1) + 1) / (p.sum(-1) + y.sum(-1) + 1)
    return ce, dice

  def np_objective(x, y):
    ce, dice = np_losses(x, y)
    return (w_ce * ce).sum() + (w_dice * dice).sum()

  def numeric_grad(f, a, eps=1e-6):
    g = np.zeros_like(a)
    for i in np.ndindex(a.shape):
      d = np.zeros_like(a)
      d[i] = eps
      g[i] = (f(a + d) - f(a - d)) / (2 * eps)
    return g

  def objective(x, y):
    ce, dice = point_losses.ce_and_dice_per_mask(x, y)
    return (w_ce * ce).sum() + (w_dice * dice).sum()

  xf, yf = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
  for got, want in zip(point_losses.ce_and_dice_per_mask(xf, yf),
                       np_losses(x, y)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  grad_x, grad_y = jax.jit(jax.grad(objective, argnums=(0, 1)))(xf, yf)
  assert grad_y.shape == labels_shape
  np.testing.assert_allclose(
      grad_x, numeric_grad(lambda a: np_objective(a, y), x), atol=2e-6)
  np.testing.assert_allclose(
      grad_y, numeric_grad(lambda a: np_objective(x, a), y), atol=2e-5)
