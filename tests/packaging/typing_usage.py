"""What a type checker sees of jaxmask: real return types, not `Any`.

Not a test module (pytest does not collect it) and never run: mypy checks it,
from the source tree (`mypy`, configured in pyproject.toml; `.ci/run`) and
against the built wheel (tests/packaging/test_packaging.py, which needs
`jaxmask/py.typed`). Each `assert_type` fails if jaxmask's types are lost
(an `Any` is not a `ConfidenceMasks`). Each `# type: ignore[...]` marks a call
the checker must reject: with `warn_unused_ignores`, an ignore that is not
needed any more is itself an error.
"""

from typing import assert_type

import jax
import jax.numpy as jnp

import jaxmask


def confidence_and_mlkd(logits: jax.Array) -> None:
  masks = jaxmask.confidence_masks(logits, q=50.0, keep="low")
  assert_type(masks, jaxmask.ConfidenceMasks)
  assert_type(masks.mask, jax.Array)
  assert_type(jaxmask.percentile(masks.confidence, 50), jax.Array)
  assert_type(jaxmask.percentile_mask(masks.confidence, q=80.0, keep="high"),
              tuple[jax.Array, jax.Array])
  loss = jaxmask.mlkd_loss(logits, logits, logits, logits, mode="masked")
  assert_type(loss, jaxmask.MLKDLoss)
  assert_type(loss.total, jax.Array)
  assert_type(jaxmask.kd_loss(logits, logits, temperature=4.0), jax.Array)
  jaxmask.confidence_masks(logits, keep="middle")  # type: ignore[arg-type]
  jaxmask.mlkd_loss(logits, logits, logits, logits, mode="strict")  # type: ignore[arg-type]


def thresholds(probs: jax.Array, indices: jax.Array) -> None:
  threshold = jaxmask.flexmatch(num_classes=10, num_unlabelled=100)
  assert_type(threshold, jaxmask.ConfidenceThreshold)
  out, _ = threshold.update(probs, threshold.init(), indices=indices)
  assert_type(out, jaxmask.ThresholdOutput)
  assert_type(out.mask, jax.Array)
  assert_type(jaxmask.fixmatch(p_cutoff=0.95), jaxmask.ConfidenceThreshold)
  assert_type(jaxmask.percentile_threshold(q=50.0, keep="high"),
              jaxmask.ConfidenceThreshold)


def point_sampling(key: jax.Array, logits: jax.Array, targets: jax.Array) -> None:
  coords = jaxmask.sample_points_using_uncertainty(
      key, logits[:, None], num_points=16, oversample_ratio=3.0,
      importance_sample_ratio=0.75)
  assert_type(coords, jax.Array)
  assert_type(jaxmask.point_sample(logits[:, None], coords), jax.Array)
  losses = jaxmask.point_mask_losses(key, logits, targets, 2.0, num_points=16,
                                     implementation="plain")
  assert_type(losses, jaxmask.PointMaskLosses)
  assert_type(losses.loss_dice, jax.Array)
  assert_type(jaxmask.top_k_indices(logits.reshape(logits.shape[0], -1), k=4),
              jax.Array)
  jaxmask.point_mask_losses(key, logits, targets, 2.0,
                            implementation="gpu")  # type: ignore[arg-type]


def criterion(key: jax.Array, class_logits: jax.Array, mask_logits: jax.Array,
              labels: jax.Array, masks: jax.Array, valid: jax.Array) -> None:
  out = jaxmask.mask2former_loss(key, class_logits, mask_logits, labels, masks,
                                 valid, num_points=16)
  assert_type(out, jaxmask.Mask2FormerLoss)
  assert_type(out.total, jax.Array)
  points = jax.random.uniform(key, (16, 2))
  cost = jaxmask.mask_matching_cost(class_logits[-1, 0], mask_logits[-1, 0],
                                    labels[0], masks[0], points)
  assert_type(cost, jax.Array)
  assert_type(jaxmask.hungarian_match(cost, target_valid=valid[0]),
              jaxmask.MaskMatching)
  jaxmask.hungarian_match(cost, valid[0])  # type: ignore[call-arg]
  assert_type(jaxmask.num_masks_normalizer(jnp.sum(valid)), jax.Array)
