"""Point losses and matcher costs on sampled mask logits (Mask2Former).

All reductions run in float32 (inputs in bfloat16 or float16 are upcast
first): a sum over 12544 points does not fit the 8-bit mantissa of bfloat16
nor, for the cross-entropy, the range of float16. The losses are returned in
float32; gradients flow back into the input dtype.

References:
  Cheng et al., "Masked-attention Mask Transformer for Universal Image
  Segmentation" (Mask2Former), CVPR 2022.
  Kirillov et al., "PointRend: Image Segmentation as Rendering", CVPR 2020.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

from jaxmask._src import checks
from jaxmask._src import implementation as impl
from jaxmask._src import sampling
from jaxmask._src.xla_cpu import mask_losses as xla_cpu_mask_losses

_HIGHEST = checks.HIGHEST
_upcast = checks.upcast


class PointMaskLosses(NamedTuple):
  """What `point_mask_losses` returns: two float32 scalars."""

  loss_mask: jax.Array  # sigmoid_ce_loss of the sampled logits and targets
  loss_dice: jax.Array  # dice_loss of the sampled logits and targets


def _check_points(logits: jax.Array, labels: jax.Array, pairwise: bool) -> None:
  """Validates `[rows, num_points]` logits and labels."""
  checks.rank(logits, "logits", "[num_masks, num_points]")
  checks.rank(labels, "labels", "[num_masks, num_points]")
  checks.floating(logits, "logits")
  if pairwise:
    if logits.shape[1] != labels.shape[1]:
      raise ValueError(
          "logits [num_queries, num_points] and labels [num_targets,"
          " num_points] must have the same num_points, got"
          f" {logits.shape} and {labels.shape}.")
  elif logits.shape != labels.shape:
    raise ValueError("logits and labels must have the same shape [num_masks,"
                     f" num_points], got {logits.shape} and {labels.shape}.")


def _per_mask_inputs(logits, labels, num_masks):
  """Validated `[num_masks, num_points]` inputs in float32+, and `ok`.

  `ok` is False (traced) where a traced `num_masks` is not a finite number
  > 0 or traced labels leave [0, 1] or hold NaN: the loss is then NaN. Concrete values
  are checked here and raise.
  """
  logits, labels = checks.array(logits, "logits"), checks.array(labels, "labels")
  _check_points(logits, labels, pairwise=False)
  num_masks, num_ok = checks.positive(num_masks, "num_masks")
  labels_ok = checks.unit_interval(labels, "labels")
  return (_upcast(logits), _upcast(labels), num_masks,
          checks.all_ok(num_ok, labels_ok))


def bce_with_logits(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Elementwise `BCEWithLogitsLoss(reduction='none')`, numerically stable."""
  return (jnp.maximum(logits, 0) - logits * labels
          + jnp.log1p(jnp.exp(-jnp.abs(logits))))


def sigmoid_ce_loss(logits: jax.typing.ArrayLike,
                    labels: jax.typing.ArrayLike,
                    num_masks: jax.typing.ArrayLike) -> jax.Array:
  r"""Sigmoid cross-entropy of point logits, averaged per mask.

  .. math::
     \frac{1}{\text{num\_masks}} \sum_n \frac{1}{P} \sum_i
     \left[\max(x_{ni}, 0) - x_{ni} t_{ni} + \log(1 + e^{-|x_{ni}|})\right].

  Equivalent to `sigmoid_cross_entropy_loss` in HF transformers' Mask2Former
  (`sigmoid_ce_loss` in Mask2Former's criterion), i.e. PyTorch's
  `BCEWithLogitsLoss(reduction="none")` averaged over points; per element it
  is `optax.sigmoid_binary_cross_entropy`. Computed in float32.

  Args:
    logits: `[num_masks, num_points]` floating point logits.
    labels: `[num_masks, num_points]` targets in [0, 1] (soft allowed).
    num_masks: scalar normaliser > 0, e.g. from `num_masks_normalizer`.
      Concrete labels and `num_masks` are checked (ValueError); traced ones
      out of range make the loss NaN.

  Returns:
    A float32 scalar.

  Example:
    >>> logits = jnp.array([[0.0, 0.0]])
    >>> jaxmask.sigmoid_ce_loss(logits, jnp.array([[1.0, 0.0]]), 1.0)
    Array(0.6931472, dtype=float32)
  """
  logits, labels, num_masks, ok = _per_mask_inputs(logits, labels, num_masks)
  _check_some_points(logits)
  return checks.nan_unless(ok, _sigmoid_ce(logits, labels, num_masks))


def _check_some_points(logits):
  if logits.shape[0] and not logits.shape[1]:  # a mean over no points
    raise ValueError("logits must have shape [num_masks, num_points] with"
                     f" num_points >= 1, got {logits.shape}.")


def _sigmoid_ce(logits, labels, num_masks):
  return bce_with_logits(logits, labels).mean(axis=1).sum() / num_masks


def dice_loss(logits: jax.typing.ArrayLike,
              labels: jax.typing.ArrayLike,
              num_masks: jax.typing.ArrayLike) -> jax.Array:
  r"""Soft dice loss of point logits, summed over masks.

  With :math:`p = \sigma(x)` and targets :math:`t`,

  .. math::
     \frac{1}{\text{num\_masks}} \sum_n \left[1 - \frac{2 \sum_i p_{ni}
     t_{ni} + 1}{\sum_i p_{ni} + \sum_i t_{ni} + 1}\right].

  Equivalent to `dice_loss` in HF transformers' Mask2Former and Mask2Former's
  criterion. Computed in float32.

  Shares its name with optax's `optax.losses.dice_loss`, a Tversky loss over
  classes: with its `alpha = beta = 0.5` and `smooth=0.5` (numerator and
  denominator both scaled by 2) it is the same per-mask formula, so this
  equals `optax.losses.binary_dice_loss(logits, labels, smooth=0.5).sum() /
  num_masks`. Mask2Former's normaliser (`num_masks`, a global count) is why
  this function exists apart from optax's per-mask losses.

  Args:
    logits: `[num_masks, num_points]` floating point logits.
    labels: `[num_masks, num_points]` targets in [0, 1] (soft allowed).
    num_masks: scalar normaliser > 0, e.g. from `num_masks_normalizer`.
      Concrete labels and `num_masks` are checked (ValueError); traced ones
      out of range make the loss NaN.

  Returns:
    A float32 scalar.

  Example:
    >>> logits = jnp.array([[4.0, -4.0, 4.0]])
    >>> round(float(jaxmask.dice_loss(logits, jnp.array([[1.0, 0.0, 1.0]]),
    ...                               1.0)), 4)
    0.0108
  """
  logits, labels, num_masks, ok = _per_mask_inputs(logits, labels, num_masks)
  return checks.nan_unless(ok, _dice(logits, labels, num_masks))


def _dice_numerator(probs: jax.Array, labels: jax.Array) -> jax.Array:
  """`2 * sum(probs * labels, axis=-1)`."""
  if probs.shape == labels.shape:
    # As a batched dot: XLA:CPU reduces a product over the last axis up to
    # 40x slower at some shapes (47 vs 1 ms for 330 masks of 12544 points).
    return 2 * jnp.einsum("...p,...p->...", probs, labels,
                          precision=checks.HIGHEST)
  # Broadcast labels (the full-mask criterion): a dot would copy them.
  return 2 * (probs * labels).sum(axis=-1)


def _dice_terms(probs: jax.Array, labels: jax.Array):
  """`(N, D)`: the soft dice loss is `1 - N / D`, with the +1 smoothing."""
  numerator = _dice_numerator(probs, labels)
  denominator = probs.sum(axis=-1) + labels.sum(axis=-1)
  return numerator + 1, denominator + 1


def dice_per_mask(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """`[num_masks]` soft dice losses of `[num_masks, num_points]` inputs."""
  numerator, denominator = _dice_terms(jax.nn.sigmoid(logits), labels)
  return 1 - numerator / denominator


@jax.custom_vjp
def ce_and_dice_per_mask(logits: jax.Array,
                         labels: jax.Array) -> tuple[jax.Array, jax.Array]:
  """`(bce_with_logits(...).mean(-1), dice_per_mask(...))` of `[..., P]` inputs.

  The same values, with a hand-written gradient: one elementwise pass from
  the logits and labels (the sigmoid recomputed) instead of autodiff's
  saved intermediates, which at 92 masks of 12544 points held ~14 arrays
  of the inputs' size at once and made the criterion's step fault in ~40 MiB
  of fresh pages more on every call.
  """
  return (bce_with_logits(logits, labels).mean(axis=-1),
          dice_per_mask(logits, labels))


def _ce_and_dice_fwd(logits, labels):
  numerator, denominator = _dice_terms(jax.nn.sigmoid(logits), labels)
  ce = bce_with_logits(logits, labels).mean(axis=-1)
  return (ce, 1 - numerator / denominator), (logits, labels, numerator,
                                            denominator)


def _ce_and_dice_bwd(residuals, cotangents):
  logits, labels, numerator, denominator = residuals
  g_ce, g_dice = cotangents
  num_points = logits.shape[-1]
  probs = jax.nn.sigmoid(logits)
  # dice = 1 - N / D (`_dice_terms`): d dice / d probs = -(2 y D - N) / D^2;
  # d probs / d logits = p (1 - p).
  scale = (g_dice / (denominator * denominator))[..., None]
  g_ce = (g_ce / num_points)[..., None]
  numerator, denominator = numerator[..., None], denominator[..., None]
  d_logits = (g_ce * (probs - labels) - scale * (
      2 * labels * denominator - numerator) * (probs * (1 - probs)))
  d_labels = -g_ce * logits - scale * (2 * probs * denominator - numerator)
  # Labels broadcast against the logits get their gradients summed.
  lead = d_labels.ndim - labels.ndim
  d_labels = d_labels.sum(axis=tuple(range(lead)) + tuple(
      lead + a for a, n in enumerate(labels.shape)
      if n == 1 and d_labels.shape[lead + a] != 1), keepdims=False)
  return d_logits.astype(logits.dtype), d_labels.reshape(labels.shape).astype(
      labels.dtype)


ce_and_dice_per_mask.defvjp(_ce_and_dice_fwd, _ce_and_dice_bwd)


def _dice(logits, labels, num_masks):
  return dice_per_mask(logits, labels).sum() / num_masks


def pairwise_sigmoid_ce_loss(logits: jax.typing.ArrayLike,
                             labels: jax.typing.ArrayLike) -> jax.Array:
  """Sigmoid cross-entropy between every prediction and every target.

  `cost[q, t] = mean_p BCEWithLogits(logits[q, p], labels[t, p])`, computed as
  `(BCE(x, 1) / P) @ labels.T + (BCE(x, 0) / P) @ (1 - labels).T`, dividing by
  P before the products as HF transformers does. Equivalent to
  `pair_wise_sigmoid_cross_entropy_loss` (HF transformers) and
  `batch_sigmoid_ce_loss` (Mask2Former's matcher). Computed in float32, as
  Mask2Former's matcher does, so bfloat16/float16 inputs give finite costs.

  Args:
    logits: `[num_queries, num_points]` floating point logits.
    labels: `[num_targets, num_points]` targets in [0, 1]; checked when
      concrete (ValueError), traced ones outside make every cost NaN.

  Returns:
    `[num_queries, num_targets]` float32 costs.

  Example:
    >>> logits = jnp.array([[0.0, 0.0], [5.0, -5.0]])  # 2 queries
    >>> jaxmask.pairwise_sigmoid_ce_loss(logits, jnp.array([[1.0, 0.0]]))
    Array([[0.6931472 ],
           [0.00671535]], dtype=float32)
  """
  logits, labels = checks.array(logits, "logits"), checks.array(labels, "labels")
  _check_points(logits, labels, pairwise=True)
  ok = checks.unit_interval(labels, "labels")
  return checks.nan_unless(ok, pairwise_sigmoid_ce(logits, labels))


def pairwise_sigmoid_ce(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """`pairwise_sigmoid_ce_loss` of validated inputs."""
  logits, labels = _upcast(logits), _upcast(labels)
  num_points = logits.shape[1]
  pos = bce_with_logits(logits, jnp.ones_like(logits)) / num_points
  neg = bce_with_logits(logits, jnp.zeros_like(logits)) / num_points
  return (jnp.matmul(pos, labels.T, precision=_HIGHEST)
          + jnp.matmul(neg, (1 - labels).T, precision=_HIGHEST))


def pairwise_dice_loss(logits: jax.typing.ArrayLike,
                       labels: jax.typing.ArrayLike) -> jax.Array:
  """Dice loss between every prediction and every target.

  With `p = sigmoid(logits)`: `cost = 1 - (2 p @ labels.T + 1) /
  (sum_p p[:, None] + sum_p labels[None, :] + 1)`. Equivalent to
  `pair_wise_dice_loss` (HF transformers) and `batch_dice_loss` (Mask2Former's
  matcher). Computed in float32.

  Args:
    logits: `[num_queries, num_points]` floating point logits.
    labels: `[num_targets, num_points]` targets in [0, 1]; checked when
      concrete (ValueError), traced ones outside make every cost NaN.

  Returns:
    `[num_queries, num_targets]` float32 costs.

  Example:
    >>> logits = jnp.array([[9.0, -9.0], [-9.0, 9.0]])  # 2 queries
    >>> labels = jnp.array([[1.0, 0.0], [0.0, 1.0]])  # 2 targets
    >>> np.asarray(jaxmask.pairwise_dice_loss(logits, labels)).round(3)
    array([[0.   , 0.667],
           [0.667, 0.   ]], dtype=float32)
  """
  logits, labels = checks.array(logits, "logits"), checks.array(labels, "labels")
  _check_points(logits, labels, pairwise=True)
  ok = checks.unit_interval(labels, "labels")
  return checks.nan_unless(ok, pairwise_dice(logits, labels))


def pairwise_dice(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """`pairwise_dice_loss` of validated inputs."""
  probs = jax.nn.sigmoid(_upcast(logits))
  labels = _upcast(labels)
  numerator = 2 * jnp.matmul(probs, labels.T, precision=_HIGHEST)
  denominator = probs.sum(axis=-1)[:, None] + labels.sum(axis=-1)[None, :]
  return 1 - (numerator + 1) / (denominator + 1)


def point_mask_losses(
    key: jax.Array,
    pred_masks: jax.typing.ArrayLike,
    target_masks: jax.typing.ArrayLike,
    num_masks: jax.typing.ArrayLike,
    *,
    num_points: int = 12544,
    oversample_ratio: float = 3.0,
    importance_sample_ratio: float = 0.75,
    implementation: impl.Implementation | None = None,
) -> PointMaskLosses:
  """Mask2Former's training mask losses on uncertainty-sampled points.

  Equivalent to `Mask2FormerLoss.loss_masks` (HF transformers) and
  `SetCriterion.loss_masks` (Mask2Former) on already matched masks. The points
  are exactly `sample_points_using_uncertainty(key, pred_masks[:, None],
  num_points=..., oversample_ratio=..., importance_sample_ratio=...)`; the
  targets are sampled there without gradient, so the gradient flows only
  through the sampled prediction logits. Targets may have another resolution
  than the predictions: the coordinates are normalised.

  Args:
    key: a `jax.random` key, used as in `sample_points_using_uncertainty`.
    pred_masks: `[num_masks, height, width]` floating mask logits.
    target_masks: `[num_masks, target_height, target_width]` targets in [0, 1]
      (bool or integer targets are cast to the dtype of `pred_masks`).
      Checked when concrete; traced, the losses are NaN if a sampled label
      lies outside [0, 1] or is NaN (0/255 masks: pass `masks > 127`).
    num_masks: scalar normaliser > 0, e.g. from `num_masks_normalizer`;
      checked when concrete, a traced one out of range makes the losses NaN.
    num_points: P >= 1 points per mask.
    oversample_ratio: r >= 1.
    importance_sample_ratio: fraction in [0, 1] of points chosen by
      uncertainty.
    implementation: `None` (the XLA:CPU kernels on CPU, the plain algorithm
      elsewhere), `"plain"` or `"xla_cpu"`, for the sampling.

  Returns:
    A `PointMaskLosses` `(loss_mask, loss_dice)` of float32 scalars,
    `sigmoid_ce_loss` and `dice_loss` of the sampled logits and targets.

  Example:
    >>> pred = jax.random.normal(jax.random.key(1), (3, 32, 32))
    >>> target = (pred > 0).astype(jnp.float32)
    >>> losses = jaxmask.point_mask_losses(
    ...     jax.random.key(0), pred, target, 3.0, num_points=64)
    >>> losses._fields
    ('loss_mask', 'loss_dice')
  """
  pred_masks = checks.array(pred_masks, "pred_masks")
  target_masks = checks.array(target_masks, "target_masks")
  checks.rank(pred_masks, "pred_masks", "[num_masks, height, width]")
  checks.rank(target_masks, "target_masks",
              "[num_masks, target_height, target_width]")
  checks.floating(pred_masks, "pred_masks")
  checks.same_size(pred_masks, target_masks, 0,
                   ("pred_masks", "target_masks"), "num_masks (first axis)")
  num_masks, ok = checks.positive(num_masks, "num_masks")
  if not isinstance(target_masks, jax.core.Tracer):  # traced: see the core
    checks.unit_interval(target_masks, "target_masks")
  if not jnp.issubdtype(target_masks.dtype, jnp.floating):
    target_masks = target_masks.astype(pred_masks.dtype)
  num_points, oversample_ratio, importance_sample_ratio = (
      sampling.check_sampling_options(key, num_points, oversample_ratio,
                                      importance_sample_ratio, implementation))
  return _point_mask_losses_core(
      key, pred_masks, target_masks, num_masks, jnp.asarray(ok),
      num_points=num_points, oversample_ratio=oversample_ratio,
      importance_sample_ratio=importance_sample_ratio,
      implementation=implementation)


# Jitted (sizes and options static) so that eager calls with unchanged shapes
# reuse one compiled program; under an outer jit it inlines.
@functools.partial(jax.jit, static_argnames=(
    "num_points", "oversample_ratio", "importance_sample_ratio",
    "implementation"))
def _point_mask_losses_core(key, pred_masks, target_masks, num_masks, ok, *,
                            num_points, oversample_ratio,
                            importance_sample_ratio, implementation):
  pred_masks = pred_masks[:, None]
  num_candidates, num_uncertain = sampling.point_counts(
      num_points, oversample_ratio, importance_sample_ratio)
  if (pred_masks.dtype == target_masks.dtype == jnp.float32
      and pred_masks.shape[0] and xla_cpu_mask_losses.can_run(
          key, pred_masks.shape[0], num_candidates,
          num_points - num_uncertain, target_masks[:, None].shape,
          pred_masks.shape)):
    def in_chunks(key, pred_masks, target_masks):
      rows = jnp.arange(pred_masks.shape[0])
      ce, dice, low, high = xla_cpu_mask_losses.point_losses_by_slot(
          key, pred_masks, jnp.ones(rows.shape, bool), rows,
          target_masks[:, None], rows, num_points=num_points,
          num_candidates=num_candidates, num_uncertain=num_uncertain,
          score=sampling.scorer(sampling.calculate_uncertainty),
          per_mask_losses=ce_and_dice_per_mask, label_range=True)
      return ce, dice, (jnp.min(low) >= 0) & (jnp.max(high) <= 1)

    ce, dice, labels_ok = impl.choose(
        implementation, xla_cpu=in_chunks,
        plain=functools.partial(_per_mask_losses, num_points=num_points,
                                oversample_ratio=oversample_ratio,
                                importance_sample_ratio=importance_sample_ratio,
                                implementation="plain"),
        operands=(key, pred_masks, target_masks))
  else:
    ce, dice, labels_ok = _per_mask_losses(
        key, pred_masks, target_masks, num_points=num_points,
        oversample_ratio=oversample_ratio,
        importance_sample_ratio=importance_sample_ratio,
        implementation=implementation)
  ok = ok & labels_ok
  return PointMaskLosses(checks.nan_unless(ok, ce.sum() / num_masks),
                         checks.nan_unless(ok, dice.sum() / num_masks))


def _per_mask_losses(key, pred_masks, target_masks, *, num_points,
                     oversample_ratio, importance_sample_ratio,
                     implementation):
  """`(ce [N], dice [N], labels in [0, 1])`: each stage over every mask."""
  point_coords = sampling.sample_points_using_uncertainty(
      key, pred_masks, num_points=num_points,
      oversample_ratio=oversample_ratio,
      importance_sample_ratio=importance_sample_ratio,
      implementation=implementation)
  # The points are drawn in [0, 1): the sampler needs no NaN-coordinate pass.
  point_labels = lax.stop_gradient(sampling.sample_at_drawn_points(
      target_masks[:, None], point_coords, implementation)[:, 0])
  point_logits = sampling.sample_at_drawn_points(
      pred_masks, point_coords, implementation)[:, 0]
  point_logits, point_labels = _upcast(point_logits), _upcast(point_labels)
  # Traced targets are checked where the loss reads them (no extra pass over
  # the full-resolution masks): a sampled label outside [0, 1] NaNs the loss.
  labels_ok = checks.unit_interval(point_labels, "target_masks")
  return (*ce_and_dice_per_mask(point_logits, point_labels),
          jnp.asarray(labels_ok))


def num_masks_normalizer(num_local_masks: jax.typing.ArrayLike,
                         *,
                         axis_name=None) -> jax.Array:
  """The number of masks to normalise the losses by: a global mean, >= 1.

  `max(sum over devices of num_local_masks / number of devices, 1)`.
  Equivalent to Mask2Former's `torch.clamp(num_masks / world_size, min=1)`
  after an `all_reduce` of `num_masks`.

  Args:
    num_local_masks: `[]` count of target masks on this device (int or
      float), finite (checked when concrete; a traced NaN gives NaN).
    axis_name: the mapped axis (or tuple of axes) to reduce over inside
      `shard_map`/`pmap`; None for a single device.

  Returns:
    A `[]` float32 scalar, at least 1.

  Example:
    >>> jaxmask.num_masks_normalizer(0)
    Array(1., dtype=float32)
  """
  num_masks = checks.scalar(num_local_masks, "num_local_masks").astype(
      jnp.float32)
  value = checks.concrete(num_masks)
  if value is not None and not np.isfinite(value):
    raise ValueError("num_local_masks must be a finite number, got"
                     f" {value.item()!r}.")
  if axis_name is not None:
    num_masks = lax.psum(num_masks, axis_name) / lax.psum(1, axis_name)
  return jnp.maximum(num_masks, 1.0)
