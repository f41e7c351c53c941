"""The segmentation example's evaluation: Mask2Former's panoptic inference, panoptic
quality, and the mask IoU and class accuracy of instances matched to queries by
`jaxmask.hungarian_match` (in `matched_statistics`)."""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import jaxmask

from .data import CLASSES, one_hot_instances
from .settings import EVAL_BATCH, LOSSES

METRICS = ("pq", "sq", "rq", "miou", "accuracy")
# Mask2Former's panoptic inference: a query is kept when its best class is
# an object with probability above this, and its segment when at least this
# fraction of its mask survives the argmax over the kept queries.
OBJECT_THRESHOLD, OVERLAP_THRESHOLD = 0.8, 0.8


def panoptic_inference(class_logits, mask_logits, size: int):
  """Mask2Former's panoptic inference for one image (things only).

  `class_logits [Q, K + 1]`, `mask_logits [Q, h, w]` -> `(segments [Q, S, S]
  bool, non-overlapping; classes [Q]; kept [Q] bool)`.
  """
  probs = jax.nn.softmax(class_logits, axis=-1)
  scores, classes = jnp.max(probs, axis=-1), jnp.argmax(probs, axis=-1)
  keep = (classes != len(CLASSES)) & (scores > OBJECT_THRESHOLD)
  mask_logits = jax.image.resize(mask_logits, mask_logits.shape[:1] +
                                 (size, size), method="linear")
  mask_probs = jax.nn.sigmoid(mask_logits)
  weighted = jnp.where(keep[:, None, None], scores[:, None, None] * mask_probs,
                       -1.0)
  owner = jnp.argmax(weighted, axis=0)  # [S, S]
  owned = owner[None] == jnp.arange(class_logits.shape[0])[:, None, None]
  owned &= keep[:, None, None]
  confident = mask_probs >= 0.5
  segments = owned & confident
  area, original = owned.sum((1, 2)), confident.sum((1, 2))
  kept = (keep & (segments.sum((1, 2)) > 0) & (original > 0)
          & (area >= OVERLAP_THRESHOLD * original))
  return segments & kept[:, None, None], classes, kept


def pq_statistics(segments, classes, kept, ids, labels):
  """Per-class `[K, 4]` (IoU sum, TP, FP, FN) of one image's segments."""
  num_targets = labels.shape[0]
  truth = one_hot_instances(ids, num_targets)  # [T, S, S]
  valid = labels >= 0
  inter = jnp.einsum("qhw,thw->qt", segments.astype(jnp.float32),
                     truth.astype(jnp.float32))
  union = segments.sum((1, 2))[:, None] + truth.sum((1, 2))[None] - inter
  iou = inter / jnp.maximum(union, 1.0)
  # Segments do not overlap, so IoU > 0.5 pairs are unique (PQ's matching).
  match = ((iou > 0.5) & (classes[:, None] == labels[None]) & kept[:, None]
           & valid[None])
  onehot = lambda c: jax.nn.one_hot(c, len(CLASSES))
  tp_iou = jnp.sum(jnp.where(match, iou, 0.0), axis=1) @ onehot(classes)
  tp = jnp.sum(match, axis=1).astype(jnp.float32) @ onehot(classes)
  fp = (kept & ~jnp.any(match, axis=1)).astype(jnp.float32) @ onehot(classes)
  fn = (valid & ~jnp.any(match, axis=0)).astype(jnp.float32) @ onehot(labels)
  return jnp.stack([tp_iou, tp, fp, fn], axis=-1)


def matched_statistics(class_logits, mask_logits, ids, labels, size: int):
  """`[3]`: (IoU sum, correct classes, instances) of one image's matching.

  Every true instance is matched to a distinct query by maximum total mask
  IoU (`jaxmask.hungarian_match`, class-agnostic, no thresholds on scores);
  the matched query's mask (logit > 0, upsampled) gives the IoU and its most
  likely object class (no-object excluded) the class accuracy.
  """
  num_targets = labels.shape[0]
  truth = one_hot_instances(ids, num_targets).astype(jnp.float32)
  valid = labels >= 0
  masks = jax.image.resize(mask_logits, mask_logits.shape[:1] + (size, size),
                           method="linear") > 0
  masks = masks.astype(jnp.float32)
  inter = jnp.einsum("qhw,thw->qt", masks, truth)
  union = masks.sum((1, 2))[:, None] + truth.sum((1, 2))[None] - inter
  iou = inter / jnp.maximum(union, 1.0)  # [Q, T]
  query = jnp.maximum(
      jaxmask.hungarian_match(-iou, target_valid=valid).query_index, 0)
  matched_iou = iou[query, jnp.arange(num_targets)]
  predicted = jnp.argmax(class_logits[query, :len(CLASSES)], axis=-1)
  return jnp.stack([jnp.sum(jnp.where(valid, matched_iou, 0.0)),
                    jnp.sum(valid & (predicted == labels)),
                    jnp.sum(valid)]).astype(jnp.float32)


def evaluate(graphdef, params, test, image_size: int,
             batch_size: int = EVAL_BATCH):
  """Summed statistics over the test set: `(pq [K, 4], matched [3])`."""
  model = nnx.merge(graphdef, params)

  def one_batch(batch):
    class_logits, mask_logits = model(batch["images"])
    class_logits, mask_logits = class_logits[-1], mask_logits[-1]
    segments, classes, kept = jax.vmap(
        panoptic_inference, (0, 0, None))(class_logits, mask_logits,
                                          image_size)
    pq = jax.vmap(pq_statistics)(segments, classes, kept, batch["ids"],
                                 batch["labels"])
    matched = jax.vmap(matched_statistics, (0, 0, 0, 0, None))(
        class_logits, mask_logits, batch["ids"], batch["labels"], image_size)
    return pq.sum(0), matched.sum(0)

  batches = jax.tree.map(
      lambda x: x.reshape(-1, batch_size, *x.shape[1:]), test)
  return jax.tree.map(lambda x: x.sum(0), jax.lax.map(one_batch, batches))


def scores(pq_stats: np.ndarray, matched: np.ndarray) -> dict[str, float]:
  """PQ, SQ and RQ (in %, averaged over the classes that occur), and the
  matched instances' mean mask IoU and class accuracy (in %)."""
  tp_iou, tp, fp, fn = np.moveaxis(np.asarray(pq_stats, np.float64), -1, 0)
  denominator = tp + 0.5 * fp + 0.5 * fn
  present = denominator > 0
  pq = np.where(present, tp_iou / np.maximum(denominator, 1e-9), 0.0)
  sq = np.where(tp > 0, tp_iou / np.maximum(tp, 1e-9), 0.0)
  rq = np.where(present, tp / np.maximum(denominator, 1e-9), 0.0)
  mean = lambda x: float(100 * x[present].mean()) if present.any() else 0.0
  iou_sum, correct, count = np.asarray(matched, np.float64)
  return dict(pq=mean(pq), sq=mean(sq), rq=mean(rq),
              miou=float(100 * iou_sum / max(count, 1)),
              accuracy=float(100 * correct / max(count, 1)))


def predict_segments(graphdef, params, images, image_size: int):
  """`(ids [N, S, S] int, classes [N, Q])`: panoptic ids 1..Q, 0 = none."""
  class_logits, mask_logits = nnx.merge(graphdef, params)(images)
  segments, classes, _ = jax.vmap(panoptic_inference, (0, 0, None))(
      class_logits[-1], mask_logits[-1], image_size)
  q = jnp.arange(1, segments.shape[1] + 1)[None, :, None, None]
  return jnp.max(jnp.where(segments, q, 0), axis=1), classes


def paired_differences(results) -> dict[str, dict[str, Any]]:
  """Per metric, point minus full mask seed by seed, and its mean and std.

  Both models of a seed start from the same parameters and see the same
  batches and keys, so the per-seed difference removes what the seeds share;
  its mean is the comparison the example makes, its std (over seeds) the
  noise on it.
  """
  if not set(LOSSES) <= set(results):
    return {}
  paired = {}
  for name in METRICS:
    diffs = [p - f for p, f in zip(results["point"][name],
                                   results["full"][name])]
    paired[name] = dict(per_seed=diffs, mean=float(np.mean(diffs)),
                        std=float(np.std(diffs)))
  return paired
