"""`computed_apart` returns `fn`'s value and keeps it out of its consumers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmask._src.xla_cpu import barrier


_CASES = ([(d, v) for d in (jnp.float32, jnp.bfloat16)
           for v in (0.0, 1.0, -1.0, np.nan, np.inf, -np.inf)]
          + [(jnp.int32, v) for v in (0, 1, -1, -2**31)]
          + [(jnp.uint32, v) for v in (0, 1, 2**32 - 1)])


@pytest.mark.parametrize("dtype, first", _CASES)
def test_value_is_fn_of_x_for_any_first_element(dtype, first):
  x = jnp.asarray(np.array([first, 2, 3], np.float64).astype(dtype))
  got = jax.jit(lambda x: barrier.computed_apart(lambda v: v * 2 + 1, x))(x)
  want = x * 2 + 1
  np.testing.assert_array_equal(np.asarray(got, np.float64),
                                np.asarray(want, np.float64))


def test_extra_operands_grad_vmap_and_empty():
  x = jnp.arange(6.0).reshape(2, 3)
  fn = lambda x, y: jnp.sin(x) * y
  got = jax.jit(lambda x: barrier.computed_apart(fn, x, 3.0))(x)
  np.testing.assert_allclose(got, jnp.sin(x) * 3.0, rtol=1e-6)
  grad = jax.grad(lambda x: barrier.computed_apart(fn, x, 3.0).sum())(x)
  np.testing.assert_allclose(grad, 3.0 * jnp.cos(x), rtol=1e-6)
  mapped = jax.vmap(lambda r: barrier.computed_apart(fn, r, 2.0))(x)
  np.testing.assert_allclose(mapped, jnp.sin(x) * 2.0, rtol=1e-6)
  empty = jnp.zeros((0, 3))
  assert barrier.computed_apart(fn, empty, 1.0).shape == (0, 3)


def test_cpu_keeps_the_boundary():
  if jax.default_backend() != "cpu":
    pytest.skip("the boundary is CPU-only")
  table = jnp.arange(100.0)
  def gather(x):
    index = barrier.computed_apart(lambda x: (x * 7).astype(jnp.int32) % 100,
                                   x)
    return table[index]
  hlo = jax.jit(gather).lower(jnp.ones(8)).compile().as_text()
  assert "conditional" in hlo
