"""Uncertainty-based point sampling (Mask2Former, PointRend).

Layout follows the PyTorch originals so that code ports line for line: mask
logits `[num_masks, channels, height, width]`, point coordinates
`[num_masks, num_points, 2]` with `[..., 0] = x` (width) and `[..., 1] = y`
(height), both normalised to [0, 1].

References:
  Cheng et al., "Masked-attention Mask Transformer for Universal Image
  Segmentation" (Mask2Former), CVPR 2022.
  Kirillov et al., "PointRend: Image Segmentation as Rendering", CVPR 2020.
"""

import functools
import math
import numbers
from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax

from jaxmask._src import barrier
from jaxmask._src import rng
from jaxmask._src import topk

UncertaintyFn = Callable[[jax.Array], jax.Array]


def check_floating(x: jax.Array, name: str) -> None:
  """Raises TypeError unless `x` has a floating dtype."""
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f"{name} must have a floating dtype, got {x.dtype}.")


def check_rank(x: jax.Array, rank: int, name: str, shape: str) -> None:
  """Raises ValueError unless `x` has rank `rank` (`shape` names the axes)."""
  if x.ndim != rank:
    raise ValueError(f"{name} must have shape {shape}, got {x.shape}.")


def _check_coords(coords: jax.Array, rank: int, shape: str,
                  name: str = "point_coords") -> None:
  check_rank(coords, rank, name, shape)
  if coords.shape[-1] != 2:
    raise ValueError(f"{name} must have shape {shape} (x, y last), got"
                     f" {coords.shape}.")
  check_floating(coords, name)


def _check_int(value, name: str, low: int) -> None:
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    raise TypeError(f"{name} must be a Python int, got {value!r}.")
  if value < low:
    raise ValueError(f"{name} must be >= {low}, got {value}.")


def _check_ratio(value, name: str, low: float, high: float) -> None:
  if isinstance(value, bool) or not isinstance(value, numbers.Real):
    raise TypeError(f"{name} must be a Python number, got {value!r}.")
  if not low <= value <= high:  # also rejects NaN
    raise ValueError(f"{name} must lie in [{low}, {high}], got {value!r}.")


def point_sample_single(inputs: jax.typing.ArrayLike,
                        point_coords: jax.typing.ArrayLike) -> jax.Array:
  """Bilinearly samples one feature map at normalised points.

  The per-mask form of `point_sample`: `point_sample(inputs[None],
  point_coords[None])[0]`; it composes with `jax.vmap`.

  Args:
    inputs: `[channels, height, width]` floating feature map.
    point_coords: `[num_points, 2]` floating `(x, y)` coordinates, nominally in
      [0, 1]; points outside are allowed and sample the zero padding.

  Returns:
    `[channels, num_points]` sampled values, dtype of `inputs`.
  """
  inputs = jnp.asarray(inputs)
  point_coords = jnp.asarray(point_coords)
  check_rank(inputs, 3, "inputs", "[channels, height, width]")
  _check_coords(point_coords, 2, "[num_points, 2]")
  return point_sample(inputs[None], point_coords[None])[0]


_MAX_FLAT_INDEX = 2**31 - 1
# From this many pixels per point on, the maps are read where they are (the
# 2 x 2 block clamped into the map, a few selects per point), which needs no
# copy of the maps or of their gradient. At 5 pixels per point (256² logits,
# 12544 points) the zero-bordered copy's faster loop still wins by ~7%.
_PIXELS_PER_POINT_TO_CLAMP = 8


def _pixel_positions(point_coords, height, width):
  """(x, y) in [0, 1] -> pixel positions, in grid_sample's order of operations."""
  grid = 2 * point_coords - 1
  return ((grid[..., 0] + 1) * width - 1) / 2, (
      (grid[..., 1] + 1) * height - 1) / 2


def point_sample(inputs: jax.typing.ArrayLike,
                 point_coords: jax.typing.ArrayLike) -> jax.Array:
  """Bilinearly samples feature maps at normalised points, one set per map.

  Equivalent to detectron2's `point_sample` and HF transformers'
  `sample_point` with `align_corners=False`: `grid_sample(inputs,
  2 * point_coords - 1)` with bilinear interpolation and zero padding per
  neighbour. The point `(x, y)` lies at pixel position `(x * W - 0.5, y * H -
  0.5)`, and each of its four neighbours that falls outside the image
  contributes zero on its own. Positions are computed in grid_sample's order
  of operations, `((2x - 1 + 1) * W - 1) / 2`, and the four neighbours are
  summed in its order, so results match PyTorch to float rounding.

  Positions and weights are computed in float32 (or the coordinates' dtype if
  wider); the result is cast to `inputs.dtype`.

  Args:
    inputs: `[num_masks, channels, height, width]` floating feature maps.
    point_coords: `[num_masks, num_points, 2]` floating `(x, y)` coordinates
      in [0, 1].

  Returns:
    `[num_masks, channels, num_points]` sampled values, dtype of `inputs`.

  Example:
    >>> logits = jnp.zeros((2, 1, 16, 16))
    >>> coords = jax.random.uniform(jax.random.key(0), (2, 5, 2))
    >>> point_sample(logits, coords).shape
    (2, 1, 5)
  """
  inputs = jnp.asarray(inputs)
  point_coords = jnp.asarray(point_coords)
  check_rank(inputs, 4, "inputs", "[num_masks, channels, height, width]")
  check_floating(inputs, "inputs")
  _check_coords(point_coords, 3, "[num_masks, num_points, 2]")
  if inputs.shape[0] != point_coords.shape[0]:
    raise ValueError(
        "inputs and point_coords must have the same num_masks (first axis),"
        f" got {inputs.shape} and {point_coords.shape}.")
  num_masks, channels, height, width = inputs.shape
  if num_masks > 1 and (
      num_masks * channels * (height + 2) * (width + 2) > _MAX_FLAT_INDEX):
    # Flat int32 offsets would overflow: gather map by map instead.
    return jax.vmap(point_sample)(inputs[:, None], point_coords[:, None])[:, 0]

  # Widen to at least float32: bfloat16 cannot hold x * W to a pixel.
  point_coords = point_coords.astype(
      jnp.promote_types(point_coords.dtype, jnp.float32))
  ix, iy = _pixel_positions(point_coords, height, width)
  if channels > 1:  # (a unit channel axis slows XLA:CPU down 2x)
    ix, iy = ix[:, None, :], iy[:, None, :]
  if (min(height, width) >= 2 and
      point_coords.shape[1] * _PIXELS_PER_POINT_TO_CLAMP <= height * width):
    out = _sample_clamped(inputs, point_coords, ix, iy)
  else:
    out = _sample_padded(inputs, point_coords, ix, iy)
  x0, y0 = jnp.floor(ix), jnp.floor(iy)
  inside = (x0 >= -1) & (x0 <= width - 1) & (y0 >= -1) & (y0 <= height - 1)
  out = jnp.where(inside, out, 0).reshape(num_masks, channels, -1)
  return out.astype(inputs.dtype)


def _sample_padded(inputs, point_coords, ix, iy):
  """Two gathers of neighbour pairs per point from a zero-bordered copy."""
  # A zero border makes every neighbour of a point inside (-1, W) x (-1, H)
  # addressable, so each point reads two (left, right) pairs: rows y0 and y1.
  padded = jnp.pad(inputs, ((0, 0), (0, 0), (1, 1), (1, 1)))
  start = _block_starts(point_coords, inputs.shape, padded=True)
  return _interpolate(padded.reshape(-1), start, ix, iy, padded.shape[2:],
                      False)


def _sample_clamped(inputs, point_coords, ix, iy):
  """Two gathers per point of the 2 x 2 block clamped into `H, W >= 2` maps."""
  start = _block_starts(point_coords, inputs.shape, padded=False)
  return _interpolate(inputs.reshape(-1), start, ix, iy, inputs.shape[2:],
                      True)


def _block_starts(point_coords, shape, *, padded):
  """Offset of each point's 2 x 2 block within its map, `[N, P]`/`[N, 1, P]`.

  The block's top-left pixel is the point's top-left neighbour, in maps of
  `shape` with a zero border (`padded`) or clamped into them. Computed in its
  own vectorised pass rather than as scalar code inside the gather, and in
  16 bits where the offsets fit (half the memory: fewer pages to fault in).
  """
  _, channels, height, width = shape
  pad = 1 if padded else 0
  row_len, num_rows = width + 2 * pad, height + 2 * pad

  def starts(point_coords):
    ix, iy = _pixel_positions(point_coords, height, width)
    col, row = (jnp.clip(jnp.floor(ix), -pad, row_len - 2 - pad),
                jnp.clip(jnp.floor(iy), -pad, num_rows - 2 - pad))
    if padded:
      col, row = col + pad, row + pad
    if channels > 1:
      col, row = col[:, None, :], row[:, None, :]
    dtype = jnp.uint16 if row_len * num_rows <= 2**16 else jnp.int32
    return (row.astype(jnp.int32) * row_len + col.astype(jnp.int32)).astype(
        dtype)

  return barrier.computed_apart(starts, point_coords)


def _flat_start(start: jax.Array, num_maps: int, map_size: int) -> jax.Array:
  """Offsets within maps, `[N, P]` or `[N, 1, P]` -> `[N, P]` or `[N, C, P]`.

  The `num_maps = N * C` maps of `map_size` values each lie in one flat array.
  """
  shape = start.shape
  if start.ndim == 3:
    shape = (shape[0], num_maps // shape[0], shape[2])
  index = lax.broadcasted_iota(jnp.int32, shape, 0)
  if start.ndim == 3:
    index = index * shape[1] + lax.broadcasted_iota(jnp.int32, shape, 1)
  return index * map_size + start.astype(jnp.int32)


def _route(first, second, low_edge, high_edge):
  """A point's (lower, upper) neighbours along an axis, from a clamped block.

  The block starts at the lower neighbour clamped into the map: at the low
  edge (lower neighbour -1) the upper neighbour is the block's first pixel,
  at the high edge (lower neighbour size - 1) the lower one is its second,
  and the neighbour off the map is zero. With the edges swapped this is the
  transpose, from the neighbours' gradients to the block's.
  """
  lower = jnp.where(high_edge, second, jnp.where(low_edge, 0, first))
  upper = jnp.where(low_edge, first, jnp.where(high_edge, 0, second))
  return lower, upper


def _edges(position, size):
  floor = jnp.floor(position)
  return floor == -1, floor == size - 1


def _neighbours(upper, lower, ix, iy, map_shape, clamped):
  """(nw, ne, sw, se) from the pixel pairs read at and below each start."""
  if not clamped:
    return upper[..., 0], upper[..., 1], lower[..., 0], lower[..., 1]
  low_x, high_x = _edges(ix, map_shape[1])
  low_y, high_y = _edges(iy, map_shape[0])
  top, bottom = _route(upper, lower, low_y[..., None], high_y[..., None])
  return (*_route(top[..., 0], top[..., 1], low_x, high_x),
          *_route(bottom[..., 0], bottom[..., 1], low_x, high_x))


def _transpose_neighbours(d, ix, iy, map_shape, clamped):
  """The pairs' gradients from the neighbours' gradients `d` (nw, ne, sw, se)."""
  if not clamped:
    return jnp.stack(d[:2], -1), jnp.stack(d[2:], -1)
  low_x, high_x = _edges(ix, map_shape[1])
  low_y, high_y = _edges(iy, map_shape[0])
  top = jnp.stack(_route(d[0], d[1], high_x, low_x), -1)
  bottom = jnp.stack(_route(d[2], d[3], high_x, low_x), -1)
  return _route(top, bottom, high_y[..., None], low_y[..., None])


def _gather_pairs(flat: jax.Array, start: jax.Array) -> jax.Array:
  """`[..., 2]` values `flat[start]`, `flat[start + 1]`."""
  dims = lax.GatherDimensionNumbers(
      offset_dims=(start.ndim,), collapsed_slice_dims=(), start_index_map=(0,))
  return lax.gather(flat, start[..., None], dims, slice_sizes=(2,),
                    mode=lax.GatherScatterMode.PROMISE_IN_BOUNDS)


def _scatter_add_pairs(flat: jax.Array, start: jax.Array,
                       pairs: jax.Array) -> jax.Array:
  """The transpose of `_gather_pairs`: adds `pairs` at `start`, `start + 1`."""
  dims = lax.ScatterDimensionNumbers(
      update_window_dims=(start.ndim,), inserted_window_dims=(),
      scatter_dims_to_operand_dims=(0,))
  return lax.scatter_add(flat, start[..., None], pairs.astype(flat.dtype),
                         dims, mode=lax.GatherScatterMode.PROMISE_IN_BOUNDS)


def _weights(ix: jax.Array, iy: jax.Array):
  """Bilinear weights of the four neighbours, in grid_sample's order."""
  x0, y0 = jnp.floor(ix), jnp.floor(iy)
  x1, y1 = x0 + 1, y0 + 1
  return ((x1 - ix) * (y1 - iy), (ix - x0) * (y1 - iy),
          (x1 - ix) * (iy - y0), (ix - x0) * (iy - y0))


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _interpolate(flat, start, ix, iy, map_shape, clamped):
  """Bilinear values at `ix, iy` from `[H', W']` maps, flat.

  `start`: each point's block within its map (see `_neighbours`).
  """
  start = _flat_start(start, flat.size // math.prod(map_shape),
                      math.prod(map_shape))
  nw, ne, sw, se = _neighbours(*_read_pairs(flat, start, map_shape[1]), ix,
                               iy, map_shape, clamped)
  w = _weights(ix, iy)
  return nw * w[0] + ne * w[1] + sw * w[2] + se * w[3]


def _read_pairs(flat, start, row_len):
  """The pixel pairs at `start` and one row below, in all the maps `flat`."""
  return _gather_pairs(flat, start), _gather_pairs(flat, start + row_len)


def _interpolate_fwd(flat, start, ix, iy, map_shape, clamped):
  out = _interpolate(flat, start, ix, iy, map_shape, clamped)
  return out, (flat, start, ix, iy)


def _interpolate_bwd(map_shape, clamped, residuals, g):
  # Written out so that the gradient `g` is computed once, not once per row
  # of neighbours, and both rows scatter into one buffer (autodiff's
  # transpose took 2x longer).
  flat, start, ix, iy = residuals
  g = barrier.computed_apart(lambda g: g, g)
  # Points outside get g = 0; their weights may be NaN (NaN points).
  w = [jnp.where(g == 0, 0, weight) for weight in _weights(ix, iy)]
  d_upper, d_lower = _transpose_neighbours([g * wi for wi in w], ix, iy,
                                           map_shape, clamped)
  start = _flat_start(start, flat.size // math.prod(map_shape),
                      math.prod(map_shape))
  d_flat = _scatter_add_pairs(jnp.zeros_like(flat), start, d_upper)
  d_flat = _scatter_add_pairs(d_flat, start + map_shape[1], d_lower)
  # Through the weights, for gradients with respect to the points.
  nw, ne, sw, se = _neighbours(*_read_pairs(flat, start, map_shape[1]), ix,
                               iy, map_shape, clamped)
  x0, y0 = jnp.floor(ix), jnp.floor(iy)
  g = jnp.where(jnp.isfinite(ix) & jnp.isfinite(iy), g, 0)
  d_ix = g * ((ne - nw) * (y0 + 1 - iy) + (se - sw) * (iy - y0))
  d_iy = g * ((sw - nw) * (x0 + 1 - ix) + (se - ne) * (ix - x0))
  unbroadcast = lambda d: jnp.sum(d, axis=tuple(
      a for a, (m, n) in enumerate(zip(d.shape, ix.shape)) if m != n),
                                  keepdims=True)
  return d_flat, None, unbroadcast(d_ix), unbroadcast(d_iy)


_interpolate.defvjp(_interpolate_fwd, _interpolate_bwd)


def calculate_uncertainty(logits: jax.typing.ArrayLike) -> jax.Array:
  """Uncertainty of mask logits, `-|logits|` (highest where a logit is 0).

  Equivalent to `calculate_uncertainty` in Mask2Former and HF transformers.

  Args:
    logits: floating array of any shape, e.g. `[num_masks, 1, num_points]`.

  Returns:
    Array of the same shape and dtype.
  """
  logits = jnp.asarray(logits)
  check_floating(logits, "logits")
  return -jnp.abs(logits)


def _check_mask_logits(logits: jax.Array) -> None:
  check_rank(logits, 4, "logits", "[num_masks, 1, height, width]")
  if logits.shape[1] != 1:
    raise ValueError(
        "logits must have a single channel, shape [num_masks, 1, height,"
        f" width], got {logits.shape}.")
  check_floating(logits, "logits")


def select_uncertain_points(
    logits: jax.typing.ArrayLike,
    candidates: jax.typing.ArrayLike,
    *,
    num_uncertain: int,
    uncertainty_fn: UncertaintyFn = calculate_uncertainty,
) -> jax.Array:
  """Keeps the `num_uncertain` most uncertain candidate points of each mask.

  The deterministic core of `sample_points_using_uncertainty`: samples
  `logits` at the candidates, scores the sampled logits with `uncertainty_fn`
  and keeps, per mask, the candidates of the `num_uncertain` highest scores:
  the same set as `lax.top_k` (ties keep the lower candidate indices), found
  by `top_k_indices`, which is exact and several times faster on XLA:CPU; the
  order within a row is unspecified (the losses built on them are sums).
  Equivalent to the top-k and flat-index-shift gather in
  Mask2Former's `get_uncertain_point_coords_with_randomness`, written as a
  per-row gather. No gradient flows through the result.

  Args:
    logits: `[num_masks, 1, height, width]` floating mask logits.
    candidates: `[num_masks, num_candidates, 2]` floating `(x, y)` points.
    num_uncertain: how many points to keep, in [0, num_candidates].
    uncertainty_fn: maps sampled logits `[num_masks, 1, num_candidates]` to
      scores of the same shape, higher meaning more uncertain.

  Returns:
    `[num_masks, num_uncertain, 2]` selected points, dtype of `candidates`.
  """
  logits = jnp.asarray(logits)
  candidates = jnp.asarray(candidates)
  _check_mask_logits(logits)
  _check_coords(candidates, 3, "[num_masks, num_candidates, 2]", "candidates")
  if logits.shape[0] != candidates.shape[0]:
    raise ValueError(
        "logits and candidates must have the same num_masks (first axis),"
        f" got {logits.shape} and {candidates.shape}.")
  _check_int(num_uncertain, "num_uncertain", 0)
  if num_uncertain > candidates.shape[1]:
    raise ValueError(
        f"num_uncertain must lie in [0, num_candidates={candidates.shape[1]}],"
        f" got {num_uncertain}.")

  select = functools.partial(_select, num_uncertain=num_uncertain,
                             uncertainty_fn=uncertainty_fn)
  logits = lax.stop_gradient(logits)
  candidates = lax.stop_gradient(candidates)
  chunk = _rows_per_chunk(*candidates.shape[:2])
  if chunk == candidates.shape[0]:
    return select(logits, candidates)
  def select_rows(_, logits, candidates):
    # A chunk of candidates copied once: the sampler's loop reads them faster
    # than through the loop's slice of the whole array.
    return select(logits, barrier.computed_apart(lambda c: c, candidates))

  return lax.platform_dependent(
      logits, candidates, default=select,
      cpu=lambda *args: _in_chunks(select_rows, chunk, *args))


def _select(logits, candidates, *, num_uncertain, uncertainty_fn):
  """`select_uncertain_points` on validated inputs (any number of masks)."""
  scores = uncertainty_fn(point_sample(logits, candidates))
  if scores.shape != (candidates.shape[0], 1, candidates.shape[1]):
    raise ValueError(
        "uncertainty_fn must return the shape of its input [num_masks, 1,"
        f" num_candidates], got {scores.shape}.")
  index = topk.top_k_indices(scores[:, 0, :], num_uncertain)
  # Apart: fused into the chunk loop's in-place update, it runs on one thread.
  return barrier.computed_apart(_take_points, candidates, index)


def _select_uncertain_candidates(key, logits, shape, select):
  """`select(logits, uniform(key, shape))`, drawn chunk by chunk on CPU."""
  chunk = _rows_per_chunk(*shape[:2])

  def whole(logits):
    return select(logits, rng.uniform(key, shape))

  if chunk == shape[0] or not rng.draws_rows(key, shape):
    return whole(logits)

  def rows(first_row, logits):
    return select(logits, rng.uniform_rows(key, (chunk, *shape[1:]),
                                           first_row))

  return lax.platform_dependent(
      logits, default=whole,
      cpu=lambda logits: _in_chunks(rows, chunk, logits))


def _take_points(candidates: jax.Array, index: jax.Array) -> jax.Array:
  """`candidates[n, index[n, j]]`: `[N, M, 2]`, `[N, K]` -> `[N, K, 2]`."""
  num_masks, num_candidates, _ = candidates.shape
  if candidates.size > _MAX_FLAT_INDEX:  # flat int32 offsets would overflow
    return jnp.take_along_axis(candidates, index[..., None], axis=1)
  # One flat gather of (x, y) pairs; XLA:CPU's batched take_along_axis is 3x
  # slower.
  start = 2 * (index + num_candidates * lax.broadcasted_iota(
      jnp.int32, index.shape, 0))
  return _gather_pairs(candidates.reshape(-1), start)


# On CPU the selection runs over chunks of masks whose candidates fill about
# this much: XLA:CPU gives every call fresh temporaries, and faulting in the
# pages of a whole batch's scores, indices and keys cost more than the
# selection itself (146 -> 116 ms for 200 x 37632 candidates).
_CHUNK_BYTES = 2**22


def _rows_per_chunk(num_rows: int, num_candidates: int) -> int:
  """A divisor of `num_rows` near the chunk size, else `num_rows` (no loop)."""
  most = max(1, _CHUNK_BYTES // (8 * max(num_candidates, 1)))
  for rows in range(min(most, num_rows), (most + 1) // 2 - 1, -1):
    if rows > 0 and num_rows % rows == 0:
      return rows
  return num_rows


def _in_chunks(fn, rows: int, *arrays):
  """Row-wise `fn(0, *arrays)` as `fn(first_row, *chunk)`, `rows` at a time."""
  num_rows = arrays[0].shape[0]
  chunks = tuple(x.reshape(num_rows // rows, rows, *x.shape[1:])
                 for x in arrays)
  first_rows = jnp.arange(0, num_rows, rows, dtype=jnp.uint32)
  out = lax.map(lambda args: fn(*args), (first_rows, *chunks))
  return out.reshape(num_rows, *out.shape[2:])


def sample_points_using_uncertainty(
    key: jax.Array,
    logits: jax.typing.ArrayLike,
    *,
    num_points: int,
    oversample_ratio: float = 3.0,
    importance_sample_ratio: float = 0.75,
    uncertainty_fn: UncertaintyFn = calculate_uncertainty,
) -> jax.Array:
  """Samples points in [0, 1]² biased towards uncertain mask logits.

  Equivalent to HF transformers' `Mask2FormerLoss.sample_points_using_uncertainty`
  and detectron2's `get_uncertain_point_coords_with_randomness`. With P =
  `num_points`:

  1. `M = int(P * oversample_ratio)` uniform candidates per mask,
     `jax.random.uniform(candidate_key, (num_masks, M, 2))`;
  2. `select_uncertain_points` keeps `K = int(importance_sample_ratio * P)`;
  3. `P - K` fresh points, `jax.random.uniform(fresh_key, (num_masks, P - K,
     2))`, are appended.

  Here `candidate_key, fresh_key = jax.random.split(key)`, so the candidates
  and fresh points can be reproduced (e.g. to feed `torch_ref`). No gradient
  flows through the result. Defaults (P = 12544, 3.0, 0.75) give 37632
  candidates, 9408 uncertain and 3136 fresh points per mask.

  Args:
    key: a `jax.random` key.
    logits: `[num_masks, 1, height, width]` floating mask logits.
    num_points: P >= 1, a Python int.
    oversample_ratio: r >= 1.
    importance_sample_ratio: fraction in [0, 1] of points chosen by
      uncertainty.
    uncertainty_fn: see `select_uncertain_points`.

  Returns:
    `[num_masks, num_points, 2]` float32 `(x, y)` points in [0, 1]: the
    uncertain ones first (most uncertain first), then the fresh ones.

  Example:
    >>> logits = jax.random.normal(jax.random.key(1), (4, 1, 32, 32))
    >>> sample_points_using_uncertainty(
    ...     jax.random.key(0), logits, num_points=100).shape
    (4, 100, 2)
  """
  logits = jnp.asarray(logits)
  _check_mask_logits(logits)
  _check_int(num_points, "num_points", 1)
  _check_ratio(oversample_ratio, "oversample_ratio", 1.0, float("inf"))
  _check_ratio(importance_sample_ratio, "importance_sample_ratio", 0.0, 1.0)

  num_masks = logits.shape[0]
  num_candidates = int(num_points * oversample_ratio)
  num_uncertain = int(importance_sample_ratio * num_points)
  candidate_key, fresh_key = jax.random.split(key)
  shape = (num_masks, num_candidates, 2)
  uncertain = _select_uncertain_candidates(
      candidate_key, lax.stop_gradient(logits), shape,
      functools.partial(_select, num_uncertain=num_uncertain,
                        uncertainty_fn=uncertainty_fn))
  fresh = rng.uniform(fresh_key, (num_masks, num_points - num_uncertain, 2))
  return lax.stop_gradient(jnp.concatenate([uncertain, fresh], axis=1))


def uncertain_point_coords_on_grid(
    uncertainty_map: jax.typing.ArrayLike,
    *,
    num_points: int,
) -> tuple[jax.Array, jax.Array]:
  """Finds the most uncertain cells of a regular grid (PointRend inference).

  Equivalent to detectron2's `get_uncertain_point_coords_on_grid`: takes the
  `K = min(num_points, H * W)` highest-scoring cells of each map (in
  decreasing order; ties keep the lower flat index first) and returns their
  flat indices `row * W + col` and cell-centre coordinates
  `(0.5 / W + col / W, 0.5 / H + row / H)`, computed as detectron2 does in
  float32. No gradient flows through the result.

  Args:
    uncertainty_map: `[num_masks, 1, height, width]` floating scores, higher
      meaning more uncertain.
    num_points: P >= 1, a Python int.

  Returns:
    `(flat_indices, coords)`: `[num_masks, K]` int32 indices into `H * W` and
    `[num_masks, K, 2]` float32 `(x, y)` coordinates in (0, 1).
  """
  uncertainty_map = jnp.asarray(uncertainty_map)
  check_rank(uncertainty_map, 4, "uncertainty_map",
             "[num_masks, 1, height, width]")
  if uncertainty_map.shape[1] != 1:
    raise ValueError(
        "uncertainty_map must have a single channel, shape [num_masks, 1,"
        f" height, width], got {uncertainty_map.shape}.")
  check_floating(uncertainty_map, "uncertainty_map")
  _check_int(num_points, "num_points", 1)

  num_masks, _, height, width = uncertainty_map.shape
  num_points = min(num_points, height * width)
  scores = lax.stop_gradient(uncertainty_map).reshape(num_masks, height * width)
  _, flat_indices = lax.top_k(scores, num_points)
  w_step = 1.0 / width
  h_step = 1.0 / height
  col = (flat_indices % width).astype(jnp.float32)
  row = (flat_indices // width).astype(jnp.float32)
  x = jnp.float32(w_step / 2) + col * jnp.float32(w_step)
  y = jnp.float32(h_step / 2) + row * jnp.float32(h_step)
  return flat_indices, jnp.stack([x, y], axis=-1)
