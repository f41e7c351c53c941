"""Kernel: point mask losses, a chunk of masks (target slots) at a time.

The criterion's mask losses and `point_mask_losses` (float32) run it on CPU.

Why: the plain criterion runs each stage of the point losses over all its
target slots in turn: the candidates' selection, the fresh points, sampling
the predictions, sampling the targets, the per-mask losses. On XLA:CPU every
stage writes its whole-batch temporaries to fresh pages, and every stage
also runs for the padded slots, whose losses are dropped. This kernel runs
the whole pipeline per chunk of slots inside one loop, whose temporaries
are reused, with the needed slots first, so that a chunk of padded slots is
skipped in every stage, forward and backward. At L = 10, B = 2 (RESULTS.md's
criterion problem) the step went 596 -> 478 ms and its temporaries 356 ->
150 MiB; the point-loss step at N = 50, 512² targets 96 -> 82 MiB peak.

What it must equal: slot n's points are row `draw_rows[n]` of
`sample_points_using_uncertainty(key, ...)`'s draw, selected from its
candidates as that function selects (bit for bit), and its losses are
`per_mask_losses` of the sampled logits and labels (to float rounding:
the means run per chunk).
"""

import jax
import jax.numpy as jnp
from jax import lax

from jaxmask._src.xla_cpu import sampler
from jaxmask._src.xla_cpu import selection
from jaxmask._src.xla_cpu import threefry


def can_run(key: jax.Array, num_draw_rows: int, num_candidates: int,
            num_fresh: int, targets_shape: tuple[int, ...],
            maps_shape: tuple[int, ...]) -> bool:
  """Whether `point_losses_by_slot` applies to these sizes and this key.

  It draws with the unrolled Threefry (typed or raw threefry keys, the
  partitionable mode), reads the targets through int32 flat offsets and
  samples non-empty maps; elsewhere the criterion runs its stages in turn.
  """
  if 0 in (*targets_shape[-2:], *maps_shape[-2:]):
    return False
  num_targets, _, height, width = targets_shape
  if num_targets * (height + 2) * (width + 2) > sampler.MAX_FLAT_INDEX:
    return False
  return all(threefry.can_draw_rows(key, (num_draw_rows, n, 2))
             for n in (num_candidates, max(num_fresh, 1)))


def point_losses_by_slot(key: jax.Array, matched: jax.Array,
                         needed: jax.Array, draw_rows: jax.Array,
                         targets: jax.Array, target_rows: jax.Array, *,
                         num_points: int, num_candidates: int,
                         num_uncertain: int, score, per_mask_losses,
                         label_range: bool = False) -> tuple[jax.Array, ...]:
  """`(sigmoid CE [N], dice [N])` of N slots at their uncertain points.

  With `label_range`, also each slot's smallest and largest sampled label
  (NaN-propagating; 0 for skipped slots), to check traced targets.

  Args:
    key: the key of `sample_points_using_uncertainty`'s draw.
    matched: `[N, 1, H, W]` float32 predicted logits, one a slot
      (differentiable; the selection sees them without gradient).
    needed: `[N]` bool: the slots whose losses are used. A chunk of slots
      none of which is needed is skipped (zeros): put the needed ones first.
    draw_rows: `[N]` the row of the draw each slot takes (`can_run` for the
      draw's row count).
    targets: `[R, 1, Ht, Wt]` float32 target maps, data (no gradient).
    target_rows: `[N]` the target map of each slot, read in place.
    num_points, num_candidates, num_uncertain: as in
      `sample_points_using_uncertainty`, `int(P * r)` and `int(b * P)`.
    score: the selection's scorer (`sampling.scorer`).
    per_mask_losses: `(logits [n, P], labels [n, P]) -> (ce [n], dice [n])`
      (`point_losses.ce_and_dice_per_mask`; kernels import no concept
      module).
  """
  candidate_key, fresh_key = jax.random.split(key)
  num_fresh = num_points - num_uncertain
  # Made once, outside the loop: see `sampler.flat_maps`.
  targets = sampler.flat_maps(lax.stop_gradient(targets), num_points)

  def losses(matched, draw_rows, target_rows):
    candidates = threefry.uniform_at_rows(candidate_key, (num_candidates, 2),
                                          draw_rows)
    points = selection.most_uncertain(lax.stop_gradient(matched), candidates,
                                      num_uncertain, score, True)
    if num_fresh:
      points = jnp.concatenate([points, threefry.uniform_at_rows(
          fresh_key, (num_fresh, 2), draw_rows)], axis=1)
    logits = sampler.point_sample(matched, points, finite_coords=True)
    labels = sampler.sample_flat(targets, points, rows=target_rows,
                                 finite_coords=True, positions_apart=False)
    out = tuple(per_mask_losses(logits[:, 0], labels[:, 0]))
    if label_range:
      labels = lax.stop_gradient(labels[:, 0])
      out += (jnp.min(labels, axis=1), jnp.max(labels, axis=1))
    return out

  def chunk(_, needed, matched, draw_rows, target_rows):
    def skipped(matched, *_):
      zeros = jnp.zeros(matched.shape[:1], jnp.float32)
      return (zeros,) * (4 if label_range else 2)
    return lax.cond(jnp.any(needed), losses, skipped, matched, draw_rows,
                    target_rows)

  rows = selection.rows_per_chunk(matched.shape[0], num_candidates)
  return selection.in_chunks(chunk, rows, needed, matched, draw_rows,
                             target_rows)
