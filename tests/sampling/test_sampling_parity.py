"""Parity of jaxmask's point sampling with torch_ref.

Inputs are made once in NumPy (fixed seeds) and fed to both frameworks; the
random coordinates are drawn with jax.random from the documented key split
and injected into torch_ref (`candidates=`, `random_points=`).

Tolerances (float32):
  sampler values: atol 5e-6 for inputs of standard deviation 3 (both follow
    grid_sample's arithmetic, but a fused multiply-add here or there moves
    the pixel position by an ulp, i.e. the value by ulp x the local slope);
  selections: the rule of `_rules.py` with tolerance 1e-5: a candidate may
    be in one set and not the other only where its uncertainty lies within
    1e-5 of the k-th in both frameworks (sampled logits differ by <= 2e-6,
    so such near-ties may swap across the cut);
  on-grid indices and coordinates: exact;
  gradients: the maps' atol 1e-6; the coordinates' (the local slope of the
    bilinear surface) rtol and atol 1e-4.

Every case of sampling and selection runs over both implementations (the
`implementation` fixture: the plain algorithm and the XLA:CPU kernel), each
against torch_ref under the same tolerances. The point losses' parity is in
tests/point_losses/test_point_losses_parity.py.
"""

import jax
import numpy as np
import pytest

import jaxmask
import _rules
from _strategies import documented_draws
from _strategies import torch_tensor as t

torch = pytest.importorskip("torch")
import torch_ref  # noqa: E402  # pylint: disable=g-import-not-at-top

torch.set_num_threads(2)


point_sample = jax.jit(jaxmask.point_sample,
                       static_argnames=("implementation",))
point_sample_single = jax.jit(jaxmask.point_sample_single,
                              static_argnames=("implementation",))
select_uncertain_points = jax.jit(
    jaxmask.select_uncertain_points,
    static_argnames=("num_uncertain", "implementation"))
sample_points = jax.jit(
    jaxmask.sample_points_using_uncertainty,
    static_argnames=("num_points", "oversample_ratio",
                     "importance_sample_ratio", "implementation"))


def torch_scores(logits, candidates):
  """torch_ref's uncertainty of each candidate, `[num_masks, num_candidates]`."""
  return -np.abs(torch_ref.point_sample(t(logits), t(candidates))[:, 0]
                 .numpy())


def jax_scores(logits, candidates, implementation):
  return -np.abs(np.asarray(point_sample(
      logits, candidates, implementation=implementation))[:, 0])


def assert_same_selection(got, want, logits, candidates, k, implementation,
                          tol=1e-5):
  """Selected sets equal up to near-ties at the k-th score (`_rules.py`).

  jaxmask's scores are those of the implementation that selected `got`.
  """
  candidates = np.asarray(candidates)
  _rules.assert_same_selection(
      got, want, candidates,
      got_scores=jax_scores(logits, candidates, implementation),
      want_scores=torch_scores(logits, candidates), k=k, tol=tol)


# ---------------------------------------------------------------- sampler


@pytest.mark.parametrize("n,c,h,w", [(3, 1, 16, 16), (2, 3, 7, 11),
                                     (2, 2, 1, 9), (2, 1, 8, 1)])
def test_point_sample_parity(implementation, n, c, h, w):
  rng = np.random.default_rng(n * 100 + c * 10 + h)
  inputs = (rng.normal(size=(n, c, h, w)) * 3).astype(np.float32)
  coords = rng.uniform(-0.1, 1.1, size=(n, 300, 2)).astype(np.float32)
  expected = torch_ref.point_sample(t(inputs), t(coords)).numpy()
  np.testing.assert_allclose(
      point_sample(inputs, coords, implementation=implementation), expected,
      atol=5e-6)
  np.testing.assert_allclose(
      point_sample_single(inputs[0], coords[0],
                          implementation=implementation),
      torch_ref.point_sample_single(t(inputs[0]), t(coords[0])).numpy(),
      atol=5e-6)


@pytest.mark.parametrize("c", [1, 2])
def test_point_sample_gradients_parity(implementation, c):
  rng = np.random.default_rng(1)
  inputs = rng.normal(size=(2, c, 6, 9)).astype(np.float32)
  coords = rng.uniform(-0.1, 1.1, size=(2, 50, 2)).astype(np.float32)
  weights = rng.normal(size=(2, c, 50)).astype(np.float32)
  grads = jax.jit(jax.grad(
      lambda x, c: (jaxmask.point_sample(
          x, c, implementation=implementation) * weights).sum(),
      argnums=(0, 1)))(inputs, coords)
  x, c = t(inputs).requires_grad_(), t(coords).requires_grad_()
  (torch_ref.point_sample(x, c) * t(weights)).sum().backward()
  np.testing.assert_allclose(grads[0], x.grad.numpy(), atol=1e-6)
  # The coordinate gradient is the slope of the bilinear surface (the floor
  # is locally constant), as in grid_sample.
  np.testing.assert_allclose(grads[1], c.grad.numpy(), rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------- selection


# Rows of 6000 are long enough for the kernel's bracketed top-k (Mask2Former's
# 37632 candidates are in test_point_mask_losses_parity_mask2former_sizes).
@pytest.mark.parametrize("seed,n,h,w,m,k", [(2, 5, 20, 16, 120, 40),
                                            (12, 3, 48, 40, 6000, 1500)])
def test_select_uncertain_points_parity(implementation, seed, n, h, w, m, k):
  rng = np.random.default_rng(seed)
  logits = (rng.normal(size=(n, 1, h, w)) * 3).astype(np.float32)
  candidates = rng.uniform(size=(n, m, 2)).astype(np.float32)
  got = select_uncertain_points(logits, candidates, num_uncertain=k,
                                implementation=implementation)
  want = torch_ref.select_uncertain_points(t(logits), t(candidates),
                                           num_uncertain=k).numpy()
  assert_same_selection(got, want, logits, candidates, k, implementation)


def test_select_uncertain_points_ties_compare_sets(implementation):
  # Integer logits at pixel centres: many exact ties in the uncertainty. Both
  # keep every candidate strictly above the k-th score and the same number at
  # it; which tied candidates are kept may differ.
  rng = np.random.default_rng(3)
  h = w = 6
  logits = rng.integers(-3, 4, size=(3, 1, h, w)).astype(np.float32)
  cols, rows = rng.integers(0, w, (3, 60)), rng.integers(0, h, (3, 60))
  candidates = np.stack([(cols + 0.5) / w, (rows + 0.5) / h],
                        -1).astype(np.float32)
  k = 25
  got = np.asarray(select_uncertain_points(logits, candidates,
                                           num_uncertain=k,
                                           implementation=implementation))
  want = torch_ref.select_uncertain_points(t(logits), t(candidates),
                                           num_uncertain=k).numpy()
  for row in range(3):
    score = lambda pts, row=row: -np.abs(np.asarray(point_sample(
        logits[row:row + 1], pts[None].astype(np.float32),
        implementation=implementation))[0, 0])
    got_scores, want_scores = score(got[row]), score(want[row])
    np.testing.assert_allclose(np.sort(got_scores), np.sort(want_scores),
                               atol=1e-6)
    kth = np.sort(want_scores)[0]
    strict = lambda pts, s, kth=kth: set(map(tuple, pts[s > kth + 1e-6]))
    assert strict(got[row], got_scores) == strict(want[row], want_scores)


@pytest.mark.parametrize("ratios", [(3.0, 0.75), (1.0, 1.0), (2.0, 0.0),
                                    (1.5, 0.5)])
def test_sample_points_parity_with_injected_randomness(implementation,
                                                      ratios):
  oversample_ratio, importance_sample_ratio = ratios
  rng = np.random.default_rng(4)
  logits = (rng.normal(size=(4, 1, 24, 20)) * 3).astype(np.float32)
  key = jax.random.key(21)
  num_points = 40
  got = sample_points(
      key, logits, num_points=num_points, oversample_ratio=oversample_ratio,
      importance_sample_ratio=importance_sample_ratio,
      implementation=implementation)
  num_candidates = int(num_points * oversample_ratio)
  k = int(importance_sample_ratio * num_points)
  candidates, fresh = map(np.asarray, documented_draws(
      key, 4, num_candidates, num_points - k))
  want = torch_ref.sample_points_using_uncertainty(
      t(logits), num_points=num_points, oversample_ratio=oversample_ratio,
      importance_sample_ratio=importance_sample_ratio,
      candidates=t(candidates), random_points=t(fresh)).numpy()
  assert got.shape == want.shape == (4, num_points, 2)
  np.testing.assert_array_equal(got[:, k:], want[:, k:])  # fresh points
  if k:
    assert_same_selection(got[:, :k], want[:, :k], logits, candidates, k,
                          implementation)


def test_on_grid_parity():
  rng = np.random.default_rng(5)
  scores = rng.normal(size=(3, 1, 9, 13)).astype(np.float32)
  for num_points in (1, 20, 117, 500):
    indices, coords = jaxmask.uncertain_point_coords_on_grid(
        scores, num_points=num_points)
    want_indices, want_coords = torch_ref.uncertain_point_coords_on_grid(
        t(scores), num_points=num_points)
    np.testing.assert_array_equal(indices, want_indices.numpy())
    np.testing.assert_array_equal(coords, want_coords.numpy())
