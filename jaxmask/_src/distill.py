"""MLKD's distillation losses: temperature-scaled KD, class and batch correlation.

Reference: Jin, Wang, Lin, "Multi-Level Logit Distillation", CVPR 2023, and its
released code (`mdistiller/distillers/KD_ours.py`).
"""

from typing import Literal, NamedTuple, cast

import jax
import jax.numpy as jnp
from jax import lax

from jaxmask._src import checks
from jaxmask._src.confidence import confidence_masks

Mode = Literal["faithful", "masked"]
_MODES = ("faithful", "masked")
_EXTRA_TEMPERATURES = (3.0, 5.0, 2.0, 6.0)
_HIGHEST = checks.HIGHEST


def _check_pair(student_logits, teacher_logits,
                names=("student_logits", "teacher_logits")):
  s, t = checks.array(student_logits, names[0]), checks.array(
      teacher_logits, names[1])
  for name, x in zip(names, (s, t)):
    checks.rank(x, name, "[batch, num_classes]")
    checks.floating(x, name)
    if 0 in x.shape:  # a mean over no samples or classes has no value
      raise ValueError(
          f"{name} must have shape [batch, num_classes] with batch >= 1 and"
          f" num_classes >= 1, got {x.shape}.")
  if s.shape != t.shape:
    raise ValueError(f"{names[0]} and {names[1]} must have the same shape,"
                     f" got {s.shape} and {t.shape}.")
  dtype = jnp.promote_types(jnp.result_type(s, t), jnp.float32)
  return s.astype(dtype), t.astype(dtype)


def _check_temperature(temperature):
  """`(T, ok)`: a concrete T must be finite and > 0; a traced one NaNs."""
  return checks.positive(temperature, "temperature")


def _kl_terms(p_t: jax.Array, log_p_t: jax.Array,
              log_p_s: jax.Array) -> jax.Array:
  """`p_t (log p_t - log p_s)`, 0 where `p_t` is 0 (also for `log p_s = -inf`).

  Written with a safe inner `where`, so that a class both logits mask out
  with -inf has neither a NaN value nor a NaN gradient.
  """
  present = p_t != 0  # NaN (a NaN or +inf teacher logit) stays NaN
  diff = jnp.where(present, log_p_t - log_p_s, 0)
  return jnp.where(present, p_t * diff, 0)


def _check_mask(name, mask, size):
  if mask is None:
    return None
  mask = checks.array(mask, name)
  if mask.shape != (size,):
    raise ValueError(f"{name} must have shape [{size}], got {mask.shape}.")
  return mask.astype(jnp.float32)


def kd_loss(
    student_logits: jax.typing.ArrayLike,
    teacher_logits: jax.typing.ArrayLike,
    *,
    temperature: jax.typing.ArrayLike,
    mask: jax.typing.ArrayLike | None = None,
) -> jax.Array:
  """Temperature-scaled knowledge-distillation loss (Hinton et al., 2015).

  Per sample, `l_i = T² · Σ_c KL(softmax(t_i/T) ‖ softmax(s_i/T))_c`; the loss
  is `mean_i l_i`, or with a `mask`, `mean_i(mask_i · l_i)` (masked samples
  count in the denominator, as in MLKD's per-sample variant).

  Equivalent to MLKD's `kd_loss(logits_student, logits_teacher, T)` (and with
  `reduce=False`, `(kd_loss(...) * mask).mean()`).

  Args:
    student_logits: `[batch, num_classes]`.
    teacher_logits: `[batch, num_classes]`; gradients flow into both inputs.
    temperature: `T`, a finite number > 0 (checked when concrete; a traced
      `T` that is not gives a NaN loss).
    mask: optional `[batch]` bool or float sample weights.

  Returns:
    A scalar (float32, or float64 for float64 inputs). A class whose
    teacher probability is 0 (e.g. both logits -inf, a masked-out class)
    adds 0, with a finite gradient; a NaN or +inf teacher logit gives NaN.
    Where `logits / T` or `T²` overflows float32 (logits near ±3e38, T near
    1e19), the loss is NaN, as in PyTorch.

  Example:
    >>> teacher = jnp.array([[0.0, 2.0], [1.0, 1.0]])
    >>> student = jnp.zeros((2, 2))  # uniform predictions
    >>> loss = jaxmask.kd_loss(student, teacher, temperature=1.0)
    >>> round(float(loss), 4)  # mean of log 2 - entropy(softmax([0, 2])) and 0
    0.1639
  """
  s, t = _check_pair(student_logits, teacher_logits)
  temperature, ok = _check_temperature(temperature)
  mask = _check_mask("mask", mask, s.shape[0])
  log_p_s = jax.nn.log_softmax(s / temperature, axis=-1)
  log_p_t = jax.nn.log_softmax(t / temperature, axis=-1)
  kl = _kl_terms(jnp.exp(log_p_t), log_p_t, log_p_s)
  per_sample = jnp.sum(kl, axis=-1) * temperature**2
  if mask is not None:
    per_sample = per_sample * mask
  return checks.nan_unless(ok, jnp.mean(per_sample))


def _correlation_loss(s, t, temperature, mask, gram):
  p_s = jax.nn.softmax(s / temperature, axis=-1)
  p_t = jax.nn.softmax(t / temperature, axis=-1)
  sq = (gram(p_t) - gram(p_s)) ** 2
  if mask is not None:
    sq = sq * mask[None, :]  # the matrices are symmetric: columns or rows alike
  return jnp.sum(sq) / sq.shape[0]


def class_correlation_loss(
    student_logits: jax.typing.ArrayLike,
    teacher_logits: jax.typing.ArrayLike,
    *,
    temperature: jax.typing.ArrayLike,
    class_mask: jax.typing.ArrayLike | None = None,
) -> jax.Array:
  """Class-correlation consistency loss (MLKD's `cc_loss`).

  With `P = softmax(logits / T)` (`[batch, C]`) and the class-correlation
  matrix `G = Pᵀ P` (`[C, C]`): `‖G_t − G_s‖²_F / C`. With a `class_mask` `m`,
  the unselected classes' entries are zeroed first:
  `Σ_{jk} (G_t − G_s)²_{jk} · m_k / C`.

  Args:
    student_logits: `[batch, C]`.
    teacher_logits: `[batch, C]`.
    temperature: `T`, a finite number > 0 (checked when concrete; a traced
      `T` that is not gives a NaN loss).
    class_mask: optional `[C]` bool or float class weights.

  Returns:
    A scalar.

  Example:
    >>> teacher = jnp.array([[9.0, -9.0], [-9.0, 9.0]])  # P_t ~ identity
    >>> student = jnp.zeros((2, 2))  # P_s = 0.5 everywhere, so G_s = 0.5 too
    >>> loss = jaxmask.class_correlation_loss(student, teacher, temperature=1.0)
    >>> round(float(loss), 4)  # sum((I - 0.5)**2) / C = 1 / 2
    0.5
  """
  s, t = _check_pair(student_logits, teacher_logits)
  temperature, ok = _check_temperature(temperature)
  class_mask = _check_mask("class_mask", class_mask, s.shape[1])
  gram = lambda p: jnp.matmul(p.T, p, precision=_HIGHEST)
  return checks.nan_unless(
      ok, _correlation_loss(s, t, temperature, class_mask, gram))


def batch_correlation_loss(
    student_logits: jax.typing.ArrayLike,
    teacher_logits: jax.typing.ArrayLike,
    *,
    temperature: jax.typing.ArrayLike,
    mask: jax.typing.ArrayLike | None = None,
) -> jax.Array:
  """Batch-correlation consistency loss (MLKD's `bc_loss`).

  With `P = softmax(logits / T)` and the batch-correlation matrix `G = P Pᵀ`
  (`[batch, batch]`): `‖G_t − G_s‖²_F / batch`. With a `mask` `m`, the
  unselected samples' entries are zeroed first:
  `Σ_{ij} (G_t − G_s)²_{ij} · m_j / batch`.

  Args:
    student_logits: `[batch, C]`.
    teacher_logits: `[batch, C]`.
    temperature: `T`, a finite number > 0 (checked when concrete; a traced
      `T` that is not gives a NaN loss).
    mask: optional `[batch]` bool or float sample weights.

  Returns:
    A scalar.

  Example:
    >>> teacher = jnp.array([[9.0, -9.0], [-9.0, 9.0]])  # P_t ~ identity
    >>> student = jnp.zeros((2, 2))  # P_s = 0.5 everywhere, so G_s = 0.5 too
    >>> loss = jaxmask.batch_correlation_loss(student, teacher, temperature=1.0)
    >>> round(float(loss), 4)  # sum((I - 0.5)**2) / batch = 1 / 2
    0.5
  """
  s, t = _check_pair(student_logits, teacher_logits)
  temperature, ok = _check_temperature(temperature)
  mask = _check_mask("mask", mask, s.shape[0])
  gram = lambda p: jnp.matmul(p, p.T, precision=_HIGHEST)
  return checks.nan_unless(
      ok, _correlation_loss(s, t, temperature, mask, gram))


class MLKDLoss(NamedTuple):
  """The three MLKD distillation terms (scalars) and the masks used."""

  kd: jax.Array  # scalar: KD terms summed over temperatures and views (see mlkd_loss)
  cc: jax.Array  # scalar: class-correlation terms summed over temperatures
  bc: jax.Array  # scalar: batch-correlation terms summed over temperatures
  mask: jax.Array  # [batch] bool, from the teacher's weak-view logits
  class_mask: jax.Array  # [num_classes] bool

  @property
  def total(self) -> jax.Array:
    return self.kd + self.cc + self.bc


def mlkd_loss(
    student_weak: jax.typing.ArrayLike,
    student_strong: jax.typing.ArrayLike,
    teacher_weak: jax.typing.ArrayLike,
    teacher_strong: jax.typing.ArrayLike,
    *,
    temperature: float = 4.0,
    mode: Mode = "faithful",
    q: jax.typing.ArrayLike = 50.0,
    axis_name=None,
) -> MLKDLoss:
  """MLKD's multi-temperature distillation objective on weak/strong views.

  The masks are `confidence_masks(teacher_weak, q=q, keep="low")` (the
  low-confidence half of the samples and classes, as released). With the
  temperatures `Ts = (temperature, 3, 5, 2, 6)`, `w`/`s` the weak/strong views
  and `m`, `c` the sample and class masks (as floats):

  `mode="faithful"` computes what the released code computes, where every loss
  is a scalar before it is masked, so a mask only rescales by its mean::

    kd = Σ_T kd_loss(s_w, t_w, T)·mean(m)
         + Σ_{T in 4,3,5} kd_loss(s_s, t_s, T) + Σ_{T in 2,6} kd_loss(s_w, t_w, T)
    cc = Σ_T class_correlation_loss(s_w, t_w, T)·mean(c)
    bc = Σ_T batch_correlation_loss(s_w, t_w, T)·mean(m)

  (the released strong-view KD sum uses the weak views at T = 2 and 6; the
  strong-view cc and bc terms are computed there but never returned.)

  `mode="masked"` (an opt-in, not in the paper's code) zeroes the unselected
  samples' KD terms, the unselected samples' entries of the batch matrix and
  the unselected classes' entries of the class matrix before each loss's own
  reduction (so both modes have the same scale), and uses the strong views at
  every temperature::

    kd = Σ_T kd_loss(s_w, t_w, T, mask=m) + Σ_T kd_loss(s_s, t_s, T)
    cc = Σ_T class_correlation_loss(s_w, t_w, T, class_mask=c)
    bc = Σ_T batch_correlation_loss(s_w, t_w, T, mask=m)

  The supervised cross-entropy term and MLKD's loss weight are the caller's.
  Teacher logits get `stop_gradient`; gradients flow into the student logits.

  Args:
    student_weak: `[batch, num_classes]` student logits on the weak view.
    student_strong: `[batch, num_classes]` student logits on the strong view.
    teacher_weak: `[batch, num_classes]` teacher logits on the weak view.
    teacher_strong: `[batch, num_classes]` teacher logits on the strong view.
    temperature: the first temperature (MLKD uses 4 on CIFAR-100), `> 0`.
    mode: `"faithful"` or `"masked"`, see above.
    q: percentile for the masks (50 in MLKD).
    axis_name: mapped batch axis for global mask thresholds (see
      `confidence_masks`); the losses themselves are local to each device.

  Returns:
    An `MLKDLoss`; `MLKDLoss.total` is `kd + cc + bc`.

  Example:
    >>> teacher = jnp.array([[2.0, 0.0], [0.0, 0.0], [0.0, 3.0]])
    >>> student = jnp.zeros((3, 2))
    >>> loss = jaxmask.mlkd_loss(student, student, teacher, teacher)
    >>> loss.mask, loss.class_mask  # the low-confidence samples and classes
    (Array([ True,  True, False], dtype=bool), Array([ True, False], dtype=bool))
    >>> round(float(loss.total), 3)
    4.226
  """
  checks.one_of(mode, "mode", _MODES)
  _check_temperature(temperature)  # each loss NaNs a traced T <= 0 itself
  s_w, t_w = _check_pair(student_weak, teacher_weak,
                         ("student_weak", "teacher_weak"))
  s_s, t_s = _check_pair(student_strong, teacher_strong,
                         ("student_strong", "teacher_strong"))
  if s_w.shape != s_s.shape:
    raise ValueError("student_weak and student_strong must have the same"
                     f" shape, got {s_w.shape} and {s_s.shape}.")
  t_w, t_s = lax.stop_gradient(t_w), lax.stop_gradient(t_s)
  masks = confidence_masks(t_w, q=q, keep="low", axis_name=axis_name)
  m = masks.mask.astype(s_w.dtype)
  c = masks.class_mask.astype(s_w.dtype)
  temps = (temperature,) + _EXTRA_TEMPERATURES

  if mode == "faithful":
    kd = sum(kd_loss(s_w, t_w, temperature=T) for T in temps) * jnp.mean(m)
    kd += sum(kd_loss(s_s, t_s, temperature=T) for T in temps[:3])
    kd += sum(kd_loss(s_w, t_w, temperature=T) for T in temps[3:])
    cc = sum(class_correlation_loss(s_w, t_w, temperature=T)
             for T in temps) * jnp.mean(c)
    bc = sum(batch_correlation_loss(s_w, t_w, temperature=T)
             for T in temps) * jnp.mean(m)
  else:
    kd = sum(kd_loss(s_w, t_w, temperature=T, mask=m) for T in temps)
    kd += sum(kd_loss(s_s, t_s, temperature=T) for T in temps)
    cc = sum(class_correlation_loss(s_w, t_w, temperature=T, class_mask=c)
             for T in temps)
    bc = sum(batch_correlation_loss(s_w, t_w, temperature=T, mask=m)
             for T in temps)
  # cast: sum() of arrays is typed `Array | Literal[0]` (0 for no terms).
  return MLKDLoss(cast(jax.Array, kd), cast(jax.Array, cc), cast(jax.Array, bc),
                  masks.mask, masks.class_mask)
