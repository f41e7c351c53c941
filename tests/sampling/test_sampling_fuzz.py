"""Fuzzing top-k and the point samplers: a named error or the contract.

The rule (tests/_strategies.py, from `jaxmask/_src/checks.py`): every call
made here either (a) raises `ValueError` or `TypeError` whose message names
one of the function's own parameters, or (b) returns a result that keeps the
function's documented contract: the shapes and dtypes of its docstring, and
value properties that hold whatever the data (below). Anything else is a
library bug.

Oracles: a float64 NumPy bilinear `grid_sample`, `lax.top_k`, and
`jax.random.uniform` for the documented draws; nothing is copied from the
implementation. Every function that takes `implementation` is fuzzed over
both (the plain algorithm and the XLA:CPU kernel).

* `calculate_uncertainty`: exactly `-abs(x)`, any shape, same dtype.
* `top_k_indices`: `[rows, k]` int32, in range, distinct per row, the set of
  `lax.top_k`, both implementations.
* `point_sample`, `point_sample_single`: `[N, C, P]` in the dtype of `inputs`;
  finite data give finite values bounded by max |input| that match a NumPy
  `grid_sample`; a NaN/inf coordinate gives NaN at that point.
* `select_uncertain_points`, `sample_points_using_uncertainty`,
  `uncertain_point_coords_on_grid`: shapes and dtypes; selected points are
  candidates (the documented `jax.random.uniform` draws for `sample_...`), the
  top-k of the uncertainty of `point_sample` (ties within rounding), NaN never
  chosen over a number; fresh points are the documented draws; all in [0, 1);
  on-grid indices are `lax.top_k`'s and coordinates the cell centres.

Hostile arguments (one bad argument at a time on a valid baseline; also
wrong-shaped `uncertainty_fn` results) must raise (a). Zero-sized maps are a
documented normal case: every point samples the zero padding. The bugs the
fuzzing found are fixed; each keeps its minimal reproducer as a regression
test at the end, and one outcome is documented rather than rejected
(`test_documented_huge_finite_coordinates_sample_nan`: a coordinate whose
pixel position overflows float32 samples NaN, as in PyTorch).

`COVERED` names the test that fuzzes each of these public names, `HOSTILE`
the bad values of each function's arguments;
tests/test_api.py::test_every_public_name_is_fuzzed checks that every public
name of jaxmask has both across the concept folders. Settings: `_fuzz`,
derandomized with no example database, so CI runs the same examples every
time.
"""

import re

from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmask
from _strategies import BAD_IMPORTANCE
from _strategies import BAD_KEY
from _strategies import BAD_OVERSAMPLE
from _strategies import BF16
from _strategies import IMPLEMENTATIONS
from _strategies import KEY
from _strategies import NAN
from _strategies import NONFINITE
from _strategies import SPECIAL
from _strategies import _L23
from _strategies import _MAPS
from _strategies import _PTS
from _strategies import _as
from _strategies import _bad_array
from _strategies import _bad_int
from _strategies import _dtypes
from _strategies import _expect_named_error
from _strategies import _f32
from _strategies import _floats
from _strategies import _fuzz
from _strategies import _impl_bad
from _strategies import _names_a_parameter
from _strategies import _non_float
from _strategies import _np32

# NumPy oracles meet inf - inf and overflow on purpose; casts to float16
# overflow; complex q warns when cast.
pytestmark = pytest.mark.filterwarnings(
    "ignore:invalid value encountered:RuntimeWarning",
    "ignore:overflow encountered:RuntimeWarning",
    "ignore:divide by zero encountered:RuntimeWarning",
    "ignore::numpy.exceptions.ComplexWarning")


# Public name -> the test in this file that fuzzes it. tests/test_api.py
# (`test_every_public_name_is_fuzzed`) collects these from every
# tests/<concept>/test_<concept>_fuzz.py: each public name must have one.
COVERED = {
    "calculate_uncertainty": "test_calculate_uncertainty_is_minus_abs",
    "point_sample": "test_point_sample_contract",
    "point_sample_single": "test_point_sample_contract",
    "sample_points_using_uncertainty": "test_sample_points_contract",
    "select_uncertain_points": "test_select_uncertain_points_contract",
    "top_k_indices": "test_top_k_indices_contract",
    "uncertain_point_coords_on_grid": "test_on_grid_contract",
}


# ---------------------------------------------------------------------------
# (b) Top-k and point sampling.
# ---------------------------------------------------------------------------


@_fuzz(40)
@given(shape=st.sampled_from(((), (0,), (3,), (2, 0, 3), (2, 1, 3), (1, 2, 2, 2))),
       data=st.data(), dtype=_dtypes, container=st.sampled_from(
           ("jax", "numpy", "list")))
def test_calculate_uncertainty_is_minus_abs(shape, data, dtype, container):
  x32 = data.draw(_floats(shape, nonfinite=True))
  if container == "list" and x32.size == 0:  # [[], []] loses an axis
    container = "numpy"
  if container == "list":
    x, dtype = x32.tolist(), "float32"
  else:
    x = _as(x32, dtype, container)
  out = jaxmask.calculate_uncertainty(x)
  xd = np.asarray(x32).astype(jnp.dtype(dtype))
  assert out.shape == xd.shape and out.dtype == jnp.dtype(dtype)
  want = -np.abs(xd)
  np.testing.assert_array_equal(_np32(out), _np32(want))  # NaN == NaN
  finite = ~np.isnan(_np32(want))
  np.testing.assert_array_equal(np.signbit(_np32(out))[finite],
                                np.signbit(_np32(want))[finite])



@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@_fuzz(40)
@given(shape=st.sampled_from(((0, 3), (1, 1), (2, 5), (3, 6), (1, 4100))),
       data=st.data(), dtype=_dtypes)
def test_top_k_indices_contract(implementation, shape, data, dtype):
  rows, m = shape
  if m > 6:  # one kernel-sized row: bracket selection, few compiled ks
    k, dtype = data.draw(st.sampled_from((1, 2050))), "float32"
    x = np.random.default_rng(data.draw(st.integers(0, 3))).normal(
        size=shape).astype(np.float32)
    for index in data.draw(st.lists(st.integers(0, m - 1), max_size=8)):
      x[0, index] = data.draw(st.sampled_from(SPECIAL + NONFINITE))
  else:
    k = data.draw(st.integers(0, m))
    x = data.draw(_floats(shape, nonfinite=True))
  scores = _as(x, dtype, "jax")
  k_arg = data.draw(st.sampled_from((int, np.int64, np.int32)))(k)
  out = jaxmask.top_k_indices(scores, k=k_arg, implementation=implementation)
  assert out.shape == (rows, k) and out.dtype == jnp.int32
  out = np.asarray(out)
  assert ((out >= 0) & (out < max(m, 1))).all()
  want = np.asarray(lax.top_k(scores, k)[1])
  for r in range(rows):
    assert len(set(out[r])) == k
    assert sorted(out[r]) == sorted(want[r]), (r, out[r], want[r])


def _np_point_sample(maps, coords):
  """grid_sample(maps, 2 * coords - 1), bilinear, zero padding,
  align_corners=False, in float64: `[N, C, H, W]`, `[N, P, 2]` -> `[N, C, P]`."""
  n, c, h, w = maps.shape
  x, y = coords[..., 0], coords[..., 1]
  finite = np.isfinite(x) & np.isfinite(y)
  x, y = np.where(finite, x, 0.0), np.where(finite, y, 0.0)
  ix, iy = ((2 * x - 1 + 1) * w - 1) / 2, ((2 * y - 1 + 1) * h - 1) / 2
  x0, y0 = np.floor(ix), np.floor(iy)
  out = np.zeros((n, c, coords.shape[1]))
  rows = np.arange(n)[:, None]
  for xx, yy, weight in ((x0, y0, (x0 + 1 - ix) * (y0 + 1 - iy)),
                         (x0 + 1, y0, (ix - x0) * (y0 + 1 - iy)),
                         (x0, y0 + 1, (x0 + 1 - ix) * (iy - y0)),
                         (x0 + 1, y0 + 1, (ix - x0) * (iy - y0))):
    on = (xx >= 0) & (xx <= w - 1) & (yy >= 0) & (yy <= h - 1)
    col = np.clip(xx, 0, w - 1).astype(np.int64)
    row = np.clip(yy, 0, h - 1).astype(np.int64)
    pixel = np.where(on[..., None], maps[rows, :, row, col], 0.0)  # [N, P, C]
    out += np.moveaxis(pixel * weight[..., None], -1, 1)
  out[np.broadcast_to(~finite[:, None, :], out.shape)] = np.nan
  return out


# Coordinates: nominal, outside, tiny and large (|x| <= 1e30: huge ones sample
# NaN, `test_documented_huge_finite_coordinates_sample_nan`).
COORD_SPECIAL = tuple(_f32(v) for v in (
    0.0, -0.0, 1.0, 0.5, 0.25, 0.999, -0.5, 1.5, 2.0, 1e-30, -1e-30, 1e30,
    -1e30))
_coord = st.one_of(st.floats(-0.5, 1.5, width=32), st.floats(0, 1, width=32),
                   st.sampled_from(COORD_SPECIAL))


def _coords(shape, nonfinite):
  elements = (_coord | st.sampled_from(NONFINITE)) if nonfinite else _coord
  return hnp.arrays(np.float32, shape, elements=elements)


# (N, C, H, W, P, inputs dtype, coords dtype); H, W >= 1 (empty maps are in
# `test_empty_maps_sample_the_zero_padding`). (1, 2, 4, 6, 3)
# and (2, 1, 6, 6, 2) take the kernel's clamped path (H * W >= 8 P).
POINT_SAMPLE_CASES = (
    (1, 1, 1, 1, 1, "float32", "float32"),
    (2, 3, 4, 5, 6, "float32", "float32"),
    (1, 2, 4, 6, 3, "float32", "float16"),
    (2, 1, 6, 6, 2, "bfloat16", "float32"),
    (3, 1, 2, 3, 4, "float16", "bfloat16"),
    (0, 2, 3, 3, 2, "float32", "float32"),
    (2, 0, 3, 3, 2, "float32", "float32"),
    (2, 2, 3, 3, 0, "float32", "float32"),
)
_TOL = {"float32": 1e-5, "float16": 2e-3, "bfloat16": 1.6e-2}


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@_fuzz(40)
@given(case=st.sampled_from(POINT_SAMPLE_CASES), data=st.data(),
       nonfinite=st.booleans(), single=st.booleans())
def test_point_sample_contract(implementation, case, data, nonfinite, single):
  n, c, h, w, p, in_dtype, coord_dtype = case
  if single:
    n = 1
  maps = _as(data.draw(_floats((n, c, h, w), nonfinite=nonfinite)), in_dtype,
             "jax")
  coords = _as(data.draw(_coords((n, p, 2), nonfinite)), coord_dtype, "jax")
  if single:
    out = jaxmask.point_sample_single(maps[0], coords[0],
                                      implementation=implementation)
    assert out.shape == (c, p) and out.dtype == maps.dtype
    out = out[None]
  else:
    out = jaxmask.point_sample(maps, coords, implementation=implementation)
  assert out.shape == (n, c, p) and out.dtype == maps.dtype
  got, m32, c32 = _np32(out), _np32(maps), _np32(coords)
  bad_point = ~np.isfinite(c32).all(-1)  # [n, p]
  # A NaN or infinite coordinate samples NaN (every channel).
  assert np.isnan(got[np.broadcast_to(bad_point[:, None], got.shape)]).all()
  if np.isfinite(m32).all():
    ok = np.broadcast_to(~bad_point[:, None], got.shape)
    assert np.isfinite(got[ok]).all()
    bound = np.abs(m32).max() if m32.size else 0.0
    assert (np.abs(got[ok]) <= bound * (1 + 1e-6)).all()
    want = _np_point_sample(m32.astype(np.float64), c32.astype(np.float64))
    np.testing.assert_allclose(got[ok], want[ok], rtol=0,
                               atol=_TOL[in_dtype] * max(bound, 1e-30) * 2)


def _bits(points: np.ndarray) -> list:
  """(x, y) pairs as hashable bit patterns (NaN payloads kept)."""
  uint = {2: np.uint16, 4: np.uint32}[points.dtype.itemsize]
  return [tuple(p) for p in points.view(uint).reshape(-1, 2).tolist()]


def _uncertainty_scores(logits, candidates, implementation):
  """The documented scores: `-|point_sample(logits, candidates)|`, NaN -> -inf."""
  sampled = _np32(jaxmask.point_sample(logits, candidates,
                                       implementation=implementation))[:, 0]
  raw = -np.abs(sampled)
  return raw, np.where(np.isnan(raw), -np.inf, raw)


def _assert_top_k_selection(selected, candidates, raw, scores, k):
  """`selected` [N, k, 2] are candidates whose scores are the k largest
  (ties within rounding may differ from lax.top_k), NaN never over a number."""
  n = candidates.shape[0]
  want = np.asarray(lax.top_k(jnp.asarray(scores, jnp.float32), k)[1])
  for r in range(n):
    pool = _bits(np.asarray(candidates[r]))
    chosen = []
    for point in _bits(np.asarray(selected[r])):
      free = [i for i, c in enumerate(pool) if c == point and i not in chosen]
      assert free, f"row {r}: {point} is not one of the candidates"
      # Equal points have equal scores; prefer lax.top_k's index.
      chosen.append(next((i for i in free if i in want[r]), free[0]))
    if sorted(chosen) != sorted(want[r]):
      kth = np.sort(scores[r])[::-1][k - 1]
      finite = np.abs(scores[r][np.isfinite(scores[r])])
      tol = 1e-5 * (1 + (finite.max() if finite.size else 0))
      differ = set(chosen) ^ set(want[r])
      assert all(scores[r][i] == kth or abs(scores[r][i] - kth) <= tol
                 for i in differ), (
          r, chosen, want[r], scores[r])
    if (~np.isnan(raw[r]) & (raw[r] > -np.inf)).sum() >= k:
      assert not np.isnan(raw[r][chosen]).any(), (r, chosen, raw[r])


# (N, H, W, M, candidates dtype). Half-precision candidates on both paths
# are also in
# `test_fixed_plain_selection_samples_half_precision_candidates_in_half`.
SELECT_CASES = ((1, 1, 1, 1, "float32"), (2, 3, 4, 6, "float32"),
                (1, 5, 2, 3, "float32"), (3, 2, 2, 5, "half"),
                (0, 2, 2, 3, "float32"))


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@_fuzz(40)
@given(case=st.sampled_from(SELECT_CASES), data=st.data(),
       nonfinite=st.booleans())
def test_select_uncertain_points_contract(implementation, case, data,
                                          nonfinite):
  n, h, w, m, dtype = case
  if dtype == "half":
    dtype = "bfloat16"
  logits = _as(data.draw(_floats((n, 1, h, w), nonfinite=nonfinite)),
               "float32", "jax")
  candidates = _as(data.draw(_coords((n, m, 2), nonfinite)), dtype, "jax")
  k = data.draw(st.integers(0, m))
  out = jaxmask.select_uncertain_points(logits, candidates, num_uncertain=k,
                                        implementation=implementation)
  assert out.shape == (n, k, 2) and out.dtype == candidates.dtype
  if n and k:
    raw, scores = _uncertainty_scores(logits, candidates, implementation)
    _assert_top_k_selection(np.asarray(out), np.asarray(candidates), raw,
                            scores, k)


# (N, H, W, num_points, oversample_ratio, importance_sample_ratio).
# K = int(importance * P) of M = int(P * oversample) candidates: K = M = 1,
# K = 3 of M = 15, K = 0 (fresh points only), and zero masks.
SAMPLE_CASES = ((1, 1, 1, 1, 1.0, 1.0), (2, 3, 4, 5, 3.0, 0.75),
                (3, 2, 5, 3, 2.5, 0.0), (0, 3, 3, 4, 3.0, 0.75))


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@_fuzz(25)
@given(case=st.sampled_from(SAMPLE_CASES), data=st.data(),
       seed=st.integers(0, 2**31 - 1), raw_key=st.booleans(),
       nonfinite=st.booleans())
def test_sample_points_contract(implementation, case, data, seed, raw_key,
                                nonfinite):
  n, h, w, p, ratio, importance = case
  if raw_key and case == SAMPLE_CASES[1]:  # one compiled program more
    key = jax.random.PRNGKey(seed)
  else:
    key = jax.random.key(seed)
  logits = jnp.asarray(data.draw(_floats((n, 1, h, w), nonfinite=nonfinite)))
  out = jaxmask.sample_points_using_uncertainty(
      key, logits, num_points=p, oversample_ratio=ratio,
      importance_sample_ratio=importance, implementation=implementation)
  assert out.shape == (n, p, 2) and out.dtype == jnp.float32
  out = np.asarray(out)
  assert ((out >= 0) & (out < 1)).all()
  if not n:
    return
  # The documented draws: candidates and fresh points from split(key).
  m, k = int(p * ratio), int(importance * p)
  candidate_key, fresh_key = jax.random.split(key)
  candidates = jax.random.uniform(candidate_key, (n, m, 2))
  fresh = jax.random.uniform(fresh_key, (n, p - k, 2))
  np.testing.assert_array_equal(out[:, k:], fresh)
  if k:
    raw, scores = _uncertainty_scores(logits, candidates, implementation)
    _assert_top_k_selection(out[:, :k], np.asarray(candidates), raw, scores, k)


@_fuzz(30)
@given(shape=st.sampled_from(((1, 1, 1, 1), (2, 1, 3, 4), (1, 1, 5, 2),
                              (0, 1, 2, 2), (2, 1, 0, 3))),
       data=st.data(), num_points=st.sampled_from((1, 3, 6, 50, 2**40)),
       dtype=_dtypes)
def test_on_grid_contract(shape, data, num_points, dtype):
  n, _, h, w = shape
  scores = _as(data.draw(_floats(shape, nonfinite=True)), dtype, "jax")
  index, coords = jaxmask.uncertain_point_coords_on_grid(
      scores, num_points=num_points)
  k = min(num_points, h * w)
  assert index.shape == (n, k) and index.dtype == jnp.int32
  assert coords.shape == (n, k, 2) and coords.dtype == jnp.float32
  index, coords = np.asarray(index), np.asarray(coords)
  assert ((index >= 0) & (index < max(h * w, 1))).all()
  # Decreasing order, ties at the lower flat index: lax.top_k exactly.
  np.testing.assert_array_equal(
      index, lax.top_k(scores.reshape(n, h * w), k)[1])
  if k:
    col, row = (index % w).astype(np.float32), (index // w).astype(np.float32)
    want = np.stack([np.float32(0.5 / w) + col * np.float32(1 / w),
                     np.float32(0.5 / h) + row * np.float32(1 / h)], -1)
    np.testing.assert_allclose(coords, want, rtol=2e-7, atol=0)
    assert ((coords > 0) & (coords < 1)).all()


# ---------------------------------------------------------------------------
# (a) Hostile arguments: a ValueError or TypeError naming an argument.
# ---------------------------------------------------------------------------

BAD_UNCERTAINTY_FN = st.sampled_from((
    lambda x: x[:, 0], lambda x: jnp.sum(x), lambda x: x[..., :1],
    lambda x: x[None]))


_FEATURES = jnp.linspace(-1.0, 1.0, 120).reshape(2, 3, 4, 5)


# Function -> (valid keyword arguments, {argument: strategy of bad values}).
HOSTILE = {
    "calculate_uncertainty": (
        dict(logits=_L23),
        dict(logits=_non_float((2, 3)) | st.sampled_from((3, True, [1, 2])))),
    "top_k_indices": (
        dict(scores=_L23, k=2, implementation=None),
        dict(scores=_bad_array((2, 3)), k=_bad_int(0, 3),
             implementation=_impl_bad())),
    "point_sample": (
        dict(inputs=_FEATURES, point_coords=_PTS, implementation="plain"),
        dict(inputs=_bad_array((2, 3, 4, 5), also=(jnp.zeros((3, 3, 4, 5)),)),
             point_coords=_bad_array((2, 6, 2), also=(jnp.zeros((2, 6, 3)),
                                                      jnp.zeros((1, 6, 2)))),
             implementation=_impl_bad())),
    "point_sample_single": (
        dict(inputs=_FEATURES[0], point_coords=_PTS[0],
             implementation="xla_cpu"),
        dict(inputs=_bad_array((3, 4, 5)),
             point_coords=_bad_array((6, 2), also=(jnp.zeros((6, 1)),)),
             implementation=_impl_bad())),
    "select_uncertain_points": (
        dict(logits=_MAPS, candidates=_PTS, num_uncertain=2,
             implementation="xla_cpu"),
        dict(logits=_bad_array((2, 1, 3, 4), also=(jnp.zeros((2, 2, 3, 4)),
                                                   jnp.zeros((1, 1, 3, 4)))),
             candidates=_bad_array((2, 6, 2), also=(jnp.zeros((2, 6, 1)),)),
             num_uncertain=_bad_int(0, 6), uncertainty_fn=BAD_UNCERTAINTY_FN,
             implementation=_impl_bad())),
    "sample_points_using_uncertainty": (
        dict(key=KEY, logits=_MAPS, num_points=5, implementation="plain"),
        dict(key=BAD_KEY,
             logits=_bad_array((2, 1, 3, 4), also=(jnp.zeros((2, 3, 3, 4)),)),
             num_points=_bad_int(1), oversample_ratio=BAD_OVERSAMPLE,
             importance_sample_ratio=BAD_IMPORTANCE,
             uncertainty_fn=BAD_UNCERTAINTY_FN, implementation=_impl_bad())),
    "uncertain_point_coords_on_grid": (
        dict(uncertainty_map=_MAPS, num_points=3),
        dict(uncertainty_map=_bad_array((2, 1, 3, 4),
                                        also=(jnp.zeros((2, 2, 3, 4)),)),
             num_points=_bad_int(1))),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
@_fuzz(40)
@given(data=st.data())
def test_hostile_argument_raises_a_named_error(name, data):
  fn = getattr(jaxmask, name)
  valid, bad = HOSTILE[name]
  argument = data.draw(st.sampled_from(sorted(bad)), label="argument")
  value = data.draw(bad[argument], label="value")
  _expect_named_error(fn, **{**valid, argument: value})


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_the_valid_hostile_baselines_return(name):
  """The baselines above are valid: the errors come from the one bad value."""
  valid, _ = HOSTILE[name]
  jax.block_until_ready(getattr(jaxmask, name)(**valid))


# ---------------------------------------------------------------------------
# Zero-sized masks and maps where they are documented as a normal case.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_empty_maps_sample_the_zero_padding(implementation):
  """An empty map: every point lies outside, so it samples 0 (NaN for a NaN
  coordinate)."""
  coords = jnp.array([[[0.5, 0.5], [NAN, 0.2]]])
  for shape in ((1, 2, 0, 3), (1, 2, 3, 0)):
    out = jaxmask.point_sample(jnp.ones(shape), coords,
                               implementation=implementation)
    assert out.shape == (1, 2, 2)
    np.testing.assert_array_equal(out, [[[0.0, NAN], [0.0, NAN]]])


# ---------------------------------------------------------------------------
# Bugs the fuzzing found, fixed since: one minimal reproducer each, kept
# as regressions (and documented outcomes).
# ---------------------------------------------------------------------------


_EMPTY_MAP_CALLS = {
    "point_sample": lambda: jaxmask.point_sample(
        jnp.ones((1, 1, 0, 3)), jnp.full((1, 2, 2), 0.5), implementation="plain"),
    "point_sample_single": lambda: jaxmask.point_sample_single(
        jnp.ones((1, 3, 0)), jnp.full((2, 2), 0.5), implementation="plain"),
    "select_uncertain_points": lambda: jaxmask.select_uncertain_points(
        jnp.ones((1, 1, 0, 3)), jnp.full((1, 3, 2), 0.5), num_uncertain=2,
        implementation="plain"),
    "sample_points_using_uncertainty": lambda: (
        jaxmask.sample_points_using_uncertainty(
            KEY, jnp.ones((1, 1, 0, 3)), num_points=3, implementation="plain")),
}


@pytest.mark.parametrize("name", sorted(_EMPTY_MAP_CALLS))
def test_fixed_plain_sampler_on_empty_maps(name):
  try:
    out = _EMPTY_MAP_CALLS[name]()
  except (ValueError, TypeError) as err:
    assert _names_a_parameter(getattr(jaxmask, name), err), str(err)
  else:
    assert not np.isnan(np.asarray(jax.tree.leaves(out)[0])).any()


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_documented_huge_finite_coordinates_sample_nan(implementation):
  # Documented (as PyTorch's point_sample): a coordinate whose pixel position
  # overflows float32 samples NaN, like a non-finite one.
  out = jaxmask.point_sample(jnp.ones((1, 1, 2, 2)), jnp.array([[[3e38, 0.5]]]),
                             implementation=implementation)
  assert np.isnan(out).all(), out


def test_fixed_plain_selection_samples_half_precision_candidates_in_half():
  logits = (jnp.arange(100.0) - 38.4).reshape(1, 1, 1, 100)
  candidates = jnp.array([[[0.6875, 0.5], [0.0874023, 0.5]]], BF16)
  scores = -jnp.abs(jaxmask.point_sample(logits, candidates))[0, 0]
  assert scores[0] > scores[1] + 0.25  # -29.85 vs -30.16: keep the first
  out = jaxmask.select_uncertain_points(logits, candidates, num_uncertain=1,
                                        implementation="plain")
  np.testing.assert_array_equal(out, candidates[:, :1])


_TOO_MANY_CANDIDATES = {
    "ratio_2**31": dict(num_points=1, oversample_ratio=2.0**31),
    "ratio_1e9": dict(num_points=3, oversample_ratio=1e9),
    "num_points_2**40": dict(num_points=2**40),
}


@pytest.mark.filterwarnings("ignore:Explicitly requested dtype int64")
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("options", sorted(_TOO_MANY_CANDIDATES))
def test_fixed_too_many_candidates(implementation, options):
  _expect_named_error(jaxmask.sample_points_using_uncertainty, key=KEY,
                      logits=jnp.zeros((1, 1, 2, 2)),
                      implementation=implementation,
                      **_TOO_MANY_CANDIDATES[options])


def test_fixed_huge_num_points_with_zero_masks():
  _expect_named_error(jaxmask.sample_points_using_uncertainty, key=KEY,
                      logits=jnp.zeros((0, 1, 2, 2)), num_points=2**70)


# Array arguments that take a string or None: which name the argument.
_NON_ARRAYS = {
    "calculate_uncertainty": ("logits", dict()),
    "top_k_indices": ("scores", dict(k=1)),
    "point_sample": ("inputs", dict(point_coords=_PTS)),
    "point_sample_single": ("point_coords", dict(inputs=_MAPS[0])),
    "select_uncertain_points": ("candidates", dict(logits=_MAPS,
                                                   num_uncertain=1)),
    "sample_points_using_uncertainty": ("logits", dict(key=KEY, num_points=2)),
    "uncertain_point_coords_on_grid": ("uncertainty_map", dict(num_points=2)),
}


@pytest.mark.parametrize("name", sorted(_NON_ARRAYS))
def test_string_or_none_for_an_array_names_it(name):
  argument, others = _NON_ARRAYS[name]
  fn = getattr(jaxmask, name)
  for value in ("abc", None):
    with pytest.raises((ValueError, TypeError)) as info:
      fn(**others, **{argument: value})
    assert re.search(rf"\b{argument}\b", str(info.value)), str(info.value)


_ARRAY_OPTIONS = {
    "implementation": lambda v: jaxmask.top_k_indices(_L23, k=1,
                                                      implementation=v),
}


@pytest.mark.parametrize("option", sorted(_ARRAY_OPTIONS))
def test_fixed_string_option_as_numpy_array(option):
  with pytest.raises(ValueError, match=option):
    _ARRAY_OPTIONS[option](np.array(["low", "high"]))


@pytest.mark.parametrize("fn", [None, "abs"])
def test_fixed_non_callable_uncertainty_fn(fn):
  _expect_named_error(jaxmask.select_uncertain_points, logits=_MAPS,
                      candidates=_PTS, num_uncertain=1, uncertainty_fn=fn)
