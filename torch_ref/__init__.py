"""torch_ref: the PyTorch oracle for jaxmask, transcribed from the original code.

Name for name it mirrors `jaxmask`; it never imports jaxmask. It needs torch and
scipy, the `torch` extra: `pip install "jaxmask[torch]"`.
"""

# Every torch_ref module is imported through this package, so this one check
# covers `import torch_ref.sampling` too.
try:
  import scipy.optimize  # noqa: F401 (the criterion's matching)
  import torch  # noqa: F401
except ImportError as e:
  raise ImportError(
      f"torch_ref (the PyTorch oracle) needs torch and scipy ({e}); install them"
      ' with `pip install "jaxmask[torch]"`.') from e

from torch_ref.confidence import confidence_masks
from torch_ref.criterion import hungarian_match
from torch_ref.criterion import mask2former_loss
from torch_ref.criterion import mask_matching_cost
from torch_ref.distill import batch_correlation_loss
from torch_ref.distill import class_correlation_loss
from torch_ref.distill import kd_loss
from torch_ref.distill import mlkd_loss
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
from torch_ref.thresholds import fixmatch
from torch_ref.thresholds import flexmatch
from torch_ref.thresholds import freematch
from torch_ref.thresholds import freematch_fairness_loss
from torch_ref.thresholds import percentile_threshold
from torch_ref.thresholds import softmatch

__all__ = (
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
    "percentile_threshold",
    "point_mask_losses",
    "point_sample",
    "point_sample_single",
    "sample_points_using_uncertainty",
    "select_uncertain_points",
    "sigmoid_ce_loss",
    "softmatch",
    "uncertain_point_coords_on_grid",
)
