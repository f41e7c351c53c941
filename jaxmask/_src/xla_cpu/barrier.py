"""Kernel helper: computing a value apart from its consumers, on XLA:CPU.

Why: XLA:CPU fuses elementwise producers into their consumers. When the consumer
gathers (the point sampler), the fused producer is emitted as scalar code
inside the gather loop: a Threefry hash ran ~8x slower there than in its own
vectorised pass, and the sampler's index arithmetic cost ~30 ms more per
200 x 37632 points. `lax.optimization_barrier` does not help: XLA:CPU expands
it before fusion. A conditional is a boundary XLA:CPU does not fuse across,
so `computed_apart` evaluates `fn` as the branch of one whose predicate is
always true but opaque to the compiler. Other platforms call `fn` directly.

What it must equal: `fn(x, *args)`, bit for bit.
"""

from typing import Any, Callable

import jax
from jax import lax
import jax.numpy as jnp


def _always_true(x: jax.Array) -> jax.Array:
  """A scalar True that XLA cannot prove true, read from `x`."""
  # Nothing compares greater than +inf, NaN included. (An integer test such
  # as `x >= 0` for unsigned `x` is folded away.)
  return ~(x.reshape(-1)[0].astype(jnp.float32) > jnp.inf)


def computed_apart(fn: Callable[..., Any], x: jax.Array, *args) -> Any:
  """`fn(x, *args)` (an array or a tuple of them), computed in its own pass
  on CPU (see module docstring)."""
  if x.size == 0:
    return fn(x, *args)

  def zeros(*operands):
    return jax.tree.map(lambda out: jnp.zeros(out.shape, out.dtype),
                        jax.eval_shape(fn, *operands))

  return lax.platform_dependent(
      x, *args,
      cpu=lambda *operands: lax.cond(_always_true(operands[0]), fn, zeros,
                                     *operands),
      default=fn)
