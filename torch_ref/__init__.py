"""PyTorch reference implementations, mirroring jaxmask name for name."""

from torch_ref.point_losses import dice_loss
from torch_ref.point_losses import num_masks_normalizer
from torch_ref.point_losses import pairwise_dice_loss
from torch_ref.point_losses import pairwise_sigmoid_ce_loss
from torch_ref.point_losses import point_mask_losses
from torch_ref.point_losses import sigmoid_ce_loss
from torch_ref.sampling import calculate_uncertainty
from torch_ref.sampling import point_sample
from torch_ref.sampling import point_sample_single
from torch_ref.sampling import sample_points_using_uncertainty
from torch_ref.sampling import select_uncertain_points
from torch_ref.sampling import uncertain_point_coords_on_grid

__all__ = (
    "calculate_uncertainty",
    "dice_loss",
    "num_masks_normalizer",
    "pairwise_dice_loss",
    "pairwise_sigmoid_ce_loss",
    "point_mask_losses",
    "point_sample",
    "point_sample_single",
    "sample_points_using_uncertainty",
    "select_uncertain_points",
    "sigmoid_ce_loss",
    "uncertain_point_coords_on_grid",
)
