"""Fuzzing `percentile`, `percentile_mask` and `confidence_masks`: a named error or the contract.

The rule (tests/_strategies.py, from `jaxmask/_src/checks.py`): every call
made here either (a) raises `ValueError` or `TypeError` whose message names
one of the function's own parameters, or (b) returns a result that keeps the
function's documented contract: the shapes and dtypes of its docstring, and
value properties that hold whatever the data (below). Anything else is a
library bug.

Oracles: `np.percentile` and a float64 softmax; nothing is copied from the
implementation.

* `percentile`, `percentile_mask`: the threshold equals `np.percentile` bit for
  bit (Python `q`; `np.float32(q)` for an array `q`) where no subnormal enters
  the arithmetic (XLA:CPU flushes them, see test_percentile_properties.py);
  the mask is exactly `values <= thr` (keep="low") or `>=` ("high"); NaN
  anywhere gives a NaN threshold and an all-False mask; Python lists are
  refused with a TypeError naming `values` (documented: an array).
* `confidence_masks` (`ConfidenceMasks`): field shapes and dtypes; rows of
  `probs` sum to 1 for finite logits; `confidence`/`pseudo_labels` are the
  row max/argmax; `class_confidence` the column sums; thresholds as above and
  masks exactly `<=`/`>=` them; a NaN or +inf logit gives NaN thresholds and
  all-False masks.

Hostile arguments (one bad argument at a time on a valid baseline) must
raise (a). A traced `q` out of range gives NaN (`test_traced_q`) and the same
concrete value raises (a). The bugs the fuzzing found are fixed; each keeps
its minimal reproducer as a regression test at the end.

`COVERED` names the test that fuzzes each of these public names, `HOSTILE`
the bad values of each function's arguments;
tests/test_api.py::test_every_public_name_is_fuzzed checks that every public
name of jaxmask has both across the concept folders. Settings: `_fuzz`,
derandomized with no example database, so CI runs the same examples every
time.
"""

import math
import re

from hypothesis import given
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmask
from _strategies import BAD_Q
from _strategies import INF
from _strategies import NAN
from _strategies import QS
from _strategies import _L23
from _strategies import _as
from _strategies import _bad_array
from _strategies import _bad_choice
from _strategies import _containers
from _strategies import _dtypes
from _strategies import _expect_named_error
from _strategies import _floats
from _strategies import _fuzz
from _strategies import _logit_shapes
from _strategies import _no_tiny
from _strategies import _np32

# NumPy oracles meet inf - inf and overflow on purpose; casts to float16
# overflow; complex q warns when cast.
pytestmark = pytest.mark.filterwarnings(
    "ignore:invalid value encountered:RuntimeWarning",
    "ignore:overflow encountered:RuntimeWarning",
    "ignore:divide by zero encountered:RuntimeWarning",
    "ignore::numpy.exceptions.ComplexWarning")


def _same(got, want) -> bool:
  """Equal, or both NaN (the sign of a zero is not compared)."""
  got, want = float(got), float(want)
  return got == want or (math.isnan(got) and math.isnan(want))


# Public name -> the test in this file that fuzzes it. tests/test_api.py
# (`test_every_public_name_is_fuzzed`) collects these from every
# tests/<concept>/test_<concept>_fuzz.py: each public name must have one.
COVERED = {
    "ConfidenceMasks": "test_confidence_masks_contract",
    "confidence_masks": "test_confidence_masks_contract",
    "percentile": "test_percentile_and_mask_follow_numpy",
    "percentile_mask": "test_percentile_and_mask_follow_numpy",
}


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
# (a) Hostile arguments: a ValueError or TypeError naming an argument.
# ---------------------------------------------------------------------------

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

_Q_VALUES = np.array([0.5, -2.0, 7.0, 0.5, 3.0], np.float32)
_TRACED_Q = {keep: jax.jit(lambda q, keep=keep: jaxmask.percentile_mask(
    _Q_VALUES, q=q, keep=keep)) for keep in ("low", "high")}


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


# ---------------------------------------------------------------------------
# Bugs the fuzzing found, fixed since: one minimal reproducer each, kept
# as regressions (and documented outcomes).
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("q", [jnp.float32(150.0), np.array(-5.0),
                               jnp.float32(NAN), np.complex64(50 + 1j)],
                         ids=["jax150", "numpy0d-5", "jaxnan", "complex"])
def test_fixed_concrete_array_q_is_not_checked(q):
  _expect_named_error(jaxmask.percentile, values=jnp.arange(3.0), q=q)


# Array arguments that take a string or None: which name the argument.
_NON_ARRAYS = {
    "percentile": ("values", dict(q=50.0)),
    "percentile_mask": ("values", dict()),
    "confidence_masks": ("logits", dict()),
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
}


@pytest.mark.parametrize("option", sorted(_ARRAY_OPTIONS))
def test_fixed_string_option_as_numpy_array(option):
  with pytest.raises(ValueError, match=option):
    _ARRAY_OPTIONS[option](np.array(["low", "high"]))
