"""mlkd_loss vs vectors recorded from torch_ref (tests/golden/record_confidence.py).

These run without torch. Tolerances as in test_distill_parity.py: losses
1e-5 relative (plus 1e-7 absolute), gradients 1e-5 relative, 1e-6 absolute.
The confidence masks' vectors (same file) are checked in
tests/percentile/test_confidence_masks_golden.py.
"""

import jax
import numpy as np
import pytest

import jaxmask
from _strategies import GOLDEN_DIR


GOLDEN = np.load(GOLDEN_DIR / "confidence.npz")
CASES = sorted({int(k.split("/")[0]) for k in GOLDEN.files})


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("mode", ["faithful", "masked"])
def test_mlkd_losses_match_recorded_torch_ref(case, mode):
  views = GOLDEN[f"{case}/views"]

  def total(sw, ss):
    out = jaxmask.mlkd_loss(sw, ss, views[2], views[3], temperature=4.0, mode=mode)
    return out.total, out[:3]

  (_, got), grads = jax.jit(jax.value_and_grad(
      total, argnums=(0, 1), has_aux=True))(views[0], views[1])
  np.testing.assert_allclose(np.stack(got), GOLDEN[f"{case}/{mode}/losses"],
                             rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(grads[0], GOLDEN[f"{case}/{mode}/grad_weak"],
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(grads[1], GOLDEN[f"{case}/{mode}/grad_strong"],
                             rtol=1e-5, atol=1e-6)
