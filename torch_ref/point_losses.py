"""PyTorch reference for jaxmask's point losses and matcher costs.

Transcribed in meaning from HF transformers' Mask2Former
(`sigmoid_cross_entropy_loss`, `dice_loss`,
`pair_wise_sigmoid_cross_entropy_loss`, `pair_wise_dice_loss`,
`Mask2FormerLoss.loss_masks`) and Mask2Former's criterion (`num_masks`).
"""

import torch
from torch import nn

from torch_ref import sampling


def sigmoid_ce_loss(logits, labels, num_masks):
  criterion = nn.BCEWithLogitsLoss(reduction="none")
  cross_entropy_loss = criterion(logits, labels)
  return cross_entropy_loss.mean(1).sum() / num_masks


def dice_loss(logits, labels, num_masks):
  probs = logits.sigmoid().flatten(1)
  numerator = 2 * (probs * labels).sum(-1)
  denominator = probs.sum(-1) + labels.sum(-1)
  loss = 1 - (numerator + 1) / (denominator + 1)
  return loss.sum() / num_masks


def pairwise_sigmoid_ce_loss(logits, labels):
  height_and_width = logits.shape[1]
  criterion = nn.BCEWithLogitsLoss(reduction="none")
  cross_entropy_loss_pos = criterion(logits, torch.ones_like(logits))
  cross_entropy_loss_neg = criterion(logits, torch.zeros_like(logits))
  loss_pos = torch.matmul(cross_entropy_loss_pos / height_and_width, labels.T)
  loss_neg = torch.matmul(cross_entropy_loss_neg / height_and_width,
                          (1 - labels).T)
  return loss_pos + loss_neg


def pairwise_dice_loss(logits, labels):
  probs = logits.sigmoid().flatten(1)
  numerator = 2 * torch.matmul(probs, labels.T)
  denominator = probs.sum(-1)[:, None] + labels.sum(-1)[None, :]
  return 1 - (numerator + 1) / (denominator + 1)


def point_mask_losses(pred_masks, target_masks, num_masks, *,
                      num_points=12544, oversample_ratio=3.0,
                      importance_sample_ratio=0.75, candidates=None,
                      random_points=None):
  """`Mask2FormerLoss.loss_masks` on matched `[N, H, W]` masks."""
  pred_masks = pred_masks[:, None]
  target_masks = target_masks[:, None]
  with torch.no_grad():
    point_coordinates = sampling.sample_points_using_uncertainty(
        pred_masks, num_points=num_points, oversample_ratio=oversample_ratio,
        importance_sample_ratio=importance_sample_ratio,
        candidates=candidates, random_points=random_points)
    point_labels = sampling.point_sample(target_masks,
                                         point_coordinates).squeeze(1)
  point_logits = sampling.point_sample(pred_masks,
                                       point_coordinates).squeeze(1)
  return (sigmoid_ce_loss(point_logits, point_labels, num_masks),
          dice_loss(point_logits, point_labels, num_masks))


def num_masks_normalizer(num_local_masks):
  """Mask2Former: all_reduce the count, divide by world size, clamp >= 1."""
  num_masks = torch.as_tensor(num_local_masks, dtype=torch.float)
  if torch.distributed.is_available() and torch.distributed.is_initialized():
    torch.distributed.all_reduce(num_masks)
    world_size = torch.distributed.get_world_size()
  else:
    world_size = 1
  return torch.clamp(num_masks / world_size, min=1)
