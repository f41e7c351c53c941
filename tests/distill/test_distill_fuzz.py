"""Fuzzing the distillation losses and `mlkd_loss`: a named error or the contract.

The rule (tests/_strategies.py, from `jaxmask/_src/checks.py`): every call
made here either (a) raises `ValueError` or `TypeError` whose message names
one of the function's own parameters, or (b) returns a result that keeps the
function's documented contract: the shapes and dtypes of its docstring, and
value properties that hold whatever the data (below). Anything else is a
library bug.

Oracles: float64 NumPy re-computations of the documented formulas, and the
documented sums of the public losses; nothing is copied from the
implementation.

* `kd_loss`, `class_correlation_loss`, `batch_correlation_loss`: float32
  scalars, never NaN and `>= 0` for finite inputs (kd down to -1e-6, times
  `T**2 * max(1, max|logit| / T)` where the float32 rounding of the KL sum is
  scaled up), finite where the true value fits float32, equal to a float64
  NumPy oracle on moderate inputs; logits as JAX/NumPy arrays or lists.
* `mlkd_loss` (`MLKDLoss`): masks are `confidence_masks(teacher_weak,
  keep="low")`'s, the three terms are the documented sums of the three losses
  (both modes), `.total == kd + cc + bc`.

Hostile arguments (one bad argument at a time on a valid baseline) must
raise (a). A traced temperature out of range gives NaN, and the same concrete
value raises (a). The bugs the fuzzing found are fixed; each keeps its
minimal reproducer as a regression test at the end, and one outcome is
documented rather than rejected
(`test_documented_overflow_in_temperature_scaling_is_nan`: float32 overflow
of logits / T or of T**2 gives NaN).

`COVERED` names the test that fuzzes each of these public names, `HOSTILE`
the bad values of each function's arguments;
tests/test_api.py::test_every_public_name_is_fuzzed checks that every public
name of jaxmask has both across the concept folders. Settings: `_fuzz`,
derandomized with no example database, so CI runs the same examples every
time.
"""

import math
import re

from hypothesis import assume
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmask
from _strategies import BAD_POSITIVE
from _strategies import BAD_Q
from _strategies import INF
from _strategies import NAN
from _strategies import QS
from _strategies import _L23
from _strategies import _arrays_of_rank_but
from _strategies import _as
from _strategies import _bad_array
from _strategies import _bad_choice
from _strategies import _bad_positive_float
from _strategies import _containers
from _strategies import _dtypes
from _strategies import _expect_named_error
from _strategies import _floats
from _strategies import _fuzz
from _strategies import _logit_shapes
from _strategies import _names_a_parameter
from _strategies import _np32
from _strategies import _np64
from _strategies import _softmax64
from _strategies import _unit

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
    "MLKDLoss": "test_mlkd_loss_contract",
    "batch_correlation_loss": "test_distillation_losses_contract",
    "class_correlation_loss": "test_distillation_losses_contract",
    "kd_loss": "test_distillation_losses_contract",
    "mlkd_loss": "test_mlkd_loss_contract",
}


# ---------------------------------------------------------------------------
# (b) Distillation losses.
# ---------------------------------------------------------------------------

TEMPERATURES = (1e-3, 0.25, 0.5, 1.0, 2.0, 4.0, 16.0, 1e3, 1e18)


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
# (a) Hostile arguments: a ValueError or TypeError naming an argument.
# ---------------------------------------------------------------------------

# Function -> (valid keyword arguments, {argument: strategy of bad values}).
HOSTILE = {
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
# Traced values out of range: NaN, not an error (and not a wrong number).
# ---------------------------------------------------------------------------

_S, _T = _L23, _L23[::-1] * 3


def _traced_temperature(fn):
  return jax.jit(lambda T: fn(_S, _T, temperature=T))


# One compiled program per function, reused by every example.
_TRACED_TEMPERATURE = {
    name: _traced_temperature(getattr(jaxmask, name))
    for name in ("kd_loss", "class_correlation_loss", "batch_correlation_loss")}


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


def test_traced_mlkd_temperature():
  views = [_L23, _L23 * 0.5, _L23[::-1], _L23 * 2]
  total = jax.jit(lambda T: jaxmask.mlkd_loss(*views, temperature=T).total)
  for bad in (0.0, -4.0, NAN, INF):
    assert np.isnan(total(bad)), bad
  np.testing.assert_allclose(total(4.0), jaxmask.mlkd_loss(*views).total,
                             rtol=1e-5)


# ---------------------------------------------------------------------------
# Bugs the fuzzing found, fixed since: one minimal reproducer each, kept
# as regressions (and documented outcomes).
# ---------------------------------------------------------------------------


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
}


@pytest.mark.parametrize("name", sorted(_BIG_INT_CALLS))
def test_fixed_python_int_beyond_int32(name):
  try:
    jax.block_until_ready(_BIG_INT_CALLS[name]())
  except (ValueError, TypeError) as err:
    assert _names_a_parameter(getattr(jaxmask, name), err)


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
    "kd_loss": ("student_logits", dict(teacher_logits=_L23, temperature=1.0)),
    "class_correlation_loss": ("teacher_logits", dict(student_logits=_L23,
                                                      temperature=1.0)),
    "batch_correlation_loss": ("student_logits", dict(teacher_logits=_L23,
                                                      temperature=1.0)),
    "mlkd_loss": ("teacher_weak", dict(student_weak=_L23, student_strong=_L23,
                                       teacher_strong=_L23)),
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
    "mode": lambda v: jaxmask.mlkd_loss(_L23, _L23, _L23, _L23, mode=v),
}


@pytest.mark.parametrize("option", sorted(_ARRAY_OPTIONS))
def test_fixed_string_option_as_numpy_array(option):
  with pytest.raises(ValueError, match=option):
    _ARRAY_OPTIONS[option](np.array(["low", "high"]))
