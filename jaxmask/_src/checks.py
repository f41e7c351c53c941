"""Argument validation: one argument order `(value, name, ...)`, one wording.

Every check runs at trace time, on shapes, dtypes and Python options, and
raises a `TypeError` (wrong kind of thing) or `ValueError` (right kind, wrong
shape or range) whose message names the argument and says what was expected.
Values are never inspected here: a traced array has none.
"""

import math
import numbers
from typing import Literal

import jax
import jax.numpy as jnp
from jax import lax

# TPUs would otherwise multiply float32 matrices in bfloat16.
HIGHEST = lax.Precision.HIGHEST


def upcast(x: jax.Array) -> jax.Array:
  """`x` in float32 if it is half precision (float32 and wider unchanged)."""
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def floating(x: jax.Array, name: str) -> None:
  """Raises TypeError unless `x` has a floating dtype."""
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f"{name} must have a floating dtype, got {x.dtype}.")


def rank(x: jax.Array, name: str, shape: str) -> None:
  """Raises ValueError unless `x` has as many axes as `shape` names."""
  if x.ndim != shape.count(",") + 1:
    raise ValueError(f"{name} must have shape {shape}, got {x.shape}.")


def same_size(a: jax.Array, b: jax.Array, axis: int, names: tuple[str, str],
              what: str) -> None:
  """Raises ValueError unless `a` and `b` agree along `axis`."""
  if a.shape[axis] != b.shape[axis]:
    raise ValueError(
        f"{names[0]} and {names[1]} must have the same {what}, got"
        f" {a.shape} and {b.shape}.")


def python_int(value, name: str, low: int = 0) -> int:
  """A Python (or NumPy) integer `>= low`; bools are rejected."""
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    raise TypeError(f"{name} must be a Python int, got {value!r}.")
  if value < low:
    raise ValueError(f"{name} must be >= {low}, got {value}.")
  return int(value)


def python_number(value, name: str, low: float, high: float) -> float:
  """A finite Python (or NumPy) real number in `[low, high]`."""
  if isinstance(value, bool) or not isinstance(value, numbers.Real):
    raise TypeError(f"{name} must be a Python number, got {value!r}.")
  if not (math.isfinite(value) and low <= value <= high):  # also NaN
    raise ValueError(f"{name} must be a finite number in [{low}, {high}],"
                     f" got {value!r}.")
  return float(value)


def one_of(value, name: str, choices: tuple) -> None:
  """Raises ValueError unless `value` is one of `choices`."""
  if value not in choices:
    raise ValueError(f"{name} must be one of {choices}, got {value!r}.")


def percentile_q(q) -> None:
  """Validates a percentile `q`: a number in [0, 100] or a scalar array.

  Python and NumPy numbers must lie in [0, 100] (NaN is rejected), as
  NumPy's percentile demands; a scalar array (possibly traced) passes here,
  and `percentile` maps a traced value outside [0, 100] to a NaN threshold.
  """
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


Keep = Literal["low", "high"]
KEEP = ("low", "high")
