"""The one rule for comparing masks and selections made by two programs.

Two programs that compute the same values in a different order (jaxmask and
torch_ref, one device and eight, this CPU and the one that recorded a golden
file) agree on the values only to rounding. A mask or a selection made by
comparing those values with a threshold may therefore differ where a value
ties the threshold within rounding, and nowhere else.

The rule: an element may differ only where, in *both* programs, its value
lies within `tol` of that program's threshold; every other element must be
equal. `tol` is the tolerance the values themselves are compared under (for
float32 sums and softmax outputs, a few ulps of the threshold; for sampled
logits, the sampler's stated tolerance). Each program's own rule (`v <= thr`,
ties kept) is checked exactly elsewhere, on its own values.
"""

import numpy as np

# Measured: jaxmask's and torch's float32 softmax confidences and per-class
# sums differ by at most 6 ulps on the test inputs; an element can flip only
# if its distance to the threshold is within the two values' rounding.
TIE_ULPS = 16


def ulps(threshold, count: int = TIE_ULPS) -> float:
  """`count` float32 ulps at the magnitude of `threshold`."""
  return float(count * np.spacing(np.abs(np.float32(threshold))))


def assert_equal_except_ties(got, want, *, got_values, want_values,
                             got_threshold, want_threshold, tol,
                             err_msg="") -> int:
  """Asserts `got == want` except at rounding ties; returns the flips.

  Args:
    got, want: boolean masks of one shape (or the per-row threshold shape
      broadcast against them).
    got_values, want_values: the values each program compared.
    got_threshold, want_threshold: each program's threshold (broadcastable).
    tol: how far from its threshold a value may lie and still flip.
    err_msg: context for the failure message.

  Returns:
    The number of elements that differ (all of them rounding ties).
  """
  got, want = np.asarray(got, bool), np.asarray(want, bool)
  assert got.shape == want.shape, (got.shape, want.shape, err_msg)
  near = (
      (np.abs(np.asarray(got_values, np.float64) - np.asarray(
          got_threshold, np.float64)) <= tol)
      & (np.abs(np.asarray(want_values, np.float64) - np.asarray(
          want_threshold, np.float64)) <= tol))
  differ = got != want
  bad = np.argwhere(differ & ~near)
  assert bad.size == 0, (
      f"{err_msg}: {len(bad)} element(s) differ away from the threshold"
      f" (tolerance {tol:g}), first at {tuple(bad[0])}: values"
      f" {np.asarray(got_values)[tuple(bad[0])]!r} /"
      f" {np.asarray(want_values)[tuple(bad[0])]!r}")
  return int(differ.sum())


def selection_mask(points, candidates):
  """`[rows, num_candidates]` bool: which candidates each row selected."""
  points, candidates = np.asarray(points), np.asarray(candidates)
  out = np.zeros(candidates.shape[:2], bool)
  for row in range(candidates.shape[0]):
    index = {tuple(c): i for i, c in enumerate(candidates[row])}
    assert len(index) == candidates.shape[1], "candidates must be distinct"
    for p in points[row]:
      out[row, index[tuple(p)]] = True
  return out


def kth_largest(scores, k: int):
  """`[rows, 1]`: each row's k-th largest score, the selection's threshold."""
  return np.sort(np.asarray(scores), axis=1)[:, ::-1][:, k - 1:k]


def assert_same_selection(got, want, candidates, *, got_scores, want_scores,
                          k, tol, err_msg="") -> int:
  """Two top-`k` selections of candidate points under the rule above."""
  got_mask = selection_mask(got, candidates)
  want_mask = selection_mask(want, candidates)
  assert (got_mask.sum(1) == k).all() and (want_mask.sum(1) == k).all()
  return assert_equal_except_ties(
      got_mask, want_mask, got_values=got_scores, want_values=want_scores,
      got_threshold=kth_largest(got_scores, k),
      want_threshold=kth_largest(want_scores, k), tol=tol, err_msg=err_msg)


def assert_same_argmax(got, want, values, *, tol, err_msg="") -> int:
  """Arg-max labels equal except where the two top values tie within `tol`."""
  got, want, values = np.asarray(got), np.asarray(want), np.asarray(values)
  rows = np.arange(values.shape[0])
  differ = got != want
  tie = np.abs(values[rows, got] - values[rows, want]) <= tol
  bad = np.flatnonzero(differ & ~tie)
  assert bad.size == 0, f"{err_msg}: labels differ at rows {bad[:5]}"
  return int(differ.sum())


def assert_confidence_masks_match(got, want, *, err_msg="") -> int:
  """Two `ConfidenceMasks`-like results (attributes or a mapping) under the rule.

  The sample and class masks may differ only at rounding ties of their
  thresholds (16 ulps); returns the number of flips.
  """
  field = (lambda name: want[name]) if hasattr(want, "__getitem__") and not (
      hasattr(want, "_fields")) else (lambda name: getattr(want, name))
  flips = 0
  for name, values, threshold in (
      ("mask", "confidence", "threshold"),
      ("class_mask", "class_confidence", "class_threshold")):
    flips += assert_equal_except_ties(
        getattr(got, name), np.asarray(field(name)),
        got_values=getattr(got, values),
        want_values=np.asarray(field(values)),
        got_threshold=getattr(got, threshold),
        want_threshold=np.asarray(field(threshold)),
        tol=ulps(np.asarray(field(threshold))), err_msg=f"{name} {err_msg}")
  return flips
