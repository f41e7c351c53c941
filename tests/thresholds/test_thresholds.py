"""Adaptive thresholds: USB's semantics on hand-made batches, the documented
edge cases (one-sample batches, zero variance, NaN), transformations (eager,
jit, vmap, scan), the state as a checkpointable pytree, and argument errors.

Parity with torch_ref's transcription of USB over long sequences is in
tests/thresholds/test_thresholds_parity.py; 8 simulated devices in
tests/distributed/test_multidevice.py.
"""

import chex
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmask

C = 4
N = 16  # FlexMatch's unlabelled dataset

FACTORIES = {
    "fixmatch": lambda: jaxmask.fixmatch(p_cutoff=0.8),
    "percentile": lambda: jaxmask.percentile_threshold(q=50.0, keep="high"),
    "flexmatch": lambda: jaxmask.flexmatch(num_classes=C, num_unlabelled=N,
                                           p_cutoff=0.6),
    "freematch": lambda: jaxmask.freematch(num_classes=C, momentum=0.9),
    "freematch_quantile": lambda: jaxmask.freematch(
        num_classes=C, momentum=0.5, use_quantile=True, clip_thresh=True),
    "softmatch": lambda: jaxmask.softmatch(num_classes=C, momentum=0.9),
    "softmatch_unaligned": lambda: jaxmask.softmatch(
        num_classes=C, momentum=0.9, n_sigma=3.0, dist_align=False),
}


def _probs(seed, batch=8, classes=C, scale=2.0):
  x = np.random.default_rng(seed).normal(size=(batch, classes)) * scale
  e = np.exp(x - x.max(1, keepdims=True))
  return (e / e.sum(1, keepdims=True)).astype(np.float32)


def _indices(seed, batch=8):
  return np.random.default_rng(seed).choice(N, batch, replace=False).astype(np.int32)


def _assert_trees_close(got, want, rtol=1e-6, err_msg=""):
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    if np.asarray(w).dtype == np.int32:
      np.testing.assert_array_equal(g, w, err_msg=err_msg)
    else:
      np.testing.assert_allclose(g, w, rtol=rtol, atol=1e-7, err_msg=err_msg)


# ---------------------------------------------------------------------------
# USB's semantics, by hand.
# ---------------------------------------------------------------------------


def test_fixmatch_keeps_the_cutoff_itself():
  t = jaxmask.fixmatch()
  p = np.float32(0.95)
  probs = np.array([[p, 1 - p], [np.nextafter(p, 0), 0.05], [0.2, 0.8]],
                   np.float32)
  out, state = t.update(probs, t.init())
  np.testing.assert_array_equal(out.mask, [1.0, 0.0, 0.0])
  np.testing.assert_array_equal(out.pseudo_labels, [0, 0, 1])
  assert state == t.init() == ()


def test_flexmatch_masks_with_the_previous_state_then_updates():
  t = jaxmask.flexmatch(num_classes=2, num_unlabelled=6, p_cutoff=0.9)
  update = jax.jit(t.update)
  probs = np.array([[0.95, 0.05], [0.2, 0.8], [0.05, 0.95]], np.float32)
  state = t.init()
  np.testing.assert_array_equal(state.selected_label, [-1] * 6)
  np.testing.assert_array_equal(state.classwise_acc, [0, 0])

  out, state = update(probs, state, indices=np.array([0, 1, 2]))
  np.testing.assert_array_equal(out.mask, [1, 1, 1])  # acc 0: threshold 0
  np.testing.assert_array_equal(state.selected_label, [0, -1, 1, -1, -1, -1])
  np.testing.assert_array_equal(state.classwise_acc, [0.25, 0.25])  # 1 / 4

  out, state = update(probs, state, indices=np.array([3, 4, 5]))
  np.testing.assert_array_equal(out.mask, [1, 1, 1])  # 0.9 * 0.25 / 1.75
  np.testing.assert_array_equal(state.selected_label, [0, -1, 1, 0, -1, 1])
  np.testing.assert_array_equal(state.classwise_acc, [1.0, 1.0])  # 2 / 2

  unsure = np.array([[0.85, 0.15]], np.float32)
  out, state = update(unsure, state, indices=np.array([1]))
  np.testing.assert_array_equal(out.mask, [0])  # 0.85 < 0.9 * 1 / (2 - 1)
  np.testing.assert_array_equal(state.selected_label, [0, -1, 1, 0, -1, 1])

  # A repeated index takes its new confident label.
  out, state = update(probs[2:], state, indices=np.array([0]))
  np.testing.assert_array_equal(out.mask, [1])
  np.testing.assert_array_equal(state.selected_label, [1, -1, 1, 0, -1, 1])
  np.testing.assert_array_equal(state.classwise_acc,
                                np.float32([1 / 3, 1.0]))  # 1/3, 3/3


def test_flexmatch_without_warmup_and_the_full_bucket_rule():
  probs = np.array([[0.95, 0.05], [0.97, 0.03]], np.float32)
  t = jaxmask.flexmatch(num_classes=2, num_unlabelled=3, warmup=False)
  _, state = jax.jit(t.update)(probs[:1], t.init(), indices=np.array([0]))
  np.testing.assert_array_equal(state.classwise_acc, [1.0, 0.0])  # 1 / max(1)
  # Every sample in one bucket (class 0): USB leaves the effects unchanged.
  t = jaxmask.flexmatch(num_classes=2, num_unlabelled=2)
  state = t.init()._replace(classwise_acc=jnp.array([0.3, 0.7]))
  _, state = jax.jit(t.update)(probs, state, indices=np.array([0, 1]))
  np.testing.assert_array_equal(state.selected_label, [0, 0])
  np.testing.assert_allclose(state.classwise_acc, [0.3, 0.7])


@pytest.mark.parametrize("mapping", ["convex", "linear", "concave"])
def test_flexmatch_mappings(mapping):
  acc = np.array([0.0, 0.25, 0.5, 1.0], np.float32)
  want = {"convex": acc / (2 - acc), "linear": (acc + 1) / 2,
          "concave": (np.log(acc + 1) + 0.5) / (np.log(2) + 0.5)}[mapping]
  threshold = 0.8 * want
  # Confidences a hair above and below each class's threshold.
  eps = 1e-4
  probs = np.zeros((8, 4), np.float32)
  for c in range(4):
    for k, delta in enumerate((eps, -eps)):
      conf = np.clip(threshold[c] + delta, 0.3, 0.999)
      probs[2 * c + k] = (1 - conf) / 3
      probs[2 * c + k, c] = conf
  t = jaxmask.flexmatch(num_classes=4, num_unlabelled=8, p_cutoff=0.8,
                        mapping=mapping)
  state = t.init()._replace(classwise_acc=jnp.asarray(acc))
  out, _ = jax.jit(t.update)(probs, state, indices=np.arange(8))
  conf = probs.max(1)
  np.testing.assert_array_equal(out.mask, conf >= threshold[probs.argmax(1)])


def test_flexmatch_needs_indices_and_checks_them():
  t = jaxmask.flexmatch(num_classes=C, num_unlabelled=N)
  state, probs = t.init(), _probs(0, 4)
  with pytest.raises(ValueError, match="indices"):
    t.update(probs, state)
  with pytest.raises(TypeError, match="indices"):
    t.update(probs, state, indices=np.zeros(4, np.float32))
  with pytest.raises(ValueError, match="indices"):
    t.update(probs, state, indices=np.arange(3))
  with pytest.raises(ValueError, match="indices"):
    t.update(probs, state, indices=np.array([0, 1, 2, N]))
  # Traced indices out of range are never written.
  confident = np.tile(np.array([[0.97, 0.01, 0.01, 0.01]], np.float32), (4, 1))
  _, state = jax.jit(t.update)(confident, state,
                               indices=np.array([-1, N, 2 * N, 3]))
  np.testing.assert_array_equal(np.flatnonzero(state.selected_label >= 0), [3])


def test_freematch_updates_first_then_masks():
  m = 0.5
  t = jaxmask.freematch(num_classes=2, momentum=m)
  probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]], np.float32)
  out, state = jax.jit(t.update)(probs, t.init())
  conf = probs.max(1)
  time_p = 0.5 * m + (1 - m) * conf.mean()
  p_model = 0.5 * m + (1 - m) * probs.mean(0)
  label_hist = 0.5 * m + (1 - m) * np.array([2, 1]) / 3
  np.testing.assert_allclose(state.time_p, time_p, rtol=1e-6)
  np.testing.assert_allclose(state.p_model, p_model, rtol=1e-6)
  np.testing.assert_allclose(state.label_hist, label_hist, rtol=1e-6)
  threshold = time_p * (p_model / p_model.max())[probs.argmax(1)]
  np.testing.assert_array_equal(out.mask, conf >= threshold)  # [1, 0, 1]
  np.testing.assert_array_equal(out.mask, [1, 0, 1])


def test_freematch_quantile_and_clip():
  probs = _probs(3, 9, scale=6.0)
  t = jaxmask.freematch(num_classes=C, momentum=0.0, use_quantile=True)
  _, state = jax.jit(t.update)(probs, t.init())
  np.testing.assert_allclose(state.time_p, np.quantile(probs.max(1), 0.8),
                             rtol=1e-6)
  confident = np.tile(np.array([[0.99, 0.0, 0.01, 0.0]], np.float32), (5, 1))
  t = jaxmask.freematch(num_classes=C, momentum=0.0, clip_thresh=True)
  out, state = jax.jit(t.update)(confident, t.init())
  assert float(state.time_p) == np.float32(0.95)
  np.testing.assert_array_equal(out.mask, 1.0)


def test_softmatch_first_batch_sets_p_model_then_ema():
  m = 0.9
  t = jaxmask.softmatch(num_classes=C, momentum=m)
  first, second = _probs(1), _probs(2)
  update = jax.jit(t.update)
  out, state = update(first, t.init())
  np.testing.assert_allclose(state.p_model, first.mean(0), rtol=1e-6)
  assert int(state.count) == 1
  out, state2 = update(second, state)
  p_model = m * first.mean(0) + (1 - m) * second.mean(0)
  np.testing.assert_allclose(state2.p_model, p_model, rtol=1e-6)
  aligned = second * (1 / C + 1e-6) / (p_model + 1e-6)
  aligned /= aligned.sum(1, keepdims=True)
  conf = aligned.max(1)
  mu = m * float(state.mu) + (1 - m) * conf.mean()
  var = m * float(state.var) + (1 - m) * conf.var(ddof=1)
  np.testing.assert_allclose([state2.mu, state2.var], [mu, var], rtol=1e-6)
  weight = np.exp(-np.minimum(conf - mu, 0) ** 2 / (2 * var / 4))
  np.testing.assert_allclose(out.mask, weight, rtol=1e-5)
  np.testing.assert_array_equal(out.pseudo_labels, second.argmax(1))


def test_softmatch_one_sample_batches_keep_the_variance():
  t = jaxmask.softmatch(num_classes=C, momentum=0.5)
  update = jax.jit(t.update)
  out, state = update(_probs(4, 1), t.init())
  assert float(state.var) == 1.0  # USB: NaN (unbiased variance of one value)
  assert np.isfinite(float(state.mu)) and float(state.mu) != 1 / C
  assert 0 < float(out.mask[0]) <= 1
  _, state = update(_probs(5, 6), state)
  var = float(state.var)
  assert var != 1.0
  out, state = update(_probs(6, 1), state)
  assert float(state.var) == var and np.isfinite(np.asarray(out.mask)).all()


def test_softmatch_zero_variance_weights_the_mean_sample_one():
  """Momentum 0 and a constant batch: var = 0, USB's weight 0/0 = NaN."""
  t = jaxmask.softmatch(num_classes=2, momentum=0.0, dist_align=False)
  out, state = jax.jit(t.update)(np.array([[0.7, 0.3]] * 3, np.float32),
                                 t.init())
  assert float(state.var) == 0.0
  np.testing.assert_array_equal(out.mask, [1.0, 1.0, 1.0])


def test_percentile_threshold_is_percentile_mask():
  probs = _probs(7, 11)
  for q, keep in ((50.0, "low"), (20.0, "high"), (100.0, "high")):
    t = jaxmask.percentile_threshold(q=q, keep=keep)
    out, _ = jax.jit(t.update)(probs, t.init())
    want, _ = jaxmask.percentile_mask(probs.max(1), q=q, keep=keep)
    np.testing.assert_array_equal(out.mask, np.asarray(want, np.float32))


# ---------------------------------------------------------------------------
# Non-finite probabilities (documented in each docstring).
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_a_nan_row_never_gets_weight(name):
  t = FACTORIES[name]()
  update = jax.jit(t.update)
  probs = _probs(8, 6, scale=4.0)
  probs[2] = np.nan
  indices = _indices(8, 6)
  out, state = update(probs, t.init(), indices=indices)
  mask = np.asarray(out.mask)
  assert mask[2] == 0.0
  assert np.all((mask >= 0) & (mask <= 1)) and not np.isnan(mask).any()
  out2, state2 = update(_probs(9, 6), state, indices=_indices(9, 6))
  mask2 = np.asarray(out2.mask)
  assert np.all((mask2 >= 0) & (mask2 <= 1))
  if name == "percentile":  # a NaN threshold: nothing kept, as NumPy
    assert mask.sum() == 0
  if name == "flexmatch":  # never written, the rest finite
    assert int(state.selected_label[indices[2]]) == -1
    assert np.isfinite(np.asarray(state.classwise_acc)).all()
  if name.startswith(("freematch", "softmatch")):  # the statistics are NaN
    statistic = state2.time_p if name.startswith("freematch") else state2.mu
    assert np.isnan(float(statistic))
    assert mask2.sum() == 0  # ... and so from then on every mask is 0


# ---------------------------------------------------------------------------
# Transformations, retracing, state.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["flexmatch", "freematch_quantile", "softmatch"])
def test_update_under_eager_jit_vmap(variant, name):
  t = FACTORIES[name]()
  state = t.init()
  leaves, treedef = jax.tree.flatten(state)

  def step(probs, indices, *leaves):
    out, new = t.update(probs, jax.tree.unflatten(treedef, leaves),
                        indices=indices)
    return out, jax.tree.leaves(new)

  fn = variant(step)
  want_state = state
  for seed in range(3):
    probs, indices = _probs(10 + seed), _indices(10 + seed)
    out, leaves = fn(probs, indices, *leaves)
    want, want_state = t.update(probs, want_state, indices=indices)
    np.testing.assert_allclose(out.mask, want.mask, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(out.pseudo_labels, want.pseudo_labels)
    _assert_trees_close(leaves, jax.tree.leaves(want_state))


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_repeated_updates_do_not_retrace(name):
  chex.clear_trace_counter()  # chex counts traces per source and call site
  t = FACTORIES[name]()
  update = jax.jit(chex.assert_max_traces(t.update, n=1))
  state = t.init()
  for seed in range(4):
    out, state = update(_probs(seed), state, indices=_indices(seed))
  for leaf in jax.tree.leaves((out, state)):
    assert leaf.dtype in (jnp.float32, jnp.int32), leaf.dtype


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_state_survives_scan_and_checkpoints(name):
  t = FACTORIES[name]()
  steps = 5
  probs = np.stack([_probs(20 + s) for s in range(steps)])
  indices = np.stack([_indices(20 + s) for s in range(steps)])

  def body(state, batch):
    out, state = t.update(batch[0], state, indices=batch[1])
    return state, out

  scanned_state, scanned = jax.jit(
      lambda s: jax.lax.scan(body, s, (probs, indices)))(t.init())
  state = t.init()
  update = jax.jit(t.update)
  for s in range(steps):
    out, state = update(probs[s], state, indices=indices[s])
    np.testing.assert_allclose(scanned.mask[s], out.mask, rtol=1e-6, atol=1e-7)
  _assert_trees_close(scanned_state, state)

  # flax serialisation and a plain NumPy round trip restore the same state.
  restored = flax.serialization.from_bytes(
      t.init(), flax.serialization.to_bytes(state))
  assert type(restored) is type(state)
  via_numpy = jax.tree.map(jnp.asarray, jax.tree.map(np.asarray, state))
  probs_next, indices_next = _probs(99), _indices(99)
  want_out, want_state = update(probs_next, state, indices=indices_next)
  for other in (restored, via_numpy):
    jax.tree.map(np.testing.assert_array_equal, other, state)
    got_out, got_state = update(probs_next, other, indices=indices_next)
    jax.tree.map(np.testing.assert_array_equal, (got_out, got_state),
                 (want_out, want_state))


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_no_gradient_flows_through_outputs_or_state(name):
  t = FACTORIES[name]()
  probs, indices = _probs(30), _indices(30)

  def f(p):
    out, state = t.update(p, t.init(), indices=indices)
    floats = [x.sum() for x in jax.tree.leaves(state) if x.dtype == jnp.float32]
    return (out.mask * jnp.arange(8.0)).sum() + sum(floats, 0.0)

  np.testing.assert_array_equal(jax.grad(f)(probs), 0.0)


def test_half_precision_probs_are_upcast():
  t = jaxmask.softmatch(num_classes=C)
  out, state = jax.jit(t.update)(jnp.asarray(_probs(31), jnp.bfloat16),
                                 t.init())
  assert out.mask.dtype == jnp.float32
  for leaf in jax.tree.leaves(state):
    assert leaf.dtype in (jnp.float32, jnp.int32)


# ---------------------------------------------------------------------------
# The fairness loss.
# ---------------------------------------------------------------------------


def _fairness_numpy(logits, mask, p_model, label_hist):
  """USB's `entropy_loss` with boolean indexing, in float64."""
  sel = logits[mask != 0].astype(np.float64)
  if len(sel) == 0:
    return 0.0
  e = np.exp(sel - sel.max(1, keepdims=True))
  prob = e / e.sum(1, keepdims=True)
  hist = np.bincount(prob.argmax(1), minlength=logits.shape[1]) / len(sel)
  inv = lambda x: np.where(x == 0, 0.0, 1 / np.where(x == 0, 1, x))
  mod_p = p_model * inv(label_hist)
  mod_p /= mod_p.sum()
  mod_q = prob.mean(0) * inv(hist)
  mod_q /= mod_q.sum()
  return float((mod_p * np.log(mod_q + 1e-12)).sum())


def test_fairness_loss_equals_boolean_indexing_and_ignores_unselected_nan():
  t = jaxmask.freematch(num_classes=C, momentum=0.5)
  state = t.init()
  for seed in range(3):
    _, state = t.update(_probs(40 + seed, scale=3.0), state)
  loss_and_grad = jax.jit(jax.value_and_grad(jaxmask.freematch_fairness_loss))
  rng = np.random.default_rng(0)
  for trial in range(4):
    logits = (rng.normal(size=(8, C)) * 3).astype(np.float32)
    mask = (rng.random(8) < 0.5).astype(np.float32)
    mask[trial] = 1.0
    want = _fairness_numpy(logits, mask, np.asarray(state.p_model, np.float64),
                           np.asarray(state.label_hist, np.float64))
    loss, grad = loss_and_grad(logits, mask, state)
    np.testing.assert_allclose(loss, want, rtol=1e-5, atol=1e-6)
    assert float(loss) <= 1e-6  # <= 0 by design
    bad = logits.copy()
    bad[mask == 0] = np.nan
    loss_nan, grad_nan = loss_and_grad(bad, mask, state)
    np.testing.assert_allclose(loss_nan, loss, rtol=1e-6)
    np.testing.assert_allclose(grad_nan, grad, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(np.asarray(grad)[mask == 0], 0.0)
  loss, grad = loss_and_grad(logits, np.zeros(8, np.float32), state)
  assert float(loss) == 0.0
  np.testing.assert_array_equal(grad, 0.0)


# ---------------------------------------------------------------------------
# Argument errors name the argument.
# ---------------------------------------------------------------------------

_GOOD = _probs(50, 4)
_FREE = jaxmask.freematch(num_classes=C)


@pytest.mark.parametrize("call,err,name", [
    (lambda: jaxmask.fixmatch(p_cutoff=0.0), ValueError, "p_cutoff"),
    (lambda: jaxmask.fixmatch(p_cutoff=1.5), ValueError, "p_cutoff"),
    (lambda: jaxmask.fixmatch(p_cutoff=float("nan")), ValueError, "p_cutoff"),
    (lambda: jaxmask.fixmatch(p_cutoff="high"), TypeError, "p_cutoff"),
    (lambda: jaxmask.flexmatch(num_classes=0, num_unlabelled=4), ValueError,
     "num_classes"),
    (lambda: jaxmask.flexmatch(num_classes=2.0, num_unlabelled=4), TypeError,
     "num_classes"),
    (lambda: jaxmask.flexmatch(num_classes=2, num_unlabelled=-1), ValueError,
     "num_unlabelled"),
    (lambda: jaxmask.flexmatch(num_classes=2, num_unlabelled=4,
                               mapping="cubic"), ValueError, "mapping"),
    (lambda: jaxmask.flexmatch(num_classes=2, num_unlabelled=4,
                               warmup="yes"), TypeError, "warmup"),
    (lambda: jaxmask.freematch(num_classes=C, momentum=1.5), ValueError,
     "momentum"),
    (lambda: jaxmask.freematch(num_classes=C, momentum=-0.1), ValueError,
     "momentum"),
    (lambda: jaxmask.freematch(num_classes=C, use_quantile=1), TypeError,
     "use_quantile"),
    (lambda: jaxmask.freematch(num_classes=C, clip_thresh=None), TypeError,
     "clip_thresh"),
    (lambda: jaxmask.softmatch(num_classes=C, n_sigma=0.0), ValueError,
     "n_sigma"),
    (lambda: jaxmask.softmatch(num_classes=C, n_sigma=-2.0), ValueError,
     "n_sigma"),
    (lambda: jaxmask.softmatch(num_classes=C, dist_align="no"), TypeError,
     "dist_align"),
    (lambda: jaxmask.softmatch(num_classes=-3), ValueError, "num_classes"),
    (lambda: jaxmask.percentile_threshold(q=101.0, keep="high"), ValueError,
     "q"),
    (lambda: jaxmask.percentile_threshold(q=50.0, keep="mid"), ValueError,
     "keep"),
    (lambda: _FREE.update(_GOOD[0], _FREE.init()), ValueError, "probs"),
    (lambda: _FREE.update(_GOOD.astype(np.int32), _FREE.init()), TypeError,
     "probs"),
    (lambda: _FREE.update(_GOOD[:, :3], _FREE.init()), ValueError, "probs"),
    (lambda: _FREE.update(_GOOD[:0], _FREE.init()), ValueError, "probs"),
    (lambda: _FREE.update("probs", _FREE.init()), TypeError, "probs"),
    (lambda: _FREE.update(_GOOD, None), TypeError, "state"),
    (lambda: _FREE.update(_GOOD, jaxmask.softmatch(num_classes=C).init()),
     TypeError, "state"),
    (lambda: _FREE.update(_GOOD, jaxmask.freematch(num_classes=3).init()),
     ValueError, "state"),
    (lambda: _FREE.update(_GOOD, _FREE.init(), indices=np.zeros(3, np.int32)),
     ValueError, "indices"),
    (lambda: _FREE.update(_GOOD, _FREE.init(), indices=np.zeros(4)),
     TypeError, "indices"),
    (lambda: jaxmask.freematch_fairness_loss(_GOOD[0], np.ones(4),
                                             _FREE.init()),
     ValueError, "strong_logits"),
    (lambda: jaxmask.freematch_fairness_loss(_GOOD.astype(np.int32),
                                             np.ones(4), _FREE.init()),
     TypeError, "strong_logits"),
    (lambda: jaxmask.freematch_fairness_loss(_GOOD, np.ones(3), _FREE.init()),
     ValueError, "mask"),
    (lambda: jaxmask.freematch_fairness_loss(_GOOD, np.ones(4), {}),
     TypeError, "state"),
    (lambda: jaxmask.freematch_fairness_loss(
        _GOOD, np.ones(4), jaxmask.freematch(num_classes=2).init()),
     ValueError, "state"),
])
def test_bad_arguments_are_named(call, err, name):
  with pytest.raises(err, match=rf"\b{name}\b"):
    call()
