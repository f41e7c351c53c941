"""`grid_sample`'s arithmetic for one point: position, weights and sum.

Shared by the plain sampler (`sampling.py`), the XLA:CPU kernel
(`xla_cpu/sampler.py`) and the criterion's shared-point sampler
(`criterion.py`): grid_sample's bilinear rule with zero padding and
`align_corners=False`, in the order of operations of its source
(aten/src/ATen/native/GridSampler.h, `grid_sampler_compute_source_index`,
and the bilinear kernel of aten/src/ATen/native/cuda/GridSampler.cu), every
operation rounded on its own.

Why every product is rounded where it stands: a compiler may contract
`a * b + c` into one fused multiply-add, which rounds once instead of twice.
XLA does so or not depending on how a program is fused: the same position
`(g + 1) * size - 1` came out contracted in one sampler and not in another,
and even for x and not for y within one program, so that samplers differed
in the last bit and near-ties selected different points. Rounding each
product (`_rounded`) leaves no compiler a choice: every sampler, on every
platform, computes the same bits. PyTorch's own compiled kernels do contract
(the vectorised CPU kernel on FMA hardware, the CUDA kernel by nvcc's
default `--fmad=true`), so they agree with these to within an ulp of the
position and of each product, not bit for bit.
"""

import jax
import jax.numpy as jnp

from jaxmask._src import percentile


def pixel_positions(point_coords: jax.Array, height: int, width: int):
  """`(x, y)` in [0, 1] -> pixel positions `(ix, iy)`, in grid_sample's order.

  `point_sample` passes `grid = 2 * point_coords - 1`, which grid_sample
  unnormalises as `((grid + 1) * size - 1) / 2`, the product rounded before
  the subtraction.
  """
  grid = 2 * point_coords - 1  # 2x is exact: contracted or not, one rounding
  return (_unnormalize(grid[..., 0], width), _unnormalize(grid[..., 1], height))


def _unnormalize(grid: jax.Array, size: int) -> jax.Array:
  return (_rounded((grid + 1) * size) - 1) / 2


def bilinear_weights(ix: jax.Array, iy: jax.Array):
  """The weights of the (nw, ne, sw, se) neighbours, in grid_sample's order."""
  x0, y0 = jnp.floor(ix), jnp.floor(iy)
  x1, y1 = x0 + 1, y0 + 1
  return ((x1 - ix) * (y1 - iy), (ix - x0) * (y1 - iy),
          (x1 - ix) * (iy - y0), (ix - x0) * (iy - y0))


def weighted_sum(values, weights):
  """`v_nw w_nw + v_ne w_ne + v_sw w_sw + v_se w_se`, in grid_sample's order.

  Added left to right, each product rounded before it is added.

  Args:
    values: the four neighbours' values (nw, ne, sw, se), broadcastable.
    weights: their weights, from `bilinear_weights`.
  """
  out = _rounded(values[0] * weights[0])
  for value, weight in zip(values[1:], weights[1:]):
    out = out + _rounded(value * weight)
  return out


@jax.custom_jvp
def _rounded(x: jax.Array) -> jax.Array:
  """`x`, rounded where it stands: XLA cannot fuse it into a multiply-add.

  Its bits pass through an XOR with an integer that is 0 wherever `x` is a
  number (a NaN stays NaN); the derivative is the identity's.
  """
  return percentile._opaque(x, jnp.isnan(x).astype(jnp.int32))


@_rounded.defjvp
def _rounded_jvp(primals, tangents):
  return _rounded(primals[0]), tangents[0]
