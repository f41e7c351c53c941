"""torch_ref: the PyTorch oracle for jaxmask, transcribed from the original code.

Name for name it mirrors `jaxmask`; it never imports jaxmask.
"""

from torch_ref.confidence import confidence_masks
from torch_ref.distill import batch_correlation_loss
from torch_ref.distill import class_correlation_loss
from torch_ref.distill import kd_loss
from torch_ref.distill import mlkd_loss

__all__ = (
    "batch_correlation_loss",
    "class_correlation_loss",
    "confidence_masks",
    "kd_loss",
    "mlkd_loss",
)
