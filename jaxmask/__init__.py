"""jaxmask: confidence masks and uncertainty-based point sampling in JAX."""

# Confidence masks (MLKD, pseudo-label filters).
from jaxmask._src.confidence import ConfidenceMasks
from jaxmask._src.confidence import confidence_masks
from jaxmask._src.confidence import percentile_mask
from jaxmask._src.percentile import percentile

# Distillation losses (MLKD).
from jaxmask._src.distill import MLKDLoss
from jaxmask._src.distill import batch_correlation_loss
from jaxmask._src.distill import class_correlation_loss
from jaxmask._src.distill import kd_loss
from jaxmask._src.distill import mlkd_loss

# Point sampling (Mask2Former, PointRend).
from jaxmask._src.sampling import calculate_uncertainty
from jaxmask._src.sampling import point_sample
from jaxmask._src.sampling import point_sample_single
from jaxmask._src.sampling import sample_points_using_uncertainty
from jaxmask._src.sampling import select_uncertain_points
from jaxmask._src.sampling import uncertain_point_coords_on_grid
from jaxmask._src.topk import top_k_indices

# Point losses and matcher costs (Mask2Former).
from jaxmask._src.point_losses import PointMaskLosses
from jaxmask._src.point_losses import dice_loss
from jaxmask._src.point_losses import num_masks_normalizer
from jaxmask._src.point_losses import pairwise_dice_loss
from jaxmask._src.point_losses import pairwise_sigmoid_ce_loss
from jaxmask._src.point_losses import point_mask_losses
from jaxmask._src.point_losses import sigmoid_ce_loss

__version__ = "0.1.0"

__all__ = (
    "ConfidenceMasks",
    "MLKDLoss",
    "PointMaskLosses",
    "batch_correlation_loss",
    "calculate_uncertainty",
    "class_correlation_loss",
    "confidence_masks",
    "dice_loss",
    "kd_loss",
    "mlkd_loss",
    "num_masks_normalizer",
    "pairwise_dice_loss",
    "pairwise_sigmoid_ce_loss",
    "percentile",
    "percentile_mask",
    "point_mask_losses",
    "point_sample",
    "point_sample_single",
    "sample_points_using_uncertainty",
    "select_uncertain_points",
    "sigmoid_ce_loss",
    "top_k_indices",
    "uncertain_point_coords_on_grid",
)
