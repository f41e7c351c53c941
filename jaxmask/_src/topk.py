"""Per-row top-k selection, as a set of indices.

The plain algorithm is `lax.top_k`; on CPU an XLA:CPU kernel selects the same
set several times faster (`jaxmask._src.xla_cpu.topk`).
"""

import functools
import operator

import jax
import jax.numpy as jnp
from jax import lax

from jaxmask._src import checks
from jaxmask._src import implementation as impl
from jaxmask._src.xla_cpu import topk as xla_cpu_topk


def _check_k(k, m: int) -> int:
  if isinstance(k, bool):
    raise TypeError(f"k must be a Python int, got {k!r}.")
  try:
    k = operator.index(k)
  except TypeError:
    raise TypeError(f"k must be a Python int, got {k!r}.") from None
  if not 0 <= k <= m:
    raise ValueError(f"k must lie in [0, M={m}], got {k}.")
  return k


def top_k_indices(
    scores: jax.typing.ArrayLike,
    *,
    k: int,
    implementation: impl.Implementation | None = None,
) -> jax.Array:
  """Indices of the `k` largest scores of each row, as a set.

  The plain algorithm is `lax.top_k(scores, k)[1]`: values are ordered as
  `lax.top_k` orders them (`-NaN < -inf < ... < -0 < +0 < ... < +inf < +NaN`)
  and equal values keep the lowest indices. Every implementation selects
  exactly that set, ties included; only the order within a row differs: the
  plain path returns decreasing values, the XLA:CPU kernel (a sample-bracket
  selection several times faster than XLA:CPU's sort-based `lax.top_k`)
  increasing indices. No gradient flows through the result. (One exception
  on CPUs with AVX512-BF16: XLA:CPU's `lax.top_k` of bfloat16 scores reads
  subnormals as zero, where the kernel orders them as above.)

  Equivalent to `torch.topk(scores, k, sorted=False).indices` as a set, up to
  the order of equal values.

  Args:
    scores: `[rows, M]` floating scores.
    k: how many indices to keep per row, a Python int in [0, M].
    implementation: `None` (the XLA:CPU kernel on CPU, the plain algorithm
      elsewhere), `"plain"` or `"xla_cpu"`.

  Returns:
    `[rows, k]` int32 indices into the last axis of `scores`.

  Example:
    >>> scores = jnp.array([[0.1, 0.9, 0.4, 0.7]])
    >>> sorted(jaxmask.top_k_indices(scores, k=2)[0].tolist())
    [1, 3]
  """
  scores = checks.array(scores, "scores")
  checks.rank(scores, "scores", "[rows, M]")
  checks.floating(scores, "scores")
  rows, m = scores.shape
  k = _check_k(k, m)
  impl.check(implementation)
  if k == 0 or k == m:
    return jnp.broadcast_to(jnp.arange(k, dtype=jnp.int32), (rows, k))
  return _top_k_core(lax.stop_gradient(scores), k, implementation)


# Jitted (k static) so that eager calls with unchanged shapes reuse one
# compiled program; under an outer jit it inlines.
@functools.partial(jax.jit, static_argnames=("k", "implementation"))
def _top_k_core(scores, k, implementation):
  return impl.choose(
      implementation,
      plain=lambda s: lax.top_k(s, k)[1],
      xla_cpu=lambda s: xla_cpu_topk.top_k_indices(s, k),
      operands=(scores,))
