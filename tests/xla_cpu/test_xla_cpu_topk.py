"""`top_k_indices` selects exactly `lax.top_k`'s set, on every implementation.

Public cases run over the plain algorithm (`lax.top_k`) and the XLA:CPU kernel
(`jaxmask._src.xla_cpu.topk`); the kernel's bracket, tie and fallback logic is
also driven directly through its entry point `bracket_select` with small
sizes.
"""

import chex
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmask
from jaxmask._src.xla_cpu import topk

NAN = np.float32("nan")
INF = np.float32("inf")
# NaNs with extreme payloads map to the extreme int32 keys.
NEG_NAN_MAX = np.array(0xFFFFFFFF, np.uint32).view(np.float32)
POS_NAN_MAX = np.array(0x7FFFFFFF, np.uint32).view(np.float32)


def _rows(m: int, seed: int = 0) -> np.ndarray:
  """Rows of every kind in one batch (one compilation per shape and k)."""
  rng = np.random.default_rng(seed)
  uncertainty = -np.abs(rng.standard_normal((4, m)))
  ties = np.round(rng.standard_normal((3, m)) * 2) / 2  # a few values
  constant = np.full((2, m), -0.25)
  zeros = np.where(rng.random((1, m)) < 0.5, 0.0, -0.0)
  specials = rng.choice(
      np.array([NAN, -NAN, INF, -INF, 0.0, -0.0, 1.0, NEG_NAN_MAX,
                POS_NAN_MAX], np.float32), size=(2, m))
  sprinkled = -np.abs(rng.standard_normal((2, m)))
  for value in (NAN, -NAN, INF, -INF):
    sprinkled[rng.random((2, m)) < 0.05] = value
  sorted_rows = np.sort(rng.standard_normal((2, m)))
  sorted_rows[1] = sorted_rows[1, ::-1]
  return np.concatenate([uncertainty, ties, constant, zeros, specials,
                         sprinkled, sorted_rows]).astype(np.float32)


def _assert_same_set(got, scores, k):
  want = np.asarray(lax.top_k(jnp.asarray(scores), k)[1])
  got = np.asarray(got)
  assert got.dtype == np.int32 and got.shape == want.shape
  np.testing.assert_array_equal(np.sort(got, axis=1), np.sort(want, axis=1))


def _bracket_select(scores, k, sample_size, num_thresholds, buffer_size):
  return jax.jit(lambda s: topk.bracket_select(
      s, k, sample_size=sample_size, num_thresholds=num_thresholds,
      buffer_size=buffer_size))(scores)


@pytest.mark.parametrize("k", [1, 1024, 4095])
def test_public_function_equals_lax_top_k(variant, implementation, k):
  x = _rows(4096)  # the smallest M that takes the kernel's selection path
  got = variant(jaxmask.top_k_indices, k=k, implementation=implementation)(x)
  _assert_same_set(got, x, k)


def test_default_implementation_equals_lax_top_k():
  x = _rows(4096, seed=1)
  _assert_same_set(jax.jit(lambda s: jaxmask.top_k_indices(s, k=700))(x), x,
                   700)


@pytest.mark.parametrize("m,k,sizes", [
    (37, 1, None), (37, 36, None), (1000, 1, None), (1000, 999, None),
    (300, 75, None),
    (300, 75, (32, 10, 32)),  # many rows overflow: exact fallback
    (300, 150, (64, 5, 256)),  # few thresholds, large buffer
])
def test_selection_on_small_rows(m, k, sizes):
  x = _rows(m, seed=m + k)
  sizes = sizes or topk.default_sizes(m, k)
  _assert_same_set(_bracket_select(x, k, *sizes), x, k)


def test_buffer_overflow_falls_back_to_lax_top_k():
  x = -np.abs(np.random.default_rng(1).standard_normal((3, 512)))
  x = x.astype(np.float32)
  k = 128
  want = np.asarray(lax.top_k(x, k)[1])
  # The fallback returns lax.top_k's order (decreasing values), which the
  # bitmask compaction does not.
  overflow = np.asarray(_bracket_select(x, k, 64, 10, 8))
  np.testing.assert_array_equal(overflow, want)
  fast = np.asarray(_bracket_select(x, k, *topk.default_sizes(512, k)))
  assert not np.array_equal(fast, want)
  _assert_same_set(fast, x, k)


def test_tie_cut_keeps_lowest_indices():
  m, k = 512, 100
  x = np.zeros((2, m), np.float32)
  x[0, ::3] = 1.0  # 171 ties at 1.0: the 100 lowest indices are kept
  x[1, 7] = 2.0  # 1 above, then 99 of 511 ties
  got = np.asarray(_bracket_select(x, k, *topk.default_sizes(m, k)))
  np.testing.assert_array_equal(np.sort(got[0]), np.arange(0, 300, 3))
  np.testing.assert_array_equal(np.sort(got[1]), np.arange(100))


def test_trivial_and_small_k(implementation):
  x = _rows(64)
  for k in (0, 64):
    got = jaxmask.top_k_indices(x, k=k, implementation=implementation)
    assert got.shape == (x.shape[0], k) and got.dtype == jnp.int32
    _assert_same_set(got, x, k)
  for k in (1, 17, 63):  # rows this short: the kernel hands over to lax.top_k
    _assert_same_set(
        jaxmask.top_k_indices(x, k=k, implementation=implementation), x, k)


def test_low_precision_and_empty_batch():
  x = _rows(300)
  y = jnp.asarray(x, jnp.bfloat16)
  _assert_same_set(_bracket_select(y, 75, *topk.default_sizes(300, 75)), y, 75)
  assert _bracket_select(x[:0], 75, *topk.default_sizes(300, 75)).shape == (0, 75)


def test_vmap_jit_and_no_retrace(implementation):
  x = np.stack([_rows(4096, seed) for seed in range(2)])
  chex.clear_trace_counter()  # counts per function body, across parameters

  @jax.jit
  @chex.assert_max_traces(n=1)
  def batched(s):
    return jax.vmap(lambda r: jaxmask.top_k_indices(
        r, k=1000, implementation=implementation))(s)

  for scale in (1.0, 2.0):
    got = np.asarray(batched(x * scale))
    for row_block, want in zip(got, x * scale):
      _assert_same_set(row_block, want, 1000)
  # Nested vmap down to single rows stacks them back into one batch.
  per_row = jax.jit(jax.vmap(jax.vmap(lambda r: jaxmask.top_k_indices(
      r[None], k=1000, implementation=implementation)[0])))
  np.testing.assert_array_equal(per_row(x), batched(x))


def test_no_gradient_through_indices(implementation):
  def loss(s):
    index = jaxmask.top_k_indices(s, k=3, implementation=implementation)
    return jnp.take_along_axis(s, index, axis=1).sum()

  x = jnp.asarray([[0.5, 3.0, -1.0, 2.0, 1.0]])
  np.testing.assert_array_equal(jax.grad(loss)(x), [[0, 1, 0, 1, 1]])


def test_bad_input():
  x = jnp.zeros((2, 8))
  with pytest.raises(ValueError, match=r"scores must have shape \[rows, M\]"):
    jaxmask.top_k_indices(jnp.zeros(8), k=1)
  with pytest.raises(TypeError, match="scores must have a floating dtype"):
    jaxmask.top_k_indices(jnp.zeros((2, 8), jnp.int32), k=1)
  for k in (-1, 9):
    with pytest.raises(ValueError, match="k must lie"):
      jaxmask.top_k_indices(x, k=k)
  for k in (True, 2.0, "2"):
    with pytest.raises(TypeError, match="k must be a Python int"):
      jaxmask.top_k_indices(x, k=k)
  with pytest.raises(TypeError, match="positional"):
    jaxmask.top_k_indices(x, 3)  # pylint: disable=too-many-function-args
  with pytest.raises(ValueError, match="implementation must be one of"):
    jaxmask.top_k_indices(x, k=3, implementation="gpu")
  assert jaxmask.top_k_indices(x, k=np.int64(3)).shape == (2, 3)
