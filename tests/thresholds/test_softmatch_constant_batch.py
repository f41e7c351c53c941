"""SoftMatch's documented constant-batch weight: momentum 0, weight 1.

With momentum 0 and a constant (global) batch the Gaussian's variance is 0
and every confidence equals its mean, so every weight is the limit, 1. The
float32 mean of a constant batch used to miss its value by an ulp in about a
third of the batches tried: the variance came out ~1e-15 and the weights
0.14-0.20. The batch mean is now corrected by its residuals' mean.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import jaxmask


def _update(threshold, probs, state, **kw):
  """The one place that calls `update` (its argument order may change)."""
  return threshold.update(probs, state, **kw)


def _constant_batches(count=16, seed=0):
  """Constant batches; about a third used to miss their mean by an ulp."""
  rng = np.random.default_rng(seed)
  for _ in range(count):
    num_classes = int(rng.choice([2, 5, 10]))
    batch = int(rng.choice([3, 31, 100, 1000]))
    row = rng.dirichlet(np.full(num_classes, 0.7)).astype(np.float32)
    yield np.tile(row, (batch, 1))


@pytest.mark.parametrize("dist_align", [True, False])
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_constant_batch_with_momentum_zero_weights_every_sample_one(
    dist_align, jit):
  for probs in _constant_batches():
    t = jaxmask.softmatch(num_classes=probs.shape[1], momentum=0.0,
                          dist_align=dist_align)
    update = jax.jit(lambda p, s, t=t: _update(t, p, s)) if jit else (
        lambda p, s, t=t: _update(t, p, s))
    state = t.init()
    for _ in range(2):  # the first batch sets p_model, the second is an EMA
      out, state = update(probs, state)
      np.testing.assert_array_equal(out.mask, np.ones(len(probs), np.float32),
                                    err_msg=f"batch {probs.shape}")
      assert float(state.var) == 0.0
    if not dist_align:  # the mean of the constant confidences is their value
      assert float(state.mu) == probs[0].max()


def test_constant_global_batch_across_devices_weights_every_sample_one():
  """With `axis_name`, the global batch's mean and variance: the same rule."""
  mesh = jax.make_mesh((4,), ("data",), devices=jax.devices()[:4])
  for probs in _constant_batches(count=6, seed=1):
    probs = np.tile(probs[:1], (4 * 25, 1))
    t = jaxmask.softmatch(num_classes=probs.shape[1], momentum=0.0)
    state = t.init()
    replicated = jax.tree.map(lambda _: P(), state)
    step = jax.jit(jax.shard_map(
        lambda p, s, t=t: _update(t, p, s, axis_name="data"), mesh=mesh,
        in_specs=(P("data"), replicated),
        out_specs=(jaxmask.ThresholdOutput(P("data"), P("data")), replicated)))
    out, state = step(jax.device_put(jnp.asarray(probs),
                                     NamedSharding(mesh, P("data"))), state)
    np.testing.assert_array_equal(out.mask, np.ones(len(probs), np.float32))
    assert float(state.var) == 0.0


def test_a_non_constant_batch_still_weighs_below_the_mean():
  """The correction changes the mean by ulps: the Gaussian is still there."""
  probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.7, 0.3], [0.8, 0.2]], np.float32)
  t = jaxmask.softmatch(num_classes=2, momentum=0.0, dist_align=False)
  out, state = _update(t, probs, t.init())
  np.testing.assert_allclose(state.mu, 0.75, rtol=1e-7)
  np.testing.assert_allclose(state.var, np.var(probs.max(1), ddof=1), rtol=1e-6)
  below = probs.max(1) < 0.75
  assert (np.asarray(out.mask)[below] < 1).all()
  assert (np.asarray(out.mask)[~below] == 1).all()
