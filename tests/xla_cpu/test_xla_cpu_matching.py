"""The XLA:CPU matcher (`xla_cpu/matching.py`) against the plain one.

The loop over images must give the plain vmapped matcher's matchings bit
for bit; its target sampling skips padded targets, and must give
`_sample_shared`'s values, bit for bit, for every valid one.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

import jaxmask

from jaxmask._src import criterion
from jaxmask._src.xla_cpu import matching

WEIGHTS = (2.0, 5.0, 5.0)


def _problem(seed, L=2, B=3, Q=9, K=4, T=5, H=11, W=13, Ht=23, Wt=19):
  rng = np.random.default_rng(seed)
  valid = rng.random((B, T)) > 0.4
  valid[-1] = False  # an image with no valid target
  return (rng.random((L, B, 64, 2)).astype(np.float32),
          (rng.normal(size=(L, B, Q, K + 1)) * 2).astype(np.float32),
          (rng.normal(size=(L, B, Q, H, W)) * 3).astype(np.float32),
          rng.integers(0, K, (B, T)).astype(np.int32),
          (rng.random((B, T, Ht, Wt)) > 0.5).astype(np.float32), valid)


def test_kernel_matchings_equal_the_plain_matcher():
  for seed in range(3):
    args = _problem(seed)
    plain = functools.partial(criterion._match_every_image,
                              cost_weights=WEIGHTS)
    kernel = functools.partial(
        matching.match_image_by_image,
        functools.partial(criterion._match_image, cost_weights=WEIGHTS),
        plain)
    got, want = jax.jit(kernel)(*args), jax.jit(plain)(*args)
    _assert_same_matching(got, want, args)
    assert np.all(np.asarray(got.query_index)[:, ~args[-1]] == -1)


def _assert_same_matching(got, want, args):
  """Equal matchings, or (at a rounding tie) two of equal total cost.

  The two programs compute the valid targets' costs with the same
  operations, but the vmapped and the looped dots may round differently on
  another CPU: only an assignment tie within rounding may then differ.
  """
  points, class_logits, mask_logits, labels, masks, valid = args
  got_q, want_q = np.asarray(got.query_index), np.asarray(want.query_index)
  for l, b in np.ndindex(*got_q.shape[:2]):
    if np.array_equal(got_q[l, b], want_q[l, b]):
      continue
    cost = np.asarray(jaxmask.mask_matching_cost(
        class_logits[l, b], mask_logits[l, b], labels[b], masks[b],
        points[l, b]))
    t = np.flatnonzero(valid[b])
    np.testing.assert_array_equal(got_q[l, b, ~valid[b]], -1)
    np.testing.assert_allclose(cost[got_q[l, b, t], t].sum(),
                               cost[want_q[l, b, t], t].sum(), rtol=1e-6,
                               err_msg=f"layer {l}, image {b}")
  # Each program's two directions describe one matching.
  for m in (got, want):
    q, tq = np.asarray(m.query_index), np.asarray(m.target_index)
    for l, b in np.ndindex(*q.shape[:2]):
      for t in np.flatnonzero(q[l, b] >= 0):
        assert tq[l, b, q[l, b, t]] == t


def test_valid_targets_sampled_as_shared_padded_ones_skipped():
  _, _, _, _, masks, valid = _problem(4)
  points = np.random.default_rng(5).random((200, 2)).astype(np.float32) * 1.2
  points[:3] = [[np.nan, 0.5], [0.5, np.inf], [-0.01, 1.0]]
  for image in range(masks.shape[0]):
    got = jax.jit(criterion._sample_valid_targets)(masks, image,
                                                   valid[image], points)
    want = criterion._sample_shared(
        jnp.asarray(masks[image]).reshape(masks.shape[1], -1),
        masks.shape[-2:], jnp.asarray(points), pixel_major=False)
    got, want = np.asarray(got), np.asarray(want)
    columns = valid[image]
    np.testing.assert_array_equal(got[:, columns].view(np.uint32),
                                  want[:, columns].view(np.uint32))
    assert np.all(np.isnan(got[:2]))  # non-finite points: NaN in every column
    np.testing.assert_array_equal(got[2:, ~columns], 0)
