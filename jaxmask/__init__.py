"""jaxmask: confidence masks and uncertainty-based point sampling in JAX."""

from jaxmask._src.point_losses import dice_loss
from jaxmask._src.point_losses import num_masks_normalizer
from jaxmask._src.point_losses import pairwise_dice_loss
from jaxmask._src.point_losses import pairwise_sigmoid_ce_loss
from jaxmask._src.point_losses import point_mask_losses
from jaxmask._src.point_losses import sigmoid_ce_loss
from jaxmask._src.sampling import calculate_uncertainty
from jaxmask._src.sampling import point_sample
from jaxmask._src.sampling import point_sample_single
from jaxmask._src.sampling import sample_points_using_uncertainty
from jaxmask._src.sampling import select_uncertain_points
from jaxmask._src.sampling import uncertain_point_coords_on_grid

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
