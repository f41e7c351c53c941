"""Kernel: `jax.random.uniform`, bit for bit, with Threefry unrolled.

Why: on CPU, JAX lowers Threefry-2x32 as a 5-step `fori_loop`, so every step
reads and writes the whole state from memory; for the 15M candidate
coordinates of a Mask2Former step that is ~5x slower than one fused
elementwise pass.

What it must equal: `jax.random.uniform(key, shape, jnp.float32)`, bit for
bit (float32 under `jax_enable_x64` too). `uniform` computes the same hash
unrolled (the counters, key schedule, rotations and float conversion of
`jax.random.uniform` under the default `jax_threefry_partitionable=True`);
keys of other PRNG implementations and the non-partitionable mode fall back
to `jax.random.uniform` itself.
"""

import math

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from jaxmask._src.xla_cpu import barrier

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = np.uint32(0x1BD11BDA)


def _rotate_left(x: jax.Array, bits: int) -> jax.Array:
  return (x << np.uint32(bits)) | (x >> np.uint32(32 - bits))


def _threefry2x32(k1, k2, x1, x2):
  """Threefry-2x32 with 20 rounds (Salmon et al., SC 2011), unrolled."""
  schedule = (k1, k2, k1 ^ k2 ^ _PARITY)
  x1 = x1 + schedule[0]
  x2 = x2 + schedule[1]
  for step in range(5):
    for bits in _ROTATIONS[step % 2]:
      x1 = x1 + x2
      x2 = x1 ^ _rotate_left(x2, bits)
    x1 = x1 + schedule[(step + 1) % 3]
    x2 = x2 + schedule[(step + 2) % 3] + np.uint32(step + 1)
  return x1, x2


def _threefry_key(key: jax.Array):
  """The two key words of a scalar Threefry key (typed or raw), else None."""
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    if key.ndim == 0 and str(jax.random.key_impl(key)) == "threefry2x32":
      return jax.random.key_data(key)
  elif (key.dtype == jnp.uint32 and key.shape == (2,)
        # jax.config sets its flags as attributes at run time (unseen by mypy).
        and jax.config.jax_default_prng_impl == "threefry2x32"):  # type: ignore[attr-defined]
    return key
  return None


def _unrolled_uniform(key_words: jax.Array, shape: tuple[int, ...],
                      first: jax.Array | int = 0) -> jax.Array:
  """The values at flat positions `first, first + 1, ...` of the stream."""
  count = lax.iota(jnp.uint32, math.prod(shape)).reshape(shape) + jnp.asarray(
      first, jnp.uint32)
  return _bits_to_uniform(*_threefry2x32(key_words[0], key_words[1],
                                         jnp.zeros_like(count), count))


def _bits_to_uniform(bits1: jax.Array, bits2: jax.Array) -> jax.Array:
  """`jax.random.uniform`'s float32 in [0, 1) from the hash's two words."""
  mantissa = ((bits1 ^ bits2) >> np.uint32(9)) | np.uint32(0x3F800000)
  return lax.bitcast_convert_type(mantissa, jnp.float32) - np.float32(1)


def can_draw_rows(key: jax.Array, shape: tuple[int, ...]) -> bool:
  """Whether the unrolled hash can draw `uniform(key, shape)` (and its rows)."""
  return (_threefry_key(key) is not None
          and jax.config.jax_threefry_partitionable  # type: ignore[attr-defined]
          and math.prod(shape) < 2**32)


def uniform_rows(key: jax.Array, shape: tuple[int, ...],
                 first_row: jax.Array | int) -> jax.Array:
  """Rows `first_row, ...` of `uniform(key, (R, *shape[1:]))`, for any R.

  Only where `can_draw_rows(key, (R, *shape[1:]))`. The draw is
  materialised: fused into a gathering consumer the hash runs ~8x slower.
  """
  row_size = math.prod(shape[1:])
  return barrier.computed_apart(
      lambda words, row: _unrolled_uniform(words, shape, row * row_size),
      _threefry_key(key), jnp.asarray(first_row, jnp.uint32))


def uniform_at_rows(key: jax.Array, row_shape: tuple[int, ...],
                    rows: jax.Array) -> jax.Array:
  """Rows `rows [n]` (any order) of `uniform(key, (R, *row_shape))`.

  Only where `can_draw_rows(key, (R, *row_shape))`; materialised, as
  `uniform_rows`.
  """
  row_size = math.prod(row_shape)

  def draw(words, rows):
    within = lax.broadcasted_iota(jnp.uint32, (rows.shape[0], row_size), 1)
    count = (within + rows[:, None] * np.uint32(row_size)).reshape(
        rows.shape[0], *row_shape)
    return _bits_to_uniform(*_threefry2x32(words[0], words[1],
                                           jnp.zeros_like(count), count))

  return barrier.computed_apart(draw, _threefry_key(key),
                                rows.astype(jnp.uint32))


def uniform(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """Same as `jax.random.uniform(key, shape, jnp.float32)`: in [0, 1)."""
  if not can_draw_rows(key, shape):
    return jax.random.uniform(key, shape, jnp.float32)
  return uniform_rows(key, shape, 0)
