"""`axis_name` statistics on 8 simulated CPU devices (see tests/conftest.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import jaxmask
import _rules

NUM_DEVICES = 8


@pytest.fixture(scope="module")
def mesh():
  if len(jax.devices()) < NUM_DEVICES:
    pytest.fail("conftest.py should have forced 8 CPU devices; jax was "
                "initialised before it ran")
  return jax.make_mesh((NUM_DEVICES,), ("data",))


def _shard(mesh, x):
  return jax.device_put(jnp.asarray(x), NamedSharding(mesh, P("data")))


def _sharded_masks(mesh, logits, **kw):
  fn = jax.shard_map(
      lambda x: jaxmask.confidence_masks(x, axis_name="data", **kw),
      mesh=mesh, in_specs=P("data"),
      out_specs=jaxmask.ConfidenceMasks(
          probs=P("data"), confidence=P("data"), pseudo_labels=P("data"),
          threshold=P(), mask=P("data"), class_confidence=P(),
          class_threshold=P(), class_mask=P()),
      check_vma=False)
  return jax.jit(fn)(_shard(mesh, logits))


def _uneven_logits(per_device=5, classes=10, seed=0):
  """Shard 0 is all confident, shard 1 all unsure: a per-device median is wrong."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(NUM_DEVICES, per_device, classes)).astype(np.float32)
  x[0, :, 0] += 12.0
  x[1] *= 0.01
  return x.reshape(NUM_DEVICES * per_device, classes)


@pytest.mark.parametrize("keep", ["low", "high"])
@pytest.mark.parametrize("q", [50.0, 20.0])
def test_global_masks_equal_single_device(mesh, keep, q):
  x = jnp.asarray(_uneven_logits())
  got = _sharded_masks(mesh, x, q=q, keep=keep)
  want = jaxmask.confidence_masks(x, q=q, keep=keep)
  # Sharded and single-device programs compute the same values in other
  # orders (per-shard softmax, psum of partial class sums), so thresholds
  # agree to rounding and the masks follow the rule of `_rules.py`.
  np.testing.assert_allclose(got.threshold, want.threshold, rtol=1e-6)
  np.testing.assert_allclose(got.class_confidence, want.class_confidence, rtol=1e-6)
  np.testing.assert_allclose(got.class_threshold, want.class_threshold, rtol=1e-6)
  _rules.assert_confidence_masks_match(got, want)
  _rules.assert_same_argmax(got.pseudo_labels, want.pseudo_labels, want.probs,
                            tol=_rules.ulps(1.0))


def test_a_per_device_median_would_differ(mesh):
  x = _uneven_logits()
  got = _sharded_masks(mesh, jnp.asarray(x))
  local = np.concatenate([np.asarray(jaxmask.confidence_masks(s).mask)
                          for s in np.split(x, NUM_DEVICES)])
  mask = np.asarray(got.mask)
  assert (mask != local).sum() >= 5
  assert not mask[:5].any()  # the confident shard keeps none of its samples
  assert mask[5:10].all()  # the unsure shard keeps all of its samples


def test_mlkd_masks_are_global(mesh):
  views = [jnp.asarray(_uneven_logits(seed=i)) for i in range(4)]
  fn = jax.shard_map(
      lambda *v: jaxmask.mlkd_loss(*v, axis_name="data")[3:],
      mesh=mesh, in_specs=P("data"), out_specs=(P("data"), P()), check_vma=False)
  mask, class_mask = jax.jit(fn)(*[_shard(mesh, v) for v in views])
  want = jaxmask.mlkd_loss(*views)
  sharded = _sharded_masks(mesh, views[2])  # MLKD's masks: q=50, "low"
  single = jaxmask.confidence_masks(views[2])
  np.testing.assert_array_equal(mask, sharded.mask)
  np.testing.assert_array_equal(class_mask, sharded.class_mask)
  np.testing.assert_array_equal(want.mask, single.mask)  # the same program
  np.testing.assert_array_equal(want.class_mask, single.class_mask)
  _rules.assert_confidence_masks_match(sharded, single)


def test_percentile_mask_under_pmap():
  values = jnp.asarray(np.random.default_rng(3).random((NUM_DEVICES, 3)), jnp.float32)
  mask, thr = jax.pmap(
      lambda v: jaxmask.percentile_mask(v, q=50.0, axis_name="i"),
      axis_name="i")(values)
  want_mask, want_thr = jaxmask.percentile_mask(values.reshape(-1), q=50.0)
  np.testing.assert_array_equal(thr, np.full(NUM_DEVICES, want_thr))
  np.testing.assert_array_equal(mask.reshape(-1), want_mask)


def _threshold_probs(step, per_device=4, classes=10):
  """Global-batch probabilities: shard 0 all confident, shard 1 all unsure."""
  x = _uneven_logits(per_device=per_device, classes=classes, seed=100 + step)
  e = np.exp(x - x.max(1, keepdims=True))
  return (e / e.sum(1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("name", ["fixmatch", "percentile", "flexmatch",
                                  "freematch", "softmatch"])
def test_adaptive_thresholds_are_global(mesh, name):
  """8 devices give one device's masks and state on the concatenated batch.

  Each device holds the (replicated) state; FreeMatch and SoftMatch gather
  the batch, FlexMatch gathers indices and labels so that `selected_label`
  is global (USB's per-GPU FlexMatch state would drift). Sums over the
  gathered batch run in the same order on one device and on eight; the
  float state is compared to 1e-6 relative, SoftMatch's weights to 1e-6,
  and the 0/1 masks and pseudo-labels must be equal (no confidence here lies
  within rounding of a threshold). `shard_map` runs with its default
  `check_vma=True`: the state leaves it replicated (`P()`); `pmap` too.
  """
  num_classes, num_unlabelled = 10, 64
  t = {
      "fixmatch": lambda: jaxmask.fixmatch(p_cutoff=0.7),
      "percentile": lambda: jaxmask.percentile_threshold(q=20.0, keep="high"),
      "flexmatch": lambda: jaxmask.flexmatch(
          num_classes=num_classes, num_unlabelled=num_unlabelled, p_cutoff=0.7),
      "freematch": lambda: jaxmask.freematch(num_classes=num_classes,
                                             momentum=0.7, use_quantile=True),
      "softmatch": lambda: jaxmask.softmatch(num_classes=num_classes,
                                             momentum=0.7),
  }[name]()
  state = t.init()
  replicated = jax.tree.map(lambda _: P(), state)
  sharded_update = jax.jit(jax.shard_map(
      lambda s, p, i: t.update(p, s, indices=i, axis_name="data"),
      mesh=mesh, in_specs=(replicated, P("data"), P("data")),
      out_specs=(jaxmask.ThresholdOutput(P("data"), P("data")), replicated)))
  pmapped_update = jax.pmap(
      lambda s, p, i: t.update(p, s, indices=i, axis_name="i"), axis_name="i",
      in_axes=(None, 0, 0), out_axes=(0, None))
  single_update = jax.jit(t.update)
  rng = np.random.default_rng(0)
  sharded_state = single_state = state
  for step in range(4):
    probs = _threshold_probs(step)
    indices = rng.choice(num_unlabelled, len(probs), replace=False).astype(np.int32)
    prev_state = single_state
    got, sharded_state = sharded_update(
        sharded_state, _shard(mesh, probs), _shard(mesh, indices))
    want, single_state = single_update(probs, single_state, indices=indices)
    np.testing.assert_array_equal(got.pseudo_labels, want.pseudo_labels)
    for g, w in zip(jax.tree.leaves(sharded_state), jax.tree.leaves(single_state)):
      np.testing.assert_allclose(g, w, rtol=1e-6, err_msg=f"{name} step {step}")
    if name == "softmatch":
      np.testing.assert_allclose(got.mask, want.mask, rtol=0, atol=1e-6)
    else:
      np.testing.assert_array_equal(got.mask, want.mask,
                                    err_msg=f"{name} step {step}")
  if name == "flexmatch":
    assert (np.asarray(single_state.selected_label) >= 0).sum() >= 4
  # pmap: the same state from the last step's batch.
  got, pmapped_state = pmapped_update(
      prev_state, probs.reshape(NUM_DEVICES, -1, probs.shape[1]),
      indices.reshape(NUM_DEVICES, -1))
  for g, w in zip(jax.tree.leaves(pmapped_state), jax.tree.leaves(single_state)):
    np.testing.assert_allclose(g, w, rtol=1e-6, err_msg=f"{name} under pmap")
  np.testing.assert_allclose(np.asarray(got.mask).reshape(-1), want.mask,
                             rtol=0, atol=1e-6)
