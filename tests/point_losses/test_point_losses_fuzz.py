"""Fuzzing the point losses and `point_mask_losses`: a named error or the contract.

The rule (tests/_strategies.py, from `jaxmask/_src/checks.py`): every call
made here either (a) raises `ValueError` or `TypeError` whose message names
one of the function's own parameters, or (b) returns a result that keeps the
function's documented contract: the shapes and dtypes of its docstring, and
value properties that hold whatever the data (below). Anything else is a
library bug.

Oracles: float64 NumPy re-computations of the documented formulas, and the
documented composition of public functions; nothing is copied from the
implementation.

* `sigmoid_ce_loss`, `dice_loss`, `pairwise_sigmoid_ce_loss`,
  `pairwise_dice_loss`: shapes, float32, finite and `>= 0` for finite logits and
  labels in [0, 1] (bool and integer labels too), equal to NumPy oracles on
  moderate inputs; zero masks give 0.
* `num_masks_normalizer`: float32 scalar `max(x, 1)`, so `>= 1`.
* `point_mask_losses` (`PointMaskLosses`): two float32 scalars, finite and
  `>= 0`, equal to the documented composition of
  `sample_points_using_uncertainty`, `point_sample`, `sigmoid_ce_loss` and
  `dice_loss`; zero masks give (0, 0). Both implementations of the sampling.

Hostile arguments (one bad argument at a time on a valid baseline; also
labels outside [0, 1]) must raise (a). Traced `num_masks` and labels out of
range give NaN, and the same concrete values raise (a). The bugs the fuzzing
found are fixed; each keeps its minimal reproducer as a regression test at
the end.

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
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmask
from _strategies import BAD_IMPORTANCE
from _strategies import BAD_KEY
from _strategies import BAD_OVERSAMPLE
from _strategies import BAD_POSITIVE
from _strategies import BAD_TARGETS
from _strategies import IMPLEMENTATIONS
from _strategies import INF
from _strategies import KEY
from _strategies import NAN
from _strategies import _L23
from _strategies import _MAPS
from _strategies import _as
from _strategies import _bad_array
from _strategies import _bad_int
from _strategies import _bad_positive_float
from _strategies import _expect_named_error
from _strategies import _floats
from _strategies import _fuzz
from _strategies import _impl_bad
from _strategies import _names_a_parameter
from _strategies import _np32
from _strategies import _np64
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
    "PointMaskLosses": "test_point_mask_losses_contract",
    "dice_loss": "test_point_losses_contract",
    "num_masks_normalizer": "test_num_masks_normalizer_contract",
    "pairwise_dice_loss": "test_point_losses_contract",
    "pairwise_sigmoid_ce_loss": "test_point_losses_contract",
    "point_mask_losses": "test_point_mask_losses_contract",
    "sigmoid_ce_loss": "test_point_losses_contract",
}


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


# (N, H, W, target H, target W, num_points, oversample, importance, pred
# dtype, target dtypes); the float32 case shares its sampling program with
# SAMPLE_CASES of test_sampling_fuzz.py; bool and integer targets are cast
# before the compiled core.
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
# (a) Hostile arguments: a ValueError or TypeError naming an argument.
# ---------------------------------------------------------------------------

BAD_LABELS = st.sampled_from((2.0, -0.5, 255.0, 1.0001, -1e-30, 3e38, -INF,
                              INF)).map(lambda v: np.full((2, 3), v, np.float32))


# Function -> (valid keyword arguments, {argument: strategy of bad values}).
HOSTILE = {
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

_TRACED_LOSSES = {name: jax.jit(getattr(jaxmask, name)) for name in (
    "sigmoid_ce_loss", "dice_loss", "pairwise_sigmoid_ce_loss",
    "pairwise_dice_loss")}


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


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_traced_num_masks_of_point_mask_losses(implementation):
  pred = jnp.linspace(-3, 3, 32).reshape(2, 4, 4)
  target = (pred > 0).astype(jnp.float32)
  fn = jax.jit(lambda nm: jaxmask.point_mask_losses(
      KEY, pred, target, nm, num_points=5, implementation=implementation))
  for bad in (0.0, -2.0, NAN, INF):
    assert all(np.isnan(v) for v in fn(bad)), bad
  assert all(np.isfinite(v) and v >= 0 for v in fn(2.0))


# ---------------------------------------------------------------------------
# Bugs the fuzzing found, fixed since: one minimal reproducer each, kept
# as regressions (and documented outcomes).
# ---------------------------------------------------------------------------

_EMPTY_MAP_CALLS = {
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


_BIG_INT_CALLS = {
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


def test_fixed_sigmoid_ce_loss_over_zero_points():
  try:
    loss = jaxmask.sigmoid_ce_loss(jnp.zeros((2, 0)), jnp.zeros((2, 0)), 1.0)
  except ValueError as err:
    assert _names_a_parameter(jaxmask.sigmoid_ce_loss, err)
  else:
    assert np.isfinite(loss), loss


# Array arguments that take a string or None: which name the argument.
_NON_ARRAYS = {
    "sigmoid_ce_loss": ("labels", dict(logits=_L23, num_masks=1.0)),
    "dice_loss": ("logits", dict(labels=jnp.ones((2, 3)), num_masks=1.0)),
    "pairwise_sigmoid_ce_loss": ("logits", dict(labels=jnp.ones((2, 3)))),
    "pairwise_dice_loss": ("labels", dict(logits=_L23)),
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
