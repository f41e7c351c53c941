"""Kernel: uncertainty-based point selection, a few masks at a time.

Why: XLA:CPU gives every call fresh temporaries, and faulting in the pages of
a whole batch's candidates, scores and indices cost more than the selection
itself (146 -> 116 ms for 200 x 37632 candidates). This kernel runs the
selection over chunks of masks whose candidates fill about 4 MiB, draws each
chunk's candidates inside the loop (`threefry.uniform_rows`), samples them
with the pair-gather sampler and selects with the bracketed top-k.

What it must equal: the plain `select_uncertain_points` and
`sample_points_using_uncertainty` of `sampling.py`: the same candidates (bit
for bit) and the same selected set per mask, in increasing candidate order.
"""

import jax
import jax.numpy as jnp
from jax import lax

from jaxmask._src.xla_cpu import barrier
from jaxmask._src.xla_cpu import sampler
from jaxmask._src.xla_cpu import threefry
from jaxmask._src.xla_cpu import topk

# Chunks of masks whose candidates fill about this many bytes.
_CHUNK_BYTES = 2**22


def rows_per_chunk(num_rows: int, num_candidates: int) -> int:
  """Rows per chunk: a divisor of `num_rows` near the chunk size, if one is.

  Without such a divisor (92 rows: 4 x 23), the chunk size itself; the rows
  left over are then selected in one more call after the loop (a whole batch
  in one call, its pages all fresh, ran ~1.7x slower).
  """
  most = max(1, _CHUNK_BYTES // (8 * max(num_candidates, 1)))
  if most >= num_rows:
    return num_rows
  for rows in range(most, (most + 1) // 2 - 1, -1):
    if rows > 0 and num_rows % rows == 0:
      return rows
  return most


def in_chunks(fn, rows: int, *arrays):
  """Row-wise `fn(0, *arrays)` as `fn(first_row, *chunk)`, `rows` at a time.

  `fn` returns an array or a tuple of arrays, each with a row per input
  row. The last `num_rows % rows` rows, if any, in one more call of `fn`.
  """
  num_rows = arrays[0].shape[0]
  looped = num_rows - num_rows % rows
  chunks = tuple(x[:looped].reshape(looped // rows, rows, *x.shape[1:])
                 for x in arrays)
  first_rows = jnp.arange(0, looped, rows, dtype=jnp.uint32)
  out = lax.map(lambda args: fn(*args), (first_rows, *chunks))
  out = jax.tree.map(lambda x: x.reshape(looped, *x.shape[2:]), out)
  if looped == num_rows:
    return out
  rest = fn(jnp.uint32(looped), *(x[looped:] for x in arrays))
  return jax.tree.map(lambda x, y: jnp.concatenate([x, y]), out, rest)


def take_points(candidates: jax.Array, index: jax.Array) -> jax.Array:
  """`candidates[n, index[n, j]]`: `[N, M, 2]`, `[N, K]` -> `[N, K, 2]`."""
  num_masks, num_candidates, _ = candidates.shape
  if candidates.size > sampler.MAX_FLAT_INDEX:  # int32 offsets would overflow
    return jnp.take_along_axis(candidates, index[..., None], axis=1)
  # One flat gather of (x, y) pairs; XLA:CPU's batched take_along_axis is 3x
  # slower.
  start = 2 * (index + num_candidates * lax.broadcasted_iota(
      jnp.int32, index.shape, 0))
  return sampler.gather_pairs(candidates.reshape(-1), start)


def most_uncertain(logits, candidates, num_uncertain, score, finite_coords):
  """The `num_uncertain` best candidates of each mask, any number of masks."""
  scores = score(sampler.point_sample(logits, candidates,
                                      finite_coords=finite_coords,
                                      positions_apart=True))
  num_candidates = candidates.shape[1]
  if num_uncertain == 0:
    index = jnp.zeros((candidates.shape[0], 0), jnp.int32)
  elif num_uncertain == num_candidates:
    index = jnp.broadcast_to(jnp.arange(num_candidates, dtype=jnp.int32),
                             scores.shape[:1] + (num_candidates,))
  else:
    index = topk.top_k_indices(scores, num_uncertain)
  # Apart: fused into the chunk loop's in-place update, it runs on one thread.
  return barrier.computed_apart(take_points, candidates, index)


def select_uncertain_points(logits: jax.Array, candidates: jax.Array,
                            num_uncertain: int, score) -> jax.Array:
  """The kernel's entry point for given candidates.

  `score` maps sampled logits `[n, 1, M]` to `[n, M]` scores (the caller's
  uncertainty function, checked).
  """
  chunk = rows_per_chunk(*candidates.shape[:2])
  if chunk == candidates.shape[0]:
    return most_uncertain(logits, candidates, num_uncertain, score, False)

  def select_rows(_, logits, candidates):
    # A chunk of candidates copied once: the sampler's loop reads them faster
    # than through the loop's slice of the whole array.
    return most_uncertain(
        logits, barrier.computed_apart(lambda c: c, candidates), num_uncertain,
        score, False)

  return in_chunks(select_rows, chunk, logits, candidates)


def select_uniform_candidates(key: jax.Array, logits: jax.Array,
                              num_candidates: int, num_uncertain: int,
                              score, needed: jax.Array | None = None
                              ) -> jax.Array:
  """The kernel's entry point for candidates `jax.random.uniform(key, ...)`.

  Draws `[N, num_candidates, 2]` candidates, bit for bit those of
  `jax.random.uniform(key, shape)`, chunk by chunk inside the selection loop.
  With `needed [N]`, a chunk with no needed row is skipped: its rows get
  zeros (the criterion's padded target slots, whose points are not used).
  """
  shape = (logits.shape[0], num_candidates, 2)
  chunk = rows_per_chunk(*shape[:2])
  if chunk == shape[0] or not threefry.can_draw_rows(key, shape):
    return most_uncertain(logits, threefry.uniform(key, shape), num_uncertain,
                           score, True)

  def rows(first_row, logits, *needed):
    def select(logits):
      candidates = threefry.uniform_rows(key, (logits.shape[0], *shape[1:]),
                                         first_row)
      return most_uncertain(logits, candidates, num_uncertain, score, True)
    if not needed:
      return select(logits)
    return lax.cond(jnp.any(needed[0]), select,
                    lambda logits: jnp.zeros(
                        (logits.shape[0], num_uncertain, 2), jnp.float32),
                    logits)

  return in_chunks(rows, chunk, logits,
                    *(() if needed is None else (needed,)))
