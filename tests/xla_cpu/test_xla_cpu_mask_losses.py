"""The XLA:CPU kernel of the criterion's point mask losses (`xla_cpu/mask_losses.py`).

Slot by slot it must give what the stages give in turn: the points of
`sample_points_using_uncertainty`'s draw at the slot's row (bit for bit, as
the XLA:CPU selection), the logits and labels sampled there, and
`ce_and_dice_per_mask` of them, with the same gradient; chunks of slots not
needed are skipped (zeros, no gradient). The criterion over both
implementations is tested in tests/criterion/.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmask
from jaxmask._src import point_losses
from jaxmask._src import sampling
from jaxmask._src.xla_cpu import mask_losses
from jaxmask._src.xla_cpu import selection

NUM_POINTS, RATIO, IMPORTANCE = 40, 3.0, 0.75
NUM_CANDIDATES, NUM_UNCERTAIN = 120, 30


def _inputs(num_slots=11, num_draw_rows=14, num_targets=5, seed=0):
  rng = np.random.default_rng(seed)
  matched = (rng.normal(size=(num_slots, 1, 9, 12)) * 3).astype(np.float32)
  targets = (rng.random((num_targets, 1, 21, 17)) > 0.5).astype(np.float32)
  draw_rows = rng.permutation(num_draw_rows)[:num_slots].astype(np.int32)
  target_rows = rng.integers(0, num_targets, num_slots).astype(np.int32)
  return matched, targets, draw_rows, target_rows


def _kernel(key, matched, needed, draw_rows, targets, target_rows):
  return mask_losses.point_losses_by_slot(
      key, matched, needed, draw_rows, targets, target_rows,
      num_points=NUM_POINTS, num_candidates=NUM_CANDIDATES,
      num_uncertain=NUM_UNCERTAIN,
      score=sampling.scorer(sampling.calculate_uncertainty),
      per_mask_losses=point_losses.ce_and_dice_per_mask)


def _in_turn(key, matched, draw_rows, targets, target_rows, num_draw_rows):
  """The stages in turn: the whole draw, its rows, the two samplings."""
  logits = jnp.zeros((num_draw_rows, *matched.shape[1:]), jnp.float32)
  logits = logits.at[draw_rows].set(jax.lax.stop_gradient(matched))
  points = jaxmask.sample_points_using_uncertainty(
      key, logits, num_points=NUM_POINTS, oversample_ratio=RATIO,
      importance_sample_ratio=IMPORTANCE, implementation="xla_cpu")[draw_rows]
  sampled = jaxmask.point_sample(matched, points, implementation="plain")
  labels = jaxmask.point_sample(targets[target_rows], points,
                                implementation="plain")
  return point_losses.ce_and_dice_per_mask(sampled[:, 0], labels[:, 0])


def _weighted(losses, needed):
  ce, dice = losses
  return jnp.sum(jnp.where(needed, 5 * ce + 3 * dice, 0.0))


@pytest.mark.parametrize("chunk_masks", [4, 64])  # chunks of 4 + 3 left; one
def test_kernel_equals_the_stages_in_turn(monkeypatch, chunk_masks):
  monkeypatch.setattr(selection, "_CHUNK_BYTES",
                      8 * NUM_CANDIDATES * chunk_masks)
  matched, targets, draw_rows, target_rows = _inputs()
  key = jax.random.key(3)
  needed = np.ones(matched.shape[0], bool)
  assert mask_losses.can_run(key, 14, NUM_CANDIDATES,
                             NUM_POINTS - NUM_UNCERTAIN, targets.shape,
                             matched.shape)
  got = jax.jit(_kernel)(key, matched, needed, draw_rows, targets,
                         target_rows)
  want = _in_turn(key, matched, draw_rows, targets, target_rows, 14)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-7)
  got_grad = jax.jit(jax.grad(lambda m: _weighted(_kernel(
      key, m, needed, draw_rows, targets, target_rows), needed)))(matched)
  want_grad = jax.grad(lambda m: _weighted(_in_turn(
      key, m, draw_rows, targets, target_rows, 14), needed))(matched)
  np.testing.assert_allclose(got_grad, want_grad, rtol=1e-5, atol=1e-8)


def test_kernel_skips_chunks_of_slots_not_needed(monkeypatch):
  """Chunks of 4: [0, 4) needed, [4, 8) not (zeros, no gradient), [8, 11)
  one needed, computed whole."""
  monkeypatch.setattr(selection, "_CHUNK_BYTES", 8 * NUM_CANDIDATES * 4)
  matched, targets, draw_rows, target_rows = _inputs(seed=1)
  key = jax.random.key(8)
  needed = np.array([1, 1, 0, 1, 0, 0, 0, 0, 0, 0, 1], bool)
  got = jax.jit(_kernel)(key, matched, needed, draw_rows, targets,
                         target_rows)
  want = _in_turn(key, matched, draw_rows, targets, target_rows, 14)
  computed = np.r_[0:4, 8:11]
  for g, w in zip(got, want):
    np.testing.assert_allclose(np.asarray(g)[computed],
                               np.asarray(w)[computed], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(np.asarray(g)[4:8], 0)
  grad = jax.jit(jax.grad(lambda m: _weighted(_kernel(
      key, m, needed, draw_rows, targets, target_rows), needed)))(matched)
  want_grad = jax.grad(lambda m: _weighted(_in_turn(
      key, m, draw_rows, targets, target_rows, 14), needed))(matched)
  np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-8)
  np.testing.assert_array_equal(np.asarray(grad)[4:8], 0)


def test_kernel_declines_what_it_cannot_draw_or_address():
  """Elsewhere the criterion runs the stages in turn (tests/criterion/)."""
  shape, maps = (5, 1, 21, 17), (11, 1, 9, 12)
  assert mask_losses.can_run(jax.random.key(0), 14, 120, 10, shape, maps)
  assert mask_losses.can_run(jax.random.PRNGKey(0), 14, 120, 10, shape, maps)
  assert not mask_losses.can_run(jax.random.key(0, impl="rbg"), 14, 120, 10,
                                 shape, maps)
  assert not mask_losses.can_run(jax.random.key(0), 14, 120, 10,
                                 (5, 1, 0, 17), maps)
  assert not mask_losses.can_run(jax.random.key(0), 14, 120, 10, shape,
                                 (11, 1, 9, 0))
  assert not mask_losses.can_run(jax.random.key(0), 14, 120, 10,
                                 (2**15, 1, 300, 300), maps)


def test_point_mask_losses_run_the_kernel_in_chunks(monkeypatch):
  """`point_mask_losses` (float32) runs this kernel on CPU: chunks of 3 rows
  plus 2 left over give the plain losses and gradients; a traced target out
  of [0, 1] in the last chunk still makes them NaN."""
  monkeypatch.setattr(selection, "_CHUNK_BYTES", 8 * NUM_CANDIDATES * 3)
  assert selection.rows_per_chunk(11, NUM_CANDIDATES) == 3
  matched, targets, _, _ = _inputs(num_targets=11, seed=2)
  pred, target = matched[:, 0], targets[:, 0]
  key = jax.random.key(6)

  def losses(pred, target, implementation):
    out = jaxmask.point_mask_losses(key, pred, target, 11.0,
                                    num_points=NUM_POINTS,
                                    implementation=implementation)
    return 5 * out.loss_mask + 3 * out.loss_dice

  step = jax.jit(jax.value_and_grad(losses), static_argnums=2)
  (got, got_grad), (want, want_grad) = (step(pred, target, impl)
                                        for impl in ("xla_cpu", "plain"))
  np.testing.assert_allclose(got, want, rtol=1e-6)
  np.testing.assert_allclose(got_grad, want_grad, rtol=1e-5, atol=1e-8)
  bad = target.copy()
  bad[10] = 2.0  # the row left over
  assert np.isnan(jax.jit(losses, static_argnums=2)(pred, bad, "xla_cpu"))
