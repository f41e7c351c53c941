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

# The Mask2Former criterion (matching, class and mask losses, every layer).
from jaxmask._src.criterion import Mask2FormerLoss
from jaxmask._src.criterion import MaskMatching
from jaxmask._src.criterion import hungarian_match
from jaxmask._src.criterion import mask2former_loss
from jaxmask._src.criterion import mask_matching_cost

# Adaptive thresholds (FixMatch, FlexMatch, FreeMatch, SoftMatch; USB)
from jaxmask._src.thresholds import ConfidenceThreshold
from jaxmask._src.thresholds import FlexMatchState
from jaxmask._src.thresholds import FreeMatchState
from jaxmask._src.thresholds import SoftMatchState
from jaxmask._src.thresholds import ThresholdOutput
from jaxmask._src.thresholds import fixmatch
from jaxmask._src.thresholds import flexmatch
from jaxmask._src.thresholds import freematch
from jaxmask._src.thresholds import freematch_fairness_loss
from jaxmask._src.thresholds import percentile_threshold
from jaxmask._src.thresholds import softmatch

__version__ = "0.2.0"

__all__ = (
    "ConfidenceMasks",
    "ConfidenceThreshold",
    "FlexMatchState",
    "FreeMatchState",
    "MLKDLoss",
    "Mask2FormerLoss",
    "MaskMatching",
    "PointMaskLosses",
    "SoftMatchState",
    "ThresholdOutput",
    "batch_correlation_loss",
    "calculate_uncertainty",
    "class_correlation_loss",
    "confidence_masks",
    "dice_loss",
    "fixmatch",
    "flexmatch",
    "freematch",
    "freematch_fairness_loss",
    "hungarian_match",
    "kd_loss",
    "mask2former_loss",
    "mask_matching_cost",
    "mlkd_loss",
    "num_masks_normalizer",
    "pairwise_dice_loss",
    "pairwise_sigmoid_ce_loss",
    "percentile",
    "percentile_mask",
    "percentile_threshold",
    "point_mask_losses",
    "point_sample",
    "point_sample_single",
    "sample_points_using_uncertainty",
    "select_uncertain_points",
    "sigmoid_ce_loss",
    "softmatch",
    "top_k_indices",
    "uncertain_point_coords_on_grid",
)
