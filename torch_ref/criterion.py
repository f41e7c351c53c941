"""PyTorch reference for jaxmask's Mask2Former criterion.

Transcribed in meaning from HF transformers 5.x
`models/mask2former/modeling_mask2former.py`: `Mask2FormerHungarianMatcher`
(cost, non-finite guard, scipy's `linear_sum_assignment` image by image on the
host), `Mask2FormerLoss` (`loss_labels`, `loss_masks`, auxiliary layers) and
`Mask2FormerForUniversalSegmentation.get_loss_dict` (the weighted sum), with
Mask2Former's `num_masks` (`criterion.py`) and its float32 costs (autocast
off in `matcher.py`).

The random draws are HF's `torch.rand` calls, in HF's order; `rand` lets a
test supply them (e.g. jaxmask's draws). Targets come as HF takes them: a
list per image of `[T_b]` labels and `[T_b, Ht, Wt]` masks.
"""

from scipy.optimize import linear_sum_assignment
import torch
from torch import nn

from torch_ref import point_losses
from torch_ref import sampling


def mask_matching_cost(class_logits, mask_logits, target_labels, target_masks,
                       point_coords, *, cost_class=2.0, cost_mask=5.0,
                       cost_dice=5.0):
  """One image's `[Q, T]` cost, in float32, guarded as HF 5.x guards it."""
  pred_probs = class_logits.float().softmax(-1)
  cost_class_matrix = -pred_probs[:, target_labels]
  pred_mask = mask_logits.float()[:, None]
  target_mask = target_masks.float()[:, None]
  point_coords = point_coords.float()[None]
  target_mask = sampling.point_sample(
      target_mask, point_coords.repeat(target_mask.shape[0], 1, 1)).squeeze(1)
  pred_mask = sampling.point_sample(
      pred_mask, point_coords.repeat(pred_mask.shape[0], 1, 1)).squeeze(1)
  cost_mask_matrix = point_losses.pairwise_sigmoid_ce_loss(pred_mask,
                                                           target_mask)
  cost_dice_matrix = point_losses.pairwise_dice_loss(pred_mask, target_mask)
  cost = (cost_mask * cost_mask_matrix + cost_class * cost_class_matrix
          + cost_dice * cost_dice_matrix)
  max_value = torch.finfo(cost.dtype).max
  return torch.nan_to_num(cost, nan=max_value, posinf=max_value,
                          neginf=max_value)


def hungarian_match(cost):
  """scipy's assignment of a `[Q, T]` cost: `(query indices, target indices)`."""
  rows, cols = linear_sum_assignment(cost.cpu().numpy())
  return (torch.as_tensor(rows, dtype=torch.int64),
          torch.as_tensor(cols, dtype=torch.int64))


def _match(class_logits, mask_logits, target_labels, target_masks, *,
           num_points, weights, rand):
  """The matcher over a batch: one `rand(1, P, 2)` per image."""
  indices = []
  for b in range(class_logits.shape[0]):
    points = rand(1, num_points, 2)[0]
    cost = mask_matching_cost(class_logits[b], mask_logits[b],
                              target_labels[b], target_masks[b], points,
                              cost_class=weights[0], cost_mask=weights[1],
                              cost_dice=weights[2])
    indices.append(hungarian_match(cost))
  return indices


def _loss_labels(class_logits, target_labels, indices, no_object_weight):
  batch_size, num_queries, num_labels_plus_1 = class_logits.shape
  num_labels = num_labels_plus_1 - 1
  empty_weight = torch.ones(num_labels + 1)
  empty_weight[-1] = no_object_weight
  criterion = nn.CrossEntropyLoss(weight=empty_weight)
  batch_idx = torch.cat([torch.full_like(src, i)
                         for i, (src, _) in enumerate(indices)])
  src_idx = torch.cat([src for (src, _) in indices])
  target_classes_o = torch.cat(
      [labels[j] for labels, (_, j) in zip(target_labels, indices)])
  target_classes = torch.full((batch_size, num_queries), num_labels,
                              dtype=torch.int64)
  target_classes[batch_idx, src_idx] = target_classes_o.long()
  return criterion(class_logits.float().transpose(1, 2), target_classes)


def _sample_points(logits, *, num_points, oversample_ratio,
                   importance_sample_ratio, rand):
  """HF's `sample_points_using_uncertainty`, its two `rand` calls included."""
  num_boxes = logits.shape[0]
  num_points_sampled = int(num_points * oversample_ratio)
  candidates = rand(num_boxes, num_points_sampled, 2)
  num_uncertain = int(importance_sample_ratio * num_points)
  num_random = num_points - num_uncertain
  points = sampling.select_uncertain_points(
      logits, candidates, num_uncertain=num_uncertain)
  if num_random > 0:
    points = torch.cat([points, rand(num_boxes, num_random, 2)], dim=1)
  return points


def _loss_masks(mask_logits, target_masks, indices, num_masks, *, num_points,
                oversample_ratio, importance_sample_ratio, rand):
  batch_idx = torch.cat([torch.full_like(src, i)
                         for i, (src, _) in enumerate(indices)])
  src_idx = torch.cat([src for (src, _) in indices])
  tgt_batch_idx = torch.cat([torch.full_like(tgt, i)
                             for i, (_, tgt) in enumerate(indices)])
  tgt_idx = torch.cat([tgt for (_, tgt) in indices])
  # float32, as under the original's autocast (grid_sample runs in float32).
  pred_masks = mask_logits[batch_idx, src_idx][:, None].float()
  # HF pads the targets to the batch's largest; here they share one size.
  padded = torch.zeros((len(target_masks), max(len(t) for t in target_masks),
                        *target_masks[0].shape[-2:]))
  for b, masks in enumerate(target_masks):
    padded[b, :len(masks)] = masks.float()
  target = padded[tgt_batch_idx, tgt_idx][:, None]
  with torch.no_grad():
    points = _sample_points(pred_masks, num_points=num_points,
                            oversample_ratio=oversample_ratio,
                            importance_sample_ratio=importance_sample_ratio,
                            rand=rand)
    point_labels = sampling.point_sample(target, points).squeeze(1)
  point_logits = sampling.point_sample(pred_masks, points).squeeze(1)
  return (point_losses.sigmoid_ce_loss(point_logits, point_labels, num_masks),
          point_losses.dice_loss(point_logits, point_labels, num_masks))


def _full_mask_losses(mask_logits, target_masks, indices, num_masks):
  """The losses over every target pixel, logits upsampled bilinearly."""
  batch_idx = torch.cat([torch.full_like(src, i)
                         for i, (src, _) in enumerate(indices)])
  src_idx = torch.cat([src for (src, _) in indices])
  target = torch.cat([masks[tgt].float()
                      for masks, (_, tgt) in zip(target_masks, indices)])
  pred = mask_logits[batch_idx, src_idx][:, None]
  pred = nn.functional.interpolate(pred.float(), size=target.shape[-2:],
                                   mode="bilinear", align_corners=False)
  pred, target = pred.flatten(1), target.flatten(1)
  return (point_losses.sigmoid_ce_loss(pred, target, num_masks),
          point_losses.dice_loss(pred, target, num_masks))


def mask2former_loss(class_logits, mask_logits, target_labels, target_masks,
                     *, class_weight=2.0, mask_weight=5.0, dice_weight=5.0,
                     no_object_weight=0.1, cost_class=None, num_points=12544,
                     oversample_ratio=3.0, importance_sample_ratio=0.75,
                     num_matcher_points=None, rand=torch.rand):
  """`(total, losses)` for `[L, B, Q, K + 1]` and `[L, B, Q, H, W]` logits.

  As HF: the final layer (index L - 1) first, then the auxiliary layers 0,
  1, ... in decoder order, each matched and supervised on its own.
  """
  if num_matcher_points is None:
    num_matcher_points = 12544 if num_points is None else num_points
  weights = (class_weight if cost_class is None else cost_class, mask_weight,
             dice_weight)
  num_masks = point_losses.num_masks_normalizer(
      sum(len(labels) for labels in target_labels))

  def layer(l):
    with torch.no_grad():
      indices = _match(class_logits[l].detach(), mask_logits[l].detach(),
                       target_labels, target_masks,
                       num_points=num_matcher_points, weights=weights,
                       rand=rand)
    if num_points is None:
      loss_mask, loss_dice = _full_mask_losses(mask_logits[l], target_masks,
                                               indices, num_masks)
    else:
      loss_mask, loss_dice = _loss_masks(
          mask_logits[l], target_masks, indices, num_masks,
          num_points=num_points, oversample_ratio=oversample_ratio,
          importance_sample_ratio=importance_sample_ratio, rand=rand)
    loss_ce = _loss_labels(class_logits[l], target_labels, indices,
                           no_object_weight)
    return {"loss_mask": loss_mask, "loss_dice": loss_dice,
            "loss_cross_entropy": loss_ce}

  num_layers = class_logits.shape[0]
  losses = layer(num_layers - 1)
  for i in range(num_layers - 1):
    losses.update({f"{k}_{i}": v for k, v in layer(i).items()})
  # get_loss_dict: every key containing a weight's name is scaled by it.
  weight_dict = {"loss_cross_entropy": class_weight, "loss_mask": mask_weight,
                 "loss_dice": dice_weight}
  weighted = dict(losses)
  for name, weight in weight_dict.items():
    for key in weighted:
      if name in key:
        weighted[key] = weighted[key] * weight
  return sum(weighted.values()), losses
