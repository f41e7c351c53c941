"""The comparison rule of `_rules.py`: rounding ties may flip, nothing else."""

import numpy as np
import pytest

import jaxmask
import _rules


def _class_masks_of_perturbed_sums(index, ulps):
  """jaxmask's class mask, and the one another summation order could give.

  The inputs of the case that failed on an AVX-512 machine: at q=90,
  keep="high", class 804's summed probability lies 1 ulp below the threshold,
  so a framework that sums the 7 probabilities in another order may keep it.
  """
  x = (np.random.default_rng(7 * 1000 + 1000).normal(size=(7, 1000)) * 3
       ).astype(np.float32)
  out = jaxmask.confidence_masks(x, q=90, keep="high")
  values = np.asarray(out.class_confidence).copy()
  values[index] = values[index] + ulps * np.spacing(values[index])
  threshold = np.percentile(values, 90)
  return out, values, threshold, values >= threshold


def test_a_rounding_tie_may_flip():
  out, values, threshold, mask = _class_masks_of_perturbed_sums(804, 2)
  assert mask[804] and not out.class_mask[804]  # the reported flip
  flips = _rules.assert_equal_except_ties(
      out.class_mask, mask, got_values=out.class_confidence,
      want_values=values, got_threshold=out.class_threshold,
      want_threshold=threshold, tol=_rules.ulps(out.class_threshold))
  assert flips == 1


def test_a_flip_away_from_the_threshold_fails():
  out = _class_masks_of_perturbed_sums(804, 0)[0]
  mask = np.asarray(out.class_mask).copy()
  far = int(np.argmax(np.abs(np.asarray(out.class_confidence)
                             - np.asarray(out.class_threshold))))
  mask[far] = ~mask[far]
  with pytest.raises(AssertionError, match="away from the threshold"):
    _rules.assert_equal_except_ties(
        out.class_mask, mask, got_values=out.class_confidence,
        want_values=out.class_confidence, got_threshold=out.class_threshold,
        want_threshold=out.class_threshold,
        tol=_rules.ulps(out.class_threshold))


def test_a_tie_in_only_one_program_may_not_flip():
  values = np.array([1.0, 2.0, 3.0], np.float32)
  other = np.array([1.0, 2.5, 3.0], np.float32)  # far from 2.0 in the other
  with pytest.raises(AssertionError):
    _rules.assert_equal_except_ties(
        [True, True, False], [True, False, False], got_values=values,
        want_values=other, got_threshold=2.0, want_threshold=2.0,
        tol=_rules.ulps(2.0))


def test_selections_and_labels():
  candidates = np.arange(12, dtype=np.float32).reshape(1, 6, 2)
  scores = np.array([[0.5, 0.1, 0.3, 0.3 + 1e-7, 0.0, 0.2]], np.float32)
  kept = candidates[:, [0, 3, 2]]  # the top 3; 2 and 3 tie within rounding
  swapped = candidates[:, [0, 3, 5]]
  assert _rules.assert_same_selection(
      kept, candidates[:, [0, 2, 3]], candidates, got_scores=scores,
      want_scores=scores, k=3, tol=1e-6) == 0
  with pytest.raises(AssertionError):
    _rules.assert_same_selection(kept, swapped, candidates, got_scores=scores,
                                 want_scores=scores, k=3, tol=1e-6)
  probs = np.array([[0.5, 0.5 - 1e-8, 0.0], [0.2, 0.7, 0.1]], np.float32)
  assert _rules.assert_same_argmax([0, 1], [1, 1], probs, tol=1e-7) == 1
  with pytest.raises(AssertionError):
    _rules.assert_same_argmax([0, 0], [0, 1], probs, tol=1e-7)
