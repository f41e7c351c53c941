"""jaxmask's point sampling against golden vectors recorded from torch_ref.

Needs no PyTorch: tests/golden/point_sampling.npz was written by
tests/golden/record_point_sampling.py. Tolerances as in
test_sampling_parity.py: sampler atol 5e-6; selections as sets under the
rule of `_rules.py` (a candidate may differ only where its uncertainty lies
within twice the sampler's tolerance of the k-th: this CPU may round the
sampled logits differently from the recording one); on-grid exact. The point
losses' vectors (same file) are checked in
tests/point_losses/test_point_losses_golden.py.

Sampling and selection run over both implementations (the `implementation`
fixture: the plain algorithm and the XLA:CPU kernel).
"""

import os

import jax
import numpy as np
import pytest

import jaxmask
import _rules
from _strategies import GOLDEN_DIR


GOLDEN = os.path.join(GOLDEN_DIR, "point_sampling.npz")


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
