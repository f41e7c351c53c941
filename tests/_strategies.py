"""Helpers that tests of more than one concept folder share.

tests/<concept>/ holds one concept's unit, parity, golden, property, fuzz and
hostile-input tests; a helper that one folder alone uses stays in its test
file, and the helpers below, used by several folders, live here (tests/ is on
`sys.path`: `pythonpath` in pyproject.toml). Names keep the spelling of the
test files they came from, so that the test bodies read as before.

* Point sampling (tests/sampling, tests/point_losses, tests/xla_cpu): the
  public samplers jitted once, the documented random draws of
  `sample_points_using_uncertainty`, a float64 NumPy `grid_sample` (the
  oracle), the tolerance of a position rounded differently, and the selection
  rule of `_rules.py` applied against the plain algorithm.
* Parity and golden tests: a torch tensor from an array, seeded logits, the
  folder of the golden vectors (tests/golden).
* Fuzzing (tests/<concept>/test_<concept>_fuzz.py). The rule every fuzzed
  call keeps (`jaxmask/_src/checks.py`): (a) it raises `ValueError` or
  `TypeError` whose message names one of the function's own parameters (a
  whole word of `inspect.signature(fn)`; `_expect_named_error`), or (b) it
  returns a result that keeps the function's documented contract: the shapes
  and dtypes of its docstring, and value properties that hold whatever the
  data. Anything else (another exception type, a JAX-internal error, a
  contract violation) is a library bug. Documented-valid input must take (b);
  input the docstrings rule out (wrong rank, integer or bool where floats are
  required, out-of-range Python options, unknown strings, concrete
  out-of-range values) must take (a). Values whose range matters give NaN
  when traced (`jax.jit`) instead of raising. Oracles are NumPy, `lax.top_k`,
  `jax.random.uniform` for the documented draws, and documented compositions
  of public functions; nothing is copied from the implementation. Below: the
  deterministic settings, value strategies (float32 values with signed zeros,
  huge, tiny and non-finite specials; labels in [0, 1]; casts to half
  precision and to NumPy arrays or Python lists), and hostile values (wrong
  ranks and dtypes, empty arrays, NaN/inf/negative scalars, bools and floats
  for ints, unknown strings, bad keys) with the valid baselines they replace
  one argument of. Cost: shapes and static options come from small fixed
  lists (each compiles once and is reused across examples); every
  `@settings` is derandomized with no example database, so CI runs the same
  examples every time.
* Properties (tests/percentile/test_percentile_properties.py,
  tests/xla_cpu/test_xla_cpu_topk_properties.py): derandomized settings, NaN
  bit patterns, and a bit-for-bit comparison with NumPy.
* Hostile input (tests/<concept>/test_<concept>_hostile.py): random masks and
  their 0/1 targets.
"""

import functools
import inspect
import pathlib
import re

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmask
import _rules

GOLDEN_DIR = pathlib.Path(__file__).resolve().parent / "golden"


def torch_tensor(x):
  """`x` as a torch tensor (parity tests; they skip without torch first)."""
  import torch  # pylint: disable=g-import-not-at-top
  return torch.from_numpy(np.array(x))


def seeded_logits(shape, seed, scale=3.0):
  """float32 normal logits of standard deviation `scale`, from `seed`."""
  return (np.random.default_rng(seed).normal(size=shape) * scale).astype(np.float32)


# ---------------------------------------------------------------------------
# Point sampling: tests/sampling, tests/point_losses, tests/xla_cpu.
# ---------------------------------------------------------------------------

# Jitted once per shape and implementation: eager dispatch would compile every
# primitive.
point_sample = jax.jit(jaxmask.point_sample,
                       static_argnames=("implementation",))
select_uncertain_points = jax.jit(
    jaxmask.select_uncertain_points,
    static_argnames=("num_uncertain", "uncertainty_fn", "implementation"))


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


def position_rounding_tolerance(inputs, coords):
  """How far a float32 sample may move when its pixel position is rounded
  differently (a multiply-add contracted in one program, not in another).

  grid_sample's position `((2x - 1 + 1) * size - 1) / 2` then moves by at
  most half an ulp of `2 * size` pixels; the value moves by that times the
  local slope of the bilinear surface along the axis (measured on the float64
  oracle, on both sides of a pixel edge), plus a few ulps of its own.
  """
  inputs, coords = np.asarray(inputs), np.asarray(coords, np.float64)
  h, w = inputs.shape[2:]
  value = np_grid_sample(inputs, coords)
  tol = 4 * np.spacing(np.abs(value).astype(np.float32)).astype(np.float64)
  for axis, size in ((0, w), (1, h)):
    step = np.zeros(2)
    step[axis] = 1e-3 / size  # 1e-3 px
    slope = np.maximum(np.abs(np_grid_sample(inputs, coords + step) - value),
                       np.abs(np_grid_sample(inputs, coords - step) - value)
                       ) / 1e-3  # per pixel
    tol += float(np.spacing(np.float32(2 * size))) / 2 * slope
  return tol


def _data(seed, n, c, h, w, p, low=0.0, high=1.0):
  rng = np.random.default_rng(seed)
  inputs = rng.normal(size=(n, c, h, w)).astype(np.float32)
  coords = rng.uniform(low, high, size=(n, p, 2)).astype(np.float32)
  return inputs, coords


def _scores(logits, candidates, implementation):
  """Each candidate's uncertainty as `implementation` samples it, `[n, M]`."""
  return -np.abs(np.asarray(point_sample(
      logits, candidates, implementation=implementation))[:, 0])


def assert_same_selection_as_plain(got, logits, candidates, k,
                                   implementation):
  """`got` (by `implementation`) selects the plain algorithm's set.

  Compared under the rule of `_rules.py`: the kernel's sampled logits agree
  with the plain ones to float rounding (1e-6 here), so a candidate may be in
  one set and not the other only at a near-tie with the k-th score.
  """
  logits, candidates = np.asarray(logits), np.asarray(candidates)
  want = select_uncertain_points(logits, candidates, num_uncertain=k,
                                 implementation="plain")
  _rules.assert_same_selection(
      got, want, candidates,
      got_scores=_scores(logits, candidates, implementation),
      want_scores=_scores(logits, candidates, "plain"), k=k, tol=1e-6)


# ---------------------------------------------------------------------------
# Fuzzing: tests/<concept>/test_<concept>_fuzz.py.
# ---------------------------------------------------------------------------


NAN, INF = float("nan"), float("inf")
KEY = jax.random.key(0)
IMPLEMENTATIONS = ("plain", "xla_cpu")
BF16 = jnp.bfloat16


def _fuzz(max_examples):
  """Deterministic Hypothesis settings: same examples on every run."""
  return settings(max_examples=max_examples, deadline=None, derandomize=True,
                  database=None)


# ---------------------------------------------------------------------------
# The rule: (a) a named error, or (b) the contract.
# ---------------------------------------------------------------------------


def _names_a_parameter(fn, err: Exception) -> bool:
  """Whether the message names one of `fn`'s parameters as a whole word."""
  message = str(err)
  return any(
      re.search(rf"(?<![A-Za-z0-9_]){re.escape(p)}(?![A-Za-z0-9_])", message)
      for p in inspect.signature(fn).parameters)


def _expect_named_error(fn, **kwargs):
  """(a): `fn(**kwargs)` raises ValueError/TypeError naming a parameter.

  Any other exception propagates and fails the test; so does a return.
  """
  with pytest.raises((ValueError, TypeError)) as info:
    jax.block_until_ready(fn(**kwargs))
  assert _names_a_parameter(fn, info.value), (
      f"{fn.__name__}: {type(info.value).__name__} names no parameter of"
      f" {list(inspect.signature(fn).parameters)}: {info.value}")


# ---------------------------------------------------------------------------
# Value strategies.
# ---------------------------------------------------------------------------


def _f32(v) -> float:
  return float(np.float32(v))


# Finite specials: signed zeros, huge, tiny (normal), large.
SPECIAL = tuple(_f32(v) for v in (
    0.0, -0.0, 1.0, -1.0, 0.5, -2.5, 7.0, 3e38, -3e38, 1e-30, -1e-30, 1e30,
    -1e30))
MODERATE_SPECIAL = tuple(v for v in SPECIAL if abs(v) <= 10)
NONFINITE = (NAN, INF, -INF)
# Normal float32 values in [-10, 10]; magnitudes below 2**-40 become 0 so that
# no subnormal difference or weight enters a percentile (XLA:CPU flushes).
_moderate = st.floats(-10, 10, width=32, allow_subnormal=False).map(
    lambda v: v if abs(v) >= 2.0**-40 else 0.0)


def _elements(*, huge=True, nonfinite=False):
  options = [_moderate, _moderate,
             st.sampled_from(SPECIAL if huge else MODERATE_SPECIAL)]
  if nonfinite:
    options.append(st.sampled_from(NONFINITE))
  return st.one_of(options)


def _floats(shape, **kwargs):
  """float32 NumPy arrays of `shape` (values from `_elements(**kwargs)`)."""
  return hnp.arrays(np.float32, shape, elements=_elements(**kwargs))


def _unit(shape):
  """Labels in [0, 1]: zeros, ones and soft values."""
  return hnp.arrays(np.float32, shape, elements=st.one_of(
      st.sampled_from((0.0, 1.0, 0.5, _f32(1e-30))),
      st.floats(0, 1, width=32, allow_subnormal=False)))


def _as(x32: np.ndarray, dtype, container: str):
  """`x32` cast to `dtype` (float16/bfloat16 round, huge values become inf),
  as a JAX or NumPy array, or as nested Python lists of those values."""
  x = np.asarray(x32).astype(jnp.dtype(dtype))
  if container == "list":
    return x.astype(np.float32).tolist()
  return jnp.asarray(x) if container == "jax" else x


def _np32(x) -> np.ndarray:
  return np.asarray(x).astype(np.float32)


def _np64(x) -> np.ndarray:
  return np.asarray(x).astype(np.float32).astype(np.float64)


_dtypes = st.sampled_from(("float32", "float32", "float16", "bfloat16"))
_containers = st.sampled_from(("jax", "numpy", "list"))


def _no_tiny(values: np.ndarray) -> bool:
  """Whether no subnormal can enter the percentile arithmetic: finite nonzero
  magnitudes below 2**-60 (like 1e-30) are all one value >= 2**-110. Then the
  difference of two distinct values, and its product with a percentile weight
  >= 1e-3 (QS), is normal."""
  v = np.abs(values[np.isfinite(values) & (values != 0)])
  tiny = v[v < 2.0**-60]
  return bool(tiny.size == 0 or (tiny.min() >= 2.0**-110
                                 and tiny.min() == tiny.max()))


# q values whose nonzero percentile weights (n <= 7) are >= 1e-3.
QS = (0.0, 0.1, 10.0, 25.0, 33.3, 50.0, 62.5, 75.0, 90.0, 99.9, 100.0)


def _logit_shapes():
  return st.sampled_from(((1, 1), (1, 4), (2, 3), (3, 2), (5, 6)))


def _softmax64(x):
  e = np.exp(x - x.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


# ---------------------------------------------------------------------------
# Hostile values (the (a) side of the rule): one bad argument at a time on
# a valid baseline.
# ---------------------------------------------------------------------------


def _arrays_of_rank_but(rank):
  """float32 arrays of every rank 0..4 except `rank`."""
  return st.integers(0, 4).filter(lambda r: r != rank).flatmap(
      lambda r: hnp.arrays(np.float32, st.tuples(*[st.integers(1, 3)] * r),
                           elements=st.just(0.5)))


def _non_float(shape):
  """Arrays of the right shape and a non-floating dtype."""
  return st.sampled_from((np.int32, np.uint8, np.bool_, np.complex64)).flatmap(
      lambda d: st.sampled_from((np.zeros(shape, d), jnp.zeros(shape, d))))


def _bad_array(shape, *, floating=True, also=()):
  """Wrong rank, wrong dtype (if floats are required) or `also`."""
  options = [_arrays_of_rank_but(len(shape))]
  if floating:
    options.append(_non_float(shape))
  if also:
    options.append(st.sampled_from(also))
  return st.one_of(options)


BAD_POSITIVE = st.sampled_from((
    0, 0.0, -0.0, -1, -2.5, NAN, INF, -INF, 1e300, 1e-300, "1", None, True,
    [1.0, 2.0], 1j, np.float32(-2.0), np.float64(NAN), jnp.float32(NAN),
    jnp.float32(-1.0), jnp.zeros(()), jnp.ones(2), jnp.ones((), jnp.bool_),
    np.ones((1, 1))))
BAD_Q = st.sampled_from((
    -1, -0.001, 100.001, 101, NAN, INF, -INF, "50", None, True, [50.0], 1j,
    2**70, jnp.ones(2), np.ones(1), np.float32(-5.0), np.float64(NAN),
    jnp.ones((), jnp.bool_)))


def _bad_choice(valid):
  return st.sampled_from(tuple(v for v in (
      "LOW", "Low", "", " low", "gpu", "PLAIN", "xla", "cpu", "fast", 0, 1.5,
      ["low"], ("plain",), b"low", False, "faithful ", "mask") if v not in valid)
                         + ((None,) if None not in valid else ()))


def _bad_int(low, high=None):
  """Ints below `low` (or above `high`), floats, bools, strings, None, ..."""
  values = [low - 1, low - 5, 2.0, float(low + 1), "2", None, True, False, 1j,
            [2], np.float32(2.0), NAN, INF]
  if high is not None:
    values += [high + 1, 2**70]
  return st.sampled_from(values)


BAD_KEY = st.sampled_from((
    0, 1.5, None, "key", [0, 1], np.zeros(2, np.uint32), jnp.zeros(3, jnp.uint32),
    jnp.zeros(2, jnp.int32), jnp.zeros(2, jnp.float32),
    jnp.zeros((1, 2), jnp.uint32), jax.random.split(KEY, 2),
    jax.random.key_data(KEY)[None]))
BAD_OVERSAMPLE = st.sampled_from((
    NAN, INF, -INF, 0.5, 0.0, -1.0, 2.0**32, "3", None, True, 1j,
    jnp.float32(2.0), [2.0]))
BAD_IMPORTANCE = st.sampled_from((
    NAN, INF, -0.1, 1.1, 2, "0.5", None, False, 1j, jnp.float32(0.5)))


BAD_TARGETS = st.sampled_from((2.0, -0.5, 255.0, INF)).map(
    lambda v: np.full((2, 4, 4), v, np.float32)) | st.just(
        np.full((2, 4, 4), 255, np.uint8))


def _impl_bad():
  return _bad_choice((None, "plain", "xla_cpu"))


_L23 = jnp.linspace(-2.0, 2.0, 6).reshape(2, 3)
# Valid baselines in the shapes and options of the contract tests, so that
# `test_the_valid_hostile_baselines_return` reuses their programs.
_MAPS = jnp.linspace(-1.0, 1.0, 24).reshape(2, 1, 3, 4)
_PTS = jnp.linspace(0.0, 1.0, 24).reshape(2, 6, 2)


# Traced temperatures and num_masks out of range give NaN, not an error.
_bad_positive_float = st.sampled_from((0.0, -0.0, -1.0, -3e38, -1e-30, NAN, INF,
                                       -INF))


# ---------------------------------------------------------------------------
# Properties: tests/percentile/test_percentile_properties.py and
# tests/xla_cpu/test_xla_cpu_topk_properties.py.
# ---------------------------------------------------------------------------


F32_MAX = float(np.finfo(np.float32).max)


def _deterministic(max_examples, **kwargs):
  """CI runs the same examples every time: derandomized, no database."""
  return settings(max_examples=max_examples, deadline=None, derandomize=True,
                  database=None, **kwargs)


# NaNs by their bits: quiet and signalling, both signs, extreme payloads
# (0xFFC00000 is the negative default NaN that x86 produces for inf - inf).
NAN_BITS = (0x7FC00000, 0xFFC00000, 0x7F800001, 0xFF800001, 0x7FFFFFFF,
            0xFFFFFFFF, 0x7FC0BEEF, 0xFFA00001)


def _assert_numpy_exact(got, want, *, zero_sign: bool, err_msg: str):
  """`got` is `want` bit for bit, but for the payload of a NaN (and the sign
  of a zero where `zero_sign` is False)."""
  got, want = np.asarray(got), np.asarray(want)
  assert got.dtype == want.dtype, (got.dtype, want.dtype, err_msg)
  np.testing.assert_array_equal(got, want, err_msg=err_msg)
  if zero_sign:
    zero = want == 0
    np.testing.assert_array_equal(np.signbit(got[zero]), np.signbit(want[zero]),
                                  err_msg=f"sign of zero: got {got!r}, {err_msg}")


# ---------------------------------------------------------------------------
# Hostile input: tests/<concept>/test_<concept>_hostile.py.
# ---------------------------------------------------------------------------


def _masks(n=3, size=16, seed=0):
  pred = jax.random.normal(jax.random.key(seed), (n, size, size))
  return pred, (pred > 0).astype(jnp.float32)
