"""Parity of jaxmask's point losses with torch_ref.

Inputs are made once in NumPy (fixed seeds) and fed to both frameworks; the
random coordinates of `point_mask_losses` are drawn with jax.random from the
documented key split and injected into torch_ref (`candidates=`,
`random_points=`).

Tolerances (float32): losses and matcher costs rtol 1e-5; gradients atol
1e-6 relative to the largest gradient entry. `point_mask_losses` runs over
both implementations of the sampling (the `implementation` fixture: the plain
algorithm and the XLA:CPU kernel). The sampling's own parity is in
tests/sampling/test_sampling_parity.py.
"""

import jax
import numpy as np
import pytest

import jaxmask
from _strategies import documented_draws
from _strategies import torch_tensor as t

torch = pytest.importorskip("torch")
import torch_ref  # noqa: E402  # pylint: disable=g-import-not-at-top

torch.set_num_threads(2)


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
