"""NumPy-exact percentile on device, optionally over a global (multi-device) batch."""

import math
import numbers

import jax
import jax.numpy as jnp
from jax import lax

from jaxmask._src import checks


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


def check_values(values, name: str = "values") -> jax.Array:
  """`values` as a non-empty `[n]` floating array (half precision upcast)."""
  if not hasattr(values, "shape"):
    raise TypeError(f"{name} must be an array of shape [n], got"
                    f" {type(values).__name__}.")
  values = jnp.asarray(values)
  checks.rank(values, name, "[n]")
  checks.floating(values, name)
  if values.shape[0] < 1:
    raise ValueError(f"{name} must hold at least one value, got shape (0,).")
  return checks.upcast(values)


def percentile(values: jax.typing.ArrayLike, q) -> jax.Array:
  r"""`np.percentile(values, q)` (method "linear") of a 1-D array, on device.

  With the values sorted, :math:`v_{(0)} \le \dots \le v_{(n-1)}`, the rank
  :math:`r = (n - 1)\, q / 100`, :math:`i = \lfloor r \rfloor` and
  :math:`\gamma = r - i`:

  .. math::
     \operatorname{percentile} = v_{(i)} + (v_{(i+1)} - v_{(i)})\, \gamma

  (NumPy's `_lerp`, which computes :math:`v_{(i+1)} - (v_{(i+1)} - v_{(i)})
  (1 - \gamma)` where :math:`\gamma \ge 0.5`).

  For a Python-number `q` the result is bit for bit NumPy's (NumPy 2.4 or
  newer; earlier releases round float32 results differently and can differ
  in the last bit): the rank, its floor and the interpolation weight are
  computed at trace time in float64, exactly as NumPy does, and the
  interpolation uses NumPy's formula in the
  input dtype, kept from XLA's rewrites (`jnp.percentile` is not exact:
  XLA:CPU turns `q / 100` into a multiply and fuses the interpolation into a
  multiply-add). A traced `q` follows NumPy's arithmetic for a float32 `q`,
  i.e. `np.percentile(values, np.float32(q))`, with the division `q / 100`
  done by the device (IEEE on XLA:CPU): bit for bit on x86 CPUs with and
  without FMA or AVX-512 (every product is rounded before it is added, so no
  CPU can fuse them; tested with XLA's instruction set capped at SSE4.2, AVX,
  AVX2 and AVX-512). A traced `q` outside [0, 100] or NaN gives NaN.

  Any NaN in `values` gives NaN, as in NumPy; infinities interpolate as in
  NumPy (`inf - inf` is NaN); the sign of a zero result is NumPy's.

  Subnormals: XLA:CPU reads and writes float32 subnormals (magnitudes below
  2**-126) as zero (denormals-are-zero, flush-to-zero). The exactness holds
  where the values, their differences and the weight are zero or normal;
  `tests/percentile/test_percentile_properties.py` records the subnormal cases that differ.

  Args:
    values: `[n]` floating array, `n >= 1`; half precision is upcast to
      float32.
    q: percentile in [0, 100]: a Python or NumPy number (checked), or a scalar
      array, possibly traced.

  Returns:
    A scalar of `values.dtype` (float32 or wider).

  Example:
    >>> jaxmask.percentile(jnp.array([1.0, 2.0, 3.0, 4.0]), 50)
    Array(2.5, dtype=float32)
  """
  values = check_values(values)
  checks.percentile_q(q)
  n = values.shape[0]
  v = jnp.sort(values)
  has_nan = jnp.isnan(v[-1])  # NaNs sort last
  zero = has_nan.astype(jnp.int32)  # 0 whenever the result is used

  if isinstance(q, numbers.Real):
    rank = (n - 1) * (float(q) / 100.0)  # float64, as NumPy
    if rank >= n - 1:
      # NumPy's top rank: both neighbours are v[-1], and the weight is taken
      # against index -1 (rank + 1 >= 1), which keeps the sign of a -0.
      lo = hi = n - 1
      gamma = rank + 1
    else:
      lo = math.floor(rank)
      hi = lo + 1
      gamma = rank - lo
    # NumPy rounds the float64 weight (or 1 - weight) to the array dtype.
    a, b = v[lo], v[hi]
    d = b - a
    if gamma >= 0.5:
      out = b - _opaque(d * jnp.asarray(1.0 - gamma, v.dtype), zero)
    else:
      out = a + _opaque(d * jnp.asarray(gamma, v.dtype), zero)
  else:
    q = jnp.asarray(q, jnp.float32)
    # XLA turns a division by a constant or a broadcast (q batched by vmap)
    # into a multiply by its reciprocal; a divisor it cannot see through,
    # one per q, keeps NumPy's division.
    q_bits = lax.bitcast_convert_type(q, jnp.int32)
    hundred = _opaque(jnp.full(q.shape, 100.0, jnp.float32),
                      jnp.where(has_nan, q_bits, 0))
    # The rank feeds a subtraction and an addition below: kept opaque, the
    # product is rounded first, as NumPy rounds it, on every CPU (XLA:CPU
    # would otherwise be free to fuse `rank - lo` into one multiply-add on
    # CPUs with FMA).
    rank = _opaque((q / hundred) * jnp.float32(n - 1), zero)  # in [-0, n - 1] for q in range
    top = rank >= n - 1
    lo = jnp.clip(jnp.floor(rank), 0, n - 1).astype(jnp.int32)
    # NumPy's weight: rank minus the integer index (so -0 stays -0), and
    # against index -1 at the top rank.
    gamma = jnp.where(top, rank + 1, rank - lo.astype(jnp.float32))
    lo = jnp.where(top, n - 1, lo)
    hi = jnp.minimum(lo + 1, n - 1)
    out = _lerp(v[lo], v[hi], gamma.astype(v.dtype), zero)
    has_nan |= ~((q >= 0) & (q <= 100))  # out of range, or NaN
  return jnp.where(has_nan, jnp.asarray(jnp.nan, v.dtype), out)
