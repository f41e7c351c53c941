"""The XLA:CPU kernel `threefry.uniform` returns exactly `jax.random.uniform`'s values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmask._src.xla_cpu import threefry as rng


@pytest.mark.parametrize("shape", [(), (1,), (7, 3), (5, 1001, 2), (0, 2)])
@pytest.mark.parametrize("seed", [0, 1, 2**31 - 1])
def test_bit_identical_to_jax_random_uniform(shape, seed):
  for key in (jax.random.key(seed), jax.random.PRNGKey(seed)):
    want = jax.random.uniform(key, shape)
    got = jax.jit(rng.uniform, static_argnums=1)(key, shape)
    assert got.dtype == want.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(got).view(np.uint32),
                                  np.asarray(want).view(np.uint32))


def test_split_and_vmapped_keys():
  keys = jax.random.split(jax.random.key(3), 4)
  got = jax.jit(jax.vmap(lambda k: rng.uniform(k, (50, 2))))(keys)
  want = jax.vmap(lambda k: jax.random.uniform(k, (50, 2)))(keys)
  np.testing.assert_array_equal(got, want)


def test_other_key_kinds_fall_back():
  key = jax.random.key(0, impl="rbg")
  np.testing.assert_array_equal(rng.uniform(key, (9, 2)),
                                jax.random.uniform(key, (9, 2)))


def test_unrolled_hash_alone_matches_and_has_no_loop():
  """The reason the module exists: no rolled Threefry loop on CPU."""
  key = jax.random.key(7)
  words = jax.random.key_data(key)
  got = jax.jit(rng._unrolled_uniform, static_argnums=1)(words, (3, 5, 2))
  np.testing.assert_array_equal(got, jax.random.uniform(key, (3, 5, 2)))
  if jax.default_backend() == "cpu":
    unrolled = jax.jit(rng._unrolled_uniform, static_argnums=1).lower(
        words, (4, 2)).compile().as_text()
    rolled = jax.jit(lambda k: jax.random.uniform(k, (4, 2))).lower(
        key).compile().as_text()
    assert "while" not in unrolled
    assert "while" in rolled  # once JAX unrolls it on CPU, this module can go


def test_equal_key_words_take_the_other_branch():
  key = jax.random.wrap_key_data(jnp.array([5, 5], jnp.uint32))
  np.testing.assert_array_equal(jax.jit(rng.uniform, static_argnums=1)(
      key, (6, 2)), jax.random.uniform(key, (6, 2)))


def test_rows_are_slices_of_the_whole_draw():
  key = jax.random.key(11)
  assert rng.can_draw_rows(key, (10, 7, 2))
  assert not rng.can_draw_rows(jax.random.key(0, impl="rbg"), (10, 7, 2))
  whole = jax.random.uniform(key, (10, 7, 2))
  rows = jax.jit(rng.uniform_rows, static_argnums=1)
  for first in (0, 3, 8):
    np.testing.assert_array_equal(rows(key, (2, 7, 2), first),
                                  whole[first:first + 2])


def test_rows_in_any_order_are_rows_of_the_whole_draw():
  """`uniform_at_rows`: the criterion's kernel draws slots out of order."""
  whole_shape = (10, 7, 2)
  rows = np.array([9, 0, 4, 4, 3], np.int32)
  for key in (jax.random.key(12), jax.random.PRNGKey(12)):
    assert rng.can_draw_rows(key, whole_shape)
    got = jax.jit(rng.uniform_at_rows, static_argnums=1)(key, (7, 2), rows)
    want = jax.random.uniform(key, whole_shape)[rows]
    np.testing.assert_array_equal(np.asarray(got).view(np.uint32),
                                  np.asarray(want).view(np.uint32))
