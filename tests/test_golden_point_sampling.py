"""jaxmask's point sampling against golden vectors recorded from torch_ref.

Needs no PyTorch: tests/golden/point_sampling.npz was written by
tests/golden/record_point_sampling.py. Tolerances as in
test_sampling_parity.py: sampler atol 5e-6; selections as sets under the
rule of `_rules.py` (a candidate may differ only where its uncertainty lies
within twice the sampler's tolerance of the k-th: this CPU may round the
sampled logits differently from the recording one); on-grid exact; losses
rtol 1e-5; gradients atol 1e-6 relative to the largest entry.

Sampling, selection and point_mask_losses run over both implementations (the
`implementation` fixture: the plain algorithm and the XLA:CPU kernel).
"""

import os

import jax
import numpy as np
import pytest

import jaxmask
import _rules

GOLDEN = os.path.join(os.path.dirname(__file__), "golden",
                      "point_sampling.npz")


@pytest.fixture(scope="module")
def g():
  with np.load(GOLDEN) as data:
    return dict(data)


point_sample = jax.jit(jaxmask.point_sample,
                       static_argnames=("implementation",))
select_uncertain_points = jax.jit(
    jaxmask.select_uncertain_points,
    static_argnames=("num_uncertain", "implementation"))


def test_point_sample_golden(g, implementation):
  np.testing.assert_allclose(
      point_sample(g["ps_inputs"], g["ps_coords"],
                   implementation=implementation),
      g["ps_out"], atol=5e-6)


def test_select_uncertain_points_golden(g, implementation):
  k = int(g["sel_num_uncertain"])
  got = select_uncertain_points(g["sel_logits"], g["sel_candidates"],
                                num_uncertain=k,
                                implementation=implementation)
  # The recording holds no scores: this CPU's sampled logits (by the same
  # implementation) stand for both, with the tolerance widened by the
  # sampler's.
  scores = -np.abs(np.asarray(point_sample(
      g["sel_logits"], g["sel_candidates"],
      implementation=implementation))[:, 0])
  _rules.assert_same_selection(got, g["sel_out"], g["sel_candidates"],
                               got_scores=scores, want_scores=scores, k=k,
                               tol=2 * 5e-6)


def test_on_grid_golden(g):
  indices, coords = jaxmask.uncertain_point_coords_on_grid(
      g["grid_scores"], num_points=int(g["grid_num_points"]))
  np.testing.assert_array_equal(indices, g["grid_indices"])
  np.testing.assert_array_equal(coords, g["grid_coords"])


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
