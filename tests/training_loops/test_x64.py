"""x64 mode: every public function gives the dtypes (and values) of x64 off.

Scientific code and some test suites turn on `jax_enable_x64`, which makes
`jnp.asarray(1.0)`, `jax.random.uniform` and `jnp.arange` 64-bit by default.
jaxmask's results must not depend on it: each case below runs once with x64
off and once with it on, on the same float32 (and integer, and Python
number) inputs, for every implementation, and the two results must agree in
structure, dtype and value.

The flag is switched with the `jax.enable_x64` context manager, which is
thread-local and restored on exit, so it never leaks into another test of the
same pytest-xdist worker (and jit caches key on it). One test also starts a
fresh interpreter with `JAX_ENABLE_X64=1`, the way users set it.
"""

import inspect
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmask

IMPLEMENTATIONS = (None, "plain", "xla_cpu")
_RNG = [np.random.default_rng(0)]  # re-seeded before each run of a case
_F32 = lambda *shape: _RNG[0].standard_normal(shape).astype(np.float32)
_UNIT = lambda *shape: _RNG[0].uniform(size=shape).astype(np.float32)
_PROBS = np.asarray(jax.nn.softmax(3 * _F32(6, 4), axis=-1))
_MAPS = _F32(3, 1, 12, 10)
_TARGETS = (_UNIT(3, 9, 7) > 0.5).astype(np.float32)
_COORDS = _UNIT(3, 40, 2)

# name -> (fn(implementation) -> pytree, whether it takes an implementation,
# the public names it covers)
CASES = {}


def case(*covers, implementations=False):
  def register(fn):
    CASES[fn.__name__] = (fn, implementations, covers)
    return fn
  return register


@case("point_sample", implementations=True)
def point_sample(implementation):
  value = jaxmask.point_sample(_MAPS, _COORDS, implementation=implementation)
  grad = jax.grad(lambda m, c: jaxmask.point_sample(
      m, c, implementation=implementation).sum(), argnums=(0, 1))(
          jnp.asarray(_MAPS), jnp.asarray(_COORDS))
  return value, grad


@case("point_sample_single", implementations=True)
def point_sample_single(implementation):
  return jaxmask.point_sample_single(_MAPS[0], _COORDS[0],
                                     implementation=implementation)


@case("calculate_uncertainty", "select_uncertain_points", implementations=True)
def select_uncertain_points(implementation):
  points = jaxmask.select_uncertain_points(
      _MAPS, _COORDS, num_uncertain=7, implementation=implementation)
  # A set per row (the order is the implementation's).
  return (np.sort(np.asarray(points), axis=1),
          jaxmask.calculate_uncertainty(_MAPS))


@case("sample_points_using_uncertainty", implementations=True)
def sample_points_using_uncertainty(implementation):
  points = jaxmask.sample_points_using_uncertainty(
      jax.random.key(1), _MAPS, num_points=30, implementation=implementation)
  raw_key = jaxmask.sample_points_using_uncertainty(
      jax.random.PRNGKey(1), _MAPS, num_points=30, oversample_ratio=2.5,
      importance_sample_ratio=0.5, implementation=implementation)
  empty = jaxmask.sample_points_using_uncertainty(
      jax.random.key(1), _MAPS[:0], num_points=5, implementation=implementation)
  return (np.sort(np.asarray(points[:, :22]), axis=1), points[:, 22:],
          np.sort(np.asarray(raw_key[:, :15]), axis=1), raw_key[:, 15:], empty)


@case("uncertain_point_coords_on_grid")
def uncertain_point_coords_on_grid(implementation):
  return jaxmask.uncertain_point_coords_on_grid(_MAPS, num_points=9)


@case("top_k_indices", implementations=True)
def top_k_indices(implementation):
  scores = _F32(3, 5000)  # long rows: the kernel's own selection
  index = jaxmask.top_k_indices(scores, k=100, implementation=implementation)
  return np.sort(np.asarray(index), axis=1)


@case("sigmoid_ce_loss", "dice_loss", "pairwise_sigmoid_ce_loss",
      "pairwise_dice_loss", "num_masks_normalizer")
def point_losses(implementation):
  logits, labels = _F32(3, 20), (_UNIT(3, 20) > 0.5).astype(np.float32)
  return (jaxmask.sigmoid_ce_loss(logits, labels, 3.0),
          jaxmask.sigmoid_ce_loss(logits, labels, 3),
          jaxmask.dice_loss(logits, labels, 2.5),
          jax.grad(jaxmask.dice_loss)(jnp.asarray(logits), labels, 2.5),
          jaxmask.pairwise_sigmoid_ce_loss(logits, labels[:2]),
          jaxmask.pairwise_dice_loss(logits, labels[:2]),
          jaxmask.num_masks_normalizer(3), jaxmask.num_masks_normalizer(2.5),
          jaxmask.num_masks_normalizer(np.int64(4)))


@case("point_mask_losses", implementations=True)
def point_mask_losses(implementation):
  def loss(pred):
    out = jaxmask.point_mask_losses(
        jax.random.key(2), pred, _TARGETS, 3.0, num_points=25,
        implementation=implementation)
    return out.loss_mask + out.loss_dice, out
  return jax.value_and_grad(loss, has_aux=True)(jnp.asarray(_MAPS[:, 0]))


@case("mask_matching_cost", "hungarian_match")
def matching(implementation):
  cost = jaxmask.mask_matching_cost(
      _F32(4, 3), _F32(4, 6, 6), np.array([0, 1], np.int64), _TARGETS[:2],
      _COORDS[0])
  return cost, jaxmask.hungarian_match(cost), jaxmask.hungarian_match(
      cost, target_valid=np.array([True, False]))


@case("mask2former_loss", implementations=True)
def mask2former_loss(implementation):
  L, B, Q, K, T = 2, 2, 4, 3, 3
  class_logits, mask_logits = _F32(L, B, Q, K + 1), _F32(L, B, Q, 8, 8)
  labels = np.array([[0, 2, 1], [1, 0, 0]], np.int64)
  targets = (_UNIT(B, T, 12, 12) > 0.5)
  valid = np.array([[True, True, False], [True, False, False]])

  return [jaxmask.mask2former_loss(
      jax.random.key(3), class_logits, mask_logits, labels, targets, valid,
      num_points=num_points, num_matcher_points=20,
      max_total_targets=max_total_targets, implementation=implementation)
          # Full-mask mode differs from point mode only in the matcher.
          for num_points in ((16, None) if implementation is None else (16,))
          # The valid targets packed into 3 slots, or all B * T slots.
          for max_total_targets in (None, 3)]


@case("percentile", "percentile_mask", "confidence_masks")
def confidence(implementation):
  values = _F32(11)
  return (jaxmask.percentile(values, 30), jaxmask.percentile(values, 62.5),
          jaxmask.percentile(values, jnp.float32(40.0)),
          jaxmask.percentile_mask(values, q=20, keep="high"),
          jaxmask.confidence_masks(_F32(6, 4), q=40.0))


@case("kd_loss", "class_correlation_loss", "batch_correlation_loss",
      "mlkd_loss")
def distill(implementation):
  s, t = _F32(6, 4), _F32(6, 4)
  mask = np.array([1, 0, 1, 1, 0, 1], np.int64)
  losses = (jaxmask.kd_loss(s, t, temperature=4.0),
            jaxmask.kd_loss(s, t, temperature=2, mask=mask),
            jaxmask.class_correlation_loss(s, t, temperature=3.0),
            jaxmask.class_correlation_loss(s, t, temperature=3.0,
                                           class_mask=mask[:4]),
            jaxmask.batch_correlation_loss(s, t, temperature=3.0),
            jaxmask.batch_correlation_loss(s, t, temperature=3.0,
                                           mask=mask.astype(bool)))
  mlkd = [jaxmask.mlkd_loss(s, _F32(6, 4), t, _F32(6, 4), mode=mode)
          for mode in ("faithful", "masked")]
  grad = jax.grad(lambda s: jaxmask.mlkd_loss(s, s, t, t).total)(jnp.asarray(s))
  return losses, mlkd, [m.total for m in mlkd], grad


def _steps(threshold, **kw):
  """init() and three updates: every output and state."""
  state = threshold.init()
  outs = [state]
  for step in range(3):
    probs = _PROBS if step != 1 else _PROBS[::-1]
    out, state = threshold.update(probs, state, **kw)
    outs += [out, state]
  jitted = jax.jit(lambda s, p: threshold.update(p, s, **kw))(state, _PROBS)
  return outs, jitted


@case("fixmatch", "percentile_threshold")
def stateless_thresholds(implementation):
  return (_steps(jaxmask.fixmatch(p_cutoff=0.5)),
          _steps(jaxmask.percentile_threshold(q=30, keep="high")))


@case("flexmatch")
def flexmatch(implementation):
  indices = np.array([0, 3, 5, 7, 8, 9], np.int64)
  return [_steps(jaxmask.flexmatch(num_classes=4, num_unlabelled=10,
                                   p_cutoff=0.5, mapping=mapping, warmup=w),
                 indices=indices)
          for mapping, w in (("convex", True), ("linear", False),
                             ("concave", True))]


@case("freematch", "freematch_fairness_loss")
def freematch(implementation):
  outs = []
  for use_quantile in (False, True):
    t = jaxmask.freematch(num_classes=4, momentum=0.7,
                          use_quantile=use_quantile, clip_thresh=True)
    steps, (out, state) = _steps(t)
    logits = _F32(6, 4)
    fairness = jaxmask.freematch_fairness_loss(logits, out.mask, state)
    grad = jax.grad(jaxmask.freematch_fairness_loss)(
        jnp.asarray(logits), np.ones(6, np.int64), state)
    outs.append((steps, fairness, grad))
  return outs


@case("softmatch")
def softmatch(implementation):
  return [_steps(jaxmask.softmatch(num_classes=4, momentum=0.6,
                                   dist_align=dist_align))
          for dist_align in (True, False)]


def _params():
  for name, (_, implementations, _) in CASES.items():
    for implementation in (IMPLEMENTATIONS if implementations else (None,)):
      yield pytest.param(name, implementation,
                         id=f"{name}-{implementation or 'default'}")


def _run(name, implementation, x64):
  """The case's leaves `(path, NumPy array)`, computed under x64 on or off."""
  _RNG[0] = np.random.default_rng(1)  # the same inputs in both runs
  with jax.enable_x64(x64):
    out = CASES[name][0](implementation)
    # Read back inside the context: nothing is left to compute later.
    leaves, _ = jax.tree_util.tree_flatten_with_path(out)
    return [(jax.tree_util.keystr(path), np.asarray(x)) for path, x in leaves]


def test_every_public_function_has_a_case():
  functions = {n for n in jaxmask.__all__
               if inspect.isfunction(getattr(jaxmask, n))}
  covered = {n for _, _, covers in CASES.values() for n in covers}
  assert covered == functions


@pytest.mark.parametrize("name, implementation", list(_params()))
def test_same_dtypes_and_values_with_x64(name, implementation):
  assert not jax.config.jax_enable_x64  # the suite runs with x64 off
  want = _run(name, implementation, False)
  got = _run(name, implementation, True)
  assert [path for path, _ in got] == [path for path, _ in want]
  for (path, g), (_, w) in zip(got, want):
    assert (g.dtype, g.shape) == (w.dtype, w.shape), (
        f"{path}: {g.dtype}{list(g.shape)} with x64, {w.dtype}{list(w.shape)}"
        " without")
    np.testing.assert_array_equal(g, w, err_msg=path)


def test_x64_set_at_startup():
  """The issue's setting: `JAX_ENABLE_X64=1` before jax starts, defaults."""
  script = """
import jax, jax.numpy as jnp, numpy as np
import jaxmask
assert jax.config.jax_enable_x64
logits = jnp.asarray(np.linspace(-1, 1, 2 * 8 * 8, dtype=np.float32)).reshape(2, 1, 8, 8)
points = jaxmask.sample_points_using_uncertainty(jax.random.key(0), logits, num_points=10)
losses = jaxmask.point_mask_losses(jax.random.key(0), logits[:, 0], logits[:, 0] > 0, 2.0,
                                   num_points=10)
out = jaxmask.mask2former_loss(
    jax.random.key(0), jnp.zeros((1, 1, 3, 3), jnp.float32),
    jnp.broadcast_to(logits[0, 0], (1, 1, 3, 8, 8)), np.array([[0, 1]]),
    np.ones((1, 2, 8, 8), bool), np.array([[True, True]]), num_points=10)
print(points.dtype, losses.loss_mask.dtype, out.total.dtype)
"""
  env = dict(os.environ, JAX_ENABLE_X64="1", JAX_PLATFORMS="cpu")
  done = subprocess.run([sys.executable, "-c", script], env=env,
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  assert done.stdout.split() == ["float32"] * 3
