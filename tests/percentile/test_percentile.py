"""`percentile` and `percentile_mask` against NumPy, bit for bit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmask

SIZES = list(range(1, 18)) + [31, 32, 33, 64, 65, 257, 1000]
QS = [0, 10, 25, 33.3, 50, 75, 90, 99.9, 100]
REPS = 40  # random batches per (size, q), evaluated in one vmapped call


def _batches(n, rng):
  # Powers of uniforms pile values up near 0 (like softmax confidences), and
  # rounding to a few values makes ties likely.
  x = rng.random((REPS, n)) ** rng.integers(1, 6, size=(REPS, 1))
  x[: REPS // 4] = np.round(x[: REPS // 4] * 8) / 8
  return x.astype(np.float32)


@pytest.mark.parametrize("q", [0, 33.3, 50, 99.9])
def test_percentile_and_mask_under_every_variant(variant, q):
  x = _batches(65, np.random.default_rng(3))[5]
  want = np.percentile(x, q)
  np.testing.assert_array_equal(variant(jaxmask.percentile, q=q)(x), want)
  mask, thr = variant(jaxmask.percentile_mask, q=q, keep="high")(x)
  np.testing.assert_array_equal(thr, want)
  np.testing.assert_array_equal(mask, x >= want)


def test_static_q_equals_numpy_bit_for_bit():
  rng = np.random.default_rng(0)
  # One compilation per size computes every q (each q is static).
  fn = jax.jit(jax.vmap(
      lambda v: [jaxmask.percentile_mask(v, q=q) for q in QS]))
  for n in SIZES:
    x = _batches(n, rng)
    for q, (mask, thr) in zip(QS, fn(jnp.asarray(x))):
      want = np.array([np.percentile(row, q) for row in x])
      np.testing.assert_array_equal(thr, want, err_msg=f"n={n} q={q}")
      np.testing.assert_array_equal(mask, x <= want[:, None],
                                    err_msg=f"n={n} q={q}")


def test_traced_q_equals_numpy_with_float32_q():
  rng = np.random.default_rng(7)
  fn = jax.jit(jax.vmap(jaxmask.percentile, in_axes=(0, None)))
  for n in [1, 2, 3, 5, 8, 9, 64, 65, 257]:
    x = _batches(n, rng)
    for q in QS + [12.5, 100 / 3]:
      got = np.asarray(fn(jnp.asarray(x), jnp.float32(q)))
      want = np.array([np.percentile(row, np.float32(q)) for row in x])
      np.testing.assert_array_equal(got, want, err_msg=f"n={n} q={q}")


def test_jnp_percentile_pitfall_is_avoided():
  # At q=50 on an odd batch jnp.percentile (under jit) can land one
  # float step below the median; ours is the median itself.
  x = jnp.asarray(np.random.default_rng(0).random(101), jnp.float32)
  mask, thr = jax.jit(lambda v: jaxmask.percentile_mask(v, q=50))(x)
  assert thr == np.median(np.asarray(x))
  assert int(mask.sum()) == 51


def test_nan_gives_nan_threshold_and_empty_mask():
  x = jnp.array([0.3, jnp.nan, 0.1, 0.7])
  for keep in ("low", "high"):
    mask, thr = jaxmask.percentile_mask(x, keep=keep)
    assert np.isnan(thr) and np.isnan(np.percentile(np.asarray(x), 50))
    assert not mask.any()


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")
def test_inf_values_follow_numpy():
  x = np.array([0.2, np.inf, 0.5, -np.inf, 0.4], np.float32)
  for q in (0, 30, 50, 70, 100):
    got = jaxmask.percentile(jnp.asarray(x), q)
    np.testing.assert_array_equal(got, np.percentile(x, q))


def test_keep_high_selects_at_or_above():
  x = jnp.array([0.1, 0.4, 0.4, 0.9])
  mask, thr = jaxmask.percentile_mask(x, q=50, keep="high")
  assert thr == 0.4
  np.testing.assert_array_equal(mask, [False, True, True, True])


def test_traced_q_out_of_range_gives_nan_and_empty_masks():
  x = jnp.array([0.1, 0.4, 0.9])
  percentile = jax.jit(jaxmask.percentile)
  masks = jax.jit(lambda x, q: jaxmask.confidence_masks(x, q=q, keep="high"))
  logits = jnp.log(jnp.array([[0.2, 0.8], [0.6, 0.4]]))
  mask_fn = jax.jit(lambda x, q: jaxmask.percentile_mask(x, q=q))
  for q in (-5.0, -1e-6, 100.001, 250.0, np.nan, np.inf):
    assert np.isnan(percentile(x, jnp.float32(q))), q
    mask, thr = mask_fn(x, jnp.float32(q))
    assert np.isnan(thr) and not mask.any(), q
    with pytest.raises(ValueError, match=r"q must lie in \[0, 100\]"):
      jaxmask.percentile_mask(x, q=jnp.float32(q))  # concrete: checked
    out = masks(logits, jnp.float32(q))
    assert np.isnan(out.threshold) and not out.mask.any(), q
    assert np.isnan(out.class_threshold) and not out.class_mask.any(), q
  for q in (0.0, 100.0):  # the ends are in range
    assert percentile(x, jnp.float32(q)) == np.percentile(np.asarray(x), q)


@pytest.mark.parametrize("q", [-1, -10, 100.5, 150, float("nan"),
                               float("inf"), np.float32(-3.0)])
def test_q_out_of_range_is_rejected(q):
  for call in (lambda: jaxmask.percentile(jnp.ones(3), q),
               lambda: jaxmask.percentile_mask(jnp.ones(3), q=q),
               lambda: jaxmask.confidence_masks(jnp.ones((2, 3)), q=q)):
    with pytest.raises(ValueError, match=r"q must lie in \[0, 100\]"):
      call()


@pytest.mark.parametrize("q", ["50", None, True, jnp.ones(2)])
def test_q_of_wrong_type_is_rejected(q):
  with pytest.raises((TypeError, ValueError), match="q must"):
    jaxmask.percentile_mask(jnp.ones(3), q=q)


def test_bad_values():
  for fn in (lambda v: jaxmask.percentile(v, 50), jaxmask.percentile_mask):
    with pytest.raises(ValueError, match=r"values must have shape \[n\]"):
      fn(jnp.ones((2, 3)))
    with pytest.raises(ValueError, match="values must hold at least one"):
      fn(jnp.ones((0,)))
    with pytest.raises(TypeError, match="values must have a floating dtype"):
      fn(jnp.arange(3))
    with pytest.raises(TypeError, match=r"values must be an array of shape"):
      fn([0.1, 0.2])
  with pytest.raises(ValueError, match="keep must be one of"):
    jaxmask.percentile_mask(jnp.ones(3), keep="middle")
