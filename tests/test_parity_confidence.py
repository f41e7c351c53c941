"""jaxmask vs torch_ref (MLKD's released code, `mdistiller/distillers/KD_ours.py`, in PyTorch).

Tolerances (float32): probabilities and confidences 1e-6 absolute; thresholds
equal NumPy's percentile of jaxmask's own confidences exactly and torch_ref's
within 1e-6; jaxmask's masks are exactly its own rule (`<=`/`>=` its
threshold); against torch_ref, masks and pseudo-labels are compared under the
rule of `_rules.py` (equal except where a value ties the threshold within
`_rules.TIE_ULPS` float32 ulps: the two frameworks sum in different orders);
losses 1e-5 relative (plus 1e-7 absolute); gradients 1e-5 relative, 1e-6
absolute.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmask
import _rules

torch = pytest.importorskip("torch")
import torch_ref  # noqa: E402  (needs torch)

BATCHES = [1, 2, 3, 4, 7, 64, 257]
CLASSES = [2, 5, 10, 100, 1000]
TEMPERATURES = [1.0, 4.0, 8.0]

QS = [0, 10, 25, 33.3, 50, 75, 90, 100]
KEEPS = ["low", "high"]
# One compilation per shape evaluates every (q, keep) pair.
_all_masks = jax.jit(lambda x: [jaxmask.confidence_masks(x, q=q, keep=keep)
                                for q in QS for keep in KEEPS])


def _logits(shape, seed, scale=3.0):
  return (np.random.default_rng(seed).normal(size=shape) * scale).astype(np.float32)


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


def _torch_grads(fn, *arrays):
  tensors = [torch.tensor(a, requires_grad=True) for a in arrays]
  out = fn(*tensors)
  out.backward()
  return out.detach().numpy(), [t.grad.numpy() for t in tensors]


@pytest.mark.parametrize("batch,classes", [(1, 2), (7, 10), (64, 100), (4, 1000)])
def test_single_losses_and_gradients_match_torch_ref(batch, classes):
  s = _logits((batch, classes), seed=batch)
  t = _logits((batch, classes), seed=batch + 1)
  m = np.random.default_rng(batch).random(batch) < 0.5
  cm = np.random.default_rng(classes).random(classes) < 0.5
  cases = [
      (jaxmask.kd_loss, {}, lambda a, b, T: torch_ref.kd_loss(a, b, T)),
      (jaxmask.kd_loss, {"mask": m}, lambda a, b, T: (torch_ref.kd_loss(
          a, b, T, reduce=False) * torch.from_numpy(m)).mean()),
      (jaxmask.class_correlation_loss, {},
       lambda a, b, T: torch_ref.class_correlation_loss(a, b, T)),
      (jaxmask.class_correlation_loss, {"class_mask": cm},
       lambda a, b, T: (torch_ref.class_correlation_loss(
           a, b, T, reduce=False) * torch.from_numpy(cm)).sum()),
      (jaxmask.batch_correlation_loss, {},
       lambda a, b, T: torch_ref.batch_correlation_loss(a, b, T)),
      (jaxmask.batch_correlation_loss, {"mask": m},
       lambda a, b, T: (torch_ref.batch_correlation_loss(
           a, b, T, reduce=False) * torch.from_numpy(m)).sum()),
  ]
  for loss, kw, ref in cases:
    # The temperature is traced: one compilation serves every temperature.
    value_and_grad = jax.jit(jax.value_and_grad(
        lambda a, b, T, loss=loss, kw=kw: loss(a, b, temperature=T, **kw),
        argnums=(0, 1)))
    for T in TEMPERATURES:
      got, got_grads = value_and_grad(s, t, T)
      want, want_grads = _torch_grads(lambda a, b, ref=ref, T=T: ref(a, b, T),
                                      s, t)
      msg = f"{loss.__name__} {kw.keys()} T={T}"
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7, err_msg=msg)
      for g, w in zip(got_grads, want_grads):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6, err_msg=msg)


@pytest.mark.parametrize("mode", ["faithful", "masked"])
@pytest.mark.parametrize("batch,classes", [(1, 5), (7, 10), (64, 100), (257, 10)])
def test_mlkd_objective_and_gradients_match_torch_ref(batch, classes, mode):
  views = [_logits((batch, classes), seed=batch + i) for i in range(4)]

  def total(sw, ss, tw, ts, T):
    out = jaxmask.mlkd_loss(sw, ss, tw, ts, temperature=T, mode=mode)
    return out.total, out[:3]

  value_and_grad = jax.jit(jax.value_and_grad(total, argnums=(0, 1), has_aux=True))
  for T in TEMPERATURES:
    (_, got), grads = value_and_grad(*views, T)
    want = torch_ref.mlkd_loss(*map(torch.from_numpy, views), temperature=T, mode=mode)
    for g, w in zip(got, want):
      np.testing.assert_allclose(g, w.numpy(), rtol=1e-5, atol=1e-7, err_msg=f"T={T}")
    _, want_grads = _torch_grads(
        lambda sw, ss, T=T: sum(torch_ref.mlkd_loss(
            sw, ss, *map(torch.from_numpy, views[2:]), temperature=T,
            mode=mode)), views[0], views[1])
    for g, w in zip(grads, want_grads):
      np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6, err_msg=f"T={T}")
