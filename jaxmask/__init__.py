"""jaxmask: confidence masks and uncertainty-based point sampling in JAX."""

from jaxmask._src.confidence import ConfidenceMasks
from jaxmask._src.confidence import confidence_masks
from jaxmask._src.confidence import percentile_mask
from jaxmask._src.distill import MLKDLoss
from jaxmask._src.distill import batch_correlation_loss
from jaxmask._src.distill import class_correlation_loss
from jaxmask._src.distill import kd_loss
from jaxmask._src.distill import mlkd_loss
from jaxmask._src.percentile import percentile
from jaxmask._src.topk import top_k_indices

__version__ = "0.1.0"

__all__ = (
    "ConfidenceMasks",
    "MLKDLoss",
    "batch_correlation_loss",
    "class_correlation_loss",
    "confidence_masks",
    "kd_loss",
    "mlkd_loss",
    "percentile",
    "percentile_mask",
    "top_k_indices",
)
