"""The XLA:CPU sampling kernel's own code paths (`jaxmask._src.xla_cpu`).

Properties of the kernel's own code paths, forced through its entry points
(`sampler.point_sample`, `selection.select_uncertain_points`,
`selection.select_uniform_candidates`) by patching the kernel's thresholds,
and checked against the plain algorithm and the float64 oracle
(`np_grid_sample`, tests/_strategies.py): its two sampler paths (padded and
clamped), maps past 16-bit offsets, the flat-index-overflow path, and chunked
selection. The public functions over both implementations are tested in
tests/sampling/.
"""

import jax
import numpy as np
import pytest

import jaxmask
from _strategies import _data
from _strategies import assert_same_selection_as_plain
from _strategies import np_grid_sample
from _strategies import point_sample
from _strategies import position_rounding_tolerance
from jaxmask._src.xla_cpu import sampler
from jaxmask._src.xla_cpu import selection


def _score(sampled):
  """The kernel entry points' `score`: sampled `[n, 1, M]` -> `[n, M]`."""
  return jaxmask.calculate_uncertainty(sampled)[:, 0, :]


def _kernel_sample_and_grads(inputs, coords, weights):
  """The kernel's values and gradients, traced afresh (thresholds patched)."""
  sample = jax.jit(lambda x, p: sampler.point_sample(x, p))
  grad = jax.jit(jax.grad(
      lambda x, p: (sampler.point_sample(x, p) * weights).sum(),
      argnums=(0, 1)))
  return (sample(inputs, coords), *grad(inputs, coords))


def _plain_sample_and_grads(inputs, coords, weights):
  grad = jax.jit(jax.grad(
      lambda x, p: (jaxmask.point_sample(x, p, implementation="plain")
                    * weights).sum(), argnums=(0, 1)))
  return (point_sample(inputs, coords, implementation="plain"),
          *grad(inputs, coords))


# Always copy the maps with a zero border (padded), never copy them (clamped).
_SAMPLER_PATHS = {"padded": 10**9, "clamped": 0}


@pytest.mark.parametrize("n,c,h,w", [(3, 1, 8, 8), (2, 3, 5, 11), (2, 2, 1, 7),
                                     (2, 1, 6, 1), (1, 1, 1, 1)])
def test_kernel_sampler_paths_match_plain_and_oracle(monkeypatch, n, c, h, w):
  """Pairs from a zero-bordered copy, and from blocks clamped into the map."""
  inputs, coords = _data(7, n, c, h, w, 60, -0.2, 1.2)
  coords[0, :3] = [[np.nan, 0.5], [0.5, np.inf], [-1e30, 1e30]]
  weights = np.random.default_rng(8).normal(size=(n, c, 60)).astype(np.float32)
  results = []
  for pixels_per_point in _SAMPLER_PATHS.values():
    monkeypatch.setattr(sampler, "_PIXELS_PER_POINT_TO_CLAMP",
                        pixels_per_point)
    results.append(_kernel_sample_and_grads(inputs, coords, weights))
  plain = _plain_sample_and_grads(inputs, coords, weights)
  finite = coords.copy()
  finite[0, :3] = 0.5
  want = np_grid_sample(inputs, finite)
  want[0, :, :2] = np.nan  # non-finite points sample NaN
  want[0, :, 2] = 0  # a far-away point samples the padding
  for out, grad_inputs, grad_coords in (*results, plain):
    np.testing.assert_allclose(out, want, atol=2e-6)
    assert np.isfinite(grad_inputs).all() and np.isfinite(grad_coords).all()
    np.testing.assert_array_equal(grad_coords[0, :3], 0)
  for got in results:
    # Same arithmetic; XLA may contract a multiply-add differently: 1 ulp.
    np.testing.assert_allclose(got[0], plain[0], atol=5e-7)
    np.testing.assert_allclose(got[1], plain[1], atol=1e-6)
    np.testing.assert_allclose(got[2], plain[2], atol=1e-5)


@pytest.mark.parametrize("path", list(_SAMPLER_PATHS))
@pytest.mark.parametrize("c", [1, 3])
def test_kernel_sampler_reads_rows_in_place(monkeypatch, path, c):
  """`rows`: the points of row n read map `inputs[rows[n]]`, not a copy.

  The same values as sampling `inputs[rows]` (bit for bit) and the same
  gradient (a map read by two rows gets both rows' gradients; a map read by
  none, zero), on both sampler paths and past the flat-index limit.
  """
  inputs, coords = _data(12, 5, c, 9, 7, 50, -0.2, 1.2)
  coords = np.concatenate([coords, coords[:2] * 0.5 + 0.25])  # 7 rows
  rows = np.array([4, 0, 4, 2, 2, 1, 0], np.int32)  # map 3 read by none
  weights = np.random.default_rng(13).normal(size=(7, c, 50)).astype(
      np.float32)
  monkeypatch.setattr(sampler, "_PIXELS_PER_POINT_TO_CLAMP",
                      _SAMPLER_PATHS[path])

  def run():  # traced afresh (thresholds patched)
    sample = jax.jit(lambda x, p, r: sampler.point_sample(x, p, rows=r))
    grad = jax.jit(jax.grad(lambda x, p, r: (
        sampler.point_sample(x, p, rows=r) * weights).sum()))
    return sample(inputs, coords, rows), grad(inputs, coords, rows)

  def copied():
    sample = jax.jit(lambda x, p: sampler.point_sample(x, p))
    grad = jax.jit(jax.grad(lambda x, p: (
        sampler.point_sample(x, p) * weights).sum()))
    return sample(inputs[rows], coords), grad(inputs[rows], coords)

  got, grad = run()
  want, grad_copy = copied()
  np.testing.assert_array_equal(got, want)
  want_grad = np.zeros_like(inputs)
  np.add.at(want_grad, rows, np.asarray(grad_copy))
  np.testing.assert_allclose(grad, want_grad, atol=1e-6)
  np.testing.assert_array_equal(grad[3], 0)
  monkeypatch.setattr(sampler, "MAX_FLAT_INDEX", 100)  # the copying fallback
  got, grad = run()
  np.testing.assert_array_equal(got, want)
  np.testing.assert_allclose(grad, want_grad, atol=1e-6)


@pytest.mark.parametrize("h,w", [(256, 256), (255, 257)])
def test_kernel_sampler_paths_on_maps_past_16_bit_offsets(monkeypatch, h, w):
  """256² fits 16-bit offsets unpadded, not padded; 255 x 257 fits neither."""
  inputs, coords = _data(9, 2, 1, h, w, 400, -0.01, 1.01)
  coords[:, :4] = [[0, 0], [1, 1], [0, 1], [1, 0]]
  want = np_grid_sample(inputs, coords)
  weights = np.random.default_rng(10).normal(size=(2, 1, 400)).astype(
      np.float32)
  results = []
  for pixels_per_point in _SAMPLER_PATHS.values():
    monkeypatch.setattr(sampler, "_PIXELS_PER_POINT_TO_CLAMP",
                        pixels_per_point)
    results.append(_kernel_sample_and_grads(inputs, coords, weights)[:2])
  plain = _plain_sample_and_grads(inputs, coords, weights)[:2]
  # The gradient is the sampling's transpose: <grad, x> = <weights, S x>.
  probe = np.random.default_rng(11).normal(size=inputs.shape)
  for out, grad in (*results, plain):
    # float32 positions on 256-pixel axes are within ~2e-5 px of float64's.
    np.testing.assert_allclose(out, want, atol=1e-4)
    np.testing.assert_allclose(np.vdot(grad, probe),
                               np.vdot(weights, np_grid_sample(probe, coords)),
                               rtol=1e-4)
  # The kernel's paths and the plain sampler agree to position rounding
  # (at 255 x 257 a position or two is rounded an ulp apart, ~1.5e-6 in
  # value); the gradients, weight sums, to 1e-6.
  tol = position_rounding_tolerance(inputs, coords)
  for out, grad in (*results, plain):
    for other, other_grad in (*results, plain):
      assert (np.abs(np.asarray(out) - np.asarray(other)) <= tol).all()
      np.testing.assert_allclose(grad, other_grad, atol=1e-6)


def test_kernel_flat_index_overflow_paths_give_the_same_values(monkeypatch):
  """Past int32 flat offsets the kernel gathers map by map: same results."""
  inputs, coords = _data(6, 4, 2, 5, 7, 30, -0.1, 1.1)
  logits = inputs[:, :1]
  sample = lambda: jax.jit(sampler.point_sample)(inputs, coords)
  select = lambda: jax.jit(lambda l, c: selection.select_uncertain_points(
      l, c, 9, _score))(logits, coords)
  want_values, want_points = sample(), select()
  np.testing.assert_allclose(
      want_values, point_sample(inputs, coords, implementation="plain"),
      atol=5e-7)
  assert_same_selection_as_plain(want_points, logits, coords, 9, "xla_cpu")
  monkeypatch.setattr(sampler, "MAX_FLAT_INDEX", 100)  # force both paths
  assert inputs.size > 100 and coords.size > 100
  np.testing.assert_array_equal(sample(), want_values)
  np.testing.assert_array_equal(select(), want_points)


@pytest.mark.parametrize("num_masks", [12, 7])
def test_kernel_chunked_selection_equals_whole(monkeypatch, num_masks):
  """The kernel selects a few masks at a time; the points must not change."""
  logits = np.random.default_rng(9).normal(size=(num_masks, 1, 9, 11)).astype(
      np.float32)
  candidates = np.random.default_rng(10).random((num_masks, 300, 2)).astype(
      np.float32)
  candidate_key = jax.random.key(4)

  def run():  # traced afresh: the chunk size is read at trace time
    select = jax.jit(lambda l, c: selection.select_uncertain_points(
        l, c, 40, _score))
    draw_and_select = jax.jit(
        lambda k, l: selection.select_uniform_candidates(k, l, 300, 75,
                                                         _score))
    return (select(logits, candidates),
            draw_and_select(candidate_key, logits))

  assert selection.rows_per_chunk(num_masks, 300) == num_masks
  whole = run()
  # The plain algorithm's sets, from the same (bit for bit) candidates.
  drawn = jax.random.uniform(candidate_key, (num_masks, 300, 2))
  assert_same_selection_as_plain(whole[0], logits, candidates, 40, "xla_cpu")
  assert_same_selection_as_plain(whole[1], logits, drawn, 75, "xla_cpu")
  monkeypatch.setattr(selection, "_CHUNK_BYTES", 8 * 300 * 4)  # 4 masks
  # 12: three chunks of 4; 7 (no divisor in 2..4): one chunk of 4, then the
  # 3 rows left over in one more call.
  assert selection.rows_per_chunk(num_masks, 300) == 4
  chunked = run()
  for got, want in zip(chunked, whole):
    np.testing.assert_array_equal(got, want)


def test_kernel_skips_chunks_of_rows_not_needed(monkeypatch):
  """`needed`: a chunk of rows none of which is needed is not selected.

  The criterion's padded target slots: the needed rows' points are those of
  the whole selection, bit for bit; a skipped chunk's uncertain points are
  zeros; a chunk with one needed row is selected whole.
  """
  from jaxmask._src import sampling

  logits = np.random.default_rng(14).normal(size=(11, 1, 9, 11)).astype(
      np.float32)
  key = jax.random.key(5)
  # Chunks of 4 rows: [0, 4) needed, [4, 8) not, [8, 11) one needed (row 10).
  needed = np.array([1, 1, 0, 1, 0, 0, 0, 0, 0, 0, 1], bool)
  monkeypatch.setattr(selection, "_CHUNK_BYTES", 8 * 300 * 4)
  draw = jax.jit(lambda k, l, n: sampling.sample_needed_points(
      k, l, n, num_points=100, oversample_ratio=3.0,
      importance_sample_ratio=0.75, implementation="xla_cpu"))
  got = np.asarray(draw(key, logits, needed))
  want = np.asarray(jaxmask.sample_points_using_uncertainty(
      key, logits, num_points=100, implementation="xla_cpu"))
  selected = np.r_[0:4, 8:11]
  np.testing.assert_array_equal(got[selected], want[selected])
  np.testing.assert_array_equal(got[4:8, :75], 0)  # skipped
  np.testing.assert_array_equal(got[4:8, 75:], want[4:8, 75:])  # fresh ones
  # The plain algorithm ignores `needed`: every row as drawn.
  plain = jax.jit(lambda k, l, n: sampling.sample_needed_points(
      k, l, n, num_points=100, oversample_ratio=3.0,
      importance_sample_ratio=0.75, implementation="plain"))
  assert_same_selection_as_plain(
      got[needed, :75], logits[needed],
      np.asarray(jax.random.uniform(jax.random.split(key)[0], (11, 300, 2)))[
          needed], 75, "plain")
  np.testing.assert_array_equal(
      np.asarray(plain(key, logits, needed)),
      np.asarray(jaxmask.sample_points_using_uncertainty(
          key, logits, num_points=100, implementation="plain")))
