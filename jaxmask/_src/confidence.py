"""Batch-percentile confidence masks (MLKD), from a teacher's logits."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxmask._src import checks
from jaxmask._src import percentile as _pct


class ConfidenceMasks(NamedTuple):
  """What `confidence_masks` returns; shapes for logits `[batch, num_classes]`."""

  probs: jax.Array  # [batch, num_classes] softmax of the logits
  confidence: jax.Array  # [batch] max probability per sample
  pseudo_labels: jax.Array  # [batch] int32 argmax per sample
  threshold: jax.Array  # [] q-th percentile of confidence
  mask: jax.Array  # [batch] bool, the selected samples
  class_confidence: jax.Array  # [num_classes] probs summed over the batch
  class_threshold: jax.Array  # [] q-th percentile of class_confidence
  class_mask: jax.Array  # [num_classes] bool, the selected classes


def _compare(values: jax.Array, threshold: jax.Array, keep: str) -> jax.Array:
  """`values <= threshold` (keep "low") or `values >= threshold` ("high")."""
  return values <= threshold if keep == "low" else values >= threshold


def percentile_mask(
    values: jax.typing.ArrayLike,
    *,
    q: jax.typing.ArrayLike = 50.0,
    keep: checks.Keep = "low",
    axis_name=None,
) -> tuple[jax.Array, jax.Array]:
  """Selects the scores at or below (or above) their q-th percentile.

  Equivalent to `values <= np.percentile(values, q)` (`keep="low"`) or
  `values >= np.percentile(values, q)` (`keep="high"`), computed on device and
  bit-for-bit NumPy's for a Python-number `q` (see `percentile`). Ties at the
  threshold are kept. Any NaN in `values` makes the threshold NaN and the mask
  all False, as with NumPy. No gradient flows through the outputs.

  Args:
    values: `[n]` floating scores, `n >= 1`. Half precision is upcast to
      float32.
    q: percentile in [0, 100]; a Python number, or a scalar that may be traced
      (then it matches `np.percentile(values, np.float32(q))`).
    keep: `"low"` selects `values <= threshold`, `"high"` `values >= threshold`.
    axis_name: inside `shard_map`/`pmap`, the mapped axis: the threshold is then
      the percentile of the scores of all devices, gathered.

  Returns:
    `(mask, threshold)`: `[n]` bool and a scalar (float32 or wider).

  Example:
    >>> mask, thr = jaxmask.percentile_mask(jnp.array([0.1, 0.9, 0.4]))
    >>> mask  # thr == 0.4
    Array([ True, False,  True], dtype=bool)
  """
  values = lax.stop_gradient(_pct.check_values(values))
  checks.percentile_q(q)
  checks.one_of(keep, "keep", checks.KEEP)
  threshold = _pct.percentile(_pct.gather_global(values, axis_name), q)
  threshold = lax.stop_gradient(threshold)  # q may be a traced, differentiable value
  return _compare(values, threshold, keep), threshold


def confidence_masks(
    logits: jax.typing.ArrayLike,
    *,
    q: jax.typing.ArrayLike = 50.0,
    keep: checks.Keep = "low",
    axis_name=None,
) -> ConfidenceMasks:
  """Sample and class confidence masks from a teacher's logits (MLKD).

  Equivalent to the PyTorch original (Jin et al., "Multi-Level Logit
  Distillation", CVPR 2023, released code)::

    probs = softmax(logits, dim=1)
    confidence, pseudo_labels = probs.max(dim=1)
    mask = confidence <= np.percentile(confidence, 50)
    class_confidence = probs.sum(dim=0)
    class_mask = class_confidence <= np.percentile(class_confidence, 50)

  but on device, jit/vmap friendly, with `q` and the selection direction as
  options. `keep="low"` (the default, as in MLKD) keeps the low-confidence
  samples and classes; `keep="high"` keeps the confident ones, as pseudo-label
  filters do. Thresholds are NumPy-exact on jaxmask's own confidences (see
  `percentile_mask`) and the masks are exactly `<=`/`>=` them; against
  PyTorch, which sums the probabilities in another order, a mask may differ
  only where a value ties its threshold within a few float32 ulps.

  All outputs carry no gradient. Half-precision logits are upcast to float32
  first. A row with a NaN or +inf logit has NaN probabilities; its NaN
  confidence makes both thresholds NaN, so `mask` and `class_mask` are all
  False (NumPy's percentile propagates NaN the same way).

  Args:
    logits: `[batch, num_classes]` floating logits.
    q: percentile in [0, 100] for both thresholds (Python number or scalar,
      possibly traced).
    keep: `"low"` (`<=` the threshold) or `"high"` (`>=` the threshold).
    axis_name: inside `shard_map`/`pmap`, the mapped batch axis: the sample
      threshold is the percentile of the global batch and class confidence is
      summed over all devices, so the result equals the single-device result
      on the concatenated batch.

  Returns:
    A `ConfidenceMasks` (shapes in its field comments).

  Example:
    >>> logits = jnp.array([[2.0, 0.0], [0.0, 0.0], [0.0, 3.0]])
    >>> out = jaxmask.confidence_masks(logits)  # q=50, keep="low"
    >>> out.pseudo_labels, out.mask  # confidence 0.88, 0.5, 0.95; median 0.88
    (Array([0, 0, 1], dtype=int32), Array([ True,  True, False], dtype=bool))
    >>> jax.vmap(jaxmask.confidence_masks)(logits[None]).mask.shape  # batched
    (1, 3)
  """
  logits = checks.array(logits, "logits")
  checks.rank(logits, "logits", "[batch, num_classes]")
  if logits.shape[0] < 1 or logits.shape[1] < 1:
    raise ValueError("logits must have shape [batch, num_classes] with batch"
                     f" >= 1 and num_classes >= 1, got {logits.shape}.")
  checks.floating(logits, "logits")
  checks.percentile_q(q)
  checks.one_of(keep, "keep", checks.KEEP)
  logits = lax.stop_gradient(checks.upcast(logits))

  probs = jax.nn.softmax(logits, axis=-1)
  confidence = jnp.max(probs, axis=-1)
  pseudo_labels = jnp.argmax(probs, axis=-1).astype(jnp.int32)
  mask, threshold = percentile_mask(
      confidence, q=q, keep=keep, axis_name=axis_name)

  class_confidence = jnp.sum(probs, axis=0)
  if axis_name is not None:
    class_confidence = lax.psum(class_confidence, axis_name)
  class_mask, class_threshold = percentile_mask(class_confidence, q=q, keep=keep)
  return ConfidenceMasks(probs, confidence, pseudo_labels, threshold, mask,
                         class_confidence, class_threshold, class_mask)
