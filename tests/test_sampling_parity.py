"""Parity of jaxmask's point sampling and point losses with torch_ref.

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
  losses and matcher costs: rtol 1e-5; gradients: atol 1e-6 relative to
    the largest gradient entry.

Every case of sampling, selection and the point losses runs over both
implementations (the `implementation` fixture: the plain algorithm and the
XLA:CPU kernel), each against torch_ref under the same tolerances.
"""

import functools

import jax
import numpy as np
import pytest

import jaxmask
import _rules

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


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def documented_draws(key, num_masks, num_candidates, num_fresh):
  """The candidates and fresh points sample_points_using_uncertainty draws."""
  candidate_key, fresh_key = jax.random.split(key)
  return (jax.random.uniform(candidate_key, (num_masks, num_candidates, 2)),
          jax.random.uniform(fresh_key, (num_masks, num_fresh, 2)))


def t(x):
  return torch.from_numpy(np.array(x))


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


# ------------------------------------------------------------------ losses


def test_point_losses_and_gradients_parity():
  rng = np.random.default_rng(6)
  logits = (rng.normal(size=(6, 500)) * 4).astype(np.float32)
  labels = rng.uniform(size=(6, 500)).astype(np.float32)
  for name in ("sigmoid_ce_loss", "dice_loss"):
    value, grad = jax.value_and_grad(getattr(jaxmask, name))(logits, labels,
                                                             4.0)
    x = t(logits).requires_grad_()
    want = getattr(torch_ref, name)(x, t(labels), 4.0)
    want.backward()
    np.testing.assert_allclose(value, want.item(), rtol=1e-5)
    np.testing.assert_allclose(grad, x.grad.numpy(), rtol=1e-5, atol=1e-9)


def test_pairwise_costs_parity():
  rng = np.random.default_rng(7)
  logits = (rng.normal(size=(10, 12544)) * 4).astype(np.float32)
  labels = (rng.uniform(size=(7, 12544)) > 0.5).astype(np.float32)
  for name in ("pairwise_sigmoid_ce_loss", "pairwise_dice_loss"):
    np.testing.assert_allclose(
        getattr(jaxmask, name)(logits, labels),
        getattr(torch_ref, name)(t(logits), t(labels)).numpy(), rtol=1e-5)


def test_num_masks_normalizer_parity():
  for count in (0, 1, 7):
    assert float(jaxmask.num_masks_normalizer(count)) == float(
        torch_ref.num_masks_normalizer(count))


def _jax_losses_and_grad(key, pred, target, num_points, implementation):
  def total(p):
    losses = jaxmask.point_mask_losses(
        key, p, target, float(pred.shape[0]), num_points=num_points,
        implementation=implementation)
    return losses.loss_mask + losses.loss_dice, losses
  (_, losses), grad = jax.jit(jax.value_and_grad(total, has_aux=True))(pred)
  return losses, grad


def check_point_mask_losses_parity(n, h, w, th, tw, num_points, seed,
                                   implementation):
  rng = np.random.default_rng(seed)
  pred = (rng.normal(size=(n, h, w)) * 3).astype(np.float32)
  target = (rng.uniform(size=(n, th, tw)) > 0.5).astype(np.float32)
  key = jax.random.key(seed)
  (loss_mask, loss_dice), grad = _jax_losses_and_grad(key, pred, target,
                                                      num_points,
                                                      implementation)
  k = int(0.75 * num_points)
  candidates, fresh = map(np.asarray, documented_draws(
      key, n, int(3.0 * num_points), num_points - k))
  p = t(pred).requires_grad_()
  want_mask, want_dice = torch_ref.point_mask_losses(
      p, t(target), float(n), num_points=num_points,
      candidates=t(candidates), random_points=t(fresh))
  (want_mask + want_dice).backward()
  np.testing.assert_allclose(loss_mask, want_mask.item(), rtol=1e-5)
  np.testing.assert_allclose(loss_dice, want_dice.item(), rtol=1e-5)
  want_grad = p.grad.numpy()
  np.testing.assert_allclose(grad, want_grad,
                             atol=1e-6 * np.abs(want_grad).max())


def test_point_mask_losses_parity_target_at_other_resolution(implementation):
  check_point_mask_losses_parity(5, 20, 16, 40, 28, num_points=64, seed=8,
                                 implementation=implementation)


def test_point_mask_losses_parity_mask2former_sizes(implementation):
  # The defaults once: 200 masks of 128x128, P = 12544 (37632 candidates:
  # the kernel selects in chunks of masks, with the bracketed top-k).
  check_point_mask_losses_parity(200, 128, 128, 128, 128, num_points=12544,
                                 seed=9, implementation=implementation)
