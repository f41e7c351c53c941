"""jaxmask's adaptive thresholds vs torch_ref's transcription of USB's hooks.

Both are fed the same sequence of 60 float32 probability batches (random,
all confident, all unsure, one class, and one-sample batches; batch sizes 1,
12 and 40) and, for FlexMatch, dataset indices that repeat across steps.
After every step the masks, the pseudo-labels and every state field are
compared. Both programs receive the same probabilities, so confidences and
pseudo-labels are identical; what differs is the order in which XLA and
PyTorch add up sums (batch means, the variance), so:

- FlexMatch: state and masks exactly equal (no sum over floats enters).
- FreeMatch: `label_hist`, and `time_p` with `use_quantile`, exactly equal;
  `p_model` and the mean-based `time_p` to `STATE_RTOL`; masks under the
  tie rule of `_rules.py` (a mask may differ only where a confidence lies
  within `_rules.TIE_ULPS` ulps of both programs' thresholds).
- SoftMatch: `p_model`, `mu`, `var` to `STATE_RTOL` (USB also adds
  `(1 - m) * x.item()` in float64); the weights to `WEIGHT_ATOL`.
- FixMatch and the batch percentile: masks exactly equal.

Measured on this CPU (jax 0.10.2, torch 2.13): float state fields differ by
at most 3e-7 relative (FreeMatch `p_model`, SoftMatch `var`), SoftMatch's
weights by at most 1.9e-6; no mask flipped.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmask
import _rules

torch = pytest.importorskip("torch")
import torch_ref  # noqa: E402  (needs torch)
from torch_ref import thresholds as usb  # noqa: E402

STATE_RTOL = 4e-6  # float32 sums in another order (measured <= 3e-7)
STATE_ATOL = 1e-9
WEIGHT_ATOL = 2e-5  # SoftMatch's weights (measured <= 1.9e-6)
NUM_CLASSES = 10
NUM_UNLABELLED = 50
STEPS = 60
BATCHES = (12, 1, 40)


def _softmax(x):
  e = np.exp(x - x.max(axis=1, keepdims=True))
  return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def _sequence(seed=0, num_classes=NUM_CLASSES):
  """60 (probs [B, C] float32, indices [B] int32) batches of five kinds."""
  rng = np.random.default_rng(seed)
  out = []
  for step in range(STEPS):
    batch = BATCHES[step % len(BATCHES)]
    kind = step % 5
    x = rng.normal(size=(batch, num_classes)) * 3.0
    if kind == 1:  # all confident (confidence ~ 1)
      x[np.arange(batch), rng.integers(0, num_classes, batch)] += 25.0
    elif kind == 2:  # all unsure (nearly uniform)
      x *= 0.01
    elif kind == 3:  # one class: every sample's argmax is class 3
      x[:, 3] += 8.0
    indices = rng.choice(NUM_UNLABELLED, size=batch, replace=False)
    out.append((_softmax(x), indices.astype(np.int32)))
  return out


SEQUENCE = _sequence()


def _assert_state(got, want, exact=(), step=0):
  for name in got._fields:
    g, w = np.asarray(getattr(got, name)), np.asarray(getattr(want, name))
    msg = f"state.{name} at step {step}"
    assert g.dtype in (np.float32, np.int32), msg
    if name in exact or g.dtype == np.int32:
      np.testing.assert_array_equal(g, w, err_msg=msg)
    else:
      np.testing.assert_allclose(g, w, rtol=STATE_RTOL, atol=STATE_ATOL,
                                 err_msg=msg)


def _assert_threshold_mask(got_mask, want_mask, confidence, got_thr, want_thr,
                           step, own_threshold=True):
  """Masks `confidence >= threshold` (per sample) under the tie rule.

  `own_threshold=False` when `got_thr` is not jaxmask's own value (e.g. a
  NumPy re-computation through a `log`): then only the tie rule applies.
  """
  if own_threshold:
    np.testing.assert_array_equal(
        got_mask, (confidence >= got_thr).astype(np.float32))  # own rule, exact
  tol = _rules.TIE_ULPS * np.spacing(np.abs(np.asarray(want_thr, np.float32)))
  return _rules.assert_equal_except_ties(
      got_mask, want_mask, got_values=confidence, want_values=confidence,
      got_threshold=got_thr, want_threshold=want_thr, tol=tol,
      err_msg=f"mask at step {step}")


def _run(threshold, reference, check_step):
  """Feeds SEQUENCE to both; `check_step(i, probs, out, state, prev, mask, labels)`."""
  state = threshold.init()
  update = jax.jit(threshold.update)
  for step, (probs, indices) in enumerate(SEQUENCE):
    prev = state
    out, state = update(jnp.asarray(probs), state, indices=jnp.asarray(indices))
    mask, labels = reference.update(torch.from_numpy(probs),
                                    torch.from_numpy(indices).long())
    assert out.mask.dtype == jnp.float32 and out.pseudo_labels.dtype == jnp.int32
    np.testing.assert_array_equal(out.pseudo_labels, labels.numpy())
    check_step(step, probs, out, state, prev, mask.numpy(), reference.state())
  return state


@pytest.mark.parametrize("p_cutoff", [0.95, 0.7])
def test_fixmatch_matches_usb(p_cutoff):
  def check(step, probs, out, state, prev, mask, ref_state):
    np.testing.assert_array_equal(out.mask, mask, err_msg=f"step {step}")

  _run(jaxmask.fixmatch(p_cutoff=p_cutoff), torch_ref.fixmatch(p_cutoff), check)


@pytest.mark.parametrize("q,keep", [(50.0, "low"), (20.0, "high")])
def test_percentile_threshold_matches_mlkd(q, keep):
  def check(step, probs, out, state, prev, mask, ref_state):
    np.testing.assert_array_equal(out.mask, mask, err_msg=f"step {step}")

  _run(jaxmask.percentile_threshold(q=q, keep=keep),
       torch_ref.percentile_threshold(q, keep), check)


def _flexmatch_thresholds(acc, labels, p_cutoff, mapping):
  """The per-sample thresholds of USB's mappings, in float32 (NumPy)."""
  a = np.asarray(acc, np.float32)[labels]
  p = np.float32(p_cutoff)
  if mapping == "convex":
    return p * (a / (np.float32(2) - a))
  if mapping == "linear":
    return p * (a + np.float32(1)) / np.float32(2)
  return p * (np.log(a + np.float32(1)) + np.float32(0.5)) / np.float32(
      np.log(2.0) + 0.5)


@pytest.mark.parametrize("mapping,p_cutoff", [("convex", 0.95),
                                              ("linear", 0.6),
                                              ("concave", 0.8)])
@pytest.mark.parametrize("warmup", [True, False])
def test_flexmatch_matches_usb(mapping, warmup, p_cutoff):
  seen = {"passed_at_zero": 0, "rewritten": 0}

  def check(step, probs, out, state, prev, mask, ref_state):
    labels = np.asarray(out.pseudo_labels)
    # Masked with the *previous* state. The convex and linear thresholds are
    # +, -, *, / of equal float32 values, equal bit for bit on any machine;
    # the concave one goes through a `log` (XLA's vs NumPy's, which may
    # differ in the last bit by machine), so there only the tie rule holds.
    thr = _flexmatch_thresholds(prev.classwise_acc, labels, p_cutoff, mapping)
    exact = mapping != "concave"
    flips = _assert_threshold_mask(out.mask, mask, probs.max(1), thr, thr, step,
                                   own_threshold=exact)
    if exact:
      assert flips == 0
    _assert_state(state, ref_state, exact=state._fields, step=step)
    if step == 0:
      seen["passed_at_zero"] = int(np.asarray(out.mask).sum())
    old, new = np.asarray(prev.selected_label), np.asarray(state.selected_label)
    seen["rewritten"] += int(((old >= 0) & (new != old)).sum())

  state = _run(jaxmask.flexmatch(num_classes=NUM_CLASSES,
                                 num_unlabelled=NUM_UNLABELLED,
                                 p_cutoff=p_cutoff, warmup=warmup,
                                 mapping=mapping),
               torch_ref.flexmatch(NUM_CLASSES, NUM_UNLABELLED, p_cutoff,
                                   warmup, mapping), check)
  if mapping == "convex":  # acc = 0 at first: every sample passes
    assert seen["passed_at_zero"] == BATCHES[0]
  assert seen["rewritten"] > 0  # repeated indices got new labels
  assert (np.asarray(state.selected_label) >= 0).any()


@pytest.mark.parametrize("use_quantile", [False, True])
@pytest.mark.parametrize("clip_thresh,momentum", [(False, 0.999), (True, 0.1)])
def test_freematch_matches_usb(use_quantile, clip_thresh, momentum):
  seen = {"clipped": 0}

  def check(step, probs, out, state, prev, mask, ref_state):
    exact = ("label_hist", "time_p") if use_quantile else ("label_hist",)
    _assert_state(state, ref_state, exact=exact, step=step)
    labels = np.asarray(out.pseudo_labels)

    def thresholds(s):  # from the *updated* state
      p_model = np.asarray(s.p_model, np.float32)
      return np.float32(s.time_p) * (p_model / p_model.max())[labels]

    _assert_threshold_mask(out.mask, mask, probs.max(1), thresholds(state),
                           thresholds(ref_state), step)
    seen["clipped"] += bool(np.float32(state.time_p) == np.float32(0.95))

  _run(jaxmask.freematch(num_classes=NUM_CLASSES, momentum=momentum,
                         use_quantile=use_quantile, clip_thresh=clip_thresh),
       torch_ref.freematch(NUM_CLASSES, momentum, use_quantile, clip_thresh),
       check)
  if clip_thresh and momentum == 0.1:
    assert seen["clipped"] > 0  # the clip was exercised


@pytest.mark.parametrize("dist_align", [True, False])
@pytest.mark.parametrize("momentum,n_sigma", [(0.999, 2.0), (0.7, 3.0)])
def test_softmatch_matches_usb(dist_align, momentum, n_sigma):
  worst = [0.0]

  def check(step, probs, out, state, prev, mask, ref_state):
    _assert_state(state, ref_state, step=step)
    assert int(state.count) == step + 1
    if dist_align and step == 0:  # the first batch sets p_model
      np.testing.assert_allclose(state.p_model, probs.mean(0), rtol=1e-6)
    np.testing.assert_allclose(out.mask, mask, rtol=0, atol=WEIGHT_ATOL,
                               err_msg=f"weights at step {step}")
    worst[0] = max(worst[0], float(np.abs(np.asarray(out.mask) - mask).max()))
    assert np.all((np.asarray(out.mask) >= 0) & (np.asarray(out.mask) <= 1))

  _run(jaxmask.softmatch(num_classes=NUM_CLASSES, momentum=momentum,
                         n_sigma=n_sigma, dist_align=dist_align),
       torch_ref.softmatch(NUM_CLASSES, momentum, n_sigma, dist_align), check)
  assert worst[0] < WEIGHT_ATOL


def test_softmatch_pseudo_labels_come_from_unaligned_probs():
  """Alignment can move the argmax; USB's pseudo-labels ignore it."""
  rng = np.random.default_rng(5)
  warm = _softmax(rng.normal(size=(64, 3)) + np.array([6.0, 0.0, 0.0]))
  probs = np.array([[0.55, 0.45, 0.0], [0.5, 0.3, 0.2]], np.float32)
  t, ref = jaxmask.softmatch(num_classes=3), torch_ref.softmatch(3)
  update = jax.jit(t.update)
  state = t.init()
  _, state = update(warm, state)  # p_model: class 0 dominates
  ref.update(torch.from_numpy(warm))
  out, state = update(probs, state)
  mask, labels = ref.update(torch.from_numpy(probs))
  aligned = usb.DistAlignEMAHook(3)
  aligned.p_model = torch.tensor(np.asarray(state.p_model))
  aligned_argmax = (torch.from_numpy(probs) * (aligned.p_target + 1e-6)
                    / (aligned.p_model + 1e-6)).argmax(1).numpy()
  np.testing.assert_array_equal(out.pseudo_labels, [0, 0])
  np.testing.assert_array_equal(labels.numpy(), [0, 0])
  assert (aligned_argmax != 0).any()  # the aligned argmax differs
  np.testing.assert_allclose(out.mask, mask.numpy(), atol=WEIGHT_ATOL)


def test_softmatch_one_sample_batch_usb_gives_nan_jaxmask_keeps_var():
  probs = np.array([[0.7, 0.2, 0.1]], np.float32)
  usb_hook = usb.SoftMatchWeightingHook(3)  # USB exactly
  with pytest.warns(UserWarning):  # PyTorch: degrees of freedom <= 0
    usb_hook.masking(torch.from_numpy(probs))
  assert np.isnan(usb_hook.prob_max_var_t.item())
  t = jaxmask.softmatch(num_classes=3)
  out, state = jax.jit(t.update)(probs, t.init())
  assert float(state.var) == 1.0 and np.isfinite(float(state.mu))
  ref = torch_ref.softmatch(3)  # the documented choice
  mask, _ = ref.update(torch.from_numpy(probs))
  _assert_state(state, ref.state())
  np.testing.assert_allclose(out.mask, mask.numpy(), atol=WEIGHT_ATOL)


_fairness_value_and_grad = jax.jit(
    jax.value_and_grad(jaxmask.freematch_fairness_loss))


@pytest.fixture(scope="module")
def freematch_states():
  """jaxmask's and torch_ref's FreeMatch states after six batches."""
  t, ref = jaxmask.freematch(num_classes=NUM_CLASSES, momentum=0.9), \
      torch_ref.freematch(NUM_CLASSES, 0.9)
  state, update = t.init(), jax.jit(t.update)
  for probs, _ in SEQUENCE[:6]:
    _, state = update(probs, state)
    ref.update(torch.from_numpy(probs))
  return state, ref


@pytest.mark.parametrize("selected", ["all", "some", "one", "none"])
def test_fairness_loss_and_gradient_match_usb(selected, freematch_states):
  rng = np.random.default_rng(7)
  state, ref = freematch_states
  logits = (rng.normal(size=(16, NUM_CLASSES)) * 2).astype(np.float32)
  mask = {"all": np.ones(16), "some": rng.random(16) < 0.5,
          "one": np.eye(16)[3], "none": np.zeros(16)}[selected]
  mask = mask.astype(np.float32)
  loss, grad = _fairness_value_and_grad(jnp.asarray(logits), jnp.asarray(mask),
                                       state)
  x = torch.from_numpy(logits).requires_grad_(True)
  want = torch_ref.freematch_fairness_loss(x, torch.from_numpy(mask), ref.state())
  np.testing.assert_allclose(loss, want.item(), rtol=1e-5, atol=1e-6)
  if selected == "none":
    assert float(loss) == 0.0
    np.testing.assert_array_equal(grad, 0.0)
    return
  want.backward()
  np.testing.assert_allclose(grad, x.grad.numpy(), rtol=1e-4, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(grad)[mask == 0], 0.0)
