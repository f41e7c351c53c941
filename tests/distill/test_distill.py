"""MLKD losses: properties, the two modes, transformations, bad input."""

import jax
import jax.test_util  # noqa: F401  (check_grads)
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmask

LOSSES = [jaxmask.kd_loss, jaxmask.class_correlation_loss,
          jaxmask.batch_correlation_loss]


def _views(batch=8, classes=5, seed=0):
  rng = np.random.default_rng(seed)
  return [jnp.asarray(rng.normal(size=(batch, classes)) * 2, jnp.float32)
          for _ in range(4)]


@pytest.mark.parametrize("loss", LOSSES)
def test_zero_when_student_equals_teacher(loss):
  s, *_ = _views()
  assert abs(float(loss(s, s, temperature=4.0))) < 1e-6


@pytest.mark.parametrize("loss", LOSSES)
def test_positive_and_finite_for_extreme_logits(loss):
  s, t, *_ = _views()
  assert loss(s, t, temperature=2.0) > 0
  assert np.isfinite(loss(s * 1e9, t * 1e9, temperature=2.0))


def _np_softmax(x):
  e = np.exp(x - x.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


def test_definitions_under_every_variant(variant):
  """kd, cc and bc against float64 NumPy formulas, eager / jit / vmap."""
  s, t, *_ = _views()
  T = 3.0
  p_s = _np_softmax(np.asarray(s, np.float64) / T)
  p_t = _np_softmax(np.asarray(t, np.float64) / T)
  kd = T**2 * np.mean(np.sum(p_t * (np.log(p_t) - np.log(p_s)), 1))
  cc = np.sum((p_t.T @ p_t - p_s.T @ p_s) ** 2) / p_t.shape[1]
  bc = np.sum((p_t @ p_t.T - p_s @ p_s.T) ** 2) / p_t.shape[0]
  for loss, want in ((jaxmask.kd_loss, kd), (jaxmask.class_correlation_loss, cc),
                     (jaxmask.batch_correlation_loss, bc)):
    got = variant(loss, temperature=T)(s, t)
    np.testing.assert_allclose(got, want, rtol=1e-5, err_msg=loss.__name__)


def test_masks_zero_the_unselected_terms():
  s, t, *_ = _views()
  m = jnp.arange(8) % 2 == 0
  full = jaxmask.kd_loss(s, t, temperature=4.0)
  half = jaxmask.kd_loss(s, t, temperature=4.0, mask=m)
  rest = jaxmask.kd_loss(s, t, temperature=4.0, mask=~m)
  np.testing.assert_allclose(half + rest, full, rtol=1e-6)
  for loss, size in ((jaxmask.class_correlation_loss, 5),
                     (jaxmask.batch_correlation_loss, 8)):
    kw = "class_mask" if size == 5 else "mask"
    m = jnp.arange(size) % 2 == 0
    parts = [loss(s, t, temperature=4.0, **{kw: mm}) for mm in (m, ~m)]
    np.testing.assert_allclose(sum(parts), loss(s, t, temperature=4.0), rtol=1e-6)
    ones = loss(s, t, temperature=4.0, **{kw: jnp.ones(size, bool)})
    np.testing.assert_allclose(ones, loss(s, t, temperature=4.0), rtol=1e-6)


def test_faithful_mode_rescales_by_the_mask_mean():
  sw, ss, tw, ts = _views(batch=9)
  out = jaxmask.mlkd_loss(sw, ss, tw, ts)
  masks = jaxmask.confidence_masks(tw)
  temps = (4.0, 3.0, 5.0, 2.0, 6.0)
  bc = sum(jaxmask.batch_correlation_loss(sw, tw, temperature=T) for T in temps)
  np.testing.assert_allclose(out.bc, bc * masks.mask.mean(), rtol=1e-6)
  np.testing.assert_array_equal(out.mask, masks.mask)
  np.testing.assert_array_equal(out.class_mask, masks.class_mask)
  np.testing.assert_allclose(out.total, out.kd + out.cc + out.bc)


def test_teacher_gets_no_gradient_and_student_does():
  sw, ss, tw, ts = _views()
  grads = jax.grad(lambda *a: jaxmask.mlkd_loss(*a, mode="masked").total,
                   argnums=(0, 1, 2, 3))(sw, ss, tw, ts)
  assert np.abs(grads[0]).sum() > 0 and np.abs(grads[1]).sum() > 0
  np.testing.assert_array_equal(grads[2], 0.0)
  np.testing.assert_array_equal(grads[3], 0.0)


def test_kd_loss_gradients_numerically():
  s, t, *_ = _views(batch=4, classes=3)
  fn = lambda s: jaxmask.kd_loss(s, t, temperature=2.0, mask=jnp.array([1., 0, 1, 1]))
  jax.test_util.check_grads(fn, (s,), order=1, modes=("rev",), atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("mode", ["faithful", "masked"])
def test_jit_vmap_bf16(mode):
  views = _views()
  eager = jaxmask.mlkd_loss(*views, mode=mode)
  jitted = jax.jit(lambda *v: jaxmask.mlkd_loss(*v, mode=mode))(*views)
  np.testing.assert_allclose(jitted.total, eager.total, rtol=1e-5)
  stacked = [jnp.stack([v, v[::-1]]) for v in views]
  batched = jax.vmap(lambda *v: jaxmask.mlkd_loss(*v, mode=mode).total)(*stacked)
  np.testing.assert_allclose(batched[0], eager.total, rtol=1e-5)
  half = jaxmask.mlkd_loss(*[v.astype(jnp.bfloat16) for v in views], mode=mode)
  assert half.total.dtype == jnp.float32 and np.isfinite(half.total)


def test_bad_input():
  s, t, *_ = _views()
  with pytest.raises(ValueError, match="mode must be one of"):
    jaxmask.mlkd_loss(s, s, t, t, mode="per-sample")
  with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
    jaxmask.kd_loss(s, t, temperature=0.0)
  with pytest.raises(ValueError, match="same shape"):
    jaxmask.kd_loss(s, t[:, :3], temperature=1.0)
  with pytest.raises(ValueError, match=r"student_logits must have shape \[batch, num_classes\]"):
    jaxmask.class_correlation_loss(s[0], t[0], temperature=1.0)
  with pytest.raises(TypeError, match="teacher_logits must have a floating dtype"):
    jaxmask.batch_correlation_loss(s, jnp.ones((8, 5), jnp.int32), temperature=1.0)
  with pytest.raises(ValueError, match=r"mask must have shape \[8\]"):
    jaxmask.kd_loss(s, t, temperature=1.0, mask=jnp.ones(5))
  with pytest.raises(ValueError, match=r"class_mask must have shape \[5\]"):
    jaxmask.class_correlation_loss(s, t, temperature=1.0, class_mask=jnp.ones(8))
  with pytest.raises(ValueError, match="student_weak and student_strong must have the same shape"):
    jaxmask.mlkd_loss(s, s[:4], t, t[:4])
