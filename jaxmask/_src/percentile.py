"""NumPy-exact percentile on device, optionally over a global (multi-device) batch."""

import math
import numbers

import jax
import jax.numpy as jnp
from jax import lax


def check_q(q) -> None:
  """Validates a percentile that is a Python/NumPy number; traced values pass."""
  if isinstance(q, bool):
    raise TypeError(f"q must be a number in [0, 100], got bool {q!r}.")
  if isinstance(q, numbers.Real):
    if not 0.0 <= float(q) <= 100.0:  # also rejects NaN
      raise ValueError(f"q must lie in [0, 100], got {q!r}.")
    return
  if isinstance(q, jax.Array) or hasattr(q, "dtype"):
    if jnp.ndim(q) != 0:
      raise ValueError(f"q must be a scalar, got shape {jnp.shape(q)}.")
    if not jnp.issubdtype(jnp.result_type(q), jnp.number):
      raise TypeError(f"q must be numeric, got dtype {jnp.result_type(q)}.")
    return
  raise TypeError(f"q must be a number in [0, 100], got {type(q).__name__}.")


def gather_global(values: jax.Array, axis_name) -> jax.Array:
  """Concatenates the per-device `values` [n] along `axis_name` (no-op if None)."""
  if axis_name is None:
    return values
  return lax.all_gather(values, axis_name, axis=0, tiled=True)


def _opaque(x: jax.Array, zero: jax.Array) -> jax.Array:
  """Returns `x` unchanged (its bits XOR `zero`, an int32 that is 0 whenever
  the result is used), but opaque to XLA.

  XLA:CPU contracts `a + b * c` into a fused multiply-add and rewrites
  `x / 100` as `x * 0.01`; both change the last bit, and NumPy does neither.
  An operand XLA cannot see through keeps the arithmetic NumPy's.
  """
  int_type = {2: jnp.int16, 4: jnp.int32, 8: jnp.int64}[x.dtype.itemsize]
  bits = lax.bitcast_convert_type(x, int_type) ^ zero.astype(int_type)
  return lax.bitcast_convert_type(bits, x.dtype)


def _lerp(a, b, t, zero):
  """NumPy's `_lerp`: `a + (b-a)*t`, or `b - (b-a)*(1-t)` where `t >= 0.5`."""
  d = b - a
  low = a + _opaque(d * t, zero)
  high = b - _opaque(d * (1 - t), zero)
  return jnp.where(t >= 0.5, high, low)


def percentile(values: jax.Array, q) -> jax.Array:
  """`np.percentile(values, q)` (method 'linear') for a 1-D array, on device.

  For a Python-number `q` the result is bit-for-bit NumPy's: the rank, its
  floor and the interpolation weight are computed at trace time in float64,
  exactly as NumPy does, and the interpolation uses NumPy's formula in the
  input dtype. For a traced `q` (a scalar array) the arithmetic is NumPy's
  for a float32 `q`, i.e. `np.percentile(values, np.float32(q))`; a traced
  `q` outside [0, 100] clamps to the minimum/maximum.

  Any NaN in `values` gives NaN, as in NumPy.

  Args:
    values: `[n]` float32 (or wider) array, `n >= 1`.
    q: percentile in [0, 100]; a Python number or a scalar (possibly traced).

  Returns:
    A scalar of `values.dtype`.
  """
  n = values.shape[0]
  v = jnp.sort(values)
  has_nan = jnp.isnan(v[-1])  # NaNs sort last
  zero = has_nan.astype(jnp.int32)  # 0 whenever the result is used

  if isinstance(q, numbers.Real):
    rank = (n - 1) * (float(q) / 100.0)  # float64, as NumPy
    lo = min(math.floor(rank), n - 1)
    hi = min(lo + 1, n - 1)
    gamma = rank - lo if rank < n - 1 else 0.0
    # NumPy rounds the float64 weight (or 1 - weight) to the array dtype.
    a, b = v[lo], v[hi]
    d = b - a
    if gamma >= 0.5:
      out = b - _opaque(d * jnp.asarray(1.0 - gamma, v.dtype), zero)
    else:
      out = a + _opaque(d * jnp.asarray(gamma, v.dtype), zero)
  else:
    q = jnp.asarray(q, jnp.float32)
    quantile = q / _opaque(jnp.float32(100.0), zero)
    rank = jnp.clip(quantile * jnp.float32(n - 1), 0.0, n - 1)
    lo = jnp.floor(rank)
    gamma = (rank - lo).astype(v.dtype)
    lo = lo.astype(jnp.int32)
    hi = jnp.minimum(lo + 1, n - 1)
    out = _lerp(v[lo], v[hi], gamma, zero)
  return jnp.where(has_nan, jnp.asarray(jnp.nan, v.dtype), out)
