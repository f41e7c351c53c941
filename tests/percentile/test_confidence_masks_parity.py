"""confidence_masks vs torch_ref (MLKD's released code, in PyTorch).

torch_ref transcribes `mdistiller/distillers/KD_ours.py`.

Tolerances (float32): probabilities and confidences 1e-6 absolute; thresholds
equal NumPy's percentile of jaxmask's own confidences exactly and torch_ref's
within 1e-6; jaxmask's masks are exactly its own rule (`<=`/`>=` its
threshold); against torch_ref, masks and pseudo-labels are compared under the
rule of `_rules.py` (equal except where a value ties the threshold within
`_rules.TIE_ULPS` float32 ulps: the two frameworks sum in different orders).
The losses' parity is in tests/distill/test_distill_parity.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmask
import _rules
from _strategies import seeded_logits as _logits

torch = pytest.importorskip("torch")
import torch_ref  # noqa: E402  (needs torch)


BATCHES = [1, 2, 3, 4, 7, 64, 257]
CLASSES = [2, 5, 10, 100, 1000]


QS = [0, 10, 25, 33.3, 50, 75, 90, 100]
KEEPS = ["low", "high"]
# One compilation per shape evaluates every (q, keep) pair.
_all_masks = jax.jit(lambda x: [jaxmask.confidence_masks(x, q=q, keep=keep)
                                for q in QS for keep in KEEPS])


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("classes", CLASSES)
def test_masks_match_torch_ref(batch, classes):
  x = _logits((batch, classes), seed=batch * 1000 + classes)
  results = _all_masks(jnp.asarray(x))
  pairs = [(q, keep) for q in QS for keep in KEEPS]
  for (q, keep), got in zip(pairs, results):
    want = torch_ref.confidence_masks(torch.from_numpy(x), q=q, keep=keep)
    msg = f"q={q} keep={keep}"
    np.testing.assert_allclose(got.probs, want.probs, atol=1e-6, err_msg=msg)
    np.testing.assert_allclose(got.confidence, want.confidence, atol=1e-6, err_msg=msg)
    np.testing.assert_array_equal(
        got.threshold, np.percentile(np.asarray(got.confidence), q), err_msg=msg)
    np.testing.assert_allclose(got.threshold, want.threshold, atol=1e-6, err_msg=msg)
    np.testing.assert_allclose(got.class_confidence, want.class_confidence,
                               rtol=1e-5, atol=1e-6, err_msg=msg)
    np.testing.assert_allclose(got.class_threshold, want.class_threshold,
                               rtol=1e-5, atol=1e-6, err_msg=msg)
    own_rule = np.less_equal if keep == "low" else np.greater_equal
    np.testing.assert_array_equal(
        got.mask, own_rule(got.confidence, got.threshold), err_msg=msg)
    np.testing.assert_array_equal(
        got.class_mask, own_rule(got.class_confidence, got.class_threshold),
        err_msg=msg)
    _rules.assert_confidence_masks_match(got, want, err_msg=msg)
    _rules.assert_same_argmax(got.pseudo_labels, np.asarray(want.pseudo_labels),
                              got.probs, tol=_rules.ulps(1.0), err_msg=msg)

def test_nan_and_inf_rows_match_torch_ref():
  x = _logits((6, 5), seed=1)
  x[1, 3] = np.nan
  x[4, 0] = np.inf
  got = jaxmask.confidence_masks(x)
  want = torch_ref.confidence_masks(torch.from_numpy(x))
  np.testing.assert_array_equal(np.isnan(got.probs), np.isnan(want.probs.numpy()))
  np.testing.assert_array_equal(got.mask, want.mask)
  np.testing.assert_array_equal(got.class_mask, want.class_mask)
  assert np.isnan(got.threshold) and np.isnan(want.threshold)
