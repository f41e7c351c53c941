"""The Mask2Former criterion: matching, class loss and mask losses, one program.

Mask2Former trains by matching each image's target masks to its predictions
(Hungarian matching on a class + mask cost) and supervising the matched pairs,
at the final decoder layer and at every auxiliary layer. The PyTorch originals
match image by image on the host with scipy; here matching runs on the device
(`optax.assignment.hungarian_algorithm`), vmapped over images and layers, so
the whole criterion is one jitted, differentiable program on static shapes:
targets are padded to a fixed count `T` and flagged by `target_valid`.

References:
  Cheng et al., "Masked-attention Mask Transformer for Universal Image
  Segmentation" (Mask2Former), CVPR 2022.
  Mask2Former's `mask2former/modeling/matcher.py` and `criterion.py`; HF
  transformers' `models/mask2former/modeling_mask2former.py`
  (`Mask2FormerHungarianMatcher`, `Mask2FormerLoss`).
  Kuhn, "The Hungarian method for the assignment problem", 1955.
"""

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
import optax

from jaxmask._src import checks
from jaxmask._src import grid
from jaxmask._src import implementation as impl
from jaxmask._src import point_losses
from jaxmask._src import sampling
from jaxmask._src.xla_cpu import mask_losses as xla_cpu_mask_losses
from jaxmask._src.xla_cpu import matching as xla_cpu_matching

# Finite costs are clamped into [-COST_LIMIT, COST_LIMIT] before matching, so
# that the sentinel and the assignment's sums stay finite in float32.
COST_LIMIT = 1e30


class MaskMatching(NamedTuple):
  """What `hungarian_match` returns: the matching both ways, int32."""

  query_index: jax.Array  # [T]: the query matched to target t, -1 if padded
  target_index: jax.Array  # [Q]: the target matched to query q, -1 if none


class Mask2FormerLoss(NamedTuple):
  """What `mask2former_loss` returns."""

  total: jax.Array  # [] float32: the weighted sum of `losses`
  losses: dict  # HF's keys -> [] float32, unweighted


# ------------------------------------------------------------------- costs


def guard_costs(cost: jax.Array, valid: jax.Array | None = None) -> jax.Array:
  """Finite costs for the assignment: non-finite entries become a sentinel.

  Finite entries are clamped into `[-COST_LIMIT, COST_LIMIT]`; NaN and ±inf
  become `S = 4 T (m + 1)`, with `m` the largest finite `|cost|` of the valid
  columns and `T` the number of columns. Any assignment that uses fewer
  sentinel entries then costs less (their finite parts differ by at most
  `2 T m < S`), which is HF's rule (non-finite pairs are matched only when
  nothing else can be), and every sum inside the assignment stays below
  `4 T² (COST_LIMIT + 1)`: finite in float32 for T up to 9000.
  """
  cost = cost.astype(jnp.float32)
  finite = jnp.isfinite(cost)
  cost = jnp.clip(jnp.where(finite, cost, 0.0), -COST_LIMIT, COST_LIMIT)
  magnitude = jnp.abs(cost)
  if valid is not None:
    magnitude = jnp.where(valid[None, :], magnitude, 0.0)
  sentinel = 4.0 * cost.shape[1] * (jnp.max(magnitude, initial=0.0) + 1.0)
  return jnp.where(finite, cost, sentinel)


def _check_matching_inputs(class_logits, mask_logits, target_labels,
                           target_masks, batch_axes: int):
  """Shapes and dtypes shared by `mask_matching_cost` and the criterion."""
  lead = ("num_layers, batch, " if batch_axes == 2 else "")
  tlead = ("batch, " if batch_axes == 2 else "")
  checks.rank(class_logits, "class_logits", f"[{lead}num_queries, K + 1]")
  checks.rank(mask_logits, "mask_logits", f"[{lead}num_queries, height, width]")
  checks.rank(target_labels, "target_labels", f"[{tlead}num_targets]")
  checks.rank(target_masks, "target_masks",
              f"[{tlead}num_targets, target_height, target_width]")
  checks.floating(class_logits, "class_logits")
  checks.floating(mask_logits, "mask_logits")
  if not jnp.issubdtype(target_labels.dtype, jnp.integer):
    raise TypeError("target_labels must have an integer dtype, got"
                    f" {target_labels.dtype}.")
  if jnp.issubdtype(target_masks.dtype, jnp.complexfloating):
    raise TypeError("target_masks must be real (bool, integer or floating),"
                    f" got {target_masks.dtype}.")
  if class_logits.shape[-1] < 2:
    raise ValueError("class_logits must have K + 1 >= 2 classes (the last is"
                     f" no-object), got shape {class_logits.shape}.")
  n = batch_axes + 1  # leading axes up to and including the queries
  if class_logits.shape[:n] != mask_logits.shape[:n]:
    what = "[num_layers, batch, num_queries]" if batch_axes == 2 else (
        "num_queries")
    raise ValueError(f"class_logits and mask_logits must have the same {what},"
                     f" got {class_logits.shape} and {mask_logits.shape}.")
  if target_labels.shape != target_masks.shape[:target_labels.ndim]:
    what = "[batch, num_targets]" if batch_axes == 2 else "num_targets"
    raise ValueError(f"target_labels and target_masks must have the same {what},"
                     f" got {target_labels.shape} and {target_masks.shape}.")
  num_queries, num_targets = class_logits.shape[-2], target_labels.shape[-1]
  if num_queries < num_targets:
    raise ValueError(
        f"num_queries ({num_queries}) must be >= num_targets ({num_targets}):"
        " every target needs a query of its own.")


def _labels_ok(target_labels, num_classes, valid=None):
  """Labels in [0, K) (where valid): checked when concrete, else a flag."""
  bad = (target_labels < 0) | (target_labels >= num_classes)
  if valid is not None:
    bad = bad & valid
  if isinstance(bad, jax.core.Tracer):
    return ~jnp.any(bad)
  with jax.ensure_compile_time_eval():
    if bool(jnp.any(bad)):
      raise ValueError(
          f"target_labels must lie in [0, {num_classes}) (K = {num_classes}"
          " classes; K itself is no-object), got values from"
          f" {int(jnp.min(target_labels))} to {int(jnp.max(target_labels))}.")
  return True


def _target_values(target_masks, name="target_masks"):
  """Target masks as float32 in [0, 1]: concrete ones checked now."""
  ok = checks.unit_interval(target_masks, name)
  return target_masks.astype(jnp.float32), ok


def _weight(value, name):
  return checks.python_number(value, name, 0.0, math.inf)


def mask_matching_cost(
    class_logits: jax.typing.ArrayLike,
    mask_logits: jax.typing.ArrayLike,
    target_labels: jax.typing.ArrayLike,
    target_masks: jax.typing.ArrayLike,
    point_coords: jax.typing.ArrayLike,
    *,
    cost_class: float = 2.0,
    cost_mask: float = 5.0,
    cost_dice: float = 5.0,
) -> jax.Array:
  r"""Mask2Former's matching cost between one image's queries and targets.

  With :math:`p = \mathrm{softmax}(\text{class\_logits})` and the predicted and
  target masks sampled at the shared points (`point_sample`),

  .. math::
     C_{qt} = w_{mask}\,\mathrm{CE}(x_q, y_t) - w_{class}\, p_{q, l_t}
              + w_{dice}\,\mathrm{Dice}(x_q, y_t),

  with `pairwise_sigmoid_ce_loss` and `pairwise_dice_loss` as CE and Dice.
  Equivalent to the cost of HF transformers' `Mask2FormerHungarianMatcher`
  (transformers 5.x) and Mask2Former's `HungarianMatcher.memory_efficient_
  forward`, for the points they draw with `torch.rand(1, P, 2)`. Computed in
  float32 whatever the input dtype, as the original (autocast off).

  The targets are data: no gradient flows into `target_masks` (the
  original matchers run without gradient).

  Non-finite costs (from NaN or infinite logits) are guarded as HF guards
  them, which replaces them by the dtype's maximum: here by a sentinel
  `4 T (m + 1)`, with `m` the largest finite `|cost|`, after finite costs are
  clamped into ±1e30. Any assignment then uses as few non-finite pairs as it
  can, and the assignment's sums cannot overflow. (A non-finite mask logit on
  the map's border may also reach points just beside the map, whose off-map
  neighbour reads the border with weight 0: its query's cost is then
  non-finite where grid_sample's might not be.)

  Args:
    class_logits: `[num_queries, K + 1]` floating class logits (the last
      class is no-object).
    mask_logits: `[num_queries, height, width]` floating mask logits.
    target_labels: `[num_targets]` integer labels in [0, K); checked when
      concrete, traced ones out of range make the whole cost NaN-guarded
      (every entry the sentinel).
    target_masks: `[num_targets, target_height, target_width]` masks in
      [0, 1] (bool allowed), at any resolution.
    point_coords: `[num_points, 2]` `(x, y)` points in [0, 1], shared by all
      masks (e.g. `jax.random.uniform(key, (12544, 2))`).
    cost_class: weight of the class cost, >= 0.
    cost_mask: weight of the sigmoid cross-entropy cost, >= 0.
    cost_dice: weight of the dice cost, >= 0.

  Returns:
    `[num_queries, num_targets]` float32 costs, all finite.

  Example:
    >>> cost = jaxmask.mask_matching_cost(
    ...     jnp.zeros((3, 5)), jnp.zeros((3, 8, 8)), jnp.array([1, 2]),
    ...     jnp.ones((2, 16, 16)), jnp.full((4, 2), 0.5))
    >>> cost.shape
    (3, 2)
  """
  class_logits = checks.array(class_logits, "class_logits")
  mask_logits = checks.array(mask_logits, "mask_logits")
  target_labels = checks.array(target_labels, "target_labels")
  target_masks = checks.array(target_masks, "target_masks")
  point_coords = checks.array(point_coords, "point_coords")
  _check_matching_inputs(class_logits, mask_logits, target_labels,
                         target_masks, batch_axes=0)
  checks.rank(point_coords, "point_coords", "[num_points, 2]")
  checks.floating(point_coords, "point_coords")
  if point_coords.shape[1] != 2:
    raise ValueError("point_coords must have shape [num_points, 2], got"
                     f" {point_coords.shape}.")
  if point_coords.shape[0] == 0:
    raise ValueError("point_coords must hold at least one point, got shape"
                     f" {point_coords.shape}.")
  weights = (_weight(cost_class, "cost_class"), _weight(cost_mask, "cost_mask"),
             _weight(cost_dice, "cost_dice"))
  labels_ok = _labels_ok(target_labels, class_logits.shape[-1] - 1)
  target_masks, masks_ok = _target_values(target_masks)
  target_masks = lax.stop_gradient(target_masks)  # data, as in the matchers
  cost = _matching_cost(class_logits, mask_logits, target_labels,
                        target_masks[None], 0, point_coords, weights)
  ok = checks.all_ok(labels_ok, masks_ok)
  return guard_costs(checks.nan_unless(ok, cost))


def _matching_cost(class_logits, mask_logits, target_labels, target_masks,
                   image, point_coords, weights, apart=None, target_valid=None):
  """The unguarded `[Q, T]` float32 cost of one image (inputs validated).

  `target_masks [B, T, Ht, Wt]` hold the targets of `B` images; this image's
  are `target_masks[image]`, read in place. Every mask of the image is
  sampled at the same points, so each point's neighbours and weights are
  computed once for all masks (`_sample_shared`), with `point_sample`'s
  arithmetic. `apart(fn, *args)`, if given, evaluates the two samplings (the
  XLA:CPU matcher computes them apart from the costs); with `target_valid
  [T]` too, the padded targets are not sampled (`_sample_valid_targets`).
  """
  w_class, w_mask, w_dice = weights
  probs = jax.nn.softmax(checks.upcast(class_logits), axis=-1)
  labels = jnp.clip(target_labels, 0, class_logits.shape[-1] - 1)
  cost_class = -jnp.take(probs, labels, axis=1)
  coords = checks.upcast(point_coords)
  apart = apart or (lambda fn, *args: fn(*args))
  # In float32 whatever the logits' dtype, as the original (autocast off).
  # The predictions pixel-major (Q values a row); the targets where they
  # are: a transposed copy of the targets costs more than it saves.
  pred = apart(lambda rows, coords: _sample_shared(
      rows, mask_logits.shape[-2:], coords, pixel_major=True),
               _pixel_rows(checks.upcast(mask_logits)), coords)
  if target_valid is None:
    target = apart(lambda masks, image, coords: _sample_shared(
        masks[image].reshape(masks.shape[1], math.prod(masks.shape[-2:])),
        masks.shape[-2:], coords,
        pixel_major=False), target_masks, image, coords)
  else:
    target = apart(_sample_valid_targets, target_masks, image, target_valid,
                   coords)
  cost_mask, cost_dice = _pairwise_mask_costs(pred, target)
  return w_mask * cost_mask + w_class * cost_class + w_dice * cost_dice


def _pairwise_mask_costs(logits, labels):
  """`(pairwise_sigmoid_ce_loss, pairwise_dice_loss)` from one exp and one log.

  `logits [P, Q]` and `labels [P, T]`, point-major, give `[Q, T]` costs. With
  `e = exp(-|x|)`, `s = softplus(-x) = max(-x, 0) + log(1 + e) = BCE(x, 1)`,
  `BCE(x, 0) = s + x` and `sigmoid(x) = 1 / (1 + e)` (x >= 0) or `e / (1 +
  e)`: each of the `Q x P` logits costs one exp, one log and one division
  (the matcher's cost is bound by them; 1.3x faster than softplus, log1p and
  a sigmoid), rather than two softplus and a sigmoid. `log(1 + e)` is within
  6e-8 of PyTorch's `log1p(e)` (e <= 1), well below the rounding of a mean
  over thousands of points. The products and sums are the pairwise losses'
  own.
  """
  num_points = logits.shape[0]
  e = jnp.exp(-jnp.abs(logits))
  pos = jnp.maximum(-logits, 0) + jnp.log(1 + e)
  neg = pos + logits
  # Contracting the points: `a.T @ b` for point-major `a`, `b`.
  dot = functools.partial(lax.dot_general, dimension_numbers=(((0,), (0,)),
                                                              ((), ())),
                          precision=checks.HIGHEST)
  cost_ce = dot(pos / num_points, labels) + dot(neg / num_points, 1 - labels)
  probs = jnp.where(logits >= 0, 1, e) / (1 + e)  # sigmoid(logits)
  numerator = 2 * dot(probs, labels)
  denominator = probs.sum(axis=0)[:, None] + labels.sum(axis=0)[None, :]
  return cost_ce, 1 - (numerator + 1) / (denominator + 1)


def _pixel_rows(maps: jax.Array) -> jax.Array:
  """`[..., C, H, W]` maps -> `[..., H * W, C]`: one row of `C` values a pixel."""
  *lead, channels, height, width = maps.shape
  return jnp.swapaxes(maps.reshape(*lead, channels, height * width), -1, -2)


def _sample_shared(table: jax.Array, size, point_coords: jax.Array, *,
                   pixel_major: bool) -> jax.Array:
  """`point_sample` of `C` maps at points they share -> `[P, C]`.

  `table`: the `[C, H, W]` maps (`size = (H, W)`) as `[H * W, C]` rows
  (`pixel_major`, `_pixel_rows`: a neighbour's `C` values are one contiguous
  row, 2-3x faster to read on CPU) or as they are, `[C, H * W]`; sampled at
  `point_coords [P, 2]` with grid_sample's bilinear rule (zero padding,
  align_corners=False, `grid.py`) summed in its order, as `point_sample`,
  each point's neighbours and weights computed once for all `C` maps. A
  neighbour off the map gets weight 0 and reads the clamped border pixel (3x
  faster than selecting per value), which equals grid_sample wherever the
  maps are finite; a non-finite border value may then reach a point beside
  the map as NaN. A NaN or infinite point samples NaN.
  """
  channels = table.shape[-1 if pixel_major else 0]
  if math.prod(size) == 0:
    return _empty_shared(point_coords, channels, table.dtype)
  taps = _shared_taps(size, point_coords)
  return _finite_or_nan(_sum_taps(table, taps, pixel_major), taps)


def _empty_shared(point_coords, channels, dtype):
  """`_sample_shared` of empty maps: 0, or NaN at a non-finite point."""
  return jnp.where(jnp.all(jnp.isfinite(point_coords), -1), 0.0,
                   jnp.nan)[:, None].repeat(channels, 1).astype(dtype)


def _shared_taps(size, point_coords):
  """Each point's four neighbours (flat offsets into an `[H, W]` map, clamped)
  and their weights (0 off the map), and whether the point is finite."""
  height, width = size
  ix, iy = grid.pixel_positions(point_coords, height, width)
  finite = jnp.isfinite(ix) & jnp.isfinite(iy)
  ix, iy = jnp.where(finite, ix, -2.0), jnp.where(finite, iy, -2.0)
  x0, y0 = jnp.floor(ix), jnp.floor(iy)
  offsets, weights = [], []
  neighbours = ((x0, y0), (x0 + 1, y0), (x0, y0 + 1), (x0 + 1, y0 + 1))
  for (x, y), weight in zip(neighbours, grid.bilinear_weights(ix, iy)):
    on_map = (x >= 0) & (x <= width - 1) & (y >= 0) & (y <= height - 1)
    offsets.append(jnp.clip(y, 0, height - 1).astype(jnp.int32) * width
                   + jnp.clip(x, 0, width - 1).astype(jnp.int32))
    weights.append(jnp.where(on_map, weight, 0)[:, None])
  return offsets, weights, finite


def _sum_taps(table, taps, pixel_major):
  """The weighted sum of each point's neighbours in `table` -> `[P, C]`."""
  offsets, weights, _ = taps
  values = [jnp.take(table, offset, axis=0) if pixel_major else
            jnp.take(table, offset, axis=1).T for offset in offsets]
  return grid.weighted_sum(values, weights)


def _finite_or_nan(out, taps):
  return jnp.where(taps[2][:, None], out, jnp.nan).astype(out.dtype)


def _sample_valid_targets(target_masks, image, valid, point_coords):
  """`_sample_shared` of image `image`'s targets, padded ones skipped (0).

  The XLA:CPU matcher's: target by target, in a loop whose body reads only
  a valid target's map (in place, from the whole `[B, T, Ht, Wt]` batch),
  so that the padded targets (40% of them at L = 1, B = 8) cost nothing.
  A padded target's column is 0 rather than its samples, which changes no
  matching: `_hungarian_match` sets those columns' costs to 0.
  """
  num_targets, size = target_masks.shape[1], target_masks.shape[-2:]
  num_points = point_coords.shape[0]
  if num_targets == 0 or math.prod(size) == 0:
    return _empty_shared(point_coords, num_targets, target_masks.dtype)
  taps = _shared_taps(size, point_coords)

  def one_target(target, out):
    def sample(masks, image, target):
      table = masks[image, target].reshape(1, math.prod(size))
      return _sum_taps(table, taps, False)[:, 0]
    column = lax.cond(valid[target], sample,
                      lambda *_: jnp.zeros((num_points,), target_masks.dtype),
                      target_masks, image, target)
    return out.at[target].set(column)

  out = lax.fori_loop(0, num_targets, one_target,
                      jnp.zeros((num_targets, num_points), target_masks.dtype))
  return _finite_or_nan(out.T, taps)


# ---------------------------------------------------------------- matching


def hungarian_match(cost: jax.typing.ArrayLike,
                    *,
                    target_valid: jax.typing.ArrayLike | None = None
                    ) -> MaskMatching:
  """Minimum-cost assignment of every valid target to a distinct query.

  Solves the linear assignment problem on `cost` restricted to the valid
  target columns with `optax.assignment.hungarian_algorithm` (on the device,
  jit- and vmap-able; no scipy, no host callback). Padded columns get a
  constant cost, which cannot change the optimum of the valid ones since
  `num_queries >= num_targets`, and are dropped afterwards. Its total cost
  equals that of scipy's `linear_sum_assignment` on the valid columns, as
  used by Mask2Former's and HF transformers' matchers; the assignment itself
  may differ only where two assignments tie exactly. Non-finite costs are
  guarded first, as in `mask_matching_cost`.

  Args:
    cost: `[num_queries, num_targets]` floating costs, `num_queries >=
      num_targets`.
    target_valid: `[num_targets]` bool, False for padded targets; None: all
      valid.

  Returns:
    A `MaskMatching` of int32 arrays: `query_index [num_targets]`, the query
    matched to each target (-1 for a padded target), and `target_index
    [num_queries]`, the target matched to each query (-1 if none).

  Example:
    >>> cost = jnp.array([[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]])
    >>> jaxmask.hungarian_match(cost).query_index
    Array([1, 0], dtype=int32)
  """
  cost = checks.array(cost, "cost")
  checks.rank(cost, "cost", "[num_queries, num_targets]")
  checks.floating(cost, "cost")
  num_queries, num_targets = cost.shape
  if num_queries < num_targets:
    raise ValueError(
        f"num_queries ({num_queries}) must be >= num_targets ({num_targets}):"
        f" every target needs a query of its own, got cost {cost.shape}.")
  if target_valid is None:
    target_valid = jnp.ones((num_targets,), bool)
  target_valid = checks.array(target_valid, "target_valid")
  if target_valid.dtype != jnp.bool_:
    raise TypeError("target_valid must be a bool array, got dtype"
                    f" {target_valid.dtype}.")
  if target_valid.shape != (num_targets,):
    raise ValueError(f"target_valid must have shape [num_targets] ="
                     f" ({num_targets},), got {target_valid.shape}.")
  return _hungarian_match(cost, target_valid)


@jax.jit
def _hungarian_match(cost, target_valid):
  num_queries, num_targets = cost.shape
  if num_targets == 0:
    return MaskMatching(jnp.zeros((0,), jnp.int32),
                        jnp.full((num_queries,), -1, jnp.int32))
  cost = lax.stop_gradient(cost)
  cost = jnp.where(target_valid[None, :], guard_costs(cost, target_valid), 0.0)
  rows, cols = optax.assignment.hungarian_algorithm(cost)
  rows, cols = rows.astype(jnp.int32), cols.astype(jnp.int32)
  query_index = jnp.full((num_targets,), -1, jnp.int32).at[cols].set(rows)
  query_index = jnp.where(target_valid, query_index, -1)
  target_index = jnp.full((num_queries,), -1, jnp.int32).at[rows].set(
      jnp.where(target_valid[cols], cols, -1))
  return MaskMatching(query_index, target_index)


# --------------------------------------------------------------- criterion


def mask2former_loss(
    key: jax.Array,
    class_logits: jax.typing.ArrayLike,
    mask_logits: jax.typing.ArrayLike,
    target_labels: jax.typing.ArrayLike,
    target_masks: jax.typing.ArrayLike,
    target_valid: jax.typing.ArrayLike,
    *,
    class_weight: float = 2.0,
    mask_weight: float = 5.0,
    dice_weight: float = 5.0,
    no_object_weight: float = 0.1,
    cost_class: float | None = None,
    num_points: int | None = 12544,
    oversample_ratio: float = 3.0,
    importance_sample_ratio: float = 0.75,
    num_matcher_points: int | None = None,
    max_total_targets: int | None = None,
    axis_name=None,
    implementation: impl.Implementation | None = None,
) -> Mask2FormerLoss:
  r"""Mask2Former's training criterion, every decoder layer, one program.

  Equivalent to HF transformers' `Mask2FormerLoss` followed by
  `Mask2FormerForUniversalSegmentation.get_loss_dict` and `get_loss`
  (transformers 5.x), and to Mask2Former's `SetCriterion` with its
  `HungarianMatcher`. For each layer `l` (decoder order; the last is the final
  prediction) and image, independently:

  1. **Matching** (no gradient): `mask_matching_cost` at `M` uniform points
     shared by the image's masks, weights `(cost_class or class_weight,
     mask_weight, dice_weight)`, then `hungarian_match` over the valid
     targets.
  2. **Class loss**: cross-entropy over all `B x Q` queries of the layer,
     matched queries targeting their target's label, the others the
     no-object class `K`, with class weights `[1, ..., 1, no_object_weight]`
     and PyTorch's weighted mean :math:`\sum_i w_{y_i} \mathrm{ce}_i / \sum_i
     w_{y_i}`.
  3. **Mask losses**: the matched predictions and their targets, sampled at
     `num_points` points of `sample_points_using_uncertainty` (uncertain
     points of the matched prediction, no gradient, plus fresh ones), then
     sigmoid cross-entropy and dice, summed over matched masks and divided
     by `num_masks = max(global count of valid targets / devices, 1)` (the
     original's normaliser; HF's divides by the device count twice). With
     `num_points=None`, the losses run over every pixel of the matched logits
     bilinearly upsampled (align_corners=False) to the target size: the
     full-mask loss of Mask2Former's Table 5. In both modes the targets are
     data: no gradient flows into `target_masks`, as the originals' targets
     carry none.

  `losses` has HF's keys, unweighted: `loss_cross_entropy`, `loss_mask`,
  `loss_dice` for the final layer and `loss_cross_entropy_i`, `loss_mask_i`,
  `loss_dice_i` for auxiliary layer `i = 0 ... L - 2`. `total` is
  `class_weight * (every cross-entropy) + mask_weight * (every loss_mask) +
  dice_weight * (every loss_dice)`.

  **The draws.** With `match_key, loss_key = jax.random.split(key)`, the
  matcher points of image `b` at layer `l` are row `[l, b]` of
  `jax.random.uniform(match_key, (L, B, M, 2))` (HF: `torch.rand(1, M, 2)`).
  The loss points of all `L * B * T` target slots come from one call,
  `sample_points_using_uncertainty(loss_key, matched, num_points=P, ...)`,
  where `matched[(l * B + b) * T + t]` is layer `l`'s prediction matched to
  target `t` of image `b` (zeros for a padded target): with `candidate_key,
  fresh_key = jax.random.split(loss_key)`, that slot's candidates are row
  `(l * B + b) * T + t` of `jax.random.uniform(candidate_key, (L * B * T,
  int(P * r), 2))` and its fresh points the same row of
  `jax.random.uniform(fresh_key, (L * B * T, P - k, 2))`; with
  `max_total_targets = S`, `L * S` slots in place of `L * B * T`, row `l * S +
  s` holding the `s`-th valid target in (image, target) order. HF draws per
  layer (final first, then auxiliary 0, 1, ...): each image's matcher points, then
  the candidates and then the fresh points of the matched masks ordered by
  image and query index; feed it those rows to reproduce a call. Every draw
  is float32 (`dtype=jnp.float32`), also under `jax_enable_x64`.

  **Weights.** The matcher's weights are the loss weights, as in the original
  and current HF (`cost_class=None`); a number overrides the class cost only.
  HF releases before its issue 38559 was fixed hard-coded a class cost of
  1.0: pass `cost_class=1.0` to reproduce them.

  **Faults.** An image with no valid target makes every query no-object and
  adds nothing to the mask losses; a batch with none has zero mask losses.
  Non-finite costs never hang the matcher: they are guarded as in
  `mask_matching_cost`, so a query with NaN or infinite logits is matched
  only when no finite choice is left. A NaN or infinite class logit makes the
  layer's `loss_cross_entropy` NaN (every query enters it); a NaN or
  infinite mask logit makes the mask losses NaN only if its query is matched.
  Traced labels of valid targets outside [0, K) make every loss NaN. An
  empty batch (B = 0, or Q = T = 0) has NaN `loss_cross_entropy` (PyTorch's
  weighted mean over no queries) and zero mask losses, in every
  implementation. An empty map (H, W, Ht or Wt = 0) samples zeros at the
  points, as `point_sample` does; the full-mask losses cannot upsample an
  empty prediction nor average over an empty target, so with
  `num_points=None` (and B * T > 0) an empty map is a ValueError naming
  `mask_logits` or `target_masks`.

  Args:
    key: a `jax.random` key.
    class_logits: `[L, B, Q, K + 1]` floating class logits, layers in decoder
      order (L = 1: no auxiliary loss).
    mask_logits: `[L, B, Q, H, W]` floating mask logits.
    target_labels: `[B, T]` integer labels in [0, K) (padded entries
      unchecked).
    target_masks: `[B, T, Ht, Wt]` target masks in [0, 1] (bool allowed), at
      any resolution; traced ones outside [0, 1] or NaN make every loss NaN.
    target_valid: `[B, T]` bool, False for padding. `T <= Q`.
    class_weight: weight of the cross-entropy in `total` and the matcher.
    mask_weight: weight of `loss_mask` in `total` and the matcher.
    dice_weight: weight of `loss_dice` in `total` and the matcher.
    no_object_weight: class weight of no-object in the cross-entropy.
    cost_class: the matcher's class weight; None: `class_weight`.
    num_points: P points per matched mask for the mask losses; None: every
      pixel of the target size (full-mask losses).
    oversample_ratio: candidates per point, r >= 1.
    importance_sample_ratio: fraction k / P of points chosen by uncertainty.
    num_matcher_points: M points for the matcher's cost; None: `num_points`,
      or 12544 when `num_points` is None.
    max_total_targets: S, the most valid targets the batch holds, over all
      its images (a static bound, 0 <= S <= B * T); None: B * T. The mask
      losses then run over S slots per layer, the valid targets packed
      first in (image, target) order, rather than over all B * T slots,
      padded ones included (what it saves: the criterion section of
      benchmarks/RESULTS.md). A batch with more than S valid
      targets makes every loss NaN (no target is silently dropped).
    axis_name: the mapped axis (or axes) over which `num_masks` is summed,
      inside `shard_map`/`pmap`; None for one device.
    implementation: as in `point_sample`, for the sampling.

  Returns:
    `Mask2FormerLoss(total, losses)`: float32 scalars.

  Example:
    >>> L, B, Q, K, T = 2, 1, 4, 3, 2
    >>> out = jaxmask.mask2former_loss(
    ...     jax.random.key(0), jnp.zeros((L, B, Q, K + 1)),
    ...     jnp.zeros((L, B, Q, 8, 8)), jnp.array([[0, 2]]),
    ...     jnp.ones((B, T, 16, 16)), jnp.array([[True, False]]),
    ...     num_points=16)
    >>> sorted(out.losses)  # doctest: +NORMALIZE_WHITESPACE
    ['loss_cross_entropy', 'loss_cross_entropy_0', 'loss_dice', 'loss_dice_0',
     'loss_mask', 'loss_mask_0']
  """
  sampling.check_key(key)
  class_logits = checks.array(class_logits, "class_logits")
  mask_logits = checks.array(mask_logits, "mask_logits")
  target_labels = checks.array(target_labels, "target_labels")
  target_masks = checks.array(target_masks, "target_masks")
  target_valid = checks.array(target_valid, "target_valid")
  _check_matching_inputs(class_logits, mask_logits, target_labels,
                         target_masks, batch_axes=2)
  if target_valid.dtype != jnp.bool_:
    raise TypeError("target_valid must be a bool array, got dtype"
                    f" {target_valid.dtype}.")
  if target_valid.shape != target_labels.shape:
    raise ValueError(
        "target_valid must have the shape of target_labels [batch,"
        f" num_targets] = {target_labels.shape}, got {target_valid.shape}.")
  if class_logits.shape[0] == 0:
    raise ValueError("class_logits must hold at least one layer, got shape"
                     f" {class_logits.shape}.")
  weights = tuple(_weight(w, n) for w, n in (
      (class_weight, "class_weight"), (mask_weight, "mask_weight"),
      (dice_weight, "dice_weight"), (no_object_weight, "no_object_weight")))
  if cost_class is not None:
    cost_class = _weight(cost_class, "cost_class")
  if num_points is not None:
    num_points, oversample_ratio, importance_sample_ratio = (
        sampling.check_sampling_options(key, num_points, oversample_ratio,
                                        importance_sample_ratio,
                                        implementation))
  impl.check(implementation)
  if num_points is None and target_labels.size:  # full-mask losses
    for name, x in (("mask_logits", mask_logits),
                    ("target_masks", target_masks)):
      if 0 in x.shape[-2:]:
        raise ValueError(
            f"{name} must have height and width >= 1 for the full-mask losses"
            f" (num_points=None), got shape {x.shape}; with num_points, an"
            " empty map samples zeros.")
  if num_matcher_points is None:
    num_matcher_points = 12544 if num_points is None else num_points
  num_matcher_points = checks.python_int(num_matcher_points,
                                         "num_matcher_points", 1)
  all_slots = target_valid.size
  if max_total_targets is not None:
    max_total_targets = checks.python_int(max_total_targets,
                                          "max_total_targets", 0)
    if max_total_targets > all_slots:
      raise ValueError(
          f"max_total_targets must be <= batch * num_targets = {all_slots},"
          f" got {max_total_targets}.")
    if max_total_targets == all_slots:
      max_total_targets = None
  num_classes = class_logits.shape[-1] - 1
  labels_ok = _labels_ok(target_labels, num_classes, target_valid)
  target_masks, masks_ok = _target_values(target_masks)
  ok = jnp.asarray(checks.all_ok(labels_ok, masks_ok))
  return _mask2former_loss(
      key, class_logits, mask_logits, target_labels, target_masks,
      target_valid, ok, weights=weights, cost_class=cost_class,
      num_points=num_points, oversample_ratio=oversample_ratio,
      importance_sample_ratio=importance_sample_ratio,
      num_matcher_points=num_matcher_points,
      max_total_targets=max_total_targets, axis_name=axis_name,
      implementation=implementation)


@functools.partial(jax.jit, static_argnames=(
    "weights", "cost_class", "num_points", "oversample_ratio",
    "importance_sample_ratio", "num_matcher_points", "max_total_targets",
    "axis_name",
    "implementation"))
def _mask2former_loss(key, class_logits, mask_logits, target_labels,
                      target_masks, target_valid, ok, *, weights, cost_class,
                      num_points, oversample_ratio, importance_sample_ratio,
                      num_matcher_points, max_total_targets, axis_name,
                      implementation):
  class_weight, mask_weight, dice_weight, no_object_weight = weights
  num_layers, batch_size = class_logits.shape[:2]
  num_classes = class_logits.shape[-1] - 1
  cost_weights = (class_weight if cost_class is None else cost_class,
                  mask_weight, dice_weight)
  num_masks = point_losses.num_masks_normalizer(
      jnp.sum(target_valid), axis_name=axis_name)
  labels = jnp.clip(target_labels, 0, num_classes - 1)
  target_masks = lax.stop_gradient(target_masks)  # data, in both modes
  match_key, loss_key = jax.random.split(key)

  # 1. Matching, every layer and image at once, without gradient.
  points = jax.random.uniform(
      match_key, (num_layers, batch_size, num_matcher_points, 2), jnp.float32)

  matching = impl.choose(
      implementation,
      plain=functools.partial(_match_every_image, cost_weights=cost_weights),
      xla_cpu=functools.partial(
          xla_cpu_matching.match_image_by_image,
          functools.partial(_match_image, cost_weights=cost_weights),
          functools.partial(_match_every_image, cost_weights=cost_weights)),
      operands=(points, lax.stop_gradient(class_logits),
                lax.stop_gradient(mask_logits), labels, target_masks,
                target_valid))

  # 2. The class loss of each layer.
  loss_ce = jax.vmap(_class_loss, in_axes=(0, None, 0, None, None))(
      class_logits, labels, matching.target_index, num_classes,
      no_object_weight)

  # 3. The mask losses of every matched prediction of every layer.
  loss_mask, loss_dice = _mask_losses(
      loss_key, mask_logits, target_masks, target_valid, matching.query_index,
      matching.target_index, num_masks, num_points=num_points, oversample_ratio=oversample_ratio,
      importance_sample_ratio=importance_sample_ratio,
      max_total_targets=max_total_targets, implementation=implementation)
  if max_total_targets is not None:  # more valid targets than slots: NaN
    ok = ok & (jnp.sum(target_valid) <= max_total_targets)

  loss_ce, loss_mask, loss_dice = (checks.nan_unless(ok, x) for x in (
      loss_ce, loss_mask, loss_dice))
  losses = {}
  for layer in range(num_layers):
    suffix = "" if layer == num_layers - 1 else f"_{layer}"
    losses[f"loss_cross_entropy{suffix}"] = loss_ce[layer]
    losses[f"loss_mask{suffix}"] = loss_mask[layer]
    losses[f"loss_dice{suffix}"] = loss_dice[layer]
  total = (class_weight * jnp.sum(loss_ce) + mask_weight * jnp.sum(loss_mask)
           + dice_weight * jnp.sum(loss_dice))
  return Mask2FormerLoss(total, losses)


def _match_image(points, class_logits, mask_logits, labels, target_masks,
                 image, valid, *, cost_weights, apart=None):
  """One image: `mask_matching_cost` (unvalidated) + `hungarian_match`.

  The image's targets are `labels[image]`, `target_masks[image]` and
  `valid[image]`, of the batch's `[B, T]`, `[B, T, Ht, Wt]` and `[B, T]`.
  """
  cost = _matching_cost(class_logits, mask_logits, labels[image], target_masks,
                        image, points, cost_weights, apart,
                        None if apart is None else valid[image])
  return _hungarian_match(cost, valid[image])


def _match_every_image(points, class_logits, mask_logits, labels,
                       target_masks, target_valid, *, cost_weights):
  """The plain matcher over `[L, B, ...]`: `_match_image`, vmapped."""
  over_images = jax.vmap(
      functools.partial(_match_image, cost_weights=cost_weights),
      in_axes=(0, 0, 0, None, None, 0, None))
  over_layers = jax.vmap(over_images, in_axes=(0, 0, 0, None, None, None, None))
  images = jnp.arange(class_logits.shape[1])
  if images.size == 0:
    # No image: mapped over none, one of zeros gives the (empty) shapes.
    labels, target_masks, target_valid = (
        jnp.zeros((1, *x.shape[1:]), x.dtype)
        for x in (labels, target_masks, target_valid))
  return over_layers(points, class_logits, mask_logits, labels, target_masks,
                     images, target_valid)


def _class_loss(class_logits, labels, target_index, num_classes,
                no_object_weight):
  """Weighted cross-entropy of one layer's `[B, Q, K + 1]` class logits."""
  matched = target_index >= 0
  target_class = jnp.where(
      matched, jnp.take_along_axis(labels, jnp.maximum(target_index, 0),
                                   axis=1), num_classes)
  log_probs = jax.nn.log_softmax(checks.upcast(class_logits), axis=-1)
  ce = -jnp.take_along_axis(log_probs, target_class[..., None], axis=-1)[..., 0]
  # In the logits' dtype: two Python numbers would make a float64 array
  # under jax_enable_x64.
  weight = jnp.where(matched, 1.0, no_object_weight).astype(ce.dtype)
  return jnp.sum(weight * ce) / jnp.sum(weight)


def _mask_losses(key, mask_logits, target_masks, target_valid, query_index,
                 target_index, num_masks, *, num_points, oversample_ratio,
                 importance_sample_ratio, max_total_targets, implementation):
  """`(loss_mask [L], loss_dice [L])` of the matched `[L, B, Q, H, W]` logits.

  All `L * B * T` target slots at once, padded ones included and masked out;
  with `max_total_targets = S`, the valid targets packed into `L * 1 * S`.
  """
  num_layers, batch_size, num_queries, height, width = mask_logits.shape
  num_targets = query_index.shape[-1]
  if batch_size * num_targets == 0:
    zeros = jnp.zeros((num_layers,), jnp.float32)
    return zeros, zeros
  # Slot n of each layer holds target (image[n], target[n]); `reader[l, b,
  # q]` is the slot that reads query q of image b at layer l, or -1.
  matched_target = jnp.where(target_index >= 0,
                             jnp.arange(batch_size)[:, None] * num_targets
                             + target_index, -1)
  if max_total_targets is None:
    image = jnp.repeat(jnp.arange(batch_size), num_targets)
    target = jnp.tile(jnp.arange(num_targets), batch_size)
    reader = matched_target
  else:
    # The valid targets first, in (image, target) order, as one image of S.
    slot = jnp.argsort(~target_valid.reshape(-1), stable=True)[
        :max_total_targets]
    image, target = slot // num_targets, slot % num_targets
    slot_of = jnp.full((batch_size * num_targets,), -1, jnp.int32).at[
        slot].set(jnp.arange(max_total_targets, dtype=jnp.int32))
    reader = jnp.where(matched_target >= 0,
                       slot_of[jnp.maximum(matched_target, 0)], -1)
  slots = _Slots(image, target, target_valid[image, target], reader,
                 query_index)
  target_masks = target_masks.reshape(batch_size * num_targets, 1,
                                      *target_masks.shape[-2:])
  in_turn = functools.partial(
      _mask_losses_in_turn, slots=slots, num_masks=num_masks,
      num_points=num_points, oversample_ratio=oversample_ratio,
      importance_sample_ratio=importance_sample_ratio)
  if num_points is not None:
    num_candidates, num_uncertain = sampling.point_counts(
        num_points, oversample_ratio, importance_sample_ratio)
    if xla_cpu_mask_losses.can_run(
        key, num_layers * image.shape[0], num_candidates,
        num_points - num_uncertain, target_masks.shape, mask_logits.shape):
      in_chunks = functools.partial(
          _mask_losses_in_chunks, slots=slots, num_masks=num_masks,
          num_points=num_points, num_candidates=num_candidates,
          num_uncertain=num_uncertain)
      return impl.choose(
          implementation, xla_cpu=in_chunks,
          plain=functools.partial(in_turn, implementation="plain"),
          operands=(key, mask_logits, target_masks))
  return in_turn(key, mask_logits, target_masks, implementation=implementation)


class _Slots(NamedTuple):
  """The `N` target slots of each layer, and which query each one reads."""

  image: jax.Array  # [N]: slot n holds target (image[n], target[n])
  target: jax.Array  # [N]
  valid: jax.Array  # [N]: whether that target is valid (not padding)
  reader: jax.Array  # [L, B, Q]: the slot that reads each query, or -1
  query_index: jax.Array  # [L, B, T]: the matching's query of each target


def _masked_means(ce, dice, valid, num_masks):
  """Per layer: the sums of `[L, N]` losses over the valid slots / num_masks."""
  return (jnp.sum(jnp.where(valid, ce, 0.0), axis=1) / num_masks,
          jnp.sum(jnp.where(valid, dice, 0.0), axis=1) / num_masks)


def _mask_losses_in_turn(key, mask_logits, target_masks, *, slots, num_masks,
                         num_points, oversample_ratio, importance_sample_ratio,
                         implementation):
  """The mask losses of every slot, each stage over all `L * N` at once."""
  num_layers, _, _, height, width = mask_logits.shape
  target_height, target_width = target_masks.shape[-2:]
  num_slots = slots.image.shape[0]
  layer = jnp.repeat(jnp.arange(num_layers), num_slots)
  image, target = (jnp.tile(x, num_layers) for x in (slots.image,
                                                     slots.target))
  # A padded target's slot reads query 0.
  query = jnp.maximum(slots.query_index[layer, image, target], 0)
  reader = jnp.where(slots.reader >= 0, slots.reader + num_slots * jnp.arange(
      num_layers)[:, None, None], -1)
  matched = _read_rows(mask_logits, layer, image, query, reader)
  matched = matched.reshape(num_layers, num_slots, height, width)
  # A padded target's slot holds query 0's logits without gradient: its
  # losses are dropped below, and real logits keep the selection of its
  # points ordinary (all-equal scores, such as zeros, slow the XLA:CPU top-k).
  # In float32 (as grid_sample under the original's autocast): L * N maps.
  valid = jnp.broadcast_to(slots.valid, (num_layers, num_slots))
  matched = checks.upcast(jnp.where(valid[..., None, None], matched,
                                    lax.stop_gradient(matched)))
  # Slot n's target, read in place from the `[B * T, 1, Ht, Wt]` targets
  # (all of them in order, unless `max_total_targets` packed them).
  target_rows = None
  if num_slots < target_masks.shape[0]:
    target_rows = slots.image * slots.query_index.shape[-1] + slots.target
  if num_points is None:
    # Every target pixel, the logits upsampled (align_corners=False).
    logits = jax.image.resize(
        matched, matched.shape[:2] + (target_height, target_width),
        method="linear", antialias=False)
    logits = logits.reshape(num_layers, num_slots, -1)
    if target_rows is not None:
      target_masks = target_masks[target_rows]
    labels = target_masks.reshape(1, num_slots, -1)
  else:
    # The padded slots' points are not used: the XLA:CPU kernel skips the
    # selection of chunks of them (a padded image's trailing slots).
    points = sampling.sample_needed_points(
        key, lax.stop_gradient(matched).reshape(num_layers * num_slots, 1, height,
                                           width),
        valid.reshape(-1), num_points=num_points,
        oversample_ratio=oversample_ratio,
        importance_sample_ratio=importance_sample_ratio,
        implementation=implementation)
    logits = sampling.sample_at_drawn_points(
        matched.reshape(num_layers * num_slots, 1, height, width), points,
        implementation)
    logits = logits.reshape(num_layers, num_slots, num_points)
    # Each target is sampled at its L layers' points in one call, so the
    # targets are not copied once per layer.
    points = points.reshape(num_layers, num_slots, num_points, 2)
    points = points.transpose(1, 0, 2, 3).reshape(num_slots,
                                                  num_layers * num_points, 2)
    labels = sampling.sample_at_drawn_points(target_masks, points,
                                             implementation, target_rows)
    labels = labels.reshape(num_slots, num_layers, num_points)
    labels = lax.stop_gradient(labels.transpose(1, 0, 2))
  ce, dice = point_losses.ce_and_dice_per_mask(logits, labels)
  return _masked_means(ce, dice, valid, num_masks)


def _mask_losses_in_chunks(key, mask_logits, target_masks, *, slots,
                           num_masks, num_points, num_candidates,
                           num_uncertain):
  """The mask losses of every slot, by the XLA:CPU kernel, valid slots first.

  The kernel skips chunks of padded slots in every stage. Row `l * N + n` of
  the draw is layer `l`'s slot `n`, whichever row computes it.
  """
  num_layers, _, _, height, width = mask_logits.shape
  num_slots = slots.image.shape[0]
  size = num_layers * num_slots
  valid = jnp.tile(slots.valid, num_layers)
  # Computed row i holds slot order[i] (row l * N + n of the draw).
  order = jnp.argsort(~valid, stable=True).astype(jnp.int32)
  position = jnp.zeros((size,), jnp.int32).at[order].set(
      jnp.arange(size, dtype=jnp.int32))
  layer, slot = order // num_slots, order % num_slots
  image, target = slots.image[slot], slots.target[slot]
  query = jnp.maximum(slots.query_index[layer, image, target], 0)
  reader = jnp.where(slots.reader >= 0, position[
      num_slots * jnp.arange(num_layers)[:, None, None]
      + jnp.maximum(slots.reader, 0)], -1)
  needed = valid[order]
  matched = _read_rows(mask_logits, layer, image, query, reader)
  matched = checks.upcast(jnp.where(needed[:, None, None], matched,
                                    lax.stop_gradient(matched)))
  ce, dice = xla_cpu_mask_losses.point_losses_by_slot(
      key, matched[:, None], needed, order, target_masks,
      image * slots.query_index.shape[-1] + target, num_points=num_points,
      num_candidates=num_candidates, num_uncertain=num_uncertain,
      score=sampling.scorer(sampling.calculate_uncertainty),
      per_mask_losses=point_losses.ce_and_dice_per_mask)
  ce, dice = (x[position].reshape(num_layers, num_slots) for x in (ce, dice))
  return _masked_means(ce, dice, slots.valid[None], num_masks)


@jax.custom_vjp
def _read_rows(mask_logits, layer, image, query, reader):
  """`mask_logits[layer[n], image[n], query[n]]`: `[L, B, Q, H, W]` -> `[N, H, W]`.

  `reader [L, B, Q]` names the row that reads each query (-1: none), and the
  gradient is read back through it: each query is read by at most one row
  whose gradient counts (the matching is one-to-one; a padded target's row
  carries none), so the transpose is a gather that writes every gradient
  once, rather than a zeroed `[L, B, Q, H, W]` buffer and a scatter into it
  (~40 ms of a 300 ms step at B = 8 on XLA:CPU).
  """
  return mask_logits[layer, image, query]


def _read_rows_fwd(mask_logits, layer, image, query, reader):
  return _read_rows(mask_logits, layer, image, query, reader), reader


def _read_rows_bwd(reader, g):
  grad = jnp.where((reader >= 0)[..., None, None], g[jnp.maximum(reader, 0)],
                   0)
  return grad.astype(g.dtype), None, None, None, None


_read_rows.defvjp(_read_rows_fwd, _read_rows_bwd)
