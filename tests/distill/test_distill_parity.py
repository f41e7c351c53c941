"""MLKD's losses vs torch_ref (MLKD's released code, in PyTorch).

torch_ref transcribes `mdistiller/distillers/KD_ours.py`.

`kd_loss`, `class_correlation_loss`, `batch_correlation_loss` (with and
without masks) and `mlkd_loss` (both modes), values and gradients. Tolerances
(float32): losses 1e-5 relative (plus 1e-7 absolute); gradients 1e-5
relative, 1e-6 absolute. The confidence masks' parity is in
tests/percentile/test_confidence_masks_parity.py.
"""

import jax
import numpy as np
import pytest

import jaxmask
from _strategies import seeded_logits as _logits

torch = pytest.importorskip("torch")
import torch_ref  # noqa: E402  (needs torch)


TEMPERATURES = [1.0, 4.0, 8.0]


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
