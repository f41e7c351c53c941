"""jaxmask vs vectors recorded from torch_ref (tests/golden/record_confidence.py).

These run without torch. Tolerances as in test_parity_confidence.py: the
recording machine and this one may sum in different orders, so masks and
pseudo-labels follow the rule of `_rules.py`.
"""

import pathlib

import jax
import numpy as np
import pytest

import jaxmask
import _rules

GOLDEN = np.load(pathlib.Path(__file__).parent / "golden" / "confidence.npz")
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
