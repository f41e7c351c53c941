"""Fuzzing the adaptive SSL thresholds: a named error or the contract.

The rule (tests/_strategies.py, from `jaxmask/_src/checks.py`): every call
made here either (a) raises `ValueError` or `TypeError` whose message names
one of the function's own parameters, or (b) returns a result that keeps the
function's documented contract: the shapes and dtypes of its docstring, and
value properties that hold whatever the data (below). Anything else is a
library bug.

Oracles: float64 re-computations of each method's documented update from the
previous state, `percentile_mask`, and a float64 oracle of the fairness
loss's formula; nothing is copied from the implementation.

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

Hostile arguments (one bad argument at a time on a valid baseline, of the
factories and of `update`) must raise (a). The bugs the fuzzing found are
fixed; each keeps its minimal reproducer as a regression test at the end.

`COVERED` names the test that fuzzes each of these public names, `HOSTILE`
the bad values of each function's arguments;
tests/test_api.py::test_every_public_name_is_fuzzed checks that every public
name of jaxmask has both across the concept folders. Settings: `_fuzz`,
derandomized with no example database, so CI runs the same examples every
time.
"""

import inspect
import re

from hypothesis import assume
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
from _strategies import _arrays_of_rank_but
from _strategies import _as
from _strategies import _bad_array
from _strategies import _bad_choice
from _strategies import _bad_int
from _strategies import _dtypes
from _strategies import _expect_named_error
from _strategies import _floats
from _strategies import _fuzz
from _strategies import _no_tiny
from _strategies import _np32
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
    "ConfidenceThreshold": "test_threshold_update_contract",
    "FlexMatchState": "test_threshold_update_contract",
    "FreeMatchState": "test_threshold_update_contract",
    "SoftMatchState": "test_threshold_update_contract",
    "ThresholdOutput": "test_threshold_update_contract",
    "fixmatch": "test_threshold_update_contract",
    "flexmatch": "test_threshold_update_contract",
    "freematch": "test_threshold_update_contract",
    "freematch_fairness_loss": "test_freematch_fairness_loss_contract",
    "percentile_threshold": "test_percentile_threshold_is_the_confidence_masks_mask",
    "softmatch": "test_threshold_update_contract",
}


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
    out, new = t.update(p_arg, state, indices=indices)
    if factory == "flexmatch":
      jit_out, jit_new = jitted(p_arg, state, indices=indices)
    else:  # no indices: the same result
      jit_out, jit_new = jitted(p_arg, state)
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
  out, state = t.update(masks.probs, t.init())
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
    _, state = jitted(_probs_from(data.draw(_floats((b, _TC),
                                                           huge=False))), state)
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
# Bugs the fuzzing found, fixed since: one minimal reproducer each, kept
# as regressions (and documented outcomes).
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("indices", [
    np.array([0, 1, 2, 2**32 + 3], np.int64),  # wrapped to [0, 1, 2, 3]
    np.array([0, 1, 2, -2**32 + 3], np.int64),
    np.array([0, 1, 2, 2**63], np.uint64)])
def test_fixed_flexmatch_indices_beyond_int32_are_out_of_range(indices):
  """int64 indices were range-checked after their int32 conversion had
  wrapped them into range: sample 2**32 + 3 silently wrote sample 3."""
  t, _ = _threshold("flexmatch")
  with pytest.raises(ValueError, match=r"\bindices\b"):
    t.update(_UPDATE_PROBS, t.init(), indices=indices)
  out, state = t.update(_UPDATE_PROBS, t.init(),
                        indices=np.arange(4, dtype=indices.dtype))
  want_out, want_state = t.update(_UPDATE_PROBS, t.init(),
                                  indices=np.arange(4, dtype=np.int32))
  _assert_same_tree((out, state), (want_out, want_state))


@pytest.mark.parametrize("n_sigma", [1e200, 1.5e154, 1e30])
def test_fixed_softmatch_huge_n_sigma(n_sigma):
  """`n_sigma**2` raised OverflowError (a Python float past 1.8e308): a huge
  n_sigma now gives the limit, weight 1 at or above mu and 0 below."""
  t = jaxmask.softmatch(num_classes=2, momentum=0.5, n_sigma=n_sigma,
                        dist_align=False)
  probs = np.array([[0.9, 0.1], [0.5, 0.5], [0.7, 0.3]], np.float32)
  out, state = t.update(probs, t.init())
  np.testing.assert_array_equal(out.mask, [1.0, 0.0, 1.0])  # mu = 0.6
  np.testing.assert_allclose(state.mu, 0.6, rtol=1e-6)
