"""Tests for jaxmask._src.sampling that need no PyTorch.

Every algorithmic case runs over both implementations (the `implementation`
fixture of conftest.py: the plain algorithm and the XLA:CPU kernel). The
kernel-internal properties (its two sampler paths, 16-bit offsets, the
flat-index-overflow path, chunked selection) are tested on the kernel's own
entry points in tests/xla_cpu/test_xla_cpu_sampler.py.

Oracles: a float64 NumPy transcription of grid_sample's bilinear rule
(`np_grid_sample`, tests/_strategies.py) and
`jax.scipy.ndimage.map_coordinates` (the alternative implementation), plus
hand-computed values. Parity with torch_ref is in test_sampling_parity.py.
"""

import functools
import inspect

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.ndimage import map_coordinates

import jaxmask
from _strategies import _data
from _strategies import assert_same_selection_as_plain
from _strategies import documented_draws
from _strategies import np_grid_sample
from _strategies import point_sample
from _strategies import position_rounding_tolerance
from _strategies import select_uncertain_points

# Jitted once per shape and implementation (point_sample and
# select_uncertain_points: tests/_strategies.py).


sample_points = jax.jit(
    jaxmask.sample_points_using_uncertainty,
    static_argnames=("num_points", "oversample_ratio",
                     "importance_sample_ratio", "uncertainty_fn",
                     "implementation"))
on_grid = jax.jit(jaxmask.uncertain_point_coords_on_grid,
                  static_argnames=("num_points",))


def map_coordinates_sample(inputs, coords):
  """The alternative implementation (test oracle): map_coordinates."""
  def single(image, points):
    h, w = image.shape[-2:]
    rows = points[:, 1] * h - 0.5
    cols = points[:, 0] * w - 0.5
    return jax.vmap(lambda channel: map_coordinates(
        channel, [rows, cols], order=1, mode="constant", cval=0.0))(image)
  return jax.vmap(single)(inputs, coords)


def assert_same_points(got, want, *, ordered):
  """Row by row: the same points, in the same order or as multisets."""
  got, want = np.asarray(got), np.asarray(want)
  assert got.shape == want.shape, (got.shape, want.shape)
  if ordered:
    np.testing.assert_array_equal(got, want)
    return
  for row in range(got.shape[0]):
    assert sorted(map(tuple, got[row])) == sorted(map(tuple, want[row])), row


# ---------------------------------------------------------------- point_sample


@pytest.mark.parametrize("n,c,h,w", [(3, 1, 8, 8), (2, 3, 5, 11), (2, 2, 1, 7),
                                     (2, 1, 6, 1), (1, 1, 1, 1)])
def test_point_sample_matches_float64_oracle(variant, implementation, n, c, h,
                                             w):
  # Coordinates in [-0.1, 1.1] exercise the per-neighbour zero padding.
  inputs, coords = _data(0, n, c, h, w, 200, -0.1, 1.1)
  out = variant(jaxmask.point_sample, implementation=implementation)(inputs,
                                                                     coords)
  assert out.shape == (n, c, 200) and out.dtype == jnp.float32
  # float32 positions vs float64: ~1e-6 abs for unit-scale inputs.
  np.testing.assert_allclose(out, np_grid_sample(inputs, coords), atol=2e-6)


def test_point_sample_non_finite_coordinates(implementation):
  """A NaN or infinite coordinate samples NaN and reads no pixel.

  As in grid_sample. It adds nothing to the gradient of the inputs, and its
  own gradient is 0; a far-away finite point samples the zero padding.
  """
  inputs, coords = _data(12, 2, 3, 5, 6, 8, -0.1, 1.1)
  coords[0, :5] = [[np.nan, 0.5], [0.5, np.inf], [-np.inf, 0.3],
                   [np.inf, np.nan], [-1e30, 1e30]]
  finite = np.isfinite(coords).all(-1)
  out = np.asarray(point_sample(inputs, coords,
                                implementation=implementation))
  want = np_grid_sample(inputs, np.where(finite[..., None], coords, -1e30))
  want[0, :, :4] = np.nan
  np.testing.assert_allclose(out, want, atol=2e-6)  # NaNs exactly there
  weights = np.random.default_rng(13).normal(size=out.shape).astype(
      np.float32)
  loss = lambda x, p, v: (jaxmask.point_sample(
      x, p, implementation=implementation) * v).sum()
  grad_inputs, grad_coords = jax.jit(jax.grad(loss, argnums=(0, 1)))(
      inputs, coords, weights)
  assert np.isfinite(grad_inputs).all() and np.isfinite(grad_coords).all()
  np.testing.assert_array_equal(grad_coords[0, :5], 0)
  # The same input gradient as with those points' weights set to 0.
  np.testing.assert_array_equal(
      grad_inputs, jax.jit(jax.grad(loss))(
          inputs, coords, np.where(finite[:, None], weights, 0)))


def test_point_sample_matches_map_coordinates(implementation):
  inputs, coords = _data(1, 4, 2, 16, 12, 500, -0.1, 1.1)
  np.testing.assert_allclose(
      point_sample(inputs, coords, implementation=implementation),
      map_coordinates_sample(jnp.asarray(inputs), jnp.asarray(coords)),
      atol=2e-6)


def test_point_sample_hand_values(implementation):
  # Ones image, 4x4: interior points read 1; an edge point half-weights the
  # zero padding; a corner point quarter-weights the image; outside gives 0.
  ones = jnp.ones((1, 1, 4, 4))
  coords = jnp.array([[[0.5, 0.5], [0.0, 0.5], [0.0, 0.0], [1.0, 1.0],
                       [0.125, 0.125], [-0.2, 0.5], [1.2, 1.2]]])
  np.testing.assert_allclose(
      point_sample(ones, coords, implementation=implementation)[0, 0],
      [1.0, 0.5, 0.25, 0.25, 1.0, 0.0, 0.0], atol=1e-7)
  # Pixel centres read pixel values exactly.
  image = jnp.arange(12.0).reshape(1, 1, 3, 4)
  cols, rows = np.meshgrid(np.arange(4), np.arange(3))
  centres = np.stack([(cols.ravel() + 0.5) / 4, (rows.ravel() + 0.5) / 3], -1)
  # (grid_sample's 2x - 1 round trip costs a few ulp of position.)
  np.testing.assert_allclose(
      point_sample(image, centres[None].astype(np.float32),
                   implementation=implementation)[0, 0],
      np.arange(12.0), atol=1e-6)


def test_point_sample_single_composes_with_vmap(implementation):
  inputs, coords = _data(2, 3, 2, 6, 9, 50)
  single = jax.vmap(functools.partial(
      jaxmask.point_sample_single, implementation=implementation))(inputs,
                                                                    coords)
  np.testing.assert_allclose(
      single, point_sample(inputs, coords, implementation=implementation),
      atol=1e-6)
  assert jaxmask.point_sample_single(
      inputs[0], coords[0], implementation=implementation).shape == (2, 50)


def test_point_sample_empty_axes(implementation):
  for n, c, p in ((0, 2, 5), (2, 0, 5), (2, 3, 0)):
    out = jaxmask.point_sample(np.ones((n, c, 4, 4), np.float32),
                               np.full((n, p, 2), 0.5, np.float32),
                               implementation=implementation)
    assert out.shape == (n, c, p) and out.dtype == jnp.float32


def test_point_sample_implementations_agree():
  """Same arithmetic in the same order: values and gradients to rounding."""
  inputs, coords = _data(14, 5, 3, 13, 17, 300, -0.1, 1.1)
  weights = np.random.default_rng(15).normal(size=(5, 3, 300)).astype(
      np.float32)
  results = {}
  for implementation in ("plain", "xla_cpu", None):
    loss = lambda x, p, i=implementation: (
        jaxmask.point_sample(x, p, implementation=i) * weights).sum()
    results[implementation] = (
        point_sample(inputs, coords, implementation=implementation),
        *jax.jit(jax.grad(loss, argnums=(0, 1)))(inputs, coords))
  # None is the kernel on CPU and the plain algorithm elsewhere: the same
  # program, so the same bits.
  default = "xla_cpu" if jax.default_backend() == "cpu" else "plain"
  for a, b in zip(results[None], results[default]):
    np.testing.assert_array_equal(a, b)
  plain, kernel = results["plain"], results["xla_cpu"]
  # Values to position rounding; input gradients (weight sums) to 1e-6;
  # coordinate gradients (slopes times W or H) to 1e-6 of the largest.
  assert (np.abs(np.asarray(plain[0]) - np.asarray(kernel[0]))
          <= position_rounding_tolerance(inputs, coords)).all()
  np.testing.assert_allclose(plain[1], kernel[1], atol=1e-6)
  np.testing.assert_allclose(plain[2], kernel[2], rtol=1e-5,
                             atol=1e-6 * np.abs(plain[2]).max())


def test_point_sample_bfloat16_keeps_dtype_and_precision(implementation):
  inputs, coords = _data(3, 2, 1, 64, 64, 300)
  out = point_sample(inputs.astype(jnp.bfloat16), coords,
                     implementation=implementation)
  assert out.dtype == jnp.bfloat16
  # Positions stay float32: only the bf16 rounding of values/result remains.
  expected = np_grid_sample(np.asarray(inputs.astype(jnp.bfloat16),
                                       np.float32), coords)
  np.testing.assert_allclose(np.asarray(out, np.float32), expected,
                             atol=2e-2, rtol=1e-2)


def test_point_sample_grad_is_transpose_of_sampling(implementation):
  inputs, coords = _data(4, 2, 1, 5, 6, 30, -0.1, 1.1)
  jax.test_util.check_grads(
      lambda x: point_sample(x, coords, implementation=implementation),
      (jnp.asarray(inputs),), order=1, modes=("rev",), atol=1e-2, rtol=1e-2)


def test_point_sample_grad_bfloat16_and_channels_and_width_one(
    implementation):
  """The VJP: dtype kept, channels and W = 1 maps, NaN-free at edges."""
  for c, h, w in ((1, 7, 9), (3, 5, 6), (2, 4, 1), (1, 1, 1)):
    inputs, coords = _data(5, 3, c, h, w, 40, -0.2, 1.2)
    weights = np.random.default_rng(5).normal(size=(3, c, 40)).astype(
        np.float32)
    loss = functools.partial(
        lambda x, coords, weights: (point_sample(
            x, coords, implementation=implementation) * weights).sum(),
        coords=coords, weights=weights)
    want = jax.grad(loss)(jnp.asarray(inputs, jnp.float32))
    # The transpose of sampling: <grad, e_i> is the weight-sum at pixel i.
    basis = np.asarray(jax.jit(jax.vmap(
        lambda e, loss=loss, shape=inputs.shape: loss(e.reshape(shape))))(
            jnp.eye(inputs.size, dtype=jnp.float32)))
    np.testing.assert_allclose(np.asarray(want).reshape(-1), basis,
                               rtol=1e-5, atol=1e-6)
    got = jax.grad(loss)(jnp.asarray(inputs, jnp.bfloat16))
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(got, np.float32), want, atol=0.1,
                               rtol=2e-2)


def test_point_sample_jit_and_no_recompilation(implementation):
  @jax.jit
  @chex.assert_max_traces(n=1)
  def f(x, c):
    return jaxmask.point_sample(x, c, implementation=implementation)
  chex.clear_trace_counter()
  for seed in range(3):
    inputs, coords = _data(seed, 2, 1, 8, 8, 20)
    np.testing.assert_allclose(f(inputs, coords),
                               np_grid_sample(inputs, coords), atol=2e-6)


@pytest.mark.parametrize("inputs,coords,err,match", [
    (np.zeros((1, 8, 8), np.float32), np.zeros((1, 4, 2), np.float32),
     ValueError, r"inputs must have shape \[num_masks, channels, height,"
     r" width\], got \(1, 8, 8\)\."),
    (np.zeros((1, 1, 8, 8), np.float32), np.zeros((1, 4, 3), np.float32),
     ValueError, r"point_coords must have shape \[num_masks, num_points, 2\]"),
    (np.zeros((1, 1, 8, 8), np.float32), np.zeros((4, 2), np.float32),
     ValueError, r"point_coords must have shape \[num_masks, num_points, 2\],"
     r" got \(4, 2\)\."),
    (np.zeros((2, 1, 8, 8), np.float32), np.zeros((3, 4, 2), np.float32),
     ValueError, "inputs and point_coords must have the same num_masks"),
    (np.zeros((1, 1, 8, 8), np.int32), np.zeros((1, 4, 2), np.float32),
     TypeError, "inputs must have a floating dtype, got int32."),
    (np.zeros((1, 1, 8, 8), np.float32), np.zeros((1, 4, 2), np.int32),
     TypeError, "point_coords must have a floating dtype, got int32."),
])
def test_point_sample_bad_input(implementation, inputs, coords, err, match):
  with pytest.raises(err, match=match):
    jaxmask.point_sample(inputs, coords, implementation=implementation)


@pytest.mark.parametrize("fn,shapes", [
    (jaxmask.point_sample, ((1, 1, 8, 8), (1, 4, 2))),
    (jaxmask.point_sample_single, ((1, 8, 8), (4, 2))),
])
def test_point_sample_bad_implementation(fn, shapes):
  inputs, coords = (np.zeros(s, np.float32) for s in shapes)
  with pytest.raises(ValueError, match="implementation must be one of"):
    fn(inputs, coords, implementation="gpu")


def test_point_sample_single_bad_input():
  with pytest.raises(ValueError, match=r"inputs must have shape \[channels,"
                     r" height, width\], got \(1, 1, 8, 8\)\."):
    jaxmask.point_sample_single(np.zeros((1, 1, 8, 8), np.float32),
                                np.zeros((4, 2), np.float32))
  with pytest.raises(ValueError, match=r"point_coords must have shape"
                     r" \[num_points, 2\]"):
    jaxmask.point_sample_single(np.zeros((1, 8, 8), np.float32),
                                np.zeros((1, 4, 2), np.float32))


# ------------------------------------------------------- uncertainty selection


def test_calculate_uncertainty():
  np.testing.assert_array_equal(
      jaxmask.calculate_uncertainty(jnp.array([-2.0, 0.0, 3.0])),
      [-2.0, 0.0, -3.0])
  with pytest.raises(TypeError, match="logits must have a floating dtype"):
    jaxmask.calculate_uncertainty(jnp.array([1, 2]))


def _centre_candidates(rng, n, h, w, m):
  """Candidates at random pixel centres: sampled logits = pixel values."""
  cols = rng.integers(0, w, size=(n, m))
  rows = rng.integers(0, h, size=(n, m))
  coords = np.stack([(cols + 0.5) / w, (rows + 0.5) / h], -1)
  return coords.astype(np.float32), rows, cols


def test_select_uncertain_points_hand_oracle(variant, implementation):
  rng = np.random.default_rng(5)
  n, h, w, m, k = 3, 6, 7, 30, 8
  # Distinct |logits| so the order is unique.
  logits = (rng.permutation(n * h * w).reshape(n, 1, h, w) - 60.5) / 7
  logits = logits.astype(np.float32)
  coords, rows, cols = _centre_candidates(rng, n, h, w, m)
  # A pixel drawn twice gives two equal candidates: their order is moot.
  out = variant(jaxmask.select_uncertain_points, num_uncertain=k,
                implementation=implementation)(logits, coords)
  assert out.shape == (n, k, 2) and out.dtype == jnp.float32
  for i in range(n):
    scores = -np.abs(logits[i, 0, rows[i], cols[i]])
    expected = coords[i][np.argsort(-scores, kind="stable")[:k]]
    # The plain algorithm's order is decreasing uncertainty; the kernel's
    # order is not part of the contract here.
    assert_same_points(out[i:i + 1], expected[None],
                       ordered=implementation == "plain")


def test_select_uncertain_points_rows_of_4096_or_more(implementation):
  """Rows long enough for the kernel's bracketed top-k; order as documented."""
  rng = np.random.default_rng(16)
  n, h, w, m, k = 2, 64, 80, 5000, 1200
  # |logits| distinct: (i + 0.25 - c) / 7 never ties in absolute value.
  logits = ((rng.permutation(n * h * w).reshape(n, 1, h, w) + 0.25
             - n * h * w // 2) / 7).astype(np.float32)
  pixels = np.stack([rng.permutation(h * w)[:m] for _ in range(n)])
  rows, cols = pixels // w, pixels % w
  coords = np.stack([(cols + 0.5) / w, (rows + 0.5) / h], -1).astype(
      np.float32)  # distinct candidates
  out = np.asarray(select_uncertain_points(logits, coords, num_uncertain=k,
                                           implementation=implementation))
  for i in range(n):
    scores = -np.abs(logits[i, 0, rows[i], cols[i]])
    best = np.argsort(-scores, kind="stable")[:k]  # decreasing uncertainty
    if implementation == "plain":
      np.testing.assert_array_equal(out[i], coords[i][best])
    else:  # increasing candidate index
      np.testing.assert_array_equal(out[i], coords[i][np.sort(best)])


def test_select_uncertain_points_custom_uncertainty_and_edges(implementation):
  rng = np.random.default_rng(6)
  logits = rng.normal(size=(2, 1, 5, 5)).astype(np.float32)
  coords, rows, cols = _centre_candidates(rng, 2, 5, 5, 12)
  # uncertainty_fn = identity keeps the largest logits.
  out = select_uncertain_points(logits, coords, num_uncertain=3,
                                uncertainty_fn=lambda x: x,
                                implementation=implementation)
  for i in range(2):
    values = logits[i, 0, rows[i], cols[i]]
    assert_same_points(
        out[i:i + 1], coords[i][np.argsort(-values, kind="stable")[:3]][None],
        ordered=implementation == "plain")
  assert select_uncertain_points(
      logits, coords, num_uncertain=0,
      implementation=implementation).shape == (2, 0, 2)
  # k = M keeps every candidate: a permutation.
  all_points = select_uncertain_points(logits, coords, num_uncertain=12,
                                       implementation=implementation)
  assert_same_points(all_points, coords, ordered=False)
  # No masks: no points.
  assert jaxmask.select_uncertain_points(
      logits[:0], coords[:0], num_uncertain=3,
      implementation=implementation).shape == (0, 3, 2)


def test_select_uncertain_points_nan_never_wins(implementation):
  """NaN scores (NaN logits, NaN candidates) count as -inf."""
  rng = np.random.default_rng(21)
  n, h, w, m, k = 3, 6, 7, 40, 10
  logits = rng.normal(size=(n, 1, h, w)).astype(np.float32)
  logits[:, 0, :2] = np.nan  # the top two rows of pixels
  pixels = np.stack([rng.permutation(h * w)[:m] for _ in range(n)])
  rows, cols = pixels // w, pixels % w
  coords = np.stack([(cols + 0.5) / w, (rows + 0.5) / h], -1).astype(
      np.float32)
  coords[:, :3] = np.nan
  scores = -np.abs(logits[np.arange(n)[:, None], 0, rows, cols])
  scores[:, :3] = np.nan
  assert (np.isfinite(scores).sum(1) >= k).all()
  out = select_uncertain_points(logits, coords, num_uncertain=k,
                                implementation=implementation)
  for i in range(n):
    best = np.argsort(-np.where(np.isnan(scores[i]), -np.inf, scores[i]),
                      kind="stable")[:k]
    assert_same_points(out[i:i + 1], coords[i][best][None],
                       ordered=implementation == "plain")


def test_select_uncertain_points_implementations_agree():
  """Every implementation selects the plain algorithm's set."""
  rng = np.random.default_rng(17)
  logits = (rng.normal(size=(6, 1, 20, 16)) * 3).astype(np.float32)
  candidates = rng.uniform(size=(6, 500, 2)).astype(np.float32)
  for implementation in ("xla_cpu", None):
    got = select_uncertain_points(logits, candidates, num_uncertain=150,
                                  implementation=implementation)
    assert_same_selection_as_plain(got, logits, candidates, 150,
                                   implementation or "xla_cpu")


def test_select_uncertain_points_no_gradient(implementation):
  logits = np.random.default_rng(18).normal(size=(2, 1, 5, 6)).astype(
      np.float32)
  candidates = np.random.default_rng(19).uniform(size=(2, 12, 2)).astype(
      np.float32)
  grads = jax.grad(lambda l, c: jaxmask.select_uncertain_points(
      l, c, num_uncertain=4, implementation=implementation).sum(),
                   argnums=(0, 1))(logits, candidates)
  for grad in grads:
    np.testing.assert_array_equal(grad, np.zeros_like(grad))


@pytest.mark.parametrize("kwargs,err,match", [
    (dict(num_uncertain=4.0), TypeError,
     "num_uncertain must be a Python int, got 4.0"),
    (dict(num_uncertain=-1), ValueError, "num_uncertain must be >= 0, got -1"),
    (dict(num_uncertain=13), ValueError,
     r"num_uncertain must lie in \[0, num_candidates=12\], got 13"),
    (dict(num_uncertain=2, uncertainty_fn=lambda x: x[:, 0]), ValueError,
     "uncertainty_fn must return the shape of its input"),
    (dict(num_uncertain=2, implementation="gpu"), ValueError,
     r"implementation must be one of \(None, 'plain', 'xla_cpu'\), got"
     " 'gpu'"),
])
def test_select_uncertain_points_bad_options(implementation, kwargs, err,
                                             match):
  logits = jnp.zeros((2, 1, 5, 5))
  coords = jnp.zeros((2, 12, 2))
  kwargs = dict(dict(implementation=implementation), **kwargs)
  with pytest.raises(err, match=match):
    jaxmask.select_uncertain_points(logits, coords, **kwargs)


@pytest.mark.parametrize("logits,coords,err,match", [
    (np.zeros((2, 5, 5), np.float32), np.zeros((2, 4, 2), np.float32),
     ValueError, r"logits must have shape \[num_masks, 1, height, width\],"
     r" got \(2, 5, 5\)\."),
    (np.zeros((2, 3, 5, 5), np.float32), np.zeros((2, 4, 2), np.float32),
     ValueError, "logits must have a single channel"),
    (np.zeros((2, 1, 5, 5), np.int32), np.zeros((2, 4, 2), np.float32),
     TypeError, "logits must have a floating dtype, got int32."),
    (np.zeros((2, 1, 5, 5), np.float32), np.zeros((3, 4, 2), np.float32),
     ValueError, "logits and candidates must have the same num_masks"),
    (np.zeros((2, 1, 5, 5), np.float32), np.zeros((2, 4), np.float32),
     ValueError, r"candidates must have shape \[num_masks, num_candidates,"
     r" 2\], got \(2, 4\)\."),
    (np.zeros((2, 1, 5, 5), np.float32), np.zeros((2, 4, 2), np.int32),
     TypeError, "candidates must have a floating dtype, got int32."),
])
def test_select_uncertain_points_bad_input(logits, coords, err, match):
  with pytest.raises(err, match=match):
    jaxmask.select_uncertain_points(logits, coords, num_uncertain=2)


# --------------------------------------------- sample_points_using_uncertainty


def _logits(seed=0, n=4, h=16, w=12):
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.normal(size=(n, 1, h, w)) * 3, jnp.float32)


def test_sample_points_structure_reproducible_from_documented_keys(
    implementation):
  key = jax.random.key(7)
  logits = _logits()
  points = sample_points(key, logits, num_points=30,
                         implementation=implementation)
  assert points.shape == (4, 30, 2) and points.dtype == jnp.float32
  assert bool(jnp.all((points >= 0) & (points < 1)))
  num_uncertain = int(0.75 * 30)  # 22 kept, 8 fresh
  candidates, fresh = documented_draws(key, 4, 90, 30 - num_uncertain)
  np.testing.assert_array_equal(
      points[:, :num_uncertain],
      select_uncertain_points(logits, candidates,
                              num_uncertain=num_uncertain,
                              implementation=implementation))
  np.testing.assert_array_equal(points[:, num_uncertain:], fresh)


def test_sample_points_implementations_agree():
  """The same draws bit for bit and the same selected sets."""
  key = jax.random.key(20)
  logits = _logits(seed=3, n=6, h=20, w=24)
  candidates, fresh = documented_draws(key, 6, 300, 25)
  want = sample_points(key, logits, num_points=100, implementation="plain")
  for implementation in ("xla_cpu", None):
    got = sample_points(key, logits, num_points=100,
                        implementation=implementation)
    np.testing.assert_array_equal(got[:, 75:], fresh)
    np.testing.assert_array_equal(got[:, 75:], want[:, 75:])
    assert_same_selection_as_plain(got[:, :75], logits, candidates, 75,
                                   implementation or "xla_cpu")


def test_sample_points_ratio_extremes(implementation):
  key = jax.random.key(8)
  logits = _logits()
  # importance_sample_ratio 0: all points fresh.
  _, fresh = documented_draws(key, 4, 60, 20)
  np.testing.assert_array_equal(
      sample_points(key, logits, num_points=20, importance_sample_ratio=0.0,
                    implementation=implementation),
      fresh)
  # importance_sample_ratio 1 and oversample_ratio 1: every candidate is kept
  # (in an unspecified order).
  points = sample_points(key, logits, num_points=20, oversample_ratio=1.0,
                         importance_sample_ratio=1.0,
                         implementation=implementation)
  candidates, _ = documented_draws(key, 4, 20, 0)
  assert_same_points(points, candidates, ordered=False)


def test_sample_points_prefers_uncertain_region(implementation):
  # Logits are 0 (maximally uncertain) on the left half, 10 elsewhere: about
  # 41 of the 90 candidates read exactly 0, so all 22 kept points do.
  logits = jnp.full((4, 1, 16, 12), 10.0).at[..., :6].set(0.0)
  points = sample_points(jax.random.key(9), logits, num_points=30,
                         implementation=implementation)
  assert bool(jnp.all(points[:, :22, 0] < 5.5 / 12))
  assert not bool(jnp.all(points[:, 22:, 0] < 5.5 / 12))  # fresh: anywhere


def test_sample_points_determinism_and_keys(implementation):
  logits = _logits()
  f = lambda k: sample_points(k, logits, num_points=30,
                              implementation=implementation)
  np.testing.assert_array_equal(f(jax.random.key(1)), f(jax.random.key(1)))
  assert not np.array_equal(f(jax.random.key(1)), f(jax.random.key(2)))
  # A raw uint32[2] key draws as its typed twin does.
  np.testing.assert_array_equal(f(jax.random.PRNGKey(1)),
                                f(jax.random.wrap_key_data(
                                    jax.random.key_data(jax.random.PRNGKey(
                                        1)))))


def test_sample_points_jit_vmap_no_grad_no_retrace(implementation):
  logits = _logits()

  @jax.jit
  @chex.assert_max_traces(n=1)
  def f(key, x):
    return jaxmask.sample_points_using_uncertainty(
        key, x, num_points=30, implementation=implementation)

  chex.clear_trace_counter()
  np.testing.assert_array_equal(
      f(jax.random.key(3), logits),
      sample_points(jax.random.key(3), logits, num_points=30,
                    implementation=implementation))
  f(jax.random.key(4), logits + 1)  # same shapes: no second trace
  # vmap over keys and masks equals one call per row.
  keys = jax.random.split(jax.random.key(5), 4)
  batched = jax.jit(jax.vmap(
      lambda k, x: jaxmask.sample_points_using_uncertainty(
          k, x[None], num_points=30, implementation=implementation)[0]))(
              keys, logits)
  for i in range(4):
    np.testing.assert_array_equal(
        batched[i], sample_points(keys[i], logits[i:i + 1], num_points=30,
                                  implementation=implementation)[0])
  grad = jax.jit(jax.grad(lambda x: jaxmask.sample_points_using_uncertainty(
      jax.random.key(3), x, num_points=30,
      implementation=implementation).sum()))(logits)
  np.testing.assert_array_equal(grad, jnp.zeros_like(logits))


def test_sample_points_no_masks(implementation):
  points = jaxmask.sample_points_using_uncertainty(
      jax.random.key(0), jnp.zeros((0, 1, 8, 8)), num_points=10,
      implementation=implementation)
  assert points.shape == (0, 10, 2) and points.dtype == jnp.float32


@pytest.mark.parametrize("kwargs,err,match", [
    (dict(num_points=0), ValueError, "num_points must be >= 1, got 0"),
    (dict(num_points=10.0), TypeError,
     "num_points must be a Python int, got 10.0"),
    (dict(num_points=True), TypeError,
     "num_points must be a Python int, got True"),
    (dict(num_points=10, oversample_ratio=0.5), ValueError,
     r"oversample_ratio must be a finite number in \[1.0, "),
    (dict(num_points=10, oversample_ratio=float("nan")), ValueError,
     "oversample_ratio must be a finite number in .*, got nan"),
    (dict(num_points=10, oversample_ratio=float("inf")), ValueError,
     "oversample_ratio must be a finite number in .*, got inf"),
    (dict(num_points=10, importance_sample_ratio=-0.1), ValueError,
     r"importance_sample_ratio must be a finite number in \[0.0, 1.0\], got"
     r" -0.1"),
    (dict(num_points=10, importance_sample_ratio=1.5), ValueError,
     r"importance_sample_ratio must be a finite number in \[0.0, 1.0\], got"
     r" 1.5"),
    (dict(num_points=10, oversample_ratio="3"), TypeError,
     "oversample_ratio must be a Python number, got '3'"),
    (dict(num_points=10, importance_sample_ratio=None), TypeError,
     "importance_sample_ratio must be a Python number, got None"),
    (dict(num_points=10, implementation="gpu"), ValueError,
     r"implementation must be one of \(None, 'plain', 'xla_cpu'\), got"
     " 'gpu'"),
])
def test_sample_points_bad_options(kwargs, err, match):
  with pytest.raises(err, match=match):
    jaxmask.sample_points_using_uncertainty(jax.random.key(0), _logits(),
                                            **kwargs)


@pytest.mark.parametrize("key,err,match", [
    (0, TypeError, "key must be a jax.random key"),
    (np.zeros(2, np.uint32), TypeError, "key must be a jax.random key"),
    (jnp.zeros(3, jnp.uint32), TypeError, "key must be a jax.random key"),
    (jnp.zeros(2, jnp.int32), TypeError, "key must be a jax.random key"),
    (jax.random.split(jax.random.key(0), 2), ValueError,
     "key must be a single key"),
])
def test_sample_points_bad_key(key, err, match):
  with pytest.raises(err, match=match):
    jaxmask.sample_points_using_uncertainty(key, _logits(), num_points=10)


@pytest.mark.parametrize("logits,err,match", [
    (np.zeros((2, 8, 8), np.float32), ValueError,
     r"logits must have shape \[num_masks, 1, height, width\], got"
     r" \(2, 8, 8\)\."),
    (np.zeros((2, 2, 8, 8), np.float32), ValueError,
     "logits must have a single channel"),
    (np.zeros((2, 1, 8, 8), np.int32), TypeError,
     "logits must have a floating dtype, got int32."),
])
def test_sample_points_bad_logits(logits, err, match):
  with pytest.raises(err, match=match):
    jaxmask.sample_points_using_uncertainty(jax.random.key(0), logits,
                                            num_points=10)


# ---------------------------------------------------------------- on the grid


def test_on_grid_hand_oracle(implementation):
  rng = np.random.default_rng(10)
  n, h, w = 3, 5, 7
  scores = rng.permutation(n * h * w).reshape(n, 1, h, w).astype(np.float32)
  indices, coords = on_grid(scores, num_points=9)
  assert indices.shape == (n, 9) and indices.dtype == jnp.int32
  assert coords.dtype == jnp.float32
  for i in range(n):
    expected = np.argsort(-scores[i].ravel(), kind="stable")[:9]
    np.testing.assert_array_equal(indices[i], expected)
    np.testing.assert_allclose(
        coords[i], np.stack([(expected % w + 0.5) / w,
                             (expected // w + 0.5) / h], -1), atol=1e-7)
  # Cell centres sample the map at exactly the chosen cells.
  np.testing.assert_allclose(
      point_sample(scores, coords, implementation=implementation)[:, 0],
      np.take_along_axis(scores.reshape(n, -1), np.asarray(indices), 1),
      rtol=1e-6)
  # num_points above H * W clamps to H * W.
  indices, coords = on_grid(scores, num_points=1000)
  assert indices.shape == (n, h * w) and coords.shape == (n, h * w, 2)


@pytest.mark.parametrize("scores,num_points,err,match", [
    (np.zeros((2, 5, 5), np.float32), 3, ValueError,
     r"uncertainty_map must have shape \[num_masks, 1, height, width\]"),
    (np.zeros((2, 2, 5, 5), np.float32), 3, ValueError,
     "uncertainty_map must have a single channel"),
    (np.zeros((2, 1, 5, 5), np.int32), 3, TypeError,
     "uncertainty_map must have a floating dtype, got int32."),
    (np.zeros((2, 1, 5, 5), np.float32), 0, ValueError,
     "num_points must be >= 1, got 0"),
    (np.zeros((2, 1, 5, 5), np.float32), 2.5, TypeError,
     "num_points must be a Python int, got 2.5"),
])
def test_on_grid_bad_input(scores, num_points, err, match):
  with pytest.raises(err, match=match):
    jaxmask.uncertain_point_coords_on_grid(scores, num_points=num_points)


# ------------------------------------------------------------------- API rules
# (Keyword-only defaults and the key first: test_api.py, for every function.)


@pytest.mark.parametrize("name", [
    "point_sample", "point_sample_single", "select_uncertain_points",
    "sample_points_using_uncertainty", "point_mask_losses", "top_k_indices"])
def test_implementation_is_a_keyword_only_option(name):
  param = inspect.signature(getattr(jaxmask, name)).parameters[
      "implementation"]
  assert param.kind == inspect.Parameter.KEYWORD_ONLY
  assert param.default is None
