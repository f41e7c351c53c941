"""Every kernel equals its plain algorithm on edge shapes too.

Zero masks, channels, points, candidates or rows, empty and one-pixel maps,
k = 0 and k = M: wherever the plain algorithm returns a value, the XLA:CPU
kernel must return the same (the criterion's empty batch raised an
IndexError in the kernel's matcher: tests/criterion/test_criterion_edges.py).
The samplers agree bit for bit (`jaxmask._src.grid`), the selections as sets.
"""

import itertools

import jax
import numpy as np
import pytest

import jaxmask


def _both(fn):
  return [jax.tree.map(np.asarray, fn(i)) for i in ("plain", "xla_cpu")]


def _rng(*shape):
  return np.random.default_rng(list(shape))


@pytest.mark.parametrize("n, c, h, w, p", [
    s for s in itertools.product((0, 2), (0, 3), (0, 1, 5), (0, 4), (0, 7))
    if 0 in s or 1 in s])
def test_point_sample(n, c, h, w, p):
  rng = _rng(n, c, h, w, p)
  maps = rng.standard_normal((n, c, h, w)).astype(np.float32)
  coords = rng.uniform(-0.2, 1.2, (n, p, 2)).astype(np.float32)
  plain, kernel = _both(lambda i: jaxmask.point_sample(maps, coords,
                                                       implementation=i))
  assert plain.shape == kernel.shape == (n, c, p) and kernel.dtype == np.float32
  np.testing.assert_array_equal(kernel, plain)


@pytest.mark.parametrize("n, h, w, m, k", [
    (0, 5, 4, 6, 3), (2, 0, 4, 6, 3), (2, 1, 1, 6, 3), (2, 5, 4, 0, 0),
    (2, 5, 4, 6, 0), (2, 5, 4, 6, 6), (2, 5, 4, 1, 1)])
def test_select_uncertain_points(n, h, w, m, k):
  rng = _rng(n, h, w, m, k)
  logits = rng.standard_normal((n, 1, h, w)).astype(np.float32)
  candidates = rng.uniform(size=(n, m, 2)).astype(np.float32)
  plain, kernel = _both(lambda i: jaxmask.select_uncertain_points(
      logits, candidates, num_uncertain=k, implementation=i))
  as_set = lambda x: np.sort(x.view(np.int64), axis=1)
  assert plain.shape == kernel.shape == (n, k, 2)
  np.testing.assert_array_equal(as_set(kernel), as_set(plain))


@pytest.mark.parametrize("n, h, w, p, ratio, importance", [
    (0, 5, 4, 4, 2.0, 0.5), (3, 0, 4, 4, 2.0, 0.5), (3, 1, 1, 4, 2.0, 0.5),
    (3, 5, 4, 1, 1.0, 1.0), (3, 5, 4, 4, 1.0, 0.0), (3, 5, 4, 4, 2.0, 1.0)])
def test_sample_points_using_uncertainty(n, h, w, p, ratio, importance):
  logits = _rng(n, h, w, p).standard_normal((n, 1, h, w)).astype(np.float32)
  plain, kernel = _both(lambda i: jaxmask.sample_points_using_uncertainty(
      jax.random.key(0), logits, num_points=p, oversample_ratio=ratio,
      importance_sample_ratio=importance, implementation=i))
  k = int(importance * p)
  as_set = lambda x: np.sort(x[:, :k].view(np.int64), axis=1)
  assert plain.shape == kernel.shape == (n, p, 2)
  np.testing.assert_array_equal(as_set(kernel), as_set(plain))
  np.testing.assert_array_equal(kernel[:, k:], plain[:, k:])


@pytest.mark.parametrize("rows, m, k", [
    (0, 5, 2), (0, 0, 0), (2, 0, 0), (3, 5000, 0), (3, 5000, 5000),
    (0, 5000, 10), (1, 5000, 1), (1, 5000, 4999)])
def test_top_k_indices(rows, m, k):
  scores = _rng(rows, m, k).standard_normal((rows, m)).astype(np.float32)
  plain, kernel = _both(lambda i: jaxmask.top_k_indices(scores, k=k,
                                                        implementation=i))
  assert plain.shape == kernel.shape == (rows, k)
  np.testing.assert_array_equal(np.sort(kernel, 1), np.sort(plain, 1))


@pytest.mark.parametrize("n, h, w, ht, wt", [
    (0, 4, 3, 5, 4), (2, 0, 3, 5, 4), (2, 4, 3, 0, 4), (2, 1, 1, 1, 1),
    (1, 4, 3, 1, 4)])
def test_point_mask_losses(n, h, w, ht, wt):
  rng = _rng(n, h, w, ht, wt)
  pred = rng.standard_normal((n, h, w)).astype(np.float32)
  targets = (rng.uniform(size=(n, ht, wt)) > 0.5).astype(np.float32)
  plain, kernel = _both(lambda i: jaxmask.point_mask_losses(
      jax.random.key(0), pred, targets, 2.0, num_points=5, implementation=i))
  assert np.isfinite(plain).all()
  np.testing.assert_allclose(kernel, plain, rtol=1e-6)
