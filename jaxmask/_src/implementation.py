"""The one place that chooses between a plain algorithm and its XLA:CPU kernel.

Every algorithm in jaxmask is written first as a plain, portable JAX program
in its concept module (`sampling.py`, `topk.py`), short enough to read against
the paper and the PyTorch original. A few of them also have a kernel in
`jaxmask._src.xla_cpu`: the same result, bit for bit or as the same set,
arranged for XLA:CPU's code generator. The public functions that have one take
`implementation`:

- `None` (the default): the kernel when the program runs on CPU, the plain
  algorithm on every other platform (GPU, TPU), chosen per platform by
  `lax.platform_dependent` when the program is lowered;
- `"plain"`: the plain algorithm everywhere;
- `"xla_cpu"`: the kernel everywhere (it is plain JAX too, so it runs on any
  platform, just not fast there).

The tests run every case over both implementations.
"""

from typing import Callable, Literal

from jax import lax

from jaxmask._src import checks

Implementation = Literal["plain", "xla_cpu"]
IMPLEMENTATIONS = ("plain", "xla_cpu")


def check(implementation) -> None:
  """Raises ValueError unless `implementation` is None, "plain" or "xla_cpu"."""
  checks.one_of(implementation, "implementation", (None, *IMPLEMENTATIONS))


def choose(implementation: Implementation | None, *, plain: Callable,
           xla_cpu: Callable, operands: tuple):
  """`plain(*operands)` or `xla_cpu(*operands)`, as `implementation` says."""
  check(implementation)
  if implementation == "plain":
    return plain(*operands)
  if implementation == "xla_cpu":
    return xla_cpu(*operands)
  return lax.platform_dependent(*operands, cpu=xla_cpu, default=plain)
