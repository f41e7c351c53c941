"""The Mask2Former criterion against torch_ref's transcription of HF transformers.

torch_ref (HF's `Mask2FormerHungarianMatcher` + `Mask2FormerLoss`, scipy
matching) is fed jaxmask's random draws in HF's order (`_hf_draws`, built
from the recipe in `mask2former_loss`'s docstring), so both compute the same
losses from the same points. Tolerances: losses and gradients agree to
rtol 1e-5 (float32 sums in other orders; measured < 1e-6), bfloat16 logits
to 2e-2 (both round sampled logits to bfloat16).
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

import jaxmask

torch = pytest.importorskip("torch")
import torch_ref  # noqa: E402


def _problem(seed, *, L=2, B=2, Q=7, K=5, T=4, H=12, W=10, Ht=20, Wt=16,
             counts=None, dtype=np.float32):
  """Random logits and padded targets; `counts[b]` valid targets per image."""
  rng = np.random.default_rng(seed)
  counts = [T] * B if counts is None else counts
  class_logits = (rng.normal(size=(L, B, Q, K + 1)) * 2).astype(dtype)
  mask_logits = (rng.normal(size=(L, B, Q, H, W)) * 3).astype(dtype)
  labels = rng.integers(0, K, size=(B, T)).astype(np.int32)
  masks = (rng.random((B, T, Ht, Wt)) > 0.5).astype(np.float32)
  valid = np.zeros((B, T), bool)
  for b, n in enumerate(counts):
    # Valid slots anywhere, not only first: padding is a flag.
    valid[b, rng.permutation(T)[:n]] = True
  return class_logits, mask_logits, labels, masks, valid


def _matcher_points(key, L, B, num_matcher_points):
  """The docstring's recipe: image b's matcher points at layer l, `[L, B, M, 2]`."""
  match_key, _ = jax.random.split(key)
  return np.asarray(jax.random.uniform(match_key, (L, B, num_matcher_points, 2)))


def _jax_matchings(key, class_logits, mask_logits, labels, masks, valid, *,
                   num_matcher_points, cost_weights):
  """`query_index [L, B, T]` from the public cost and matcher, per the recipe."""
  L, B = class_logits.shape[:2]
  points = _matcher_points(key, L, B, num_matcher_points)
  out = np.zeros((L, B, labels.shape[1]), np.int32)
  for l in range(L):
    for b in range(B):
      cost = jaxmask.mask_matching_cost(
          class_logits[l, b], mask_logits[l, b], labels[b], masks[b],
          points[l, b], cost_class=cost_weights[0], cost_mask=cost_weights[1],
          cost_dice=cost_weights[2])
      out[l, b] = jaxmask.hungarian_match(
          cost, target_valid=jnp.asarray(valid[b])).query_index
  return out


def _hf_draws(key, valid, query_index, *, num_points, num_matcher_points,
              oversample_ratio=3.0, importance_sample_ratio=0.75,
              max_total_targets=None):
  """jaxmask's draws in HF's `torch.rand` order (see `mask2former_loss`).

  With `max_total_targets = S`, layer l's slots are rows `l * S + s`, slot s
  holding the s-th valid target in (image, target) order.
  """
  L, B, T = query_index.shape
  slots = B * T if max_total_targets is None else max_total_targets
  packed = np.cumsum(valid.reshape(-1)).reshape(B, T) - 1
  slot = (lambda b, t: b * T + t) if max_total_targets is None else (
      lambda b, t: packed[b, t])
  points = _matcher_points(key, L, B, num_matcher_points)
  _, loss_key = jax.random.split(key)
  candidate_key, fresh_key = jax.random.split(loss_key)
  draws = []
  if num_points is not None:
    num_uncertain = int(importance_sample_ratio * num_points)
    candidates = np.asarray(jax.random.uniform(
        candidate_key, (L * slots, int(num_points * oversample_ratio), 2)))
    fresh = np.asarray(jax.random.uniform(
        fresh_key, (L * slots, num_points - num_uncertain, 2)))
  for l in [L - 1] + list(range(L - 1)):  # HF: final layer, then aux 0, 1...
    for b in range(B):
      draws.append(points[l, b][None])
    if num_points is None:
      continue
    # HF orders the matched masks by image, then by query index.
    rows = [l * slots + slot(b, t) for b in range(B) for _, t in sorted(
        (query_index[l, b, t], t) for t in range(T) if valid[b, t])]
    draws.append(candidates[rows])
    if num_points > num_uncertain:
      draws.append(fresh[rows])
  return draws


class _Rand:
  """A stand-in for `torch.rand` that returns the given draws in order."""

  def __init__(self, draws):
    self.draws = list(draws)

  def __call__(self, *shape, **kwargs):
    want = self.draws.pop(0)
    assert tuple(shape) == want.shape, (shape, want.shape)
    return torch.from_numpy(np.array(want))  # a writable copy


def _torch_targets(labels, masks, valid):
  return ([torch.from_numpy(labels[b][valid[b]]).long()
           for b in range(len(labels))],
          [torch.from_numpy(masks[b][valid[b]]) for b in range(len(labels))])


KEY = jax.random.key(3)


def _both(seed=0, *, key=KEY, num_points=24,
          num_matcher_points=None, implementation=None, problem=None,
          cost_class=None, max_total_targets=None, **shape):
  """jaxmask's and torch_ref's (total, losses, grads) on one problem."""
  cl, ml, labels, masks, valid = problem or _problem(seed, **shape)
  m = num_matcher_points or (num_points or 12544)
  weights = (2.0 if cost_class is None else cost_class, 5.0, 5.0)

  def loss(cl, ml):
    out = jaxmask.mask2former_loss(
        key, cl, ml, labels, masks, valid, num_points=num_points,
        num_matcher_points=num_matcher_points, cost_class=cost_class,
        max_total_targets=max_total_targets, implementation=implementation)
    return out.total, out

  (total, out), grads = jax.jit(jax.value_and_grad(
      loss, argnums=(0, 1), has_aux=True))(jnp.asarray(cl), jnp.asarray(ml))

  query_index = _jax_matchings(key, cl, ml, labels, masks, valid,
                               num_matcher_points=m, cost_weights=weights)
  rand = _Rand(_hf_draws(key, valid, query_index, num_points=num_points,
                         num_matcher_points=m,
                         max_total_targets=max_total_targets))
  tcl = torch.from_numpy(cl.astype(np.float32)).to(_torch_dtype(cl.dtype))
  tml = torch.from_numpy(ml.astype(np.float32)).to(_torch_dtype(ml.dtype))
  tcl.requires_grad_(True)
  tml.requires_grad_(True)
  tlabels, tmasks = _torch_targets(labels, masks, valid)
  ttotal, tlosses = torch_ref.mask2former_loss(
      tcl, tml, tlabels, tmasks, num_points=num_points,
      num_matcher_points=num_matcher_points, cost_class=cost_class, rand=rand)
  ttotal.backward()
  assert not rand.draws, "torch_ref drew fewer points than jaxmask's recipe"
  return ((total, out.losses, grads),
          (ttotal, tlosses, (tcl.grad, tml.grad)))


def _torch_dtype(dtype):
  return torch.bfloat16 if dtype == jnp.bfloat16 else torch.float32


def _assert_match(got, want, *, rtol=1e-5, atol=1e-6, grad_atol=1e-6):
  (total, losses, grads), (ttotal, tlosses, tgrads) = got, want
  assert set(losses) == set(tlosses)
  for name in tlosses:
    np.testing.assert_allclose(np.float32(losses[name]),
                               tlosses[name].detach().float().numpy(),
                               rtol=rtol, atol=atol, err_msg=name)
  np.testing.assert_allclose(np.float32(total), ttotal.detach().float().numpy(),
                             rtol=rtol, atol=atol)
  for g, tg in zip(grads, tgrads):
    np.testing.assert_allclose(np.asarray(g, np.float32), tg.float().numpy(),
                               rtol=rtol * 10, atol=grad_atol)


# ------------------------------------------------------------------ parity


def test_criterion_matches_torch_ref(implementation):
  got, want = _both(0, counts=[4, 4], implementation=implementation)
  _assert_match(got, want)


@pytest.mark.parametrize("counts", [[1, 3], [0, 2], [0, 0]],
                         ids=["one-and-many", "empty-image", "no-target"])
def test_criterion_target_counts_match_torch_ref(counts):
  got, want = _both(0, counts=counts)
  _assert_match(got, want)


def test_criterion_padded_far_beyond_the_real_counts():
  got, want = _both(1, Q=12, T=9, counts=[2, 1])
  _assert_match(got, want)


def test_criterion_ten_layers_and_one():
  got, want = _both(2, L=10, Q=4, T=3, K=3, counts=[3, 2], H=6, W=6, Ht=8, Wt=8)
  _assert_match(got, want)
  assert len(got[1]) == 30 and "loss_dice_8" in got[1]
  got, want = _both(3, L=1, counts=[2, 4])
  _assert_match(got, want)
  assert sorted(got[1]) == ["loss_cross_entropy", "loss_dice", "loss_mask"]


@pytest.mark.parametrize("num_points", [24, None], ids=["points", "full-mask"])
@pytest.mark.parametrize("extra", [0, 2])
def test_max_total_targets_packs_the_valid_targets(implementation, num_points,
                                                   extra):
  """S slots a layer, the valid targets first: the same losses as torch_ref."""
  got, want = _both(5, counts=[3, 1], T=5, max_total_targets=4 + extra,
                    num_points=num_points, num_matcher_points=32,
                    implementation=implementation)
  _assert_match(got, want)


@pytest.mark.parametrize("max_total_targets", [None, 7])
def test_criterion_in_chunks_of_slots_matches_torch_ref(monkeypatch,
                                                        max_total_targets):
  """The XLA:CPU kernel runs the slots in chunks, the valid ones first, and
  skips chunks of padded ones: chunks of 3 here (L * 15 or L * 7 slots, L
  * 6 valid), each slot still taking its documented row of the draw."""
  from jaxmask._src.xla_cpu import selection
  monkeypatch.setattr(selection, "_CHUNK_BYTES", 8 * 72 * 4)  # 3 * 24 cands
  assert selection.rows_per_chunk(45, 72) == 3  # 45 = 15 x 3
  assert selection.rows_per_chunk(21, 72) == 3
  got, want = _both(8, L=3, B=3, Q=6, T=5, counts=[5, 1, 0],
                    max_total_targets=max_total_targets,
                    implementation="xla_cpu")
  _assert_match(got, want)


def test_criterion_with_keys_the_kernel_cannot_draw_matches_torch_ref():
  """An rbg key: the stages run in turn, drawn by `jax.random` itself."""
  got, want = _both(9, key=jax.random.key(3, impl="rbg"), counts=[3, 1],
                    implementation="xla_cpu")
  _assert_match(got, want)


def test_max_total_targets_below_the_valid_count_gives_nan():
  """No target is silently dropped: more valid targets than slots is NaN."""
  cl, ml, labels, masks, valid = _problem(6, counts=[3, 2])
  loss = jax.jit(lambda v: jaxmask.mask2former_loss(
      jax.random.key(0), cl, ml, labels, masks, v, num_points=8,
      max_total_targets=4))
  out = loss(valid)  # 5 valid targets, 4 slots
  assert all(np.isnan(x) for x in out.losses.values()) and np.isnan(out.total)
  fewer = valid & (np.cumsum(valid, axis=1) <= 2)  # 4 valid targets
  assert np.isfinite(loss(fewer).total)


@pytest.mark.parametrize("value, error, match", [
    (-1, ValueError, "max_total_targets must be"),
    (9, ValueError, "max_total_targets must be <= batch \\* num_targets = 8"),
    (2.5, TypeError, "max_total_targets"),
    (jnp.int32(3), TypeError, "max_total_targets"),
])
def test_max_total_targets_bad_values_are_named(value, error, match):
  cl, ml, labels, masks, valid = _problem(7)
  with pytest.raises(error, match=match):
    jaxmask.mask2former_loss(jax.random.key(0), cl, ml, labels, masks, valid,
                             num_points=8, max_total_targets=value)


def test_criterion_full_mask_losses(implementation):
  """num_points=None: every target pixel, logits upsampled (align_corners=False)."""
  got, want = _both(4, num_points=None, num_matcher_points=32, counts=[3, 1],
                    implementation=implementation)
  _assert_match(got, want)


def test_criterion_bfloat16_logits():
  cl, ml, labels, masks, valid = _problem(5, counts=[3, 2])
  problem = (cl.astype(jnp.bfloat16), ml.astype(jnp.bfloat16), labels, masks,
             valid)
  got, want = _both(problem=problem)
  assert all(np.isfinite(np.float32(v)) for v in got[1].values())
  _assert_match(got, want, rtol=1e-4, atol=1e-5, grad_atol=1e-4)


def test_class_cost_override():
  got, want = _both(6, cost_class=1.0, counts=[4, 2])
  _assert_match(got, want)


def test_matching_cost_matches_torch_ref():
  cl, ml, labels, masks, _ = _problem(7)
  points = np.random.default_rng(0).random((50, 2)).astype(np.float32)
  got = jaxmask.mask_matching_cost(cl[0, 0], ml[0, 0], labels[0], masks[0],
                                   points)
  want = torch_ref.mask_matching_cost(
      torch.from_numpy(cl[0, 0]), torch.from_numpy(ml[0, 0]),
      torch.from_numpy(labels[0]).long(), torch.from_numpy(masks[0]),
      torch.from_numpy(points))
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- matching


def _scipy_total(cost, valid):
  cost = np.asarray(cost, np.float64)[:, valid]
  rows, cols = linear_sum_assignment(cost)
  return cost[rows, cols].sum()


def _check_matching(matching, cost, valid):
  query_index = np.asarray(matching.query_index)
  target_index = np.asarray(matching.target_index)
  assert query_index.dtype == target_index.dtype == np.int32
  np.testing.assert_array_equal(query_index[~valid], -1)
  matched = query_index[valid]
  assert len(set(matched.tolist())) == len(matched) and (matched >= 0).all()
  for t in np.flatnonzero(valid):  # the two views agree
    assert target_index[query_index[t]] == t
  assert (target_index >= 0).sum() == valid.sum()
  total = np.asarray(cost, np.float64)[query_index[valid],
                                       np.flatnonzero(valid)].sum()
  np.testing.assert_allclose(total, _scipy_total(cost, valid), rtol=1e-6,
                             atol=1e-5)


@pytest.mark.parametrize("shape", [(5, 5), (9, 4), (100, 20), (30, 1)])
@pytest.mark.parametrize("seed", range(3))
def test_hungarian_total_equals_scipy(shape, seed):
  rng = np.random.default_rng(seed)
  cost = rng.normal(size=shape).astype(np.float32)
  valid = rng.random(shape[1]) > 0.3
  _check_matching(jaxmask.hungarian_match(cost, target_valid=valid), cost,
                  valid)
  all_valid = np.ones(shape[1], bool)
  _check_matching(jaxmask.hungarian_match(cost), cost, all_valid)


def test_hungarian_ties_reach_the_same_total():
  cost = np.random.default_rng(0).integers(0, 3, size=(12, 8)).astype(
      np.float32)
  _check_matching(jaxmask.hungarian_match(cost), cost, np.ones(8, bool))


def test_hungarian_vmapped_over_a_batch():
  rng = np.random.default_rng(1)
  cost = rng.normal(size=(4, 10, 6)).astype(np.float32)
  valid = rng.random((4, 6)) > 0.4
  got = jax.jit(jax.vmap(
      lambda c, v: jaxmask.hungarian_match(c, target_valid=v)))(cost, valid)
  for b in range(4):
    one = jax.tree.map(lambda x, b=b: x[b], got)
    _check_matching(one, cost[b], valid[b])


def test_hungarian_no_targets():
  got = jaxmask.hungarian_match(jnp.zeros((4, 0)))
  assert got.query_index.shape == (0,)
  np.testing.assert_array_equal(got.target_index, -1)


def test_non_finite_costs_are_matched_last():
  """HF's guard: a NaN or infinite pair is used only when nothing else can be."""
  cost = np.array([[np.nan, 1.0], [5.0, np.inf], [9.0, 8.0]], np.float32)
  got = jaxmask.hungarian_match(cost)
  np.testing.assert_array_equal(got.query_index, [1, 0])
  # Q == T with a NaN row: that row must take a target, the rest stay optimal.
  cost = np.array([[np.nan, np.nan], [1.0, 2.0]], np.float32)
  got = jaxmask.hungarian_match(cost)
  np.testing.assert_array_equal(got.query_index, [1, 0])
  huge = np.array([[3e38, 1.0], [1.0, -3e38], [0.0, 0.0]], np.float32)
  assert np.isfinite(np.asarray(jaxmask.hungarian_match(huge).query_index)).all()


def test_nan_logits_neither_hang_nor_spread(implementation):
  cl, ml, labels, masks, valid = _problem(8, counts=[3, 2])
  ml[:, 0, 2] = np.nan  # query 2's mask logits in image 0
  cl[:, 1, 4] = np.inf  # query 4's class logits in image 1
  out = jaxmask.mask2former_loss(jax.random.key(0), cl, ml, labels, masks,
                                 valid, num_points=16,
                                 implementation=implementation)
  final = out.losses
  # Query 2 of image 0 is never needed (Q > T): the mask losses stay finite.
  assert np.isfinite(final["loss_mask"]) and np.isfinite(final["loss_dice"])
  # Every query enters the class loss: an infinite class logit makes it NaN.
  assert np.isnan(final["loss_cross_entropy"])
  cost = jaxmask.mask_matching_cost(cl[0, 0], ml[0, 0], labels[0], masks[0],
                                    np.full((8, 2), 0.5, np.float32))
  assert np.isfinite(np.asarray(cost)).all()
  assert (np.asarray(cost)[2] > np.asarray(cost)[[0, 1, 3]].max()).all()


# ------------------------------------------------------------ edge cases


def test_no_valid_target_gives_zero_mask_losses_and_finite_gradients():
  cl, ml, labels, masks, valid = _problem(9, counts=[0, 0])
  loss = lambda cl, ml: jaxmask.mask2former_loss(
      jax.random.key(0), cl, ml, labels, masks, valid, num_points=8).total
  out = jaxmask.mask2former_loss(jax.random.key(0), cl, ml, labels, masks,
                                 valid, num_points=8)
  assert float(out.losses["loss_mask"]) == 0.0
  assert float(out.losses["loss_dice"]) == 0.0
  # Every query is no-object: the class loss is the plain mean CE towards K.
  log_probs = jax.nn.log_softmax(cl[-1], axis=-1)[..., -1]
  np.testing.assert_allclose(out.losses["loss_cross_entropy"],
                             -log_probs.mean(), rtol=1e-6)
  grads = jax.grad(loss, argnums=(0, 1))(cl, ml)
  assert all(np.isfinite(np.asarray(g)).all() for g in grads)
  assert not np.asarray(grads[1]).any()  # nothing matched: no mask gradient


def test_no_retrace_and_vmappable_layers():
  cl, ml, labels, masks, valid = _problem(10)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def loss(key, cl, ml):
    return jaxmask.mask2former_loss(key, cl, ml, labels, masks, valid,
                                    num_points=8).total

  for seed in range(3):
    assert np.isfinite(loss(jax.random.key(seed), cl, ml))


def test_num_masks_is_global_over_devices():
  """With axis_name, mask losses divide by the global mean count (>= 1)."""
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P
  devices = 8
  mesh = jax.make_mesh((devices,), ("data",))
  counts = [0, 1, 3, 2, 0, 1, 2, 3]
  cl, ml, labels, masks, valid = _problem(11, B=devices, counts=counts, L=1)
  key = jax.random.key(0)

  def per_device(cl, ml, labels, masks, valid, axis_name):
    out = jaxmask.mask2former_loss(key, cl, ml, labels, masks, valid,
                                   num_points=8, axis_name=axis_name)
    return jnp.stack([out.losses["loss_mask"], out.losses["loss_dice"]])[None]

  spec = (P(None, "data"), P(None, "data"), P("data"), P("data"), P("data"))
  args = [jax.device_put(jnp.asarray(x), NamedSharding(mesh, s))
          for x, s in zip((cl, ml, labels, masks, valid), spec)]
  sharded = np.asarray(jax.jit(jax.shard_map(
      lambda *a: per_device(*a, "data"), mesh=mesh, in_specs=spec,
      out_specs=P("data"), check_vma=False))(*args))
  global_mean = max(sum(counts) / devices, 1.0)
  for d in range(devices):
    local = per_device(cl[:, d:d + 1], ml[:, d:d + 1], labels[d:d + 1],
                       masks[d:d + 1], valid[d:d + 1], None)[0]
    np.testing.assert_allclose(
        sharded[d], local * max(counts[d], 1) / global_mean, rtol=1e-5)


@pytest.mark.parametrize("change, error, match", [
    (dict(labels=np.full((2, 4), 5, np.int32)), ValueError, "target_labels must lie in"),
    (dict(labels=np.zeros((2, 4), np.float32)), TypeError, "target_labels must have an integer"),
    (dict(cl=np.zeros((2, 2, 7), np.float32)), ValueError, "class_logits must have shape"),
    (dict(ml=np.zeros((2, 2, 7, 12), np.float32)), ValueError, "mask_logits must have shape"),
    (dict(cl=np.zeros((3, 2, 7, 6), np.float32)), ValueError, "same \\[num_layers"),
    (dict(masks=np.zeros((2, 3, 20, 16), np.float32)), ValueError, "same \\[batch, num_targets"),
    (dict(valid=np.ones((2, 4), np.int32)), TypeError, "target_valid must be a bool"),
    (dict(valid=np.ones((2, 3), bool)), ValueError, "target_valid must have the shape"),
    (dict(cl=np.zeros((2, 2, 7, 6), np.int32)), TypeError, "class_logits must have a floating"),
    (dict(masks=np.full((2, 4, 20, 16), 255.0, np.float32)), ValueError,
     "target_masks must hold values in"),
])
def test_bad_input_is_named(change, error, match):
  cl, ml, labels, masks, valid = _problem(12)
  args = dict(cl=cl, ml=ml, labels=labels, masks=masks, valid=valid)
  args.update(change)
  with pytest.raises(error, match=match):
    jaxmask.mask2former_loss(jax.random.key(0), args["cl"], args["ml"],
                             args["labels"], args["masks"], args["valid"],
                             num_points=8)


def test_more_targets_than_queries_is_an_error():
  cl, ml, labels, masks, valid = _problem(13, Q=3, T=4)
  with pytest.raises(ValueError, match="num_queries \\(3\\) must be >= num_targets \\(4\\)"):
    jaxmask.mask2former_loss(jax.random.key(0), cl, ml, labels, masks, valid)
  with pytest.raises(ValueError, match="num_queries \\(3\\) must be >="):
    jaxmask.hungarian_match(jnp.zeros((3, 4)))


def test_padded_labels_are_not_checked_and_traced_bad_labels_give_nan():
  cl, ml, labels, masks, valid = _problem(14, counts=[2, 2])
  labels = np.where(valid, labels, -1)  # padding may hold anything
  out = jaxmask.mask2former_loss(jax.random.key(0), cl, ml, labels, masks,
                                 valid, num_points=8)
  assert np.isfinite(out.total)
  bad = np.where(valid, 99, -1).astype(np.int32)
  traced = jax.jit(lambda l: jaxmask.mask2former_loss(
      jax.random.key(0), cl, ml, l, masks, valid, num_points=8).total)
  assert np.isnan(traced(bad))


def test_traced_targets_outside_the_unit_interval_or_nan_give_nan():
  cl, ml, labels, masks, valid = _problem(15, counts=[2, 2])
  loss = jax.jit(lambda m: jaxmask.mask2former_loss(
      jax.random.key(0), cl, ml, labels, m, valid, num_points=8).total)
  assert np.isfinite(loss(masks))
  for bad in (np.nan, 1.5, -0.5):
    assert np.isnan(loss(np.where(np.arange(masks.size).reshape(masks.shape)
                                  == 7, bad, masks).astype(np.float32))), bad


# ------------------------------------------------------ HF transformers


def test_against_hf_transformers_itself():
  """HF's own `Mask2FormerLoss` on jaxmask's draws, weighted as get_loss_dict."""
  hf = pytest.importorskip("transformers.models.mask2former.modeling_mask2former")
  import transformers
  cl, ml, labels, masks, valid = _problem(15, L=3, counts=[3, 1])
  num_points, key = 24, jax.random.key(5)
  K = cl.shape[-1] - 1
  config = transformers.Mask2FormerConfig(
      num_labels=K, train_num_points=num_points, no_object_weight=0.1,
      class_weight=2.0, mask_weight=5.0, dice_weight=5.0)
  weight_dict = {"loss_cross_entropy": 2.0, "loss_mask": 5.0, "loss_dice": 5.0}
  criterion = hf.Mask2FormerLoss(config, weight_dict)
  query_index = _jax_matchings(key, cl, ml, labels, masks, valid,
                               num_matcher_points=num_points,
                               cost_weights=(2.0, 5.0, 5.0))
  rand = _Rand(_hf_draws(key, valid, query_index, num_points=num_points,
                         num_matcher_points=num_points))
  tcl = torch.from_numpy(cl).requires_grad_(True)
  tml = torch.from_numpy(ml).requires_grad_(True)
  tlabels, tmasks = _torch_targets(labels, masks, valid)
  aux = [{"masks_queries_logits": tml[l], "class_queries_logits": tcl[l]}
         for l in range(cl.shape[0] - 1)]
  original = torch.rand
  torch.rand = rand
  try:
    losses = criterion(tml[-1], tcl[-1], tmasks, tlabels,
                       auxiliary_predictions=aux)
  finally:
    torch.rand = original
  assert not rand.draws
  weighted = {k: v * sum(w for n, w in weight_dict.items() if n in k)
              for k, v in losses.items()}
  total = sum(weighted.values())
  total.backward()
  out = jaxmask.mask2former_loss(key, cl, ml, labels, masks, valid,
                                 num_points=num_points)
  assert set(out.losses) == set(losses)
  for name, value in losses.items():
    np.testing.assert_allclose(out.losses[name], value.detach().numpy(),
                               rtol=1e-5, atol=1e-6, err_msg=name)
  np.testing.assert_allclose(out.total, total.detach().numpy(), rtol=1e-5)
  grads = jax.grad(lambda c, m: jaxmask.mask2former_loss(
      key, c, m, labels, masks, valid, num_points=num_points).total,
                   argnums=(0, 1))(cl, ml)
  np.testing.assert_allclose(grads[0], tcl.grad.numpy(), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(grads[1], tml.grad.numpy(), rtol=1e-4, atol=1e-6)


def test_kernel_matcher_equals_the_plain_one():
  """The XLA:CPU matching loop computes the plain matcher's values, bit for bit."""
  from jaxmask._src import criterion
  from jaxmask._src.xla_cpu import matching as xla_cpu_matching
  import functools
  cl, ml, labels, masks, valid = _problem(16, L=3, counts=[4, 2])
  points = jax.random.uniform(jax.random.key(0), (3, 2, 40, 2))
  match = functools.partial(criterion._match_image, cost_weights=(2.0, 5.0, 5.0))
  plain = jax.jit(functools.partial(criterion._match_every_image,
                                    cost_weights=(2.0, 5.0, 5.0)))
  kernel = jax.jit(functools.partial(xla_cpu_matching.match_image_by_image,
                                     match, plain))
  args = (points, cl, ml, labels, masks, valid)
  for got, want in zip(kernel(*args), plain(*args)):
    np.testing.assert_array_equal(got, want)
  targets = jnp.asarray(masks, jnp.float32)
  cost = lambda apart: jax.jit(jax.vmap(lambda p, c, m: criterion._matching_cost(
      c, m, labels[1], targets, 1, p, (2.0, 5.0, 5.0), apart)))(
          points[:, 1], cl[:, 1], ml[:, 1])
  from jaxmask._src.xla_cpu import barrier
  np.testing.assert_array_equal(cost(barrier.computed_apart), cost(None))
