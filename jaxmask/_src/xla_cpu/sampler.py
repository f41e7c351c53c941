"""Kernel: `point_sample` as two gathers of neighbour pairs per point.

Why: XLA:CPU emits a gather as a scalar loop, so the plain sampler's four
clamped gathers, their index arithmetic and autodiff's four scatters cost
more than grid_sample itself. This kernel reads each point's 2 x 2 block as
two (left, right) pixel pairs in one flat gather: from a zero-bordered copy
of the maps, or, for few points on big maps (8 or more pixels per point),
from the maps themselves with the block clamped into the map and the edge
pixels routed by selects (no copy of the maps or of their gradient). The
block offsets are computed in their own vectorised pass (`barrier.py`), in
16 bits where they fit, and a hand-written VJP computes the gradient once and
scatters both rows of neighbours into one buffer.

What it must equal: the plain `point_sample` (grid_sample with bilinear
interpolation, zero padding, `align_corners=False`), bit for bit: the same
position, weight and sum arithmetic (`grid.py`, which leaves XLA no
multiply-add to contract); gradients agree to float rounding (the
hand-written VJP adds in another order).
"""

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxmask._src import grid
from jaxmask._src.xla_cpu import barrier

MAX_FLAT_INDEX = 2**31 - 1
# From this many pixels per point on, the maps are read where they are (the
# 2 x 2 block clamped into the map, a few selects per point), which needs no
# copy of the maps or of their gradient. At 5 pixels per point (256² logits,
# 12544 points) the zero-bordered copy's faster loop still wins by ~7%.
_PIXELS_PER_POINT_TO_CLAMP = 8


def point_sample(inputs: jax.Array, point_coords: jax.Array, *,
                 finite_coords: bool = False,
                 positions_apart: bool = False,
                 rows: jax.Array | None = None) -> jax.Array:
  """The kernel's entry point: validated `[N, C, H, W]` maps, `[N, P, 2]` points.

  `finite_coords=True` is the caller's promise that every coordinate is
  finite (points jaxmask drew itself, uniform in [0, 1)): the passes that
  give NaN or infinite coordinates grid_sample's NaN are then left out. They
  cost the point-loss step ~7% on XLA:CPU (they change how the gathers fuse).
  `positions_apart=True` computes the pixel positions once, in the pass of
  the block offsets, rather than where they are used: ~20% faster inside the
  selection's loop over chunks of masks, ~35% slower for a whole batch.
  `rows [N]`, if given, reads the points of row n from map `inputs[rows[n]]`
  of `[R, C, H, W]` maps, in place: the same as `inputs[rows]`, without the
  copy.

  Returns `[N, C, P]` values in the dtype of `inputs`.
  """
  num_maps, channels, height, width = inputs.shape
  num_masks = point_coords.shape[0]
  if rows is not None and (
      num_maps * channels * (height + 2) * (width + 2) > MAX_FLAT_INDEX):
    rows, inputs = None, inputs[rows]
  if num_masks > 1 and (
      num_masks * channels * (height + 2) * (width + 2) > MAX_FLAT_INDEX):
    # Flat int32 offsets would overflow: gather map by map instead.
    return jax.vmap(functools.partial(
        point_sample, finite_coords=finite_coords,
        positions_apart=positions_apart))(
            inputs[:, None], point_coords[:, None])[:, 0]

  # Widen to at least float32: bfloat16 cannot hold x * W to a pixel.
  point_coords = point_coords.astype(
      jnp.promote_types(point_coords.dtype, jnp.float32))
  out = sample_flat(flat_maps(inputs, point_coords.shape[1]), point_coords,
                    rows=rows, finite_coords=finite_coords,
                    positions_apart=positions_apart)
  return out.astype(inputs.dtype)


class FlatMaps(NamedTuple):
  """`[R, C, H, W]` maps laid out for `sample_flat`: see `flat_maps`."""

  flat: jax.Array  # the maps, with a zero border unless `clamped`, flat
  shape: tuple[int, int, int]  # (C, H, W), without the border
  clamped: bool


def flat_maps(inputs: jax.Array, num_points: int) -> FlatMaps:
  """The `[R, C, H, W]` maps, flat, for sampling `num_points` points a row.

  Read in place (the 2 x 2 block clamped into the map) for few points on
  big maps; otherwise with a zero border, which makes every neighbour of a
  point inside (-1, W) x (-1, H) addressable. Made once, the maps can be
  sampled chunk by chunk inside a loop (a loop's invariant `[R, C, H, W]`
  reshaped there was copied whole).
  """
  _, channels, height, width = inputs.shape
  clamped = (min(height, width) >= 2
             and num_points * _PIXELS_PER_POINT_TO_CLAMP <= height * width)
  if not clamped:
    inputs = jnp.pad(inputs, ((0, 0), (0, 0), (1, 1), (1, 1)))
  return FlatMaps(inputs.reshape(-1), (channels, height, width), clamped)


def sample_flat(maps: FlatMaps, point_coords: jax.Array, *,
                rows: jax.Array | None, finite_coords: bool,
                positions_apart: bool) -> jax.Array:
  """`point_sample` of `flat_maps` at `[N, P, 2]` float32 points -> `[N, C, P]`.

  Row n reads map `rows[n]` (`n` where `rows` is None). The arguments are
  `point_sample`'s.
  """
  channels, height, width = maps.shape
  num_masks = point_coords.shape[0]
  ix, iy, start = positions_and_block_starts(
      point_coords, (num_masks, channels, height, width),
      padded=not maps.clamped)
  if not positions_apart:  # recomputed where used (their pass is left out)
    ix, iy = grid.pixel_positions(point_coords, height, width)
    if channels > 1:
      ix, iy = ix[:, None, :], iy[:, None, :]
  map_shape = (height, width) if maps.clamped else (height + 2, width + 2)
  out = interpolate(maps.flat, start, ix, iy, rows, map_shape, maps.clamped,
                    channels)
  x0, y0 = jnp.floor(ix), jnp.floor(iy)
  inside = (x0 >= -1) & (x0 <= width - 1) & (y0 >= -1) & (y0 <= height - 1)
  # Outside the map: +0, or NaN for a NaN or infinite position (grid_sample's
  # rule), which `x - x` gives in one pass (+0 where x is finite).
  out = jnp.where(inside, out, 0 if finite_coords else (ix - ix) + (iy - iy))
  return out.reshape(num_masks, channels, -1)


def positions_and_block_starts(point_coords, shape, *, padded):
  """Pixel positions `ix, iy` and each point's 2 x 2 block within its map.

  The block's top-left pixel is the point's top-left neighbour, in maps of
  `shape` with a zero border (`padded`) or clamped into them. Computed once,
  in their own vectorised pass rather than as scalar code inside the gather,
  the offsets in 16 bits where they fit (half the memory: fewer pages to
  fault in). Positions and offsets are `[N, P]`, or `[N, 1, P]` for `C > 1`
  (a unit channel axis slows XLA:CPU down 2x).
  """
  _, channels, height, width = shape
  pad = 1 if padded else 0
  row_len, num_rows = width + 2 * pad, height + 2 * pad

  def apart(point_coords):
    ix, iy = grid.pixel_positions(point_coords, height, width)
    # Clipped as integers: XLA converts NaN to 0 and saturates infinities,
    # so a NaN or infinite position reads a block inside the map (its value
    # is NaN whatever it reads) with no pass of its own.
    col = jnp.clip(jnp.floor(ix).astype(jnp.int32), -pad, row_len - 2 - pad)
    row = jnp.clip(jnp.floor(iy).astype(jnp.int32), -pad, num_rows - 2 - pad)
    dtype = jnp.uint16 if row_len * num_rows <= 2**16 else jnp.int32
    start = ((row + pad) * row_len + col + pad).astype(dtype)
    if channels > 1:
      return ix[:, None, :], iy[:, None, :], start[:, None, :]
    return ix, iy, start

  return barrier.computed_apart(apart, point_coords)


def _flat_start(start: jax.Array, channels: int, map_size: int,
                rows: jax.Array | None) -> jax.Array:
  """Offsets within maps, `[N, P]` or `[N, 1, P]` -> `[N, P]` or `[N, C, P]`.

  The `[R, C]` maps of `map_size` values each lie in one flat array; row n's
  points lie in map row `rows[n]` (`n` where `rows` is None).
  """
  shape = start.shape
  if start.ndim == 3:
    shape = (shape[0], channels, shape[2])
  if rows is None:
    index = lax.broadcasted_iota(jnp.int32, shape, 0)
  else:
    index = jnp.broadcast_to(
        rows.astype(jnp.int32).reshape((-1,) + (1,) * (len(shape) - 1)), shape)
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


def gather_pairs(flat: jax.Array, start: jax.Array) -> jax.Array:
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


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def interpolate(flat, start, ix, iy, rows, map_shape, clamped, channels):
  """Bilinear values at `ix, iy` from `[H', W']` maps, flat.

  `start`: each point's block within its map (see `_neighbours`); `rows`:
  each row's map (see `_flat_start`).
  """
  start = _flat_start(start, channels, math.prod(map_shape), rows)
  values = _neighbours(*_read_pairs(flat, start, map_shape[1]), ix, iy,
                       map_shape, clamped)
  return grid.weighted_sum(values, grid.bilinear_weights(ix, iy))


def _read_pairs(flat, start, row_len) -> tuple[jax.Array, jax.Array]:
  """The pixel pairs at `start` and one row below, in all the maps `flat`.

  Gathered in their own pass: fused into the weighted sum, the gathers ran
  as scalar code with the sum's arithmetic around them (~60% slower).
  """
  return barrier.computed_apart(
      lambda flat, start: (gather_pairs(flat, start),
                           gather_pairs(flat, start + row_len)), flat, start)


def _interpolate_fwd(flat, start, ix, iy, rows, map_shape, clamped, channels):
  out = interpolate(flat, start, ix, iy, rows, map_shape, clamped, channels)
  return out, (flat, start, ix, iy, rows)


def _interpolate_bwd(map_shape, clamped, channels, residuals, g):
  # Written out so that the gradient `g` is computed once, not once per row
  # of neighbours, and both rows scatter into one buffer (autodiff's
  # transpose took 2x longer).
  flat, start, ix, iy, rows = residuals
  g = barrier.computed_apart(lambda g: g, g)
  # Points outside the map, NaN and infinite ones included, get g = 0 from
  # the forward pass's select; their weights may be NaN, so they are zeroed
  # with g: such a point adds nothing to any gradient.
  outside = g == 0
  w = [jnp.where(outside, 0, weight) for weight in grid.bilinear_weights(ix, iy)]
  d_upper, d_lower = _transpose_neighbours([g * wi for wi in w], ix, iy,
                                           map_shape, clamped)
  start = _flat_start(start, channels, math.prod(map_shape), rows)
  d_flat = _scatter_add_pairs(jnp.zeros_like(flat), start, d_upper)
  d_flat = _scatter_add_pairs(d_flat, start + map_shape[1], d_lower)
  # Through the weights, for gradients with respect to the points.
  nw, ne, sw, se = _neighbours(*_read_pairs(flat, start, map_shape[1]), ix,
                               iy, map_shape, clamped)
  x0, y0 = jnp.floor(ix), jnp.floor(iy)
  d_ix = jnp.where(outside, 0, g * ((ne - nw) * (y0 + 1 - iy)
                                    + (se - sw) * (iy - y0)))
  d_iy = jnp.where(outside, 0, g * ((sw - nw) * (x0 + 1 - ix)
                                    + (se - ne) * (ix - x0)))
  unbroadcast = lambda d: jnp.sum(d, axis=tuple(
      a for a, (m, n) in enumerate(zip(d.shape, ix.shape)) if m != n),
                                  keepdims=True)
  return d_flat, None, unbroadcast(d_ix), unbroadcast(d_iy), None


interpolate.defvjp(_interpolate_fwd, _interpolate_bwd)
