"""Fuzzing every public function: a clear error naming an argument, or the documented contract.

The rule checked, for every call made here (`jaxmask/_src/checks.py`):

(a) the call raises `ValueError` or `TypeError` whose message names one of the
    function's own parameters (a whole word of `inspect.signature(fn)`), or
(b) it returns a result that keeps the function's documented contract: the
    shapes and dtypes of its docstring, and value properties that hold
    whatever the data (below).

Anything else (another exception type, a JAX-internal error, a contract
violation) is a library bug. Documented-valid input must take (b); input the
docstrings rule out (wrong rank, integer or bool where floats are required,
out-of-range Python options, unknown strings, concrete out-of-range values)
must take (a). Values whose range matters give NaN when traced (`jax.jit`)
instead of raising.

Oracles: NumPy (`np.percentile`, float64 re-computations of the documented
formulas, a bilinear `grid_sample`), `lax.top_k`, `jax.random.uniform` for the
documented draws, and documented compositions of public functions; nothing
is copied from the implementation.

Functions covered (all of `jaxmask.__all__`, see `test_every_public_name_is_fuzzed`):

* `percentile`, `percentile_mask`: the threshold equals `np.percentile` bit for
  bit (Python `q`; `np.float32(q)` for an array `q`) where no subnormal enters
  the arithmetic (XLA:CPU flushes them, see tests/test_properties.py); the
  mask is exactly `values <= thr` (keep="low") or `>=` ("high"); NaN anywhere
  gives a NaN threshold and an all-False mask; Python lists are refused with
  a TypeError naming `values` (documented: an array).
* `confidence_masks` (`ConfidenceMasks`): field shapes and dtypes; rows of
  `probs` sum to 1 for finite logits; `confidence`/`pseudo_labels` are the
  row max/argmax; `class_confidence` the column sums; thresholds as above and
  masks exactly `<=`/`>=` them; a NaN or +inf logit gives NaN thresholds and
  all-False masks.
* `kd_loss`, `class_correlation_loss`, `batch_correlation_loss`: float32
  scalars, never NaN and `>= 0` for finite inputs (kd down to -1e-6, times
  `T**2 * max(1, max|logit| / T)` where the float32 rounding of the KL sum is
  scaled up), finite where the true value fits float32, equal to a float64
  NumPy oracle on moderate inputs; logits as JAX/NumPy arrays or lists.
* `mlkd_loss` (`MLKDLoss`): masks are `confidence_masks(teacher_weak,
  keep="low")`'s, the three terms are the documented sums of the three losses
  (both modes), `.total == kd + cc + bc`.
* `sigmoid_ce_loss`, `dice_loss`, `pairwise_sigmoid_ce_loss`,
  `pairwise_dice_loss`: shapes, float32, finite and `>= 0` for finite logits and
  labels in [0, 1] (bool and integer labels too), equal to NumPy oracles on
  moderate inputs; zero masks give 0.
* `num_masks_normalizer`: float32 scalar `max(x, 1)`, so `>= 1`.
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
* `point_mask_losses` (`PointMaskLosses`): two float32 scalars, finite and
  `>= 0`, equal to the documented composition of
  `sample_points_using_uncertainty`, `point_sample`, `sigmoid_ce_loss` and
  `dice_loss`; zero masks give (0, 0).
* `fixmatch`, `flexmatch`, `freematch`, `softmatch`, `percentile_threshold`
  (`ConfidenceThreshold`, `ThresholdOutput`, `FlexMatchState`,
  `FreeMatchState`, `SoftMatchState`): over sequences of batches (one-sample
  ones too) of softmax rows, `mask` is float32 `[B]` in [0, 1] (0/1 except
  SoftMatch), `pseudo_labels` int32 `[B]` the argmax of the (unaligned)
  probs, the state keeps its NamedTuple type, shapes and dtypes, and a jitted
  `update` gives eager's result; FixMatch's mask is exactly `max p >=
  float32(p_cutoff)`; `percentile_threshold` is `percentile_mask` of the row
  maxima, so on `confidence_masks`' probs it returns that mask; FlexMatch,
  FreeMatch and SoftMatch follow float64 re-computations of their documented
  updates from the previous state (masks compared away from the threshold;
  SoftMatch weights where the variance is >= 1e-4). `update`'s own arguments
  (`state`, `probs`, `indices`; FlexMatch's indices are required and range
  checked) are fuzzed by `test_hostile_update_argument_is_named`.
* `freematch_fairness_loss`: a float32 scalar, finite and <= 0 (up to
  rounding) for finite logits (half precision and huge values too), exactly 0
  when the mask is all zero, equal to a float64 oracle of the documented
  formula on moderate logits, for states from `freematch`'s `update`.

Hostile arguments (wrong ranks and dtypes, empty arrays, NaN/inf/negative
scalars, bools and floats for ints, unknown strings, bad keys, labels outside
[0, 1], wrong-shaped `uncertainty_fn` results) must raise (a): one bad
argument at a time on a valid baseline. Traced invalid values (temperature,
num_masks, labels, q) give NaN under `jax.jit`, and the same concrete values
raise (a).

The bugs this file found are fixed; each keeps its minimal reproducer as a
regression test (`test_fixed_*`, `test_string_or_none_for_an_array_names_it`)
at the end, and two outcomes are documented rather than rejected
(`test_documented_*`: float32 overflow of a coordinate or of logits / T gives
NaN, as in PyTorch). The properties above say where they leave those inputs
to the regression tests.

Cost: shapes and static options come from small fixed lists (each compiles
once and is reused across examples); every `@settings` is derandomized with no
example database, so CI runs the same examples every time.
"""

import inspect
import math
import re

from hypothesis import assume
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmask

# NumPy oracles meet inf - inf and overflow on purpose; casts to float16
# overflow; complex q warns when cast.
pytestmark = pytest.mark.filterwarnings(
    "ignore:invalid value encountered:RuntimeWarning",
    "ignore:overflow encountered:RuntimeWarning",
    "ignore:divide by zero encountered:RuntimeWarning",
    "ignore::numpy.exceptions.ComplexWarning")

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


def _same(got, want) -> bool:
  """Equal, or both NaN (the sign of a zero is not compared)."""
  got, want = float(got), float(want)
  return got == want or (math.isnan(got) and math.isnan(want))


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


# ---------------------------------------------------------------------------
# Coverage.
# ---------------------------------------------------------------------------

# Public name -> the tests in this file that exercise it.
COVERED = {
    "ConfidenceMasks": "test_confidence_masks_contract",
    "ConfidenceThreshold": "test_threshold_update_contract",
    "FlexMatchState": "test_threshold_update_contract",
    "FreeMatchState": "test_threshold_update_contract",
    "MLKDLoss": "test_mlkd_loss_contract",
    "Mask2FormerLoss": "test_mask2former_loss_contract",
    "MaskMatching": "test_hungarian_match_contract",
    "PointMaskLosses": "test_point_mask_losses_contract",
    "SoftMatchState": "test_threshold_update_contract",
    "ThresholdOutput": "test_threshold_update_contract",
    "batch_correlation_loss": "test_distillation_losses_contract",
    "calculate_uncertainty": "test_calculate_uncertainty_is_minus_abs",
    "class_correlation_loss": "test_distillation_losses_contract",
    "confidence_masks": "test_confidence_masks_contract",
    "dice_loss": "test_point_losses_contract",
    "fixmatch": "test_threshold_update_contract",
    "flexmatch": "test_threshold_update_contract",
    "freematch": "test_threshold_update_contract",
    "freematch_fairness_loss": "test_freematch_fairness_loss_contract",
    "hungarian_match": "test_hungarian_match_contract",
    "kd_loss": "test_distillation_losses_contract",
    "mask2former_loss": "test_mask2former_loss_contract",
    "mask_matching_cost": "test_mask_matching_cost_contract",
    "mlkd_loss": "test_mlkd_loss_contract",
    "num_masks_normalizer": "test_num_masks_normalizer_contract",
    "pairwise_dice_loss": "test_point_losses_contract",
    "pairwise_sigmoid_ce_loss": "test_point_losses_contract",
    "percentile": "test_percentile_and_mask_follow_numpy",
    "percentile_mask": "test_percentile_and_mask_follow_numpy",
    "percentile_threshold": "test_percentile_threshold_is_the_confidence_masks_mask",
    "point_mask_losses": "test_point_mask_losses_contract",
    "point_sample": "test_point_sample_contract",
    "point_sample_single": "test_point_sample_contract",
    "sample_points_using_uncertainty": "test_sample_points_contract",
    "select_uncertain_points": "test_select_uncertain_points_contract",
    "sigmoid_ce_loss": "test_point_losses_contract",
    "softmatch": "test_threshold_update_contract",
    "top_k_indices": "test_top_k_indices_contract",
    "uncertain_point_coords_on_grid": "test_on_grid_contract",
}


def test_every_public_name_is_fuzzed():
  assert set(COVERED) == set(jaxmask.__all__)
  functions = {n for n in jaxmask.__all__
               if inspect.isfunction(getattr(jaxmask, n))}
  assert functions <= set(HOSTILE), functions - set(HOSTILE)
  for test in set(COVERED.values()):
    assert callable(globals()[test]), test


# ---------------------------------------------------------------------------
# (b) Percentiles and confidence masks.
# ---------------------------------------------------------------------------


@_fuzz(60)
@given(values=st.integers(1, 7).flatmap(
           lambda n: _floats((n,), nonfinite=True)),
       q=st.sampled_from(QS), q_kind=st.sampled_from(("python", "numpy", "jax")),
       keep=st.sampled_from(("low", "high")), dtype=_dtypes,
       container=_containers)
def test_percentile_and_mask_follow_numpy(values, q, q_kind, keep, dtype,
                                          container):
  v = _as(values, dtype, container)
  v32 = _np32(v)
  if container == "list":  # documented: an array (`values.shape` is read)
    _expect_named_error(jaxmask.percentile, values=v, q=q)
    _expect_named_error(jaxmask.percentile_mask, values=v, q=q, keep=keep)
    return
  if q_kind == "jax":  # an array q: NumPy's arithmetic for a float32 q
    q_arg, q_np = jnp.float32(q), np.float32(q)
  else:  # a Python float, or np.float64 (a float subclass; NumPy would
    # promote its result to float64, the documented result is float32)
    q_arg = float(q) if q_kind == "python" else np.float64(q)
    q_np = float(q)
  thr = jaxmask.percentile(v, q_arg)
  assert thr.shape == () and thr.dtype == jnp.float32
  mask, thr2 = jaxmask.percentile_mask(v, q=q_arg, keep=keep)
  assert mask.shape == v32.shape and mask.dtype == jnp.bool_
  assert thr2.shape == () and thr2.dtype == jnp.float32
  assert _same(thr, thr2)
  if _no_tiny(v32):
    want = np.percentile(v32, q_np)
    assert _same(thr, want), (v32, q_np, float(thr), want)
  if np.isnan(v32).any():
    assert np.isnan(thr) and not np.asarray(mask).any()
  t = np.float32(thr)
  np.testing.assert_array_equal(mask, v32 <= t if keep == "low" else v32 >= t)


def _logit_shapes():
  return st.sampled_from(((1, 1), (1, 4), (2, 3), (3, 2), (5, 6)))


@_fuzz(50)
@given(shape=_logit_shapes(), data=st.data(), q=st.sampled_from(QS),
       q_kind=st.sampled_from(("python", "jax")),
       keep=st.sampled_from(("low", "high")), dtype=_dtypes,
       container=_containers, nonfinite=st.booleans())
def test_confidence_masks_contract(shape, data, q, q_kind, keep, dtype,
                                   container, nonfinite):
  x = _as(data.draw(_floats(shape, nonfinite=nonfinite)), dtype, container)
  x32 = _np32(x)
  b, c = shape
  out = jaxmask.confidence_masks(x, q=jnp.float32(q) if q_kind == "jax" else q,
                                 keep=keep)
  assert isinstance(out, jaxmask.ConfidenceMasks)
  for name, shp, dt in (("probs", (b, c), jnp.float32),
                        ("confidence", (b,), jnp.float32),
                        ("pseudo_labels", (b,), jnp.int32),
                        ("threshold", (), jnp.float32),
                        ("mask", (b,), jnp.bool_),
                        ("class_confidence", (c,), jnp.float32),
                        ("class_threshold", (), jnp.float32),
                        ("class_mask", (c,), jnp.bool_)):
    field = getattr(out, name)
    assert field.shape == shp and field.dtype == dt, (name, field.shape,
                                                      field.dtype)
  probs, conf = np.asarray(out.probs), np.asarray(out.confidence)
  labels = np.asarray(out.pseudo_labels)
  # Rows of finite logits: a distribution, its max and argmax.
  finite = np.isfinite(x32).all(axis=1)
  if finite.any():
    p = probs[finite]
    assert ((p >= 0) & (p <= 1)).all()
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(conf[finite], p.max(axis=1))
    assert ((labels >= 0) & (labels < c)).all()
    np.testing.assert_array_equal(
        p[np.arange(len(p)), labels[finite]], conf[finite])
    # Softmax oracle (float64), for rows without overflow in x - max.
    x64 = x32[finite].astype(np.float64)
    e = np.exp(x64 - x64.max(axis=1, keepdims=True))
    np.testing.assert_allclose(p, e / e.sum(axis=1, keepdims=True), atol=1e-6)
  if finite.all():
    np.testing.assert_allclose(out.class_confidence, probs.sum(axis=0),
                               rtol=1e-6, atol=1e-6)
  # A NaN or +inf logit: NaN thresholds, empty masks (documented).
  if (np.isnan(x32) | (x32 == INF)).any():
    assert np.isnan(out.threshold) and np.isnan(out.class_threshold)
    assert not np.asarray(out.mask).any()
    assert not np.asarray(out.class_mask).any()
  # Thresholds are NumPy's percentiles of the returned scores, masks exact.
  q_np = np.float32(q) if q_kind == "jax" else q
  for values, thr, mask in ((conf, out.threshold, out.mask),
                            (np.asarray(out.class_confidence),
                             out.class_threshold, out.class_mask)):
    if _no_tiny(values):
      assert _same(thr, np.percentile(values, q_np)), (values, q, float(thr))
    elif not np.isnan(values).any():
      assert values.min() <= thr <= values.max()
    t = np.float32(thr)
    np.testing.assert_array_equal(
        mask, values <= t if keep == "low" else values >= t)


# ---------------------------------------------------------------------------
# (b) Distillation losses.
# ---------------------------------------------------------------------------

TEMPERATURES = (1e-3, 0.25, 0.5, 1.0, 2.0, 4.0, 16.0, 1e3, 1e18)


def _softmax64(x):
  e = np.exp(x - x.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


def _np_kd(s, t, temperature, mask):
  z = s / temperature - (s / temperature).max(-1, keepdims=True)
  log_ps = z - np.log(np.exp(z).sum(-1, keepdims=True))
  pt = _softmax64(t / temperature)
  with np.errstate(divide="ignore"):
    kl = np.where(pt > 0, pt * (np.log(pt) - log_ps), 0.0)
  per_sample = kl.sum(-1) * temperature**2
  if mask is not None:
    per_sample = per_sample * mask
  return per_sample.mean()


def _np_correlation(s, t, temperature, mask, axis):
  ps, pt = _softmax64(s / temperature), _softmax64(t / temperature)
  gram = (lambda p: p.T @ p) if axis == "class" else (lambda p: p @ p.T)
  sq = (gram(pt) - gram(ps))**2
  if mask is not None:
    sq = sq * mask[None, :]
  return sq.sum() / sq.shape[0]


def _fits(s32, t32, temperature):
  """Whether logits / T and T**2 stay in float32 range (beyond, NaN is the
  documented outcome: `test_documented_overflow_in_temperature_scaling_is_nan`)."""
  big = float(max(np.abs(s32).max(), np.abs(t32).max()))
  return 2 * big / temperature < 3e38 and temperature <= 1e18


@_fuzz(50)
@given(shape=_logit_shapes(), data=st.data(),
       temperature=st.one_of(st.floats(0.25, 16), st.floats(0.25, 16),
                             st.sampled_from(TEMPERATURES)),
       t_kind=st.sampled_from(("python", "numpy", "jax", "int")),
       mask_kind=st.sampled_from((None, "bool", "float")), dtype=_dtypes,
       container=_containers, huge=st.sampled_from((False, False, True)))
def test_distillation_losses_contract(shape, data, temperature, t_kind,
                                      mask_kind, dtype, container, huge):
  b, c = shape
  s = _as(data.draw(_floats(shape, huge=huge)), dtype, "jax")
  t = _as(data.draw(_floats(shape, huge=huge)), dtype, container)
  s32, t32 = _np32(s), _np32(t)
  assume(np.isfinite(s32).all() and np.isfinite(t32).all())  # f16 overflow
  if t_kind == "int":  # ints beyond int32: test_fixed_python_int_beyond_int32
    temperature = min(max(1, round(temperature)), 10**6)
  temperature = float(np.float32(temperature))
  assume(_fits(s32, t32, temperature))
  T = {"python": temperature, "int": int(temperature),
       "numpy": np.float32(temperature),
       "jax": jnp.float32(temperature)}[t_kind]
  sample_mask = class_mask = None
  if mask_kind == "bool":
    sample_mask = data.draw(hnp.arrays(np.bool_, (b,)))
    class_mask = data.draw(hnp.arrays(np.bool_, (c,)))
  elif mask_kind == "float":
    sample_mask, class_mask = data.draw(_unit((b,))), data.draw(_unit((c,)))
  kd = jaxmask.kd_loss(s, t, temperature=T, mask=sample_mask)
  cc = jaxmask.class_correlation_loss(s, t, temperature=T,
                                      class_mask=class_mask)
  bc = jaxmask.batch_correlation_loss(s, t, temperature=T, mask=sample_mask)
  big = float(max(np.abs(s32).max(), np.abs(t32).max()))
  # A per-sample KD term is at most T**2 (2 big / T + log C): where that fits
  # float32, the loss is finite.
  kd_fits = 2 * big * temperature + 2 * temperature**2 < 1e37
  # KL >= 0, computed to float32 rounding of log-probabilities up to
  # 2 * big / T, then scaled by T**2.
  kd_floor = -1e-6 * max(1.0, temperature**2) * max(1.0, big / temperature)
  for name, loss, floor in (("kd", kd, kd_floor), ("cc", cc, 0.0),
                            ("bc", bc, 0.0)):
    assert loss.shape == () and loss.dtype == jnp.float32, name
    if name == "kd" and not kd_fits and sample_mask is not None and not (
        np.asarray(sample_mask).all()):
      # An overflowing (inf) term times a zero weight is NaN: documented,
      # `test_documented_overflow_in_temperature_scaling_is_nan`.
      assert np.isnan(loss) or loss >= floor, float(loss)
      continue
    assert not np.isnan(loss) and loss >= floor, (name, float(loss))
  # The correlation losses are bounded (Gram entries <= batch): finite.
  assert np.isfinite(cc) and np.isfinite(bc)
  if kd_fits:
    assert np.isfinite(kd), float(kd)
  # Float64 oracle of the documented formulas on moderate inputs.
  if big <= 10 and 0.25 <= temperature <= 16:
    s64, t64 = _np64(s), _np64(t)
    m = None if sample_mask is None else np.asarray(sample_mask, np.float64)
    cm = None if class_mask is None else np.asarray(class_mask, np.float64)
    np.testing.assert_allclose(kd, _np_kd(s64, t64, temperature, m),
                               rtol=1e-4, atol=1e-5 * temperature**2)
    np.testing.assert_allclose(
        cc, _np_correlation(s64, t64, temperature, cm, "class"),
        rtol=1e-4, atol=1e-5 * b * b)
    np.testing.assert_allclose(
        bc, _np_correlation(s64, t64, temperature, m, "batch"),
        rtol=1e-4, atol=1e-5 * b * b)


@_fuzz(25)
@given(shape=st.sampled_from(((1, 1), (3, 2), (4, 5))), data=st.data(),
       temperature=st.sampled_from((1.0, 4.0, 8.0)),
       mode=st.sampled_from(("faithful", "masked")), q=st.sampled_from(QS),
       huge=st.booleans())
def test_mlkd_loss_contract(shape, data, temperature, mode, q, huge):
  sw, ss, tw, ts = (jnp.asarray(data.draw(_floats(shape, huge=huge)))
                    for _ in range(4))
  out = jaxmask.mlkd_loss(sw, ss, tw, ts, temperature=temperature, mode=mode,
                          q=q)
  assert isinstance(out, jaxmask.MLKDLoss)
  big = max(float(jnp.abs(x).max()) for x in (sw, ss, tw, ts))
  # Sums of kd_loss terms (T**2 up to 64, at most 8 of them): see the floor
  # of test_distillation_losses_contract.
  for name, floor in (("kd", -1e-6 * 300 * max(1.0, big)), ("cc", 0.0),
                      ("bc", 0.0)):
    loss = getattr(out, name)
    assert loss.shape == () and loss.dtype == jnp.float32, name
    assert not np.isnan(loss) and loss >= floor, (name, float(loss))
  assert np.isfinite(out.cc) and np.isfinite(out.bc)
  if not huge:
    assert np.isfinite(out.kd)
  np.testing.assert_array_equal(out.total, out.kd + out.cc + out.bc)
  masks = jaxmask.confidence_masks(tw, q=q, keep="low")
  assert out.mask.shape == shape[:1] and out.mask.dtype == jnp.bool_
  assert out.class_mask.shape == shape[1:] and out.class_mask.dtype == jnp.bool_
  np.testing.assert_array_equal(out.mask, masks.mask)
  np.testing.assert_array_equal(out.class_mask, masks.class_mask)
  # The documented sums (docstring of mlkd_loss), with the public losses.
  m = masks.mask.astype(jnp.float32)
  c = masks.class_mask.astype(jnp.float32)
  temps = (temperature, 3.0, 5.0, 2.0, 6.0)
  kd, cc, bc = jaxmask.kd_loss, jaxmask.class_correlation_loss, jaxmask.batch_correlation_loss
  if mode == "faithful":
    want_kd = (sum(kd(sw, tw, temperature=T) for T in temps) * m.mean()
               + sum(kd(ss, ts, temperature=T) for T in temps[:3])
               + sum(kd(sw, tw, temperature=T) for T in temps[3:]))
    want_cc = sum(cc(sw, tw, temperature=T) for T in temps) * c.mean()
    want_bc = sum(bc(sw, tw, temperature=T) for T in temps) * m.mean()
  else:
    want_kd = (sum(kd(sw, tw, temperature=T, mask=m) for T in temps)
               + sum(kd(ss, ts, temperature=T) for T in temps))
    want_cc = sum(cc(sw, tw, temperature=T, class_mask=c) for T in temps)
    want_bc = sum(bc(sw, tw, temperature=T, mask=m) for T in temps)
  for got, want in ((out.kd, want_kd), (out.cc, want_cc), (out.bc, want_bc)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------
# (b) Point losses and matcher costs.
# ---------------------------------------------------------------------------


def _np_bce(x, y):
  return np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x)))


def _np_dice_terms(x, y):
  p = 1 / (1 + np.exp(-x))
  return 1 - (2 * (p * y).sum(-1) + 1) / (p.sum(-1) + y.sum(-1) + 1)


NUM_MASKS = (1e-30, 0.5, 1.0, 3.0, 1e30, 3e38)


@_fuzz(40)
@given(sizes=st.sampled_from(((0, 3, 2), (1, 1, 1), (2, 4, 3), (3, 5, 1),
                              (2, 0, 3))),
       data=st.data(), num_masks=st.sampled_from(NUM_MASKS),
       nm_kind=st.sampled_from(("python", "numpy", "jax", "int")),
       label_kind=st.sampled_from(("float32", "float16", "bool", "int32")),
       dtype=st.sampled_from(("float32", "float32", "bfloat16")),
       huge=st.booleans())
def test_point_losses_contract(sizes, data, num_masks, nm_kind, label_kind,
                               dtype, huge):
  n, p, t = sizes  # masks (queries), points, targets (pairwise)
  x = _as(data.draw(_floats((n, p), huge=huge)), dtype, "jax")
  x32 = _np32(x)
  assume(np.isfinite(x32).all())  # float16 overflow of huge values
  y_all = data.draw(_unit((n + t, p)))
  if label_kind in ("bool", "int32"):
    y_all = np.round(y_all)
  labels_all = y_all.astype(jnp.dtype(label_kind))
  labels, targets = labels_all[:n], labels_all[n:]
  if nm_kind == "int":
    num_masks = max(1, min(int(num_masks), 2**31 - 1))
  nm = {"python": num_masks, "int": num_masks, "numpy": np.float32(num_masks),
        "jax": jnp.float32(num_masks)}[nm_kind]
  nm32 = float(np.float32(num_masks))
  x64, y64, t64 = x32.astype(np.float64), _np64(labels), _np64(targets)

  # Per-mask losses; sigmoid_ce_loss over 0 points is an error
  # (`test_fixed_sigmoid_ce_loss_over_zero_points`).
  losses = [("dice", jaxmask.dice_loss(x, labels, nm),
             _np_dice_terms(x64, y64).sum() / nm32 if n else 0.0)]
  if p > 0 or n == 0:
    want = _np_bce(x64, y64).mean(-1).sum() / nm32 if n else 0.0
    losses.append(("sigmoid_ce", jaxmask.sigmoid_ce_loss(x, labels, nm), want))
  big = np.abs(x32).max() if x32.size else 0.0
  for name, loss, want in losses:
    assert loss.shape == () and loss.dtype == jnp.float32, name
    assert not np.isnan(loss), name
    assert loss >= (-1e-6 * n / nm32 if name == "dice" else 0.0), (name, loss)
    if n == 0:
      assert loss == 0.0, name
    if name == "dice":
      assert loss <= (1 + 1e-6) * n / nm32
    if max(n, 1) * max(p, 1) * (big + 1) / min(nm32, 1.0) < 1e37:
      assert np.isfinite(loss), name
    if big <= 10:  # float64 oracle (a result below 2**-126 may flush to 0)
      np.testing.assert_allclose(
          loss, want, rtol=1e-5,
          atol=max(1e-6 * max(n, 1) / nm32, 2.0**-126), err_msg=name)

  # Pairwise costs: [n, t] float32, finite, >= 0 (dice in [0, 1]).
  ce = jaxmask.pairwise_sigmoid_ce_loss(x, targets)
  dice = jaxmask.pairwise_dice_loss(x, targets)
  for name, cost in (("pairwise_ce", ce), ("pairwise_dice", dice)):
    assert cost.shape == (n, t) and cost.dtype == jnp.float32, name
    assert np.isfinite(cost).all() and (np.asarray(cost) >= -1e-6).all(), name
  assert (np.asarray(dice) <= 1 + 1e-6).all()
  if big <= 10 and n and t:
    want_ce = np.stack([_np_bce(x64, t64[j]).mean(-1) if p else np.zeros(n)
                        for j in range(t)], axis=1)
    want_dice = np.stack([_np_dice_terms(x64, np.broadcast_to(t64[j], x64.shape))
                          for j in range(t)], axis=1)
    np.testing.assert_allclose(ce, want_ce, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dice, want_dice, rtol=1e-5, atol=1e-6)


@_fuzz(40)
@given(x=st.one_of(
    st.integers(-2**31, 2**31 - 1),
    st.floats(allow_nan=False, width=32),
    st.floats(allow_nan=False, width=32).map(np.float32),
    st.floats(allow_nan=False, width=32).map(jnp.float32),
    st.integers(-2**31, 2**31 - 1).map(np.int64),
    st.integers(0, 255).map(np.uint8),
    st.floats(-65504, 65504, width=16).map(jnp.float16)))
def test_num_masks_normalizer_contract(x):
  out = jaxmask.num_masks_normalizer(x)
  assert out.shape == () and out.dtype == jnp.float32
  assert out >= 1
  want = max(np.float32(np.asarray(x).astype(np.float32)), np.float32(1))
  assert out == want, (x, out, want)


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


# ---------------------------------------------------------------------------
# (b) Top-k and point sampling.
# ---------------------------------------------------------------------------


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


# (N, H, W, target H, target W, num_points, oversample, importance, pred
# dtype, target dtypes); the float32 case shares its sampling program with
# SAMPLE_CASES; bool and integer targets are cast before the compiled core.
LOSS_CASES = (
    (2, 3, 4, 4, 3, 5, 3.0, 0.75, "float32", ("float32", "bool", "int32")),
    (3, 2, 5, 6, 6, 3, 1.0, 1.0, "bfloat16", ("float16",)),
    (0, 3, 3, 4, 4, 4, 3.0, 0.75, "float32", ("float32",)))


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@_fuzz(15)
@given(case=st.sampled_from(LOSS_CASES), data=st.data(),
       num_masks=st.sampled_from((0.5, 1.0, 3.0, 7)), seed=st.integers(0, 99),
       huge=st.booleans())
def test_point_mask_losses_contract(implementation, case, data, num_masks,
                                    seed, huge):
  n, h, w, th, tw, p, ratio, importance, pred_dtype, target_dtypes = case
  target_dtype = data.draw(st.sampled_from(target_dtypes))
  key = jax.random.key(seed)
  pred = _as(data.draw(_floats((n, h, w), huge=huge)), pred_dtype, "jax")
  assume(np.isfinite(_np32(pred)).all())
  target = jnp.asarray(data.draw(_unit((n, th, tw))))
  if target_dtype == "float16":
    target = target.astype(jnp.float16)
  elif target_dtype != "float32":  # 0/1 targets
    target = (target > 0.5).astype(target_dtype)
  options = dict(num_points=p, oversample_ratio=ratio,
                 importance_sample_ratio=importance,
                 implementation=implementation)
  out = jaxmask.point_mask_losses(key, pred, target, num_masks, **options)
  assert isinstance(out, jaxmask.PointMaskLosses)
  for loss in out:
    assert loss.shape == () and loss.dtype == jnp.float32
    assert not np.isnan(loss) and loss >= -1e-6 * max(n, 1) / num_masks
    if not huge:
      assert np.isfinite(loss)
  if n == 0:
    assert tuple(map(float, out)) == (0.0, 0.0)
    return
  # The documented composition.
  points = jaxmask.sample_points_using_uncertainty(key, pred[:, None], **options)
  target = target if jnp.issubdtype(target.dtype, jnp.floating) else (
      target.astype(pred.dtype))
  labels = jaxmask.point_sample(target[:, None], points,
                                implementation=implementation)[:, 0]
  logits = jaxmask.point_sample(pred[:, None], points,
                                implementation=implementation)[:, 0]
  np.testing.assert_allclose(
      out.loss_mask, jaxmask.sigmoid_ce_loss(logits, labels, num_masks),
      rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(
      out.loss_dice, jaxmask.dice_loss(logits, labels, num_masks),
      rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------
# (b) The Mask2Former criterion.
# ---------------------------------------------------------------------------


@_fuzz(20)
@given(data=st.data(), q=st.sampled_from((2, 4)), t=st.sampled_from((0, 1, 2)),
       nonfinite=st.booleans(), target_dtype=st.sampled_from(("float32", "bool")))
def test_mask_matching_cost_contract(data, q, t, nonfinite, target_dtype):
  """Finite float32 `[Q, T]`; the documented composition where it is finite."""
  cls = data.draw(_floats((q, 4), huge=False, nonfinite=nonfinite))
  masks = data.draw(_floats((q, 3, 5), huge=False, nonfinite=nonfinite))
  labels = np.asarray(data.draw(hnp.arrays(np.int32, (t,),
                                           elements=st.integers(0, 2))))
  targets = np.asarray(data.draw(_unit((t, 4, 4))))
  if target_dtype == "bool":
    targets = targets > 0.5
  points = np.asarray(data.draw(_unit((6, 2))))
  cost = jaxmask.mask_matching_cost(cls, masks, labels, targets, points)
  assert cost.shape == (q, t) and cost.dtype == jnp.float32
  assert np.isfinite(np.asarray(cost)).all()
  if t == 0:
    return
  probs = jax.nn.softmax(jnp.asarray(cls), axis=-1)
  pred = jaxmask.point_sample_single(masks, points)
  target = jaxmask.point_sample_single(np.float32(targets), points)
  want = np.asarray(5.0 * jaxmask.pairwise_sigmoid_ce_loss(pred, target)
                    - 2.0 * probs[:, labels]
                    + 5.0 * jaxmask.pairwise_dice_loss(pred, target))
  finite = np.isfinite(want)
  np.testing.assert_allclose(np.asarray(cost)[finite], want[finite],
                             rtol=1e-5, atol=1e-5)
  # Non-finite entries become one sentinel above every finite entry.
  if not finite.all():
    assert (np.asarray(cost)[~finite] > np.abs(want[finite]).max(initial=0)).all()


@_fuzz(40)
@given(data=st.data(), shape=st.sampled_from(((1, 1), (3, 2), (5, 5), (6, 3))),
       nonfinite=st.booleans())
def test_hungarian_match_contract(data, shape, nonfinite):
  """A valid matching of every valid target; scipy's optimum where finite."""
  from scipy.optimize import linear_sum_assignment
  cost = np.asarray(data.draw(_floats(shape, huge=False, nonfinite=nonfinite)))
  valid = np.asarray(data.draw(hnp.arrays(np.bool_, (shape[1],))))
  out = jaxmask.hungarian_match(cost, target_valid=valid)
  assert isinstance(out, jaxmask.MaskMatching)
  query, target = np.asarray(out.query_index), np.asarray(out.target_index)
  assert query.shape == (shape[1],) and target.shape == (shape[0],)
  assert query.dtype == target.dtype == np.int32
  assert (query[~valid] == -1).all() and (query[valid] >= 0).all()
  assert len(set(query[valid])) == valid.sum()
  assert all(target[query[t]] == t for t in np.flatnonzero(valid))
  assert (target >= 0).sum() == valid.sum()
  sub = cost[:, valid].astype(np.float64)
  if np.isfinite(sub).all() and valid.any():
    rows, cols = linear_sum_assignment(sub)
    got = sub[query[valid], np.arange(valid.sum())].sum()
    np.testing.assert_allclose(got, sub[rows, cols].sum(), rtol=1e-5, atol=1e-4)


_CRITERION_CASES = (  # L, B, Q, K, T, H, W, Ht, Wt, num_points
    (1, 1, 2, 2, 1, 3, 4, 4, 4, 4),
    (2, 2, 3, 3, 2, 4, 3, 5, 6, None),
)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@_fuzz(8)
@given(case=st.sampled_from(_CRITERION_CASES), data=st.data(),
       seed=st.integers(0, 3))
def test_mask2former_loss_contract(implementation, case, data, seed):
  """Keys, float32 scalars >= 0 for finite logits, total = weighted sum."""
  L, B, Q, K, T, H, W, Ht, Wt, num_points = case
  cls = data.draw(_floats((L, B, Q, K + 1), huge=False))
  masks = data.draw(_floats((L, B, Q, H, W), huge=False))
  labels = np.asarray(data.draw(hnp.arrays(np.int32, (B, T),
                                           elements=st.integers(0, K - 1))))
  targets = np.asarray(data.draw(_unit((B, T, Ht, Wt))))
  valid = np.asarray(data.draw(hnp.arrays(np.bool_, (B, T))))
  out = jaxmask.mask2former_loss(
      jax.random.key(seed), cls, masks, labels, targets, valid,
      num_points=num_points, num_matcher_points=4,
      implementation=implementation)
  assert isinstance(out, jaxmask.Mask2FormerLoss)
  names = ["loss_cross_entropy", "loss_mask", "loss_dice"]
  assert set(out.losses) == set(names) | {
      f"{n}_{i}" for n in names for i in range(L - 1)}
  for value in (out.total, *out.losses.values()):
    assert value.shape == () and value.dtype == jnp.float32
    assert np.isfinite(value) and value >= -1e-6
  weights = {"loss_cross_entropy": 2.0, "loss_mask": 5.0, "loss_dice": 5.0}
  want = sum(weights[k.rstrip("_0123456789")] * float(v)
             for k, v in out.losses.items())
  np.testing.assert_allclose(out.total, want, rtol=1e-5, atol=1e-6)
  if not valid.any():
    assert float(out.losses["loss_mask"]) == float(out.losses["loss_dice"]) == 0


# ---------------------------------------------------------------------------
# (b) Adaptive SSL thresholds.
# ---------------------------------------------------------------------------

_TC, _TN = 3, 8  # classes; FlexMatch's unlabelled dataset size
# Config -> (factory, keywords). Each threshold is built once (`_threshold`),
# so its jitted `update` compiles once per batch size and is reused.
_THRESHOLD_CONFIGS = {
    "fixmatch": ("fixmatch", dict(p_cutoff=0.7)),
    "fixmatch_f32_cutoff": ("fixmatch", dict(p_cutoff=0.95)),
    "flexmatch": ("flexmatch", dict(num_classes=_TC, num_unlabelled=_TN,
                                    p_cutoff=0.6)),
    "flexmatch_concave": ("flexmatch", dict(
        num_classes=_TC, num_unlabelled=_TN, p_cutoff=0.5, warmup=False,
        mapping="concave")),
    "flexmatch_linear": ("flexmatch", dict(
        num_classes=_TC, num_unlabelled=_TN, p_cutoff=1.0, mapping="linear")),
    "freematch": ("freematch", dict(num_classes=_TC, momentum=0.5)),
    "freematch_quantile": ("freematch", dict(
        num_classes=_TC, momentum=0.0, use_quantile=True, clip_thresh=True)),
    "percentile_high": ("percentile_threshold", dict(q=20.0, keep="high")),
    "percentile_low": ("percentile_threshold", dict(q=62.5, keep="low")),
    "softmatch": ("softmatch", dict(num_classes=_TC, momentum=0.5)),
    "softmatch_unaligned": ("softmatch", dict(
        num_classes=_TC, momentum=0.0, n_sigma=3.0, dist_align=False)),
}
_THRESHOLDS = {}


def _threshold(config):
  """(threshold, jitted update), built once per config."""
  if config not in _THRESHOLDS:
    factory, kwargs = _THRESHOLD_CONFIGS[config]
    t = getattr(jaxmask, factory)(**kwargs)
    _THRESHOLDS[config] = (t, jax.jit(t.update))
  return _THRESHOLDS[config]


def _probs_from(logits: np.ndarray) -> np.ndarray:
  """Rows of float32 probabilities: the softmax (float64) of `logits`."""
  return _softmax64(logits.astype(np.float64)).astype(np.float32)


def _assert_same_layout(got, want):
  """Same pytree structure (NamedTuple type included), shapes and dtypes."""
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    assert g.shape == w.shape and g.dtype == w.dtype, (g, w)


def _assert_same_tree(got, want):
  """Same layout and values (integers exactly)."""
  _assert_same_layout(got, want)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    if jnp.issubdtype(w.dtype, jnp.integer):
      np.testing.assert_array_equal(g, w)
    else:
      np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-7)


def _assert_mask_away_from(mask, conf, threshold, eps=1e-5):
  """mask == [conf >= threshold] (float64 oracle) wherever they are apart."""
  clear = np.abs(conf - threshold) > eps * np.maximum(1.0, np.abs(threshold))
  np.testing.assert_array_equal(np.asarray(mask)[clear],
                                (conf >= threshold)[clear])


def _oracle_flexmatch(kwargs, prev, probs, indices, out, new):
  """The docstring of `flexmatch`, in float64 / exact counts."""
  p_cutoff, mapping = kwargs["p_cutoff"], kwargs.get("mapping", "convex")
  warmup = kwargs.get("warmup", True)
  conf, labels = probs.max(1).astype(np.float64), probs.argmax(1)
  a = np.asarray(prev.classwise_acc, np.float64)[labels]
  threshold = p_cutoff * {
      "convex": lambda: a / (2 - a), "linear": lambda: (a + 1) / 2,
      "concave": lambda: (np.log(a + 1) + 0.5) / (np.log(2) + 0.5)}[mapping]()
  _assert_mask_away_from(out.mask, conf, threshold)
  # Confident samples (conf >= p_cutoff in float32, the cutoff itself kept)
  # write their label; a repeated index keeps one of its labels.
  confident = probs.max(1) >= np.float32(p_cutoff)
  selected = np.asarray(new.selected_label)
  want = np.asarray(prev.selected_label).copy()
  for i in set(indices[confident].tolist()):
    assert selected[i] in set(labels[confident & (indices == i)].tolist())
    want[i] = selected[i]
  np.testing.assert_array_equal(selected, want)
  counts = np.array([(selected == c).sum() for c in range(-1, _TC)])
  if counts.max() == _TN:  # one bucket holds every sample: unchanged
    np.testing.assert_array_equal(new.classwise_acc, prev.classwise_acc)
  else:
    denominator = counts.max() if warmup else counts[1:].max()
    np.testing.assert_array_equal(
        new.classwise_acc, np.float32(counts[1:]) / np.float32(denominator))


def _oracle_freematch(kwargs, prev, probs, out, new):
  """The docstring of `freematch`, in float64: update first, then mask."""
  m = kwargs["momentum"]
  p64 = probs.astype(np.float64)
  conf, labels = p64.max(1), p64.argmax(1)
  statistic = (np.quantile(conf, 0.8) if kwargs.get("use_quantile")
               else conf.mean())
  time_p = m * float(prev.time_p) + (1 - m) * statistic
  if kwargs.get("clip_thresh"):
    time_p = min(max(time_p, 0.0), 0.95)
  p_model = m * np.asarray(prev.p_model, np.float64) + (1 - m) * p64.mean(0)
  hist = np.bincount(labels, minlength=_TC) / len(labels)
  label_hist = m * np.asarray(prev.label_hist, np.float64) + (1 - m) * hist
  for got, want in ((new.time_p, time_p), (new.p_model, p_model),
                    (new.label_hist, label_hist)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  threshold = time_p * (p_model / p_model.max())[labels]
  _assert_mask_away_from(out.mask, conf, threshold)


def _oracle_softmatch(kwargs, prev, probs, out, new):
  """The docstring of `softmatch`, in float64."""
  m, n_sigma = kwargs["momentum"], kwargs.get("n_sigma", 2.0)
  p64 = probs.astype(np.float64)
  p_model = np.asarray(prev.p_model, np.float64)
  aligned = p64
  if kwargs.get("dist_align", True):
    batch_mean = p64.mean(0)
    p_model = (batch_mean if int(prev.count) == 0
               else m * p_model + (1 - m) * batch_mean)
    aligned = p64 * (1 / _TC + 1e-6) / (p_model + 1e-6)
    aligned = aligned / aligned.sum(1, keepdims=True)
  c = aligned.max(1)
  mu = m * float(prev.mu) + (1 - m) * c.mean()
  var = float(prev.var)
  if len(c) > 1:  # one sample: no unbiased variance, var unchanged
    var = m * var + (1 - m) * c.var(ddof=1)
  assert int(new.count) == int(prev.count) + 1
  np.testing.assert_allclose(new.p_model, p_model, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose([new.mu, new.var], [mu, var], rtol=1e-5,
                             atol=1e-6)
  mask = np.asarray(out.mask)
  np.testing.assert_array_equal(mask[c >= mu + 1e-6], 1.0)
  if var >= 1e-4:  # the weight is well conditioned
    weight = np.exp(-np.minimum(c - mu, 0)**2 / (2 * var / n_sigma**2))
    np.testing.assert_allclose(mask, weight, rtol=0, atol=1e-4)


@pytest.mark.parametrize("config", sorted(_THRESHOLD_CONFIGS))
@_fuzz(6)
@given(data=st.data(), batches=st.lists(st.sampled_from((1, 4)), min_size=1,
                                         max_size=3),
       container=st.sampled_from(("numpy", "jax")))
def test_threshold_update_contract(config, data, batches, container):
  """init/update: output and state types, shapes and dtypes; mask in [0, 1];
  pseudo-labels the argmax (of the unaligned probs); jit == eager; each
  method's documented formulas (float64 oracles, on the previous state)."""
  factory, kwargs = _THRESHOLD_CONFIGS[config]
  t, jitted = _threshold(config)
  assert isinstance(t, jaxmask.ConfidenceThreshold)
  init = t.init()
  state_type = {"fixmatch": tuple, "percentile_threshold": tuple,
                "flexmatch": jaxmask.FlexMatchState,
                "freematch": jaxmask.FreeMatchState,
                "softmatch": jaxmask.SoftMatchState}[factory]
  assert isinstance(init, state_type)
  state = init
  for b in batches:
    probs = _probs_from(data.draw(_floats((b, _TC), huge=False)))
    if data.draw(st.booleans()):  # a confidence at the cutoff itself
      p = np.float32(kwargs.get("p_cutoff", 0.5))
      probs[-1] = np.roll([p, 1 - p, 0], data.draw(st.integers(0, _TC - 1)))
    if factory == "flexmatch":  # repeats allowed: one of the labels is kept
      indices = np.array(data.draw(st.lists(
          st.integers(0, _TN - 1), min_size=b, max_size=b)), np.int32)
    else:  # checked for shape, values ignored
      indices = np.array(data.draw(st.lists(
          st.integers(-2, _TN + 2), min_size=b, max_size=b)), np.int32)
    p_arg = jnp.asarray(probs) if container == "jax" else probs
    out, new = t.update(state, p_arg, indices=indices)
    if factory == "flexmatch":
      jit_out, jit_new = jitted(state, p_arg, indices=indices)
    else:  # no indices: the same result
      jit_out, jit_new = jitted(state, p_arg)
    assert isinstance(out, jaxmask.ThresholdOutput)
    assert out.mask.shape == (b,) and out.mask.dtype == jnp.float32
    assert out.pseudo_labels.shape == (b,)
    assert out.pseudo_labels.dtype == jnp.int32
    mask = np.asarray(out.mask)
    assert ((mask >= 0) & (mask <= 1)).all(), mask
    np.testing.assert_array_equal(out.pseudo_labels, probs.argmax(1))
    _assert_same_layout(new, init)
    _assert_same_tree(jit_out, out)
    _assert_same_tree(jit_new, new)
    assert type(new) is type(init)
    if factory == "fixmatch":  # exactly, in float32: the cutoff itself kept
      np.testing.assert_array_equal(
          mask, probs.max(1) >= np.float32(kwargs["p_cutoff"]))
    elif factory == "percentile_threshold":  # the documented composition
      want, _ = jaxmask.percentile_mask(probs.max(1), **kwargs)
      np.testing.assert_array_equal(mask, np.asarray(want, np.float32))
    elif factory == "flexmatch":
      np.testing.assert_array_equal(mask, mask.round())
      _oracle_flexmatch(kwargs, state, probs, indices, out, new)
    elif factory == "freematch":
      np.testing.assert_array_equal(mask, mask.round())
      _oracle_freematch(kwargs, state, probs, out, new)
    else:
      _oracle_softmatch(kwargs, state, probs, out, new)
    state = new


@_fuzz(25)
@given(shape=st.sampled_from(((1, 1), (1, 4), (5, 3))), data=st.data(),
       q=st.sampled_from(QS), keep=st.sampled_from(("low", "high")),
       nonfinite=st.booleans())
def test_percentile_threshold_is_the_confidence_masks_mask(shape, data, q, keep,
                                                          nonfinite):
  """`percentile_threshold` on `confidence_masks`' probs gives its mask: the
  percentile mask (`percentile_mask`, `np.percentile`) of the row maxima."""
  logits = data.draw(_floats(shape, huge=False, nonfinite=nonfinite))
  masks = jaxmask.confidence_masks(logits, q=q, keep=keep)
  t = jaxmask.percentile_threshold(q=q, keep=keep)
  out, state = t.update(t.init(), masks.probs)
  assert state == ()
  assert out.mask.shape == shape[:1] and out.mask.dtype == jnp.float32
  np.testing.assert_array_equal(out.mask, np.asarray(masks.mask, np.float32))
  np.testing.assert_array_equal(out.pseudo_labels, masks.pseudo_labels)
  conf = np.asarray(masks.confidence)
  want, thr = jaxmask.percentile_mask(conf, q=q, keep=keep)
  np.testing.assert_array_equal(out.mask, np.asarray(want, np.float32))
  if np.isnan(conf).any():  # documented: a NaN threshold, all 0
    assert not np.asarray(out.mask).any()
  elif _no_tiny(conf):
    t_np = np.float32(np.percentile(conf, q))
    np.testing.assert_array_equal(
        out.mask, conf <= t_np if keep == "low" else conf >= t_np)


def _fairness_oracle(logits, mask, p_model, label_hist):
  """The docstring formula of `freematch_fairness_loss`, in float64."""
  selected = logits[mask != 0].astype(np.float64)
  if not len(selected):
    return 0.0
  q = _softmax64(selected)
  hist = np.bincount(q.argmax(1), minlength=logits.shape[1]) / len(q)

  def norm_over(x, h):  # norm(x / h), 1/0 read as 0
    inverse = np.divide(1.0, h, out=np.zeros_like(h), where=h != 0)
    return x * inverse / (x * inverse).sum()

  return float((norm_over(p_model, label_hist)
                * np.log(norm_over(q.mean(0), hist) + 1e-12)).sum())


@_fuzz(20)
@given(batch=st.sampled_from((1, 4)), data=st.data(),
       config=st.sampled_from(("freematch", "freematch_quantile")),
       mask_kind=st.sampled_from(("float", "bool", "int", "zero")),
       dtype=_dtypes, huge=st.booleans())
def test_freematch_fairness_loss_contract(batch, data, config, mask_kind, dtype,
                                          huge):
  """A float32 scalar, finite and <= 0 (up to rounding); 0 if nothing is
  selected; the documented formula (float64) on moderate logits."""
  t, jitted = _threshold(config)
  state = t.init()
  for b in data.draw(st.lists(st.sampled_from((1, 4)), max_size=2)):
    _, state = jitted(state, _probs_from(data.draw(_floats((b, _TC),
                                                           huge=False))))
  logits = _as(data.draw(_floats((batch, _TC), huge=huge)), dtype, "jax")
  l32 = _np32(logits)
  assume(np.isfinite(l32).all())  # float16 overflow of huge values
  if mask_kind == "zero":
    mask = np.zeros(batch, np.float32)
  else:
    mask = data.draw(_unit((batch,)))
    if mask_kind != "float":
      mask = np.round(mask).astype(bool if mask_kind == "bool" else np.int32)
  loss = jaxmask.freematch_fairness_loss(logits, mask, state)
  assert loss.shape == () and loss.dtype == jnp.float32
  assert np.isfinite(loss) and float(loss) <= 1e-6, float(loss)
  if not np.asarray(mask).any():
    assert float(loss) == 0.0
  if np.abs(l32).max() <= 10:
    want = _fairness_oracle(l32, np.asarray(mask),
                            np.asarray(state.p_model, np.float64),
                            np.asarray(state.label_hist, np.float64))
    np.testing.assert_allclose(loss, want, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------
# (a) Hostile arguments: a ValueError or TypeError naming an argument.
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
BAD_UNCERTAINTY_FN = st.sampled_from((
    lambda x: x[:, 0], lambda x: jnp.sum(x), lambda x: x[..., :1],
    lambda x: x[None]))
BAD_LABELS = st.sampled_from((2.0, -0.5, 255.0, 1.0001, -1e-30, 3e38, -INF,
                              INF)).map(lambda v: np.full((2, 3), v, np.float32))
BAD_TARGETS = st.sampled_from((2.0, -0.5, 255.0, INF)).map(
    lambda v: np.full((2, 4, 4), v, np.float32)) | st.just(
        np.full((2, 4, 4), 255, np.uint8))


def _impl_bad():
  return _bad_choice((None, "plain", "xla_cpu"))


_L23 = jnp.linspace(-2.0, 2.0, 6).reshape(2, 3)
# Valid baselines in the shapes and options of the contract tests above, so
# that `test_the_valid_hostile_baselines_return` reuses their programs.
_MAPS = jnp.linspace(-1.0, 1.0, 24).reshape(2, 1, 3, 4)
_FEATURES = jnp.linspace(-1.0, 1.0, 120).reshape(2, 3, 4, 5)
_PTS = jnp.linspace(0.0, 1.0, 24).reshape(2, 6, 2)
_CLS = jnp.linspace(-2.0, 2.0, 18).reshape(2, 1, 3, 3)  # [L, B, Q, K + 1]
_MASKS = jnp.linspace(-3.0, 3.0, 72).reshape(2, 1, 3, 3, 4)  # [L, B, Q, H, W]
BAD_WEIGHT = st.sampled_from((-1.0, NAN, INF, "2", True, [1.0], 1j,
                              jnp.float32(2.0)))
BAD_P_CUTOFF = st.sampled_from((
    0, 0.0, -0.0, -0.5, -1e-30, 1.0001, 2, NAN, INF, -INF, "0.9", None, True,
    [0.9], 1j, np.float32(1.5), np.float64(NAN), jnp.float32(0.9), np.ones(1)))
BAD_MOMENTUM = st.sampled_from((
    -0.1, -1e-30, 1.0001, 2, NAN, INF, -INF, "0.9", None, True, [0.9], 1j,
    np.float32(1.5), jnp.float32(0.9), jnp.zeros(())))
BAD_N_SIGMA = st.sampled_from((
    0, 0.0, -0.0, -1, -2.5, NAN, INF, -INF, "2", None, False, [2.0], 1j,
    np.float32(-2.0), jnp.float32(2.0)))
BAD_BOOL = st.sampled_from((
    1, 0, 1.0, "yes", "True", None, [True], np.int32(1), jnp.array(True),
    jnp.ones(2, bool)))
_BAD_NUM = _bad_int(1, 2**31 - 1)
_TLOGITS = jnp.linspace(-2.0, 2.0, 12).reshape(4, 3)  # [batch, _TC]
_FREE_STATE = jaxmask.freematch(num_classes=_TC).init()

# Function -> (valid keyword arguments, {argument: strategy of bad values}).
HOSTILE = {
    "percentile": (
        dict(values=jnp.arange(3.0), q=50.0),
        dict(values=_bad_array((3,), also=(jnp.zeros(0), [1.0, 2.0], 1.5, None)),
             q=BAD_Q)),
    "percentile_mask": (
        dict(values=jnp.arange(3.0), q=50.0, keep="low"),
        dict(values=_bad_array((3,), also=(np.zeros(0, np.float32), (1.0,))),
             q=BAD_Q, keep=_bad_choice(("low", "high")))),
    "confidence_masks": (
        dict(logits=_L23, q=50.0, keep="high"),
        dict(logits=_bad_array((2, 3), also=(jnp.zeros((0, 3)),
                                             jnp.zeros((2, 0)))),
             q=BAD_Q, keep=_bad_choice(("low", "high")))),
    "kd_loss": (
        dict(student_logits=_L23, teacher_logits=_L23[::-1], temperature=2.0,
             mask=None),
        dict(student_logits=_bad_array((2, 3), also=(jnp.zeros((2, 4)),
                                                     jnp.zeros((0, 3)))),
             teacher_logits=_bad_array((2, 3), also=(jnp.zeros((3, 3)),)),
             temperature=BAD_POSITIVE,
             mask=_arrays_of_rank_but(1) | st.just(jnp.ones(3)))),
    "class_correlation_loss": (
        dict(student_logits=_L23, teacher_logits=_L23 * 2, temperature=1.0,
             class_mask=None),
        dict(student_logits=_bad_array((2, 3), also=(jnp.zeros((2, 0)),)),
             teacher_logits=_bad_array((2, 3)),
             temperature=BAD_POSITIVE,
             class_mask=_arrays_of_rank_but(1) | st.just(jnp.ones(2)))),
    "batch_correlation_loss": (
        dict(student_logits=_L23, teacher_logits=_L23 * 2, temperature=1.0,
             mask=None),
        dict(student_logits=_bad_array((2, 3)),
             teacher_logits=_bad_array((2, 3), also=(jnp.zeros((2, 2)),)),
             temperature=BAD_POSITIVE,
             mask=_arrays_of_rank_but(1) | st.just(jnp.ones(3)))),
    # Array arguments of mlkd_loss:
    # `test_fixed_mlkd_loss_errors_name_kd_loss_arguments`.
    "mlkd_loss": (
        dict(student_weak=_L23, student_strong=_L23, teacher_weak=_L23 * 2,
             teacher_strong=_L23 * 2, temperature=4.0, mode="faithful", q=50.0),
        dict(temperature=BAD_POSITIVE, mode=_bad_choice(("faithful", "masked")),
             q=BAD_Q)),
    "sigmoid_ce_loss": (
        dict(logits=_L23, labels=jnp.ones((2, 3)), num_masks=2.0),
        dict(logits=_bad_array((2, 3), also=(jnp.zeros((3, 3)),)),
             labels=_bad_array((2, 3), floating=False) | BAD_LABELS,
             num_masks=BAD_POSITIVE)),
    "dice_loss": (
        dict(logits=_L23, labels=jnp.ones((2, 3)), num_masks=2.0),
        dict(logits=_bad_array((2, 3)),
             labels=_bad_array((2, 3), floating=False,
                               also=(jnp.ones((2, 4)),)) | BAD_LABELS,
             num_masks=BAD_POSITIVE)),
    "pairwise_sigmoid_ce_loss": (
        dict(logits=_L23, labels=jnp.ones((4, 3))),
        dict(logits=_bad_array((2, 3)),
             labels=_bad_array((4, 3), floating=False,
                               also=(jnp.ones((4, 2)),)) | BAD_LABELS)),
    "pairwise_dice_loss": (
        dict(logits=_L23, labels=jnp.ones((4, 3))),
        dict(logits=_bad_array((2, 3)),
             labels=_bad_array((4, 3), floating=False) | BAD_LABELS)),
    "num_masks_normalizer": (
        dict(num_local_masks=3),
        dict(num_local_masks=st.sampled_from((
            "3", None, True, np.bool_(False), [1, 2], jnp.ones(2), 1j,
            np.ones((1,)), jnp.ones((), jnp.bool_), b"3")))),
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
    "point_mask_losses": (
        dict(key=KEY, pred_masks=_MAPS[:, 0], target_masks=jnp.ones((2, 4, 3)),
             num_masks=2.0, num_points=5, implementation="xla_cpu"),
        dict(key=BAD_KEY,
             pred_masks=_bad_array((2, 3, 4), also=(jnp.zeros((3, 3, 4)),)),
             target_masks=_bad_array((2, 4, 4), floating=False) | BAD_TARGETS,
             num_masks=BAD_POSITIVE, num_points=_bad_int(1),
             oversample_ratio=BAD_OVERSAMPLE,
             importance_sample_ratio=BAD_IMPORTANCE,
             implementation=_impl_bad())),
    "mask_matching_cost": (
        dict(class_logits=_CLS[0, 0], mask_logits=_MASKS[0, 0],
             target_labels=jnp.array([0, 1]), target_masks=jnp.ones((2, 4, 4)),
             point_coords=_PTS[0]),
        dict(class_logits=_bad_array((3, 3), also=(jnp.zeros((4, 3)),
                                                   jnp.zeros((3, 1)))),
             mask_logits=_bad_array((3, 3, 4), also=(jnp.zeros((2, 3, 4)),)),
             target_labels=st.sampled_from((
                 jnp.array([0, 2]), jnp.array([-1, 0]), jnp.array([0.0, 1.0]),
                 jnp.zeros((2, 1), jnp.int32), jnp.zeros(3, jnp.int32),
                 jnp.zeros(4, jnp.int32), None, "0")),
             target_masks=_bad_array((2, 4, 4), floating=False) | BAD_TARGETS,
             point_coords=_bad_array((6, 2), also=(jnp.zeros((6, 3)),
                                                   jnp.zeros((0, 2)))),
             cost_class=BAD_WEIGHT, cost_mask=BAD_WEIGHT, cost_dice=BAD_WEIGHT)),
    "hungarian_match": (
        dict(cost=_L23.T, target_valid=jnp.array([True, False])),
        dict(cost=_bad_array((3, 2), also=(jnp.zeros((2, 3)),)),
             target_valid=st.sampled_from((
                 jnp.ones(2, jnp.int32), jnp.ones(3, bool), jnp.ones((2, 1), bool),
                 "all", 1.0)))),
    "mask2former_loss": (
        dict(key=KEY, class_logits=_CLS, mask_logits=_MASKS,
             target_labels=jnp.array([[0, 1]]),
             target_masks=jnp.ones((1, 2, 4, 4)),
             target_valid=jnp.array([[True, False]]), num_points=4),
        dict(key=BAD_KEY,
             class_logits=_bad_array((2, 1, 3, 3), also=(
                 jnp.zeros((2, 1, 3, 1)), jnp.zeros((2, 1, 1, 3)),
                 jnp.zeros((0, 1, 3, 3)))),
             mask_logits=_bad_array((2, 1, 3, 3, 4), also=(
                 jnp.zeros((1, 1, 3, 3, 4)), jnp.zeros((2, 2, 3, 3, 4)))),
             target_labels=st.sampled_from((
                 jnp.array([[0, 2]]), jnp.array([[-1, 0]]), jnp.array([[0.0, 1.0]]),
                 jnp.zeros((1, 3), jnp.int32), jnp.zeros(2, jnp.int32))),
             target_masks=st.sampled_from((
                 jnp.full((1, 2, 4, 4), 2.0), jnp.ones((1, 3, 4, 4)),
                 jnp.ones((2, 4, 4)), jnp.ones((1, 2, 4, 4), jnp.complex64))),
             target_valid=st.sampled_from((
                 jnp.ones((1, 2), jnp.int32), jnp.ones((1, 3), bool),
                 jnp.ones(2, bool), None)),
             class_weight=BAD_WEIGHT, mask_weight=BAD_WEIGHT,
             dice_weight=BAD_WEIGHT, no_object_weight=BAD_WEIGHT,
             cost_class=BAD_WEIGHT,
             # None is valid for both (full-mask losses; the default points).
             num_points=_bad_int(1).filter(lambda v: v is not None),
             oversample_ratio=BAD_OVERSAMPLE,
             importance_sample_ratio=BAD_IMPORTANCE,
             num_matcher_points=_bad_int(1).filter(lambda v: v is not None),
             implementation=_impl_bad())),
    "fixmatch": (dict(p_cutoff=0.95), dict(p_cutoff=BAD_P_CUTOFF)),
    "percentile_threshold": (
        dict(q=20.0, keep="high"),
        dict(q=BAD_Q, keep=_bad_choice(("low", "high")))),
    "flexmatch": (
        dict(num_classes=_TC, num_unlabelled=_TN, p_cutoff=0.6, warmup=True,
             mapping="convex"),
        dict(num_classes=_BAD_NUM, num_unlabelled=_BAD_NUM,
             p_cutoff=BAD_P_CUTOFF, warmup=BAD_BOOL,
             mapping=_bad_choice(("convex", "linear", "concave"))
             | st.sampled_from(("Convex", "cubic", "convex ", np.array("linear"))))),
    "freematch": (
        dict(num_classes=_TC, momentum=0.5, use_quantile=False,
             clip_thresh=False),
        dict(num_classes=_BAD_NUM, momentum=BAD_MOMENTUM, use_quantile=BAD_BOOL,
             clip_thresh=BAD_BOOL)),
    "softmatch": (
        dict(num_classes=_TC, momentum=0.5, n_sigma=2.0, dist_align=True),
        dict(num_classes=_BAD_NUM, momentum=BAD_MOMENTUM, n_sigma=BAD_N_SIGMA,
             dist_align=BAD_BOOL)),
    "freematch_fairness_loss": (
        dict(strong_logits=_TLOGITS, mask=jnp.array([1.0, 0.0, 1.0, 1.0]),
             state=_FREE_STATE),
        dict(strong_logits=_bad_array((4, 3), also=(
                 jnp.zeros((0, 3)), jnp.zeros((4, 0)), jnp.zeros((4, 2)),
                 jnp.zeros((5, 3)), None, "logits")),
             mask=_arrays_of_rank_but(1) | st.sampled_from((
                 jnp.ones(3), jnp.ones(5, bool), None, "all", [[1.0] * 4])),
             state=st.sampled_from((
                 None, {}, (), tuple(_FREE_STATE), _FREE_STATE._asdict(),
                 jaxmask.softmatch(num_classes=_TC).init(),
                 jaxmask.flexmatch(num_classes=_TC, num_unlabelled=4).init(),
                 jaxmask.freematch(num_classes=2).init(),
                 _FREE_STATE._replace(time_p=jnp.zeros(1)),
                 _FREE_STATE._replace(label_hist=jnp.ones(4)))))),
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


# `update` of each threshold: its own arguments (state, probs, indices).
_UPDATE_PROBS = _probs_from(np.linspace(-2.0, 2.0, 4 * _TC).reshape(4, _TC))


def _bad_update_arguments(config):
  """{argument of update: strategy of bad values} for one threshold."""
  factory, _ = _THRESHOLD_CONFIGS[config]
  stateful = factory in ("flexmatch", "freematch", "softmatch")
  bad_probs = [_bad_array((4, _TC), also=(
      np.zeros((0, _TC), np.float32), np.zeros((4, 0), np.float32), None,
      "probs", [[0.5, 0.5], [1.0]], b"p"))]
  bad_indices = [
      _arrays_of_rank_but(1),  # float arrays of other ranks
      st.sampled_from((np.zeros(4, np.float32), jnp.zeros(4), np.ones(4, bool),
                       np.zeros(4, np.complex64), np.arange(3), np.arange(5),
                       jnp.zeros((4, 1), jnp.int32), np.int32(0), "0123",
                       [0.0, 1.0, 2.0, 3.0], [[0, 1, 2, 3]]))]
  bad = {}
  if stateful:  # the class count is fixed by num_classes
    bad_probs.append(st.sampled_from((
        np.full((4, _TC + 1), 0.25, np.float32), np.ones((4, 1), np.float32),
        jnp.full((1, 2 * _TC), 0.5 / _TC))))
    others = {"flexmatch": "freematch", "freematch": "softmatch",
              "softmatch": "flexmatch"}
    bad["state"] = st.sampled_from((
        None, {}, (), jaxmask.fixmatch().init(),
        _threshold(others[factory])[0].init(),
        tuple(_threshold(config)[0].init()),
        getattr(jaxmask, factory)(**{
            **_THRESHOLD_CONFIGS[config][1],
            "num_classes": _TC + 1}).init()))
  if factory == "flexmatch":  # required, in [0, num_unlabelled)
    bad_indices.append(st.sampled_from((
        None, np.array([0, 1, 2, _TN]), np.array([-1, 0, 1, 2]),
        jnp.array([0, 1, 2, 2**31 - 1]), np.array([0, 1, 2, 2**32 + 3]),
        np.array([0, 1, 2, 2**63], np.uint64), [0, 1, -2**32 + 3, 3])))
  bad["probs"] = st.one_of(bad_probs)
  bad["indices"] = st.one_of(bad_indices)
  return bad


_BAD_UPDATE_ARGUMENTS = {config: _bad_update_arguments(config)
                         for config in sorted(_THRESHOLD_CONFIGS)}


@pytest.mark.parametrize("config", sorted(_THRESHOLD_CONFIGS))
@_fuzz(30)
@given(data=st.data())
def test_hostile_update_argument_is_named(config, data):
  """One bad argument of `update` on a valid baseline: a ValueError or
  TypeError whose message names that argument of `update`."""
  t, _ = _threshold(config)
  bad = _BAD_UPDATE_ARGUMENTS[config]
  argument = data.draw(st.sampled_from(sorted(bad)), label="argument")
  value = data.draw(bad[argument], label="value")
  kwargs = dict(state=t.init(), probs=_UPDATE_PROBS, indices=np.arange(4))
  kwargs[argument] = value
  with pytest.raises((ValueError, TypeError)) as info:
    jax.block_until_ready(t.update(**kwargs))
  assert argument in inspect.signature(t.update).parameters
  assert re.search(rf"(?<![A-Za-z0-9_]){argument}(?![A-Za-z0-9_])",
                   str(info.value)), (argument, value, str(info.value))


@pytest.mark.parametrize("config", sorted(_THRESHOLD_CONFIGS))
def test_the_valid_update_baselines_return(config):
  t, _ = _threshold(config)
  out, _ = t.update(state=t.init(), probs=_UPDATE_PROBS, indices=np.arange(4))
  assert out.mask.shape == (4,)


# ---------------------------------------------------------------------------
# Traced values out of range: NaN, not an error (and not a wrong number).
# ---------------------------------------------------------------------------

_bad_positive_float = st.sampled_from((0.0, -0.0, -1.0, -3e38, -1e-30, NAN, INF,
                                       -INF))
_S, _T = _L23, _L23[::-1] * 3


def _traced_temperature(fn):
  return jax.jit(lambda T: fn(_S, _T, temperature=T))


# One compiled program per function, reused by every example.
_TRACED_TEMPERATURE = {
    name: _traced_temperature(getattr(jaxmask, name))
    for name in ("kd_loss", "class_correlation_loss", "batch_correlation_loss")}
_TRACED_LOSSES = {name: jax.jit(getattr(jaxmask, name)) for name in (
    "sigmoid_ce_loss", "dice_loss", "pairwise_sigmoid_ce_loss",
    "pairwise_dice_loss")}
_Q_VALUES = np.array([0.5, -2.0, 7.0, 0.5, 3.0], np.float32)
_TRACED_Q = {keep: jax.jit(lambda q, keep=keep: jaxmask.percentile_mask(
    _Q_VALUES, q=q, keep=keep)) for keep in ("low", "high")}


@_fuzz(30)
@given(temperature=_bad_positive_float | st.floats(0.25, 16, width=32),
       loss=st.sampled_from(sorted(_TRACED_TEMPERATURE)))
def test_traced_temperature(temperature, loss):
  fn = getattr(jaxmask, loss)
  traced = _TRACED_TEMPERATURE[loss](temperature)
  if math.isfinite(temperature) and temperature > 0:
    np.testing.assert_allclose(traced, fn(_S, _T, temperature=temperature),
                               rtol=1e-5, atol=1e-7)
    assert np.isfinite(traced)
  else:
    assert np.isnan(traced)
    _expect_named_error(fn, student_logits=_S, teacher_logits=_T,
                        temperature=temperature)


@_fuzz(30)
@given(num_masks=_bad_positive_float | st.floats(0.5, 8, width=32),
       label=st.sampled_from((0.0, 1.0, 0.3, -0.5, 2.0, 1.0001, -1e-30, NAN)))
def test_traced_num_masks_and_labels(num_masks, label):
  labels = jnp.full((2, 3), label)
  ok_nm = math.isfinite(num_masks) and num_masks > 0
  ok_labels = 0 <= label <= 1 or math.isnan(label)
  for name in ("sigmoid_ce_loss", "dice_loss"):
    fn = getattr(jaxmask, name)
    traced = _TRACED_LOSSES[name](_L23, labels, num_masks)
    if not (ok_nm and ok_labels):
      assert np.isnan(traced), (name, num_masks, label)
      _expect_named_error(fn, logits=_L23, labels=labels, num_masks=num_masks)
    elif not math.isnan(label):
      np.testing.assert_allclose(traced, fn(_L23, labels, num_masks),
                                 rtol=1e-5, atol=1e-7)
  for name in ("pairwise_sigmoid_ce_loss", "pairwise_dice_loss"):
    fn = getattr(jaxmask, name)
    traced = np.asarray(_TRACED_LOSSES[name](_L23, labels))
    if not ok_labels:
      assert np.isnan(traced).all(), name
      _expect_named_error(fn, logits=_L23, labels=labels)
    elif not math.isnan(label):
      np.testing.assert_allclose(traced, fn(_L23, labels), rtol=1e-5,
                                 atol=1e-7)


@_fuzz(30)
@given(q=st.sampled_from((-1.0, -1e-30, 100.5, 1e30, NAN, INF, -INF))
       | st.sampled_from(QS), keep=st.sampled_from(("low", "high")))
def test_traced_q(q, keep):
  mask, thr = _TRACED_Q[keep](q)
  if 0 <= q <= 100:
    assert _same(thr, np.percentile(_Q_VALUES, np.float32(q)))
    t = np.float32(thr)
    np.testing.assert_array_equal(
        mask, _Q_VALUES <= t if keep == "low" else _Q_VALUES >= t)
  else:
    assert np.isnan(thr) and not np.asarray(mask).any()
    _expect_named_error(jaxmask.percentile_mask, values=_Q_VALUES, q=q,
                        keep=keep)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_traced_num_masks_of_point_mask_losses(implementation):
  pred = jnp.linspace(-3, 3, 32).reshape(2, 4, 4)
  target = (pred > 0).astype(jnp.float32)
  fn = jax.jit(lambda nm: jaxmask.point_mask_losses(
      KEY, pred, target, nm, num_points=5, implementation=implementation))
  for bad in (0.0, -2.0, NAN, INF):
    assert all(np.isnan(v) for v in fn(bad)), bad
  assert all(np.isfinite(v) and v >= 0 for v in fn(2.0))


def test_traced_mlkd_temperature():
  views = [_L23, _L23 * 0.5, _L23[::-1], _L23 * 2]
  total = jax.jit(lambda T: jaxmask.mlkd_loss(*views, temperature=T).total)
  for bad in (0.0, -4.0, NAN, INF):
    assert np.isnan(total(bad)), bad
  np.testing.assert_allclose(total(4.0), jaxmask.mlkd_loss(*views).total,
                             rtol=1e-5)


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
# Bugs this file found, fixed since: one minimal reproducer each, kept as
# regressions (and two documented outcomes).
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
    "point_mask_losses": lambda: jaxmask.point_mask_losses(
        KEY, jnp.ones((1, 2, 2)), jnp.ones((1, 0, 2)), 1.0, num_points=3,
        implementation="plain"),
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


@pytest.mark.parametrize("bad", [NAN, INF])
def test_fixed_kd_loss_of_nan_teacher_is_zero(bad):
  loss = jaxmask.kd_loss(jnp.zeros((1, 2)), jnp.array([[0.0, bad]]),
                         temperature=1.0)
  assert np.isnan(loss), float(loss)


@pytest.mark.parametrize("case", ["logits_over_T", "T_squared",
                                  "masked_inf_term"])
def test_documented_overflow_in_temperature_scaling_is_nan(case):
  if case == "logits_over_T":  # softmax of [6e38, -6e38] is [1, 0]: loss 0
    x = jnp.array([[3e38, -3e38]])
    loss = jaxmask.class_correlation_loss(x, x, temperature=0.5)
  elif case == "T_squared":  # (1e20)**2 overflows; the true loss is about 0.5
    loss = jaxmask.kd_loss(jnp.array([[1.0, 0.0]]), jnp.array([[0.0, 1.0]]),
                           temperature=1e20)
  else:  # the only sample is masked out (weight 0), its KL overflows to inf
    loss = jaxmask.kd_loss(jnp.array([[3e38, -3e38]]), jnp.zeros((1, 2)),
                           temperature=1.0, mask=jnp.array([False]))
  # Documented (kd_loss's Returns): where logits / T or T**2 overflows
  # float32 the loss is NaN, never a silently wrong number.
  assert np.isnan(loss)


_BIG_INT_CALLS = {
    "kd_loss": lambda: jaxmask.kd_loss(_L23, _L23, temperature=2**31),
    "sigmoid_ce_loss": lambda: jaxmask.sigmoid_ce_loss(_L23, jnp.ones((2, 3)),
                                                       2**31),
    "num_masks_normalizer": lambda: jaxmask.num_masks_normalizer(2**31),
    "point_mask_losses": lambda: jaxmask.point_mask_losses(
        KEY, _MAPS[:, 0], jnp.ones((2, 4, 4)), 2**31, num_points=3),
}


@pytest.mark.parametrize("name", sorted(_BIG_INT_CALLS))
def test_fixed_python_int_beyond_int32(name):
  try:
    jax.block_until_ready(_BIG_INT_CALLS[name]())
  except (ValueError, TypeError) as err:
    assert _names_a_parameter(getattr(jaxmask, name), err)


@pytest.mark.parametrize("x", [NAN, np.float32(NAN), jnp.float32(NAN)])
def test_fixed_num_masks_normalizer_of_nan(x):
  try:
    out = jaxmask.num_masks_normalizer(x)
  except ValueError as err:
    assert "num_local_masks" in str(err)
  else:
    assert out >= 1, out


@pytest.mark.parametrize("q", [jnp.float32(150.0), np.array(-5.0),
                               jnp.float32(NAN), np.complex64(50 + 1j)],
                         ids=["jax150", "numpy0d-5", "jaxnan", "complex"])
def test_fixed_concrete_array_q_is_not_checked(q):
  _expect_named_error(jaxmask.percentile, values=jnp.arange(3.0), q=q)


def test_fixed_sigmoid_ce_loss_over_zero_points():
  try:
    loss = jaxmask.sigmoid_ce_loss(jnp.zeros((2, 0)), jnp.zeros((2, 0)), 1.0)
  except ValueError as err:
    assert _names_a_parameter(jaxmask.sigmoid_ce_loss, err)
  else:
    assert np.isfinite(loss), loss


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


_MLKD_ARRAY_ERRORS = {
    "classes_differ": dict(student_weak=jnp.ones((2, 3)),
                           student_strong=jnp.ones((2, 3)),
                           teacher_weak=jnp.ones((2, 4)),
                           teacher_strong=jnp.ones((2, 4))),
    "views_differ": dict(student_weak=jnp.ones((2, 3)),
                         student_strong=jnp.ones((1, 3)),
                         teacher_weak=jnp.ones((2, 3)),
                         teacher_strong=jnp.ones((1, 3))),
    "integer_teacher": dict(student_weak=jnp.ones((2, 3)),
                            student_strong=jnp.ones((2, 3)),
                            teacher_weak=jnp.ones((2, 3)),
                            teacher_strong=jnp.ones((2, 3), jnp.int32)),
    "empty_batch": dict(student_weak=jnp.ones((0, 3)),
                        student_strong=jnp.ones((0, 3)),
                        teacher_weak=jnp.ones((0, 3)),
                        teacher_strong=jnp.ones((0, 3))),
}


@pytest.mark.parametrize("case", sorted(_MLKD_ARRAY_ERRORS))
def test_fixed_mlkd_loss_errors_name_kd_loss_arguments(case):
  _expect_named_error(jaxmask.mlkd_loss, **_MLKD_ARRAY_ERRORS[case])


# Array arguments that take a string or None: which name the argument.
_NON_ARRAYS = {
    "percentile": ("values", dict(q=50.0)),
    "percentile_mask": ("values", dict()),
    "confidence_masks": ("logits", dict()),
    "kd_loss": ("student_logits", dict(teacher_logits=_L23, temperature=1.0)),
    "class_correlation_loss": ("teacher_logits", dict(student_logits=_L23,
                                                      temperature=1.0)),
    "batch_correlation_loss": ("student_logits", dict(teacher_logits=_L23,
                                                      temperature=1.0)),
    "mlkd_loss": ("teacher_weak", dict(student_weak=_L23, student_strong=_L23,
                                       teacher_strong=_L23)),
    "sigmoid_ce_loss": ("labels", dict(logits=_L23, num_masks=1.0)),
    "dice_loss": ("logits", dict(labels=jnp.ones((2, 3)), num_masks=1.0)),
    "pairwise_sigmoid_ce_loss": ("logits", dict(labels=jnp.ones((2, 3)))),
    "pairwise_dice_loss": ("labels", dict(logits=_L23)),
    "calculate_uncertainty": ("logits", dict()),
    "top_k_indices": ("scores", dict(k=1)),
    "point_sample": ("inputs", dict(point_coords=_PTS)),
    "point_sample_single": ("point_coords", dict(inputs=_MAPS[0])),
    "select_uncertain_points": ("candidates", dict(logits=_MAPS,
                                                   num_uncertain=1)),
    "sample_points_using_uncertainty": ("logits", dict(key=KEY, num_points=2)),
    "uncertain_point_coords_on_grid": ("uncertainty_map", dict(num_points=2)),
    "point_mask_losses": ("target_masks", dict(
        key=KEY, pred_masks=_MAPS[:, 0], num_masks=1.0, num_points=2)),
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
    "keep": lambda v: jaxmask.percentile_mask(jnp.ones(3), keep=v),
    "mode": lambda v: jaxmask.mlkd_loss(_L23, _L23, _L23, _L23, mode=v),
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


@pytest.mark.parametrize("indices", [
    np.array([0, 1, 2, 2**32 + 3], np.int64),  # wrapped to [0, 1, 2, 3]
    np.array([0, 1, 2, -2**32 + 3], np.int64),
    np.array([0, 1, 2, 2**63], np.uint64)])
def test_fixed_flexmatch_indices_beyond_int32_are_out_of_range(indices):
  """int64 indices were range-checked after their int32 conversion had
  wrapped them into range: sample 2**32 + 3 silently wrote sample 3."""
  t, _ = _threshold("flexmatch")
  with pytest.raises(ValueError, match=r"\bindices\b"):
    t.update(t.init(), _UPDATE_PROBS, indices=indices)
  out, state = t.update(t.init(), _UPDATE_PROBS,
                        indices=np.arange(4, dtype=indices.dtype))
  want_out, want_state = t.update(t.init(), _UPDATE_PROBS,
                                  indices=np.arange(4, dtype=np.int32))
  _assert_same_tree((out, state), (want_out, want_state))


@pytest.mark.parametrize("n_sigma", [1e200, 1.5e154, 1e30])
def test_fixed_softmatch_huge_n_sigma(n_sigma):
  """`n_sigma**2` raised OverflowError (a Python float past 1.8e308): a huge
  n_sigma now gives the limit, weight 1 at or above mu and 0 below."""
  t = jaxmask.softmatch(num_classes=2, momentum=0.5, n_sigma=n_sigma,
                        dist_align=False)
  probs = np.array([[0.9, 0.1], [0.5, 0.5], [0.7, 0.3]], np.float32)
  out, state = t.update(t.init(), probs)
  np.testing.assert_array_equal(out.mask, [1.0, 0.0, 1.0])  # mu = 0.6
  np.testing.assert_allclose(state.mu, 0.6, rtol=1e-6)
