"""Tests for jaxmask._src.sampling that need no PyTorch.

Oracles: a float64 NumPy transcription of grid_sample's bilinear rule and
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
from jaxmask._src import sampling

# Jitted once per shape: eager dispatch would compile every primitive.
point_sample = jax.jit(jaxmask.point_sample)
select_uncertain_points = jax.jit(
    jaxmask.select_uncertain_points,
    static_argnames=("num_uncertain", "uncertainty_fn"))
sample_points = jax.jit(
    jaxmask.sample_points_using_uncertainty,
    static_argnames=("num_points", "oversample_ratio",
                     "importance_sample_ratio", "uncertainty_fn"))
on_grid = jax.jit(jaxmask.uncertain_point_coords_on_grid,
                  static_argnames=("num_points",))


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def documented_draws(key, num_masks, num_candidates, num_fresh):
  """The candidates and fresh points sample_points_using_uncertainty draws."""
  candidate_key, fresh_key = jax.random.split(key)
  return (jax.random.uniform(candidate_key, (num_masks, num_candidates, 2)),
          jax.random.uniform(fresh_key, (num_masks, num_fresh, 2)))


def np_grid_sample(inputs, coords):
  """float64 bilinear sampling, zero padding per neighbour, [N,C,P]."""
  inputs = np.asarray(inputs, np.float64)
  coords = np.asarray(coords, np.float64)
  n, c, h, w = inputs.shape
  ix = coords[..., 0] * w - 0.5
  iy = coords[..., 1] * h - 0.5
  x0, y0 = np.floor(ix), np.floor(iy)
  out = np.zeros((n, c, coords.shape[1]))
  for dx in (0, 1):
    for dy in (0, 1):
      x, y = x0 + dx, y0 + dy
      weight = (1 - np.abs(ix - x)) * (1 - np.abs(iy - y))
      valid = (x >= 0) & (x < w) & (y >= 0) & (y < h)
      xi = np.clip(x, 0, w - 1).astype(int)
      yi = np.clip(y, 0, h - 1).astype(int)
      vals = inputs[np.arange(n)[:, None, None], np.arange(c)[None, :, None],
                    yi[:, None], xi[:, None]]
      out += np.where(valid[:, None], vals * weight[:, None], 0.0)
  return out


def map_coordinates_sample(inputs, coords):
  """The alternative implementation (test oracle): map_coordinates."""
  def single(image, points):
    h, w = image.shape[-2:]
    rows = points[:, 1] * h - 0.5
    cols = points[:, 0] * w - 0.5
    return jax.vmap(lambda channel: map_coordinates(
        channel, [rows, cols], order=1, mode="constant", cval=0.0))(image)
  return jax.vmap(single)(inputs, coords)


def _data(seed, n, c, h, w, p, low=0.0, high=1.0):
  rng = np.random.default_rng(seed)
  inputs = rng.normal(size=(n, c, h, w)).astype(np.float32)
  coords = rng.uniform(low, high, size=(n, p, 2)).astype(np.float32)
  return inputs, coords


# ---------------------------------------------------------------- point_sample


@pytest.mark.parametrize("n,c,h,w", [(3, 1, 8, 8), (2, 3, 5, 11), (2, 2, 1, 7),
                                     (2, 1, 6, 1), (1, 1, 1, 1)])
def test_point_sample_matches_float64_oracle(n, c, h, w):
  # Coordinates in [-0.1, 1.1] exercise the per-neighbour zero padding.
  inputs, coords = _data(0, n, c, h, w, 200, -0.1, 1.1)
  out = point_sample(inputs, coords)
  assert out.shape == (n, c, 200) and out.dtype == jnp.float32
  # float32 positions vs float64: ~1e-6 abs for unit-scale inputs.
  np.testing.assert_allclose(out, np_grid_sample(inputs, coords), atol=2e-6)


@pytest.mark.parametrize("n,c,h,w", [(3, 1, 8, 8), (2, 3, 5, 11), (2, 2, 1, 7),
                                     (2, 1, 6, 1), (1, 1, 1, 1)])
def test_both_sampler_paths_match_oracle_and_each_other(monkeypatch, n, c, h,
                                                        w):
  """Pairs from a zero-bordered copy, and from blocks clamped into the map."""
  inputs, coords = _data(7, n, c, h, w, 60, -0.2, 1.2)
  coords[0, :3] = [[np.nan, 0.5], [0.5, np.inf], [-1e30, 1e30]]
  weights = np.random.default_rng(8).normal(size=(n, c, 60)).astype(np.float32)
  results = []
  for pixels_per_point in (10**9, 0):  # always copy, never copy
    monkeypatch.setattr(sampling, "_PIXELS_PER_POINT_TO_CLAMP", pixels_per_point)
    sample = jax.jit(lambda x, p: jaxmask.point_sample(x, p))
    grad = jax.jit(jax.grad(
        lambda x, p: (jaxmask.point_sample(x, p) * weights).sum(),
        argnums=(0, 1)))
    results.append((sample(inputs, coords), *grad(inputs, coords)))
  finite = coords.copy()
  finite[0, :3] = 0.5
  want = np_grid_sample(inputs, finite)
  want[0, :, :3] = 0  # non-finite or far-away points sample the padding
  for out, grad_inputs, grad_coords in results:
    np.testing.assert_allclose(out, want, atol=2e-6)
    assert np.isfinite(grad_inputs).all()
  # Same arithmetic; XLA may contract a multiply-add differently: 1 ulp.
  np.testing.assert_allclose(results[0][0], results[1][0], atol=5e-7)
  np.testing.assert_allclose(results[0][1], results[1][1], atol=1e-6)
  np.testing.assert_allclose(results[0][2][1:], results[1][2][1:], atol=1e-5)


def test_point_sample_matches_map_coordinates():
  inputs, coords = _data(1, 4, 2, 16, 12, 500, -0.1, 1.1)
  np.testing.assert_allclose(
      point_sample(inputs, coords),
      map_coordinates_sample(jnp.asarray(inputs), jnp.asarray(coords)),
      atol=2e-6)


def test_point_sample_hand_values():
  # Ones image, 4x4: interior points read 1; an edge point half-weights the
  # zero padding; a corner point quarter-weights the image; outside gives 0.
  ones = jnp.ones((1, 1, 4, 4))
  coords = jnp.array([[[0.5, 0.5], [0.0, 0.5], [0.0, 0.0], [1.0, 1.0],
                       [0.125, 0.125], [-0.2, 0.5], [1.2, 1.2]]])
  np.testing.assert_allclose(
      point_sample(ones, coords)[0, 0],
      [1.0, 0.5, 0.25, 0.25, 1.0, 0.0, 0.0], atol=1e-7)
  # Pixel centres read pixel values exactly.
  image = jnp.arange(12.0).reshape(1, 1, 3, 4)
  cols, rows = np.meshgrid(np.arange(4), np.arange(3))
  centres = np.stack([(cols.ravel() + 0.5) / 4, (rows.ravel() + 0.5) / 3], -1)
  # (grid_sample's 2x - 1 round trip costs a few ulp of position.)
  np.testing.assert_allclose(
      point_sample(image, centres[None].astype(np.float32))[0, 0],
      np.arange(12.0), atol=1e-6)


def test_point_sample_single_composes_with_vmap():
  inputs, coords = _data(2, 3, 2, 6, 9, 50)
  single = jax.vmap(jaxmask.point_sample_single)(inputs, coords)
  np.testing.assert_allclose(single, point_sample(inputs, coords), atol=1e-6)
  assert jaxmask.point_sample_single(inputs[0], coords[0]).shape == (2, 50)


def test_point_sample_bfloat16_keeps_dtype_and_precision():
  inputs, coords = _data(3, 2, 1, 64, 64, 300)
  out = point_sample(inputs.astype(jnp.bfloat16), coords)
  assert out.dtype == jnp.bfloat16
  # Positions stay float32: only the bf16 rounding of values/result remains.
  expected = np_grid_sample(np.asarray(inputs.astype(jnp.bfloat16),
                                       np.float32), coords)
  np.testing.assert_allclose(np.asarray(out, np.float32), expected,
                             atol=2e-2, rtol=1e-2)


def test_point_sample_grad_is_transpose_of_sampling():
  inputs, coords = _data(4, 2, 1, 5, 6, 30, -0.1, 1.1)
  jax.test_util.check_grads(lambda x: point_sample(x, coords),
                            (jnp.asarray(inputs),), order=1,
                            modes=("rev",), atol=1e-2, rtol=1e-2)


def test_point_sample_grad_bfloat16_and_channels_and_width_one():
  """The custom VJP: dtype kept, channels and W = 1 maps, NaN-free at edges."""
  for c, h, w in ((1, 7, 9), (3, 5, 6), (2, 4, 1), (1, 1, 1)):
    inputs, coords = _data(5, 3, c, h, w, 40, -0.2, 1.2)
    weights = np.random.default_rng(5).normal(size=(3, c, 40)).astype(
        np.float32)
    loss = lambda x: (point_sample(x, coords) * weights).sum()
    want = jax.grad(loss)(jnp.asarray(inputs, jnp.float32))
    # The transpose of sampling: <grad, e_i> is the weight-sum at pixel i.
    basis = np.asarray(jax.jit(jax.vmap(lambda e: loss(e.reshape(
        inputs.shape))))(jnp.eye(inputs.size, dtype=jnp.float32)))
    np.testing.assert_allclose(np.asarray(want).reshape(-1), basis,
                               rtol=1e-5, atol=1e-6)
    got = jax.grad(loss)(jnp.asarray(inputs, jnp.bfloat16))
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(got, np.float32), want, atol=0.1,
                               rtol=2e-2)


@pytest.mark.parametrize("h,w", [(256, 256), (255, 257)])
def test_both_sampler_paths_on_maps_past_16_bit_offsets(monkeypatch, h, w):
  """256² fits 16-bit offsets unpadded, not padded; 255 x 257 fits neither."""
  inputs, coords = _data(9, 2, 1, h, w, 400, -0.01, 1.01)
  coords[:, :4] = [[0, 0], [1, 1], [0, 1], [1, 0]]
  want = np_grid_sample(inputs, coords)
  weights = np.random.default_rng(10).normal(size=(2, 1, 400))
  outs, grads = [], []
  for pixels_per_point in (10**9, 0):  # always copy, never copy
    monkeypatch.setattr(sampling, "_PIXELS_PER_POINT_TO_CLAMP", pixels_per_point)
    outs.append(point_sample(inputs, coords))
    grads.append(jax.grad(
        lambda x: (jaxmask.point_sample(x, coords) * weights).sum())(inputs))
  # float32 positions on 256-pixel axes are within ~2e-5 px of float64's.
  np.testing.assert_allclose(outs[1], want, atol=1e-4)
  np.testing.assert_allclose(outs[0], outs[1], atol=1e-6)
  np.testing.assert_allclose(grads[0], grads[1], atol=1e-6)
  # The gradient is the sampling's transpose: <grad, x> = <weights, S x>.
  probe = np.random.default_rng(11).normal(size=inputs.shape)
  np.testing.assert_allclose(np.vdot(grads[1], probe),
                             np.vdot(weights, np_grid_sample(probe, coords)),
                             rtol=1e-4)


def test_flat_index_overflow_paths_give_the_same_values(monkeypatch):
  inputs, coords = _data(6, 4, 2, 5, 7, 30, -0.1, 1.1)
  logits = inputs[:, :1]
  want_values = jaxmask.point_sample(inputs, coords)
  want_points = jaxmask.select_uncertain_points(logits, coords,
                                                num_uncertain=9)
  monkeypatch.setattr(sampling, "_MAX_FLAT_INDEX", 100)  # force both paths
  np.testing.assert_array_equal(jaxmask.point_sample(inputs, coords),
                                want_values)
  np.testing.assert_array_equal(
      jaxmask.select_uncertain_points(logits, coords, num_uncertain=9),
      want_points)


@pytest.mark.parametrize("num_masks", [12, 7])
def test_chunked_selection_equals_whole(monkeypatch, num_masks):
  """CPU selects a few masks at a time; the points must not change."""
  logits = np.random.default_rng(9).normal(size=(num_masks, 1, 9, 11)).astype(
      np.float32)
  candidates = np.random.default_rng(10).random((num_masks, 300, 2)).astype(
      np.float32)
  key = jax.random.key(4)
  def run():
    select = jax.jit(lambda l, c: jaxmask.select_uncertain_points(
        l, c, num_uncertain=40))
    points = jax.jit(lambda k, l: jaxmask.sample_points_using_uncertainty(
        k, l, num_points=100))
    return select(logits, candidates), points(key, logits)
  whole = run()
  assert sampling._rows_per_chunk(num_masks, 300) == num_masks
  monkeypatch.setattr(sampling, "_CHUNK_BYTES", 8 * 300 * 4)  # 4 masks
  expected_chunk = 4 if num_masks == 12 else num_masks  # 7: no divisor
  assert sampling._rows_per_chunk(num_masks, 300) == expected_chunk
  chunked = run()
  for got, want in zip(chunked, whole):
    np.testing.assert_array_equal(got, want)


def test_point_sample_jit_and_no_recompilation():
  @jax.jit
  @chex.assert_max_traces(n=1)
  def f(x, c):
    return jaxmask.point_sample(x, c)
  chex.clear_trace_counter()
  for seed in range(3):
    inputs, coords = _data(seed, 2, 1, 8, 8, 20)
    np.testing.assert_allclose(f(inputs, coords),
                               np_grid_sample(inputs, coords), atol=2e-6)


@pytest.mark.parametrize("inputs,coords,err,match", [
    (np.zeros((1, 8, 8), np.float32), np.zeros((1, 4, 2), np.float32),
     ValueError, "inputs must have shape"),
    (np.zeros((1, 1, 8, 8), np.float32), np.zeros((1, 4, 3), np.float32),
     ValueError, "point_coords must have shape"),
    (np.zeros((1, 1, 8, 8), np.float32), np.zeros((4, 2), np.float32),
     ValueError, "point_coords must have shape"),
    (np.zeros((2, 1, 8, 8), np.float32), np.zeros((3, 4, 2), np.float32),
     ValueError, "same num_masks"),
    (np.zeros((1, 1, 8, 8), np.int32), np.zeros((1, 4, 2), np.float32),
     TypeError, "inputs must have a floating dtype"),
    (np.zeros((1, 1, 8, 8), np.float32), np.zeros((1, 4, 2), np.int32),
     TypeError, "point_coords must have a floating dtype"),
])
def test_point_sample_bad_input(inputs, coords, err, match):
  with pytest.raises(err, match=match):
    jaxmask.point_sample(inputs, coords)


# ------------------------------------------------------- uncertainty selection


def test_calculate_uncertainty():
  np.testing.assert_array_equal(
      jaxmask.calculate_uncertainty(jnp.array([-2.0, 0.0, 3.0])),
      [-2.0, 0.0, -3.0])
  with pytest.raises(TypeError, match="logits"):
    jaxmask.calculate_uncertainty(jnp.array([1, 2]))


def _centre_candidates(rng, n, h, w, m):
  """Candidates at random pixel centres: sampled logits = pixel values."""
  cols = rng.integers(0, w, size=(n, m))
  rows = rng.integers(0, h, size=(n, m))
  coords = np.stack([(cols + 0.5) / w, (rows + 0.5) / h], -1)
  return coords.astype(np.float32), rows, cols


def test_select_uncertain_points_hand_oracle():
  rng = np.random.default_rng(5)
  n, h, w, m, k = 3, 6, 7, 30, 8
  # Distinct |logits| so the order is unique.
  logits = (rng.permutation(n * h * w).reshape(n, 1, h, w) - 60.5) / 7
  logits = logits.astype(np.float32)
  coords, rows, cols = _centre_candidates(rng, n, h, w, m)
  # A pixel drawn twice gives two equal candidates: their order is moot.
  out = select_uncertain_points(logits, coords, num_uncertain=k)
  assert out.shape == (n, k, 2)
  for i in range(n):
    scores = -np.abs(logits[i, 0, rows[i], cols[i]])
    expected = coords[i][np.argsort(-scores, kind="stable")[:k]]
    np.testing.assert_array_equal(out[i], expected)


def test_select_uncertain_points_custom_uncertainty_and_edges():
  rng = np.random.default_rng(6)
  logits = rng.normal(size=(2, 1, 5, 5)).astype(np.float32)
  coords, rows, cols = _centre_candidates(rng, 2, 5, 5, 12)
  # uncertainty_fn = identity keeps the largest logits.
  out = select_uncertain_points(logits, coords, num_uncertain=3,
                                        uncertainty_fn=lambda x: x)
  for i in range(2):
    values = logits[i, 0, rows[i], cols[i]]
    np.testing.assert_array_equal(
        out[i], coords[i][np.argsort(-values, kind="stable")[:3]])
  assert select_uncertain_points(
      logits, coords, num_uncertain=0).shape == (2, 0, 2)
  all_points = select_uncertain_points(logits, coords,
                                               num_uncertain=12)
  for i in range(2):  # k = M keeps every candidate: a permutation.
    assert sorted(map(tuple, np.asarray(all_points[i]))) == sorted(
        map(tuple, coords[i]))


@pytest.mark.parametrize("kwargs,err,match", [
    (dict(num_uncertain=4.0), TypeError, "num_uncertain"),
    (dict(num_uncertain=-1), ValueError, "num_uncertain"),
    (dict(num_uncertain=13), ValueError, "num_uncertain"),
    (dict(num_uncertain=2, uncertainty_fn=lambda x: x[:, 0]), ValueError,
     "uncertainty_fn"),
])
def test_select_uncertain_points_bad_options(kwargs, err, match):
  logits = jnp.zeros((2, 1, 5, 5))
  coords = jnp.zeros((2, 12, 2))
  with pytest.raises(err, match=match):
    jaxmask.select_uncertain_points(logits, coords, **kwargs)


@pytest.mark.parametrize("logits,coords,err,match", [
    (np.zeros((2, 5, 5), np.float32), np.zeros((2, 4, 2), np.float32),
     ValueError, "logits must have shape"),
    (np.zeros((2, 3, 5, 5), np.float32), np.zeros((2, 4, 2), np.float32),
     ValueError, "single channel"),
    (np.zeros((2, 1, 5, 5), np.int32), np.zeros((2, 4, 2), np.float32),
     TypeError, "logits must have a floating dtype"),
    (np.zeros((2, 1, 5, 5), np.float32), np.zeros((3, 4, 2), np.float32),
     ValueError, "same num_masks"),
    (np.zeros((2, 1, 5, 5), np.float32), np.zeros((2, 4), np.float32),
     ValueError, "candidates must have shape"),
    (np.zeros((2, 1, 5, 5), np.float32), np.zeros((2, 4, 2), np.int32),
     TypeError, "candidates must have a floating dtype"),
])
def test_select_uncertain_points_bad_input(logits, coords, err, match):
  with pytest.raises(err, match=match):
    jaxmask.select_uncertain_points(logits, coords, num_uncertain=2)


# --------------------------------------------- sample_points_using_uncertainty


def _logits(seed=0, n=4, h=16, w=12):
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.normal(size=(n, 1, h, w)) * 3, jnp.float32)


def test_sample_points_structure_reproducible_from_documented_keys():
  key = jax.random.key(7)
  logits = _logits()
  points = sample_points(key, logits, num_points=30)
  assert points.shape == (4, 30, 2) and points.dtype == jnp.float32
  assert bool(jnp.all((points >= 0) & (points < 1)))
  num_uncertain = int(0.75 * 30)  # 22 kept, 8 fresh
  candidates, fresh = documented_draws(key, 4, 90, 30 - num_uncertain)
  np.testing.assert_array_equal(
      points[:, :num_uncertain],
      select_uncertain_points(logits, candidates,
                                      num_uncertain=num_uncertain))
  np.testing.assert_array_equal(points[:, num_uncertain:], fresh)


def test_sample_points_ratio_extremes():
  key = jax.random.key(8)
  logits = _logits()
  # importance_sample_ratio 0: all points fresh.
  _, fresh = documented_draws(key, 4, 60, 20)
  np.testing.assert_array_equal(
      sample_points(key, logits, num_points=20, importance_sample_ratio=0.0),
      fresh)
  # importance_sample_ratio 1 and oversample_ratio 1: every candidate is kept
  # (in an unspecified order).
  points = sample_points(key, logits, num_points=20, oversample_ratio=1.0,
                         importance_sample_ratio=1.0)
  candidates, _ = documented_draws(key, 4, 20, 0)
  for i in range(4):
    assert sorted(map(tuple, np.asarray(points[i]))) == sorted(
        map(tuple, np.asarray(candidates[i])))


def test_sample_points_prefers_uncertain_region():
  # Logits are 0 (maximally uncertain) on the left half, 10 elsewhere: about
  # 41 of the 90 candidates read exactly 0, so all 22 kept points do.
  logits = jnp.full((4, 1, 16, 12), 10.0).at[..., :6].set(0.0)
  points = sample_points(jax.random.key(9), logits, num_points=30)
  assert bool(jnp.all(points[:, :22, 0] < 5.5 / 12))
  assert not bool(jnp.all(points[:, 22:, 0] < 5.5 / 12))  # fresh: anywhere


def test_sample_points_determinism_and_keys():
  logits = _logits()
  f = lambda k: sample_points(k, logits,
                                                        num_points=30)
  np.testing.assert_array_equal(f(jax.random.key(1)), f(jax.random.key(1)))
  assert not np.array_equal(f(jax.random.key(1)), f(jax.random.key(2)))


def test_sample_points_jit_vmap_no_grad_no_retrace():
  logits = _logits()

  @jax.jit
  @chex.assert_max_traces(n=1)
  def f(key, x):
    return jaxmask.sample_points_using_uncertainty(key, x, num_points=30)

  chex.clear_trace_counter()
  np.testing.assert_array_equal(f(jax.random.key(3), logits),
                                sample_points(jax.random.key(3), logits,
                                              num_points=30))
  f(jax.random.key(4), logits + 1)  # same shapes: no second trace
  # vmap over keys and masks equals one call per row.
  keys = jax.random.split(jax.random.key(5), 4)
  batched = jax.jit(jax.vmap(
      lambda k, x: jaxmask.sample_points_using_uncertainty(
          k, x[None], num_points=30)[0]))(keys, logits)
  for i in range(4):
    np.testing.assert_array_equal(
        batched[i], sample_points(keys[i], logits[i:i + 1], num_points=30)[0])
  grad = jax.jit(jax.grad(lambda x: jaxmask.sample_points_using_uncertainty(
      jax.random.key(3), x, num_points=30).sum()))(logits)
  np.testing.assert_array_equal(grad, jnp.zeros_like(logits))


@pytest.mark.parametrize("kwargs,err,match", [
    (dict(num_points=0), ValueError, "num_points"),
    (dict(num_points=10.0), TypeError, "num_points"),
    (dict(num_points=True), TypeError, "num_points"),
    (dict(num_points=10, oversample_ratio=0.5), ValueError,
     "oversample_ratio"),
    (dict(num_points=10, oversample_ratio=float("nan")), ValueError,
     "oversample_ratio"),
    (dict(num_points=10, importance_sample_ratio=-0.1), ValueError,
     "importance_sample_ratio"),
    (dict(num_points=10, importance_sample_ratio=1.5), ValueError,
     "importance_sample_ratio"),
    (dict(num_points=10, oversample_ratio="3"), TypeError,
     "oversample_ratio"),
    (dict(num_points=10, importance_sample_ratio=None), TypeError,
     "importance_sample_ratio"),
])
def test_sample_points_bad_options(kwargs, err, match):
  with pytest.raises(err, match=match):
    jaxmask.sample_points_using_uncertainty(jax.random.key(0), _logits(),
                                            **kwargs)


@pytest.mark.parametrize("logits,err,match", [
    (np.zeros((2, 8, 8), np.float32), ValueError, "logits must have shape"),
    (np.zeros((2, 2, 8, 8), np.float32), ValueError, "single channel"),
    (np.zeros((2, 1, 8, 8), np.int32), TypeError, "floating"),
])
def test_sample_points_bad_logits(logits, err, match):
  with pytest.raises(err, match=match):
    jaxmask.sample_points_using_uncertainty(jax.random.key(0), logits,
                                            num_points=10)


# ---------------------------------------------------------------- on the grid


def test_on_grid_hand_oracle():
  rng = np.random.default_rng(10)
  n, h, w = 3, 5, 7
  scores = rng.permutation(n * h * w).reshape(n, 1, h, w).astype(np.float32)
  indices, coords = on_grid(scores,
                                                           num_points=9)
  assert indices.shape == (n, 9) and indices.dtype == jnp.int32
  for i in range(n):
    expected = np.argsort(-scores[i].ravel(), kind="stable")[:9]
    np.testing.assert_array_equal(indices[i], expected)
    np.testing.assert_allclose(
        coords[i], np.stack([(expected % w + 0.5) / w,
                             (expected // w + 0.5) / h], -1), atol=1e-7)
  # Cell centres sample the map at exactly the chosen cells.
  np.testing.assert_allclose(
      point_sample(scores, coords)[:, 0],
      np.take_along_axis(scores.reshape(n, -1), np.asarray(indices), 1),
      rtol=1e-6)
  # num_points above H * W clamps to H * W.
  indices, coords = on_grid(scores,
                                                           num_points=1000)
  assert indices.shape == (n, h * w) and coords.shape == (n, h * w, 2)


@pytest.mark.parametrize("scores,num_points,err,match", [
    (np.zeros((2, 5, 5), np.float32), 3, ValueError, "uncertainty_map"),
    (np.zeros((2, 2, 5, 5), np.float32), 3, ValueError, "single channel"),
    (np.zeros((2, 1, 5, 5), np.int32), 3, TypeError, "uncertainty_map"),
    (np.zeros((2, 1, 5, 5), np.float32), 0, ValueError, "num_points"),
    (np.zeros((2, 1, 5, 5), np.float32), 2.5, TypeError, "num_points"),
])
def test_on_grid_bad_input(scores, num_points, err, match):
  with pytest.raises(err, match=match):
    jaxmask.uncertain_point_coords_on_grid(scores, num_points=num_points)


# ------------------------------------------------------------------- API rules


@pytest.mark.parametrize("name", [
    "point_sample", "point_sample_single", "calculate_uncertainty",
    "select_uncertain_points", "sample_points_using_uncertainty",
    "uncertain_point_coords_on_grid", "sigmoid_ce_loss", "dice_loss",
    "pairwise_sigmoid_ce_loss", "pairwise_dice_loss", "point_mask_losses",
    "num_masks_normalizer"])
def test_api_defaults_are_keyword_only_and_key_first(name):
  params = inspect.signature(getattr(jaxmask, name)).parameters.values()
  for param in params:
    if param.default is not inspect.Parameter.empty:
      assert param.kind == inspect.Parameter.KEYWORD_ONLY, param.name
  names = [p.name for p in params]
  if "key" in names:
    assert names[0] == "key"
