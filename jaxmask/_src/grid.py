"""`grid_sample`'s arithmetic for one point: its pixel position and weights.

Shared by the plain sampler (`sampling.py`) and the XLA:CPU kernel
(`xla_cpu/sampler.py`), so that both round exactly as PyTorch's
`grid_sample(..., mode="bilinear", padding_mode="zeros",
align_corners=False)` does (aten/src/ATen/native/GridSampler.h,
`grid_sampler_compute_source_index` and the bilinear kernel).
"""

import jax
import jax.numpy as jnp


def pixel_positions(point_coords: jax.Array, height: int, width: int):
  """`(x, y)` in [0, 1] -> pixel positions `(ix, iy)`, in grid_sample's order.

  `point_sample` passes `grid = 2 * point_coords - 1`, which grid_sample
  unnormalises as `((grid + 1) * size - 1) / 2`.
  """
  grid = 2 * point_coords - 1
  return (((grid[..., 0] + 1) * width - 1) / 2,
          ((grid[..., 1] + 1) * height - 1) / 2)


def bilinear_weights(ix: jax.Array, iy: jax.Array):
  """The weights of the (nw, ne, sw, se) neighbours, in grid_sample's order."""
  x0, y0 = jnp.floor(ix), jnp.floor(iy)
  x1, y1 = x0 + 1, y0 + 1
  return ((x1 - ix) * (y1 - iy), (ix - x0) * (y1 - iy),
          (x1 - ix) * (iy - y0), (ix - x0) * (iy - y0))
