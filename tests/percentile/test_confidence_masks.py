"""`confidence_masks`: semantics, edge cases, transformations, bad input."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmask
import _rules


def _logits(batch, classes, seed=0, scale=2.0):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(batch, classes)) * scale).astype(np.float32)


def _numpy_masks(logits, q=50.0, keep="low"):
  """MLKD's computation in NumPy, from scratch (an independent oracle)."""
  e = np.exp(logits - logits.max(axis=1, keepdims=True))
  probs = e / e.sum(axis=1, keepdims=True)
  conf = probs.max(axis=1)
  class_conf = probs.sum(axis=0)
  op = np.less_equal if keep == "low" else np.greater_equal
  thr, cthr = np.percentile(conf, q), np.percentile(class_conf, q)
  return conf, op(conf, thr), class_conf, op(class_conf, cthr), thr, cthr


def _assert_masks_match_numpy(out, logits, q=50.0, keep="low"):
  """Exact on jaxmask's own values; against NumPy's, the rule of `_rules.py`."""
  conf, mask, class_conf, class_mask, thr, cthr = _numpy_masks(logits, q, keep)
  op = np.less_equal if keep == "low" else np.greater_equal
  np.testing.assert_array_equal(
      out.threshold, np.percentile(np.asarray(out.confidence), q))
  np.testing.assert_array_equal(
      out.class_threshold, np.percentile(np.asarray(out.class_confidence), q))
  np.testing.assert_array_equal(out.mask, op(out.confidence, out.threshold))
  np.testing.assert_array_equal(
      out.class_mask, op(out.class_confidence, out.class_threshold))
  for got, want, values, thr_got, thr_want in (
      (out.mask, mask, (out.confidence, conf), out.threshold, thr),
      (out.class_mask, class_mask, (out.class_confidence, class_conf),
       out.class_threshold, cthr)):
    _rules.assert_equal_except_ties(
        got, want, got_values=values[0], want_values=values[1],
        got_threshold=thr_got, want_threshold=thr_want,
        tol=_rules.ulps(thr_want))


def test_fields_shapes_and_dtypes(variant):
  out = variant(jaxmask.confidence_masks)(_logits(6, 4))
  assert out._fields == ("probs", "confidence", "pseudo_labels", "threshold",
                         "mask", "class_confidence", "class_threshold",
                         "class_mask")
  assert out.probs.shape == (6, 4) and out.probs.dtype == jnp.float32
  assert out.confidence.shape == out.pseudo_labels.shape == out.mask.shape == (6,)
  assert out.class_confidence.shape == out.class_mask.shape == (4,)
  assert out.threshold.shape == out.class_threshold.shape == ()
  assert out.mask.dtype == out.class_mask.dtype == jnp.bool_
  assert out.pseudo_labels.dtype == jnp.int32


@pytest.mark.parametrize("keep", ["low", "high"])
@pytest.mark.parametrize("batch,classes", [(1, 3), (4, 5), (7, 10), (64, 100)])
def test_matches_numpy_oracle(variant, batch, classes, keep):
  x = _logits(batch, classes, seed=batch)
  out = variant(jaxmask.confidence_masks, keep=keep)(x)
  conf, _, class_conf, *_ = _numpy_masks(x, keep=keep)
  np.testing.assert_allclose(out.confidence, conf, rtol=1e-6)
  np.testing.assert_allclose(out.class_confidence, class_conf, rtol=1e-5)
  _assert_masks_match_numpy(out, x, keep=keep)
  _rules.assert_same_argmax(out.pseudo_labels, x.argmax(axis=1), out.probs,
                            tol=_rules.ulps(1.0))


def test_low_half_of_an_odd_batch_keeps_the_median():
  out = jaxmask.confidence_masks(_logits(9, 5))
  assert int(out.mask.sum()) == 5
  assert out.confidence[out.mask].max() == out.threshold


def test_batch_of_one_keeps_its_sample():
  for keep in ("low", "high"):
    out = jaxmask.confidence_masks(_logits(1, 5), keep=keep)
    assert out.mask.tolist() == [True]
    assert out.threshold == out.confidence[0]


def test_ties_at_the_threshold_are_kept():
  x = np.zeros((4, 3), np.float32)
  x[:, 0] = [1.0, 1.0, 1.0, 3.0]  # three equal confidences
  low = jaxmask.confidence_masks(x)
  high = jaxmask.confidence_masks(x, keep="high")
  np.testing.assert_array_equal(low.mask, [True, True, True, False])
  np.testing.assert_array_equal(high.mask, [True, True, True, True])


def test_all_equal_logits_select_everything():
  out = jaxmask.confidence_masks(jnp.full((5, 4), 0.3))
  np.testing.assert_allclose(out.probs, 0.25)
  assert out.mask.all() and out.class_mask.all()
  np.testing.assert_array_equal(out.pseudo_labels, 0)


def test_nan_logits_select_nothing():
  x = _logits(6, 4)
  x[2, 1] = np.nan
  out = jaxmask.confidence_masks(x)
  assert np.isnan(out.probs[2]).all()
  assert np.isnan(out.threshold) and np.isnan(out.class_threshold)
  assert not out.mask.any() and not out.class_mask.any()


def test_infinite_logits():
  x = _logits(6, 4)
  x[0, 1] = -np.inf  # harmless: that class gets probability 0
  out = jaxmask.confidence_masks(x)
  assert out.probs[0, 1] == 0 and np.isfinite(out.threshold)
  x[3, 2] = np.inf  # softmax is NaN on that row, as in torch
  out = jaxmask.confidence_masks(x)
  assert np.isnan(out.probs[3]).all() and not out.mask.any()


def test_extreme_logits_stay_finite():
  out = jaxmask.confidence_masks(_logits(8, 5, scale=1e9))
  assert np.isfinite(out.probs).all() and np.isfinite(out.threshold)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_half_precision_is_upcast(dtype):
  x = jnp.asarray(_logits(16, 10)).astype(dtype)
  out = jaxmask.confidence_masks(x)
  ref = jaxmask.confidence_masks(x.astype(jnp.float32))
  assert out.probs.dtype == jnp.float32
  for a, b in zip(out, ref):
    np.testing.assert_array_equal(a, b)


def test_jit_vmap_and_traced_q_agree_with_eager():
  x = jnp.asarray(_logits(3 * 7, 5).reshape(3, 7, 5))
  eager = [jaxmask.confidence_masks(xi, q=30.0) for xi in x]
  batched = jax.jit(jax.vmap(lambda l: jaxmask.confidence_masks(l, q=30.0)))(x)
  traced = jax.jit(lambda l, q: jaxmask.confidence_masks(l, q=q))(x[0], 30.0)
  # Eager, vmapped and jitted programs may sum in other orders: values agree
  # to rounding and masks follow the rule of `_rules.py`.
  pairs = [(jax.tree.map(lambda b, i=i: b[i], batched), e)
           for i, e in enumerate(eager)] + [(traced, eager[0])]
  for got, want in pairs:
    for name in ("probs", "confidence", "threshold", "class_confidence",
                 "class_threshold"):
      np.testing.assert_allclose(getattr(got, name), getattr(want, name),
                                 rtol=1e-6, atol=1e-7, err_msg=name)
    _rules.assert_same_argmax(got.pseudo_labels, want.pseudo_labels,
                              want.probs, tol=_rules.ulps(1.0))
    _rules.assert_confidence_masks_match(got, want)


def test_traced_q_does_not_recompile():
  @jax.jit
  @chex.assert_max_traces(n=1)
  def fn(logits, q):
    return jaxmask.confidence_masks(logits, q=q)

  x = jnp.asarray(_logits(9, 4))
  for q in (10.0, 50.0, 90.0):
    out = fn(x, q)
    np.testing.assert_array_equal(out.mask, out.confidence <= out.threshold)
    _rules.assert_equal_except_ties(
        out.mask, _numpy_masks(np.asarray(x), q)[1],
        got_values=out.confidence, want_values=_numpy_masks(np.asarray(x))[0],
        got_threshold=out.threshold,
        want_threshold=_numpy_masks(np.asarray(x), q)[4],
        tol=_rules.ulps(out.threshold))
  fn(jnp.asarray(_logits(9, 4, seed=3)), 50.0)  # new values, same shape


def test_no_gradient_flows():
  x = jnp.asarray(_logits(6, 4))
  g = jax.grad(lambda l: jaxmask.confidence_masks(l).probs.sum() +
               jaxmask.confidence_masks(l).threshold)(x)
  np.testing.assert_array_equal(g, 0.0)


def test_bad_input():
  with pytest.raises(ValueError, match=r"logits must have shape \[batch, num_classes\]"):
    jaxmask.confidence_masks(jnp.ones(5))
  with pytest.raises(ValueError, match=r"logits must have shape"):
    jaxmask.confidence_masks(jnp.ones((2, 3, 4)))
  with pytest.raises(ValueError, match=r"logits must have shape \[batch,"
                     r" num_classes\] with batch >= 1"):
    jaxmask.confidence_masks(jnp.ones((0, 3)))
  with pytest.raises(TypeError, match="logits must have a floating dtype"):
    jaxmask.confidence_masks(jnp.ones((4, 3), jnp.int32))
  with pytest.raises(ValueError, match="q must lie in"):
    jaxmask.confidence_masks(jnp.ones((4, 3)), q=101)
  with pytest.raises(ValueError, match="keep must be one of"):
    jaxmask.confidence_masks(jnp.ones((4, 3)), keep="top")


def test_errors_are_raised_at_trace_time():
  with pytest.raises(TypeError, match="logits must have a floating dtype"):
    jax.jit(jaxmask.confidence_masks).lower(
        jax.ShapeDtypeStruct((4, 3), jnp.int32))
