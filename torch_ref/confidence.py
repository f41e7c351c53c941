"""Confidence masks, transcribed from MLKD's released code.

`forward_train` in `mdistiller/distillers/KD_ours.py` (Jin et al., CVPR 2023).
"""

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F


class ConfidenceMasks(NamedTuple):
  probs: torch.Tensor
  confidence: torch.Tensor
  pseudo_labels: torch.Tensor
  threshold: float
  mask: torch.Tensor
  class_confidence: torch.Tensor
  class_threshold: float
  class_mask: torch.Tensor


def confidence_masks(logits, q=50.0, keep="low"):
  """MLKD's masks; `q` and `keep="high"` (`ge` for `le`) are jaxmask's options."""
  pred_teacher_weak = F.softmax(logits.detach(), dim=1)
  confidence, pseudo_labels = pred_teacher_weak.max(dim=1)
  confidence = confidence.detach()
  conf_thresh = np.percentile(confidence.cpu().numpy().flatten(), q)
  class_confidence = torch.sum(pred_teacher_weak, dim=0)
  class_confidence = class_confidence.detach()
  class_confidence_thresh = np.percentile(
      class_confidence.cpu().numpy().flatten(), q)
  if keep == "low":
    mask = confidence.le(conf_thresh).bool()
    class_conf_mask = class_confidence.le(class_confidence_thresh).bool()
  else:
    mask = confidence.ge(conf_thresh).bool()
    class_conf_mask = class_confidence.ge(class_confidence_thresh).bool()
  return ConfidenceMasks(pred_teacher_weak, confidence, pseudo_labels,
                         conf_thresh, mask, class_confidence,
                         class_confidence_thresh, class_conf_mask)
