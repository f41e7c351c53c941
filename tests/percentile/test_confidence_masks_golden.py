"""confidence_masks vs vectors recorded from torch_ref (tests/golden/record_confidence.py).

These run without torch. Tolerances as in test_confidence_masks_parity.py:
the recording machine and this one may sum in different orders, so masks and
pseudo-labels follow the rule of `_rules.py`. The MLKD losses' vectors (same
file) are checked in tests/distill/test_distill_golden.py.
"""

import jax
import numpy as np
import pytest

import jaxmask
import _rules
from _strategies import GOLDEN_DIR


GOLDEN = np.load(GOLDEN_DIR / "confidence.npz")
CASES = sorted({int(k.split("/")[0]) for k in GOLDEN.files})


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("keep", ["low", "high"])
def test_masks_match_recorded_torch_ref(case, keep):
  views, q = GOLDEN[f"{case}/views"], float(GOLDEN[f"{case}/q"])
  got = jax.jit(jaxmask.confidence_masks, static_argnames=("q", "keep"))(
      views[2], q=q, keep=keep)
  want = lambda name: GOLDEN[f"{case}/{keep}/{name}"]
  np.testing.assert_allclose(got.probs, GOLDEN[f"{case}/probs"], atol=1e-6)
  np.testing.assert_allclose(got.confidence, want("confidence"), atol=1e-6)
  np.testing.assert_allclose(got.threshold, want("threshold"), atol=1e-6)
  np.testing.assert_allclose(got.class_confidence, want("class_confidence"),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got.class_threshold, want("class_threshold"),
                             rtol=1e-5, atol=1e-6)
  _rules.assert_same_argmax(got.pseudo_labels, want("pseudo_labels"),
                            got.probs, tol=_rules.ulps(1.0))
  _rules.assert_confidence_masks_match(
      got, {name: want(name) for name in (
          "mask", "confidence", "threshold", "class_mask",
          "class_confidence", "class_threshold")})
