"""jaxmask's point losses against golden vectors recorded from torch_ref.

Needs no PyTorch: tests/golden/point_sampling.npz was written by
tests/golden/record_point_sampling.py. Tolerances as in
test_point_losses_parity.py: losses rtol 1e-5; gradients atol 1e-6 relative
to the largest entry. The sampling's vectors (same file) are checked in
tests/sampling/test_sampling_golden.py.

point_mask_losses runs over both implementations of the sampling (the
`implementation` fixture: the plain algorithm and the XLA:CPU kernel).
"""

import os

import jax
import numpy as np
import pytest

import jaxmask
from _strategies import GOLDEN_DIR


GOLDEN = os.path.join(GOLDEN_DIR, "point_sampling.npz")


@pytest.fixture(scope="module")
def g():
  with np.load(GOLDEN) as data:
    return dict(data)


@pytest.mark.parametrize("name", ["sigmoid_ce_loss", "dice_loss"])
def test_losses_golden(g, name):
  value, grad = jax.value_and_grad(getattr(jaxmask, name))(
      g["loss_logits"], g["loss_labels"], g["loss_num_masks"])
  np.testing.assert_allclose(value, g[name], rtol=1e-5)
  np.testing.assert_allclose(grad, g[f"{name}_grad"], rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("name", ["pairwise_sigmoid_ce_loss",
                                  "pairwise_dice_loss"])
def test_pairwise_golden(g, name):
  np.testing.assert_allclose(
      getattr(jaxmask, name)(g["pw_logits"], g["pw_labels"]), g[name],
      rtol=1e-5)


def test_point_mask_losses_golden(g, implementation):
  key = jax.random.key(int(g["pml_seed"]))
  candidate_key, fresh_key = jax.random.split(key)
  # The recorded coordinates are the documented draws: if this fails, the
  # PRNG changed, not the losses.
  np.testing.assert_array_equal(
      jax.random.uniform(candidate_key, g["pml_candidates"].shape),
      g["pml_candidates"])
  np.testing.assert_array_equal(
      jax.random.uniform(fresh_key, g["pml_fresh"].shape), g["pml_fresh"])

  def total(p):
    losses = jaxmask.point_mask_losses(
        key, p, g["pml_target"], 3.0, num_points=int(g["pml_num_points"]),
        implementation=implementation)
    return losses.loss_mask + losses.loss_dice, losses

  (_, (loss_mask, loss_dice)), grad = jax.jit(
      jax.value_and_grad(total, has_aux=True))(g["pml_pred"])
  np.testing.assert_allclose(loss_mask, g["pml_loss_mask"], rtol=1e-5)
  np.testing.assert_allclose(loss_dice, g["pml_loss_dice"], rtol=1e-5)
  np.testing.assert_allclose(grad, g["pml_grad"],
                             atol=1e-6 * np.abs(g["pml_grad"]).max())
