"""Adaptive confidence thresholds for semi-supervised learning (USB).

FixMatch, FlexMatch, FreeMatch and SoftMatch decide, from the weak view's
class probabilities, which unlabelled samples (and with what weight) enter the
consistency loss `mean(ce(strong_logits, pseudo_labels) * mask)`. In USB
(microsoft/Semi-supervised-learning, `semilearn/algorithms/`) they are hooks
that mutate state on the algorithm object; here each is an optax-style pair of
pure functions, `state = t.init()` and `out, state = t.update(probs, state)`,
whose state is a NamedTuple of arrays: a pytree that survives `jit`, `scan`,
`vmap`, `shard_map` and checkpoints.

Arithmetic follows USB's float32 order of operations. XLA:CPU would turn a
division by a broadcast value into a multiplication by its reciprocal
(PyTorch divides), so the statistics divide element by element (`_divide`).
Reductions (sums, means, variances) still add in XLA's order, not PyTorch's:
the state agrees with USB's to a few float32 ulps per step.
"""

import math
from typing import Any, Callable, Literal, NamedTuple, Protocol

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

from jaxmask._src import checks
from jaxmask._src import confidence as _confidence
from jaxmask._src import percentile as _pct

Mapping = Literal["convex", "linear", "concave"]
_MAPPINGS = ("convex", "linear", "concave")
_LOG2_PLUS_HALF = math.log(2.0) + 0.5  # FlexMatch's concave mapping at acc = 1
_FREEMATCH_QUANTILE = 0.8  # USB's `torch.quantile(max_probs, 0.8)`
_FREEMATCH_CLIP = 0.95  # USB's `torch.clip(time_p, 0.0, 0.95)`
_DIST_ALIGN_EPS = 1e-6  # USB's DistAlignEMAHook: `(p + 1e-6)` on both sides
_FAIRNESS_EPS = 1e-12  # USB's FreeMatch `entropy_loss`: `log(p + 1e-12)`
_COUNT_MAX = 2**31 - 2  # SoftMatchState.count saturates here


class ThresholdOutput(NamedTuple):
  """What every threshold's `update` returns, for probs `[batch, num_classes]`.

  Use it as USB does: `unsup_loss = mean(ce(strong_logits, pseudo_labels,
  reduction="none") * mask)`, the mean taken over the whole batch. Neither
  field carries a gradient.
  """

  mask: jax.Array  # [batch] float32 in [0, 1]: 0/1, or SoftMatch's weights
  pseudo_labels: jax.Array  # [batch] int32: argmax of the (unaligned) probs


class ThresholdUpdate(Protocol):
  """The signature of `ConfidenceThreshold.update`."""

  def __call__(self, probs: jax.typing.ArrayLike, state: Any, *,
               indices: jax.typing.ArrayLike | None = None,
               axis_name: Any = None) -> tuple["ThresholdOutput", Any]:
    ...


class ConfidenceThreshold(NamedTuple):
  """An adaptive threshold as a pair of pure functions (like `optax`'s).

  - `init() -> state`: the initial state, a NamedTuple of arrays.
  - `update(probs, state, *, indices=None, axis_name=None) -> (out, state)`,
    in optax's order (input first, then state, as `tx.update(grads,
    state)`): `probs [batch, num_classes]` are the weak view's class
    probabilities;
    `indices [batch]` the unlabelled samples' dataset indices (FlexMatch
    needs them; the others check their shape and ignore them); `axis_name`,
    inside `shard_map`/`pmap`, the mapped batch axis, over which every
    statistic is that of the global batch. `out` is a `ThresholdOutput`.

  The state may hold NumPy arrays (a checkpoint restored by `np.load` or
  orbax); a field of another shape is a `ValueError`, of another dtype a
  `TypeError`, naming the field. Every `init()` returns distinct buffers,
  so the state can be donated (`jax.jit(update, donate_argnums=1)`).
  """

  init: Callable[[], Any]  # () -> state: the initial state, a NamedTuple of arrays
  update: ThresholdUpdate  # (probs, state, indices=..., axis_name=...) -> (out, state)


class EmptyState(NamedTuple):
  """The state of a stateless threshold (FixMatch, batch percentile)."""


class FlexMatchState(NamedTuple):
  """FlexMatch's state (USB's `FlexMatchThresholdingHook`)."""

  selected_label: jax.Array  # [num_unlabelled] int32: last confident label, -1 if none
  classwise_acc: jax.Array  # [num_classes] float32: the learning effect per class


class FreeMatchState(NamedTuple):
  """FreeMatch's state (USB's `FreeMatchThresholingHook`)."""

  time_p: jax.Array  # [] float32: EMA of the batch's mean (or 0.8-quantile) confidence
  p_model: jax.Array  # [num_classes] float32: EMA of the batch-mean probabilities
  label_hist: jax.Array  # [num_classes] float32: EMA of the pseudo-label histogram


class SoftMatchState(NamedTuple):
  """SoftMatch's state (USB's `DistAlignEMAHook` and `SoftMatchWeightingHook`)."""

  # [] int32: updates so far (0: `p_model` not yet set). The field shadows
  # tuple.count, which mypy reports; the name is public API.
  count: jax.Array  # type: ignore[assignment]
  p_model: jax.Array  # [num_classes] float32: EMA of the batch-mean probabilities
  mu: jax.Array  # [] float32: EMA of the mean confidence (of aligned probs)
  var: jax.Array  # [] float32: EMA of its unbiased variance


# Every field's dtype, as `init()` makes it (and `update` keeps it).
_STATE_DTYPES = {
    FlexMatchState: {"selected_label": jnp.int32, "classwise_acc": jnp.float32},
    FreeMatchState: dict.fromkeys(FreeMatchState._fields, jnp.float32),
    SoftMatchState: {"count": jnp.int32, "p_model": jnp.float32,
                     "mu": jnp.float32, "var": jnp.float32},
}


# ---------------------------------------------------------------------------
# Argument checks.
# ---------------------------------------------------------------------------


def _python_bool(value, name: str) -> bool:
  if not isinstance(value, (bool, np.bool_)):
    raise TypeError(f"{name} must be a Python bool, got {value!r}.")
  return bool(value)


def _p_cutoff(p_cutoff) -> float:
  p_cutoff = checks.python_number(p_cutoff, "p_cutoff", 0.0, 1.0)
  if p_cutoff == 0.0:
    raise ValueError("p_cutoff must be a finite number in (0, 1], got 0.")
  return p_cutoff


def _checked_probs(probs, num_classes: int | None) -> jax.Array:
  """`probs` as a gradient-free `[batch, num_classes]` float32 (or wider) array."""
  probs = checks.array(probs, "probs")
  checks.rank(probs, "probs", "[batch, num_classes]")
  checks.floating(probs, "probs")
  if probs.shape[0] < 1 or probs.shape[1] < 1:
    raise ValueError("probs must have shape [batch, num_classes] with batch"
                     f" >= 1 and num_classes >= 1, got {probs.shape}.")
  if num_classes is not None and probs.shape[1] != num_classes:
    raise ValueError(f"probs must have num_classes = {num_classes} columns,"
                     f" got shape {probs.shape}.")
  return lax.stop_gradient(checks.upcast(probs))


def _checked_indices(indices, batch: int, num_unlabelled: int | None = None):
  """`indices` as a `[batch]` int32 array (None stays None)."""
  if indices is None:
    return None
  value = checks.concrete(indices)  # before int64 values wrap to int32
  indices = checks.array(indices, "indices")
  checks.rank(indices, "indices", "[batch]")
  if not jnp.issubdtype(indices.dtype, jnp.integer):
    raise TypeError(f"indices must have an integer dtype, got {indices.dtype}.")
  if indices.shape[0] != batch:
    raise ValueError(f"indices and probs must have the same batch size, got"
                     f" {indices.shape} and batch {batch}.")
  if num_unlabelled is not None and value is not None and value.size:
    if value.min() < 0 or value.max() >= num_unlabelled:
      raise ValueError(
          f"indices must lie in [0, num_unlabelled = {num_unlabelled}), got"
          f" values from {value.min()} to {value.max()}.")
  return indices.astype(jnp.int32)


def _checked_state(state, cls, shapes: dict):
  """`state` with every field a JAX array of its shape and dtype.

  A restored checkpoint may hold NumPy arrays (`np.load`, orbax): they are
  taken as they are. A field of another shape is a ValueError, of another
  dtype (or not an array) a TypeError, naming the field.
  """
  if not isinstance(state, cls):
    raise TypeError(f"state must be a {cls.__name__} (from init()), got"
                    f" {type(state).__name__}.")
  fields = {}
  for name, shape in shapes.items():
    value, dtype = getattr(state, name), _STATE_DTYPES[cls][name]
    if not hasattr(value, "dtype") or isinstance(value, (str, bytes)):
      raise TypeError(f"state.{name} must be a {dtype.__name__} array (as"
                      f" init() makes it), got {type(value).__name__}.")
    if jnp.shape(value) != shape:
      raise ValueError(f"state.{name} must have shape {shape} for this"
                       f" threshold, got {jnp.shape(value)}.")
    if value.dtype != dtype:
      raise TypeError(f"state.{name} must have dtype {dtype.__name__} (as"
                      f" init() makes it), got {value.dtype}.")
    fields[name] = jnp.asarray(value)
  return cls(**fields)


# ---------------------------------------------------------------------------
# Arithmetic in PyTorch's order.
# ---------------------------------------------------------------------------


def _divide(a: jax.Array, b: jax.typing.ArrayLike) -> jax.Array:
  """`a / b` by IEEE division of every element, as PyTorch computes it.

  XLA:CPU rewrites a division by a broadcast value into a multiplication by
  its reciprocal, which may change the last bit. A divisor that is opaque per
  element (its bits XOR an int that is 0 wherever the result is used: where
  `a` is NaN the result is NaN anyway) keeps the division. No gradient.
  """
  shape = jnp.broadcast_shapes(jnp.shape(a), jnp.shape(b))
  a = jnp.broadcast_to(a, shape)
  zero = jnp.isnan(a).astype(jnp.int32)
  return a / _pct._opaque(jnp.broadcast_to(b, shape).astype(a.dtype), zero)


def _rounded(x: jax.Array) -> jax.Array:
  """`x`, rounded where it stands: XLA cannot fuse it into a multiply-add."""
  return _pct._opaque(x, jnp.isnan(x).astype(jnp.int32))


def _ema(old: jax.Array, m: float, new: jax.Array,
         one_minus_m: float) -> jax.Array:
  """USB's `old * m + (1 - m) * new`: two rounded products, then the sum.

  PyTorch rounds each product; XLA:CPU would fuse one of them and the sum
  into a multiply-add, which may change the last bit.
  """
  return _rounded(old * m) + _rounded(one_minus_m * new)


def _mean(x: jax.Array, axis=None) -> jax.Array:
  """PyTorch's mean: the sum divided (not multiplied by 1/n) by the count."""
  n = x.size if axis is None else x.shape[axis]
  return _divide(jnp.sum(x, axis=axis), jnp.asarray(n, x.dtype))


def _corrected_mean(x: jax.Array) -> jax.Array:
  """The mean of `[n]` values, `m + mean(x - m)` with `m = _mean(x)`.

  A float32 sum may miss `n` times the mean by a few ulps, so that even a
  constant batch's `m` need not be its value. The residuals' mean, exact for
  a constant batch, corrects it: a constant batch has its value as mean, and
  variance 0 (as `torch.var`'s Welford mean gives).
  """
  m = _mean(x)
  return m + _mean(x - m)


def _torch_quantile(x: jax.Array, q: float) -> jax.Array:
  """`torch.quantile(x, q)` of a `[n]` array (linear), bit for bit.

  The rank `q * (n - 1)` and the weight are float32, as PyTorch computes them
  (known at trace time); the interpolation is PyTorch's `lerp`, which XLA:CPU
  fuses into the same multiply-add. Any NaN gives NaN.
  """
  n = x.shape[0]
  v = jnp.sort(x)
  rank = np.float32(q) * np.float32(n - 1)
  lo, hi = int(rank), int(np.ceil(rank))
  weight = np.float32(rank - np.float32(lo))
  a, b = v[lo], v[hi]
  d = b - a
  out = a + weight * d if weight < 0.5 else b - d * (np.float32(1.0) - weight)
  return jnp.where(jnp.isnan(v[-1]), jnp.asarray(jnp.nan, v.dtype), out)


def _uniform(num_classes: int) -> jax.Array:
  """`torch.ones(C) / C`: `[C]` float32, IEEE-divided (on the host)."""
  return jnp.asarray(np.ones(num_classes, np.float32) / np.float32(num_classes))


def _gather(x: jax.Array, axis_name) -> jax.Array:
  """The global batch: `x` concatenated over `axis_name` (no-op if None).

  Each device places its shard in a zero buffer and the buffers are summed
  (`psum`): every element is added only to zeros, so the result is exact,
  and it is typed as the same on every device, so state computed from it
  can leave `shard_map` replicated (`P()`) under `check_vma=True`, which an
  `all_gather` (typed as varying) does not allow.
  """
  if axis_name is None:
    return x
  size = lax.axis_size(axis_name)
  dtype = x.dtype
  if dtype == jnp.bool_:
    x = x.astype(jnp.int32)
  placed = jnp.zeros((size,) + x.shape, x.dtype).at[
      lax.axis_index(axis_name)].set(x)
  out = lax.psum(placed, axis_name).reshape((size * x.shape[0],) + x.shape[1:])
  return out.astype(dtype)


def _max_and_argmax(probs: jax.Array) -> tuple[jax.Array, jax.Array]:
  """`torch.max(probs, dim=-1)`: confidence and label (a NaN row: NaN, its index)."""
  return jnp.max(probs, axis=-1), jnp.argmax(probs, axis=-1).astype(jnp.int32)


def _output(mask: jax.Array, labels: jax.Array) -> ThresholdOutput:
  return ThresholdOutput(lax.stop_gradient(mask.astype(jnp.float32)),
                         lax.stop_gradient(labels))


# ---------------------------------------------------------------------------
# FixMatch and the batch percentile (stateless).
# ---------------------------------------------------------------------------


def fixmatch(*, p_cutoff: float = 0.95) -> ConfidenceThreshold:
  r"""FixMatch's fixed confidence threshold (stateless).

  .. math::
     \text{mask}_i = [\max_c p_{ic} \ge \tau], \qquad
     \hat y_i = \operatorname{argmax}_c p_{ic}

  Equivalent to USB's `FixedThresholdingHook.masking` (Sohn et al.,
  "FixMatch", NeurIPS 2020), `max_probs.ge(p_cutoff)`, and its hard
  pseudo-labels `argmax(probs)`.

  A row holding a NaN has a NaN confidence and gets mask 0.

  Args:
    p_cutoff: the threshold :math:`\tau`, a Python number in (0, 1].

  Returns:
    A `ConfidenceThreshold`: `init()` returns an empty state; `update(probs
    [batch, num_classes], state, *, indices=None, axis_name=None)` returns
    `(ThresholdOutput(mask [batch] float32, pseudo_labels [batch] int32),
    state)`. The mask of each sample depends only on its own row, so
    `axis_name` changes nothing.

  Example:
    >>> t = jaxmask.fixmatch(p_cutoff=0.95)
    >>> state = t.init()
    >>> probs = jnp.array([[0.97, 0.03], [0.4, 0.6]])
    >>> out, state = t.update(probs, state)
    >>> out.mask, out.pseudo_labels
    (Array([1., 0.], dtype=float32), Array([0, 1], dtype=int32))
  """
  p_cutoff = _p_cutoff(p_cutoff)

  def init() -> EmptyState:
    return EmptyState()

  def update(probs, state, *, indices=None, axis_name=None):
    del axis_name  # per-sample
    probs = _checked_probs(probs, None)
    _checked_indices(indices, probs.shape[0])
    confidence, labels = _max_and_argmax(probs)
    return _output(confidence >= p_cutoff, labels), state

  return ConfidenceThreshold(init, update)


def percentile_threshold(*, q, keep: checks.Keep) -> ConfidenceThreshold:
  r"""The batch-percentile mask of `percentile_mask`, as a (stateless) threshold.

  .. math::
     \text{mask}_i = [c_i \ge \operatorname{percentile}_q(c)]
     \;(\texttt{keep="high"}), \qquad c_i = \max_c p_{ic}

  (`<=` for `keep="low"`, MLKD's choice). Equivalent to
  `confidence <= np.percentile(confidence, q)` (or `>=`), as in MLKD's
  released code (`percentile_mask`), in the form of the adaptive thresholds,
  so a training loop can swap methods by one line. `keep="high"` with
  `q=20` keeps the confident 80% of every batch.

  Ties at the threshold are kept. A NaN confidence makes the threshold NaN
  and the mask all 0 (as NumPy's percentile).

  Args:
    q: percentile in [0, 100], a Python number (or a scalar array, see
      `percentile`).
    keep: `"low"` keeps confidences `<=` the threshold, `"high"` `>=` it.

  Returns:
    A `ConfidenceThreshold`: `init()` returns an empty state; `update(probs
    [batch, num_classes], state, *, indices=None, axis_name=None)` returns
    `(ThresholdOutput(mask [batch] float32, pseudo_labels [batch] int32),
    state)`. With `axis_name`, the percentile is that of the global batch.

  Example:
    >>> t = jaxmask.percentile_threshold(q=50.0, keep="high")
    >>> probs = jnp.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])
    >>> out, _ = t.update(probs, t.init())  # median confidence 0.8
    >>> out.mask
    Array([1., 0., 1.], dtype=float32)
  """
  checks.percentile_q(q)
  checks.one_of(keep, "keep", checks.KEEP)

  def init() -> EmptyState:
    return EmptyState()

  def update(probs, state, *, indices=None, axis_name=None):
    probs = _checked_probs(probs, None)
    _checked_indices(indices, probs.shape[0])
    confidence, labels = _max_and_argmax(probs)
    mask, _ = _confidence.percentile_mask(
        confidence, q=q, keep=keep, axis_name=axis_name)
    return _output(mask, labels), state

  return ConfidenceThreshold(init, update)


# ---------------------------------------------------------------------------
# FlexMatch.
# ---------------------------------------------------------------------------


def _flexmatch_threshold(p_cutoff: float, acc: jax.Array,
                         mapping: str) -> jax.Array:
  """USB's mappings of the learning effect to a threshold, in its order."""
  if mapping == "convex":
    return p_cutoff * _divide(acc, 2.0 - acc)
  if mapping == "linear":
    return p_cutoff * (acc + 1.0) / 2.0  # exact: a power of two
  return _divide(p_cutoff * (jnp.log(acc + 1.0) + 0.5),
                 jnp.float32(_LOG2_PLUS_HALF))


def flexmatch(
    *,
    num_classes: int,
    num_unlabelled: int,
    p_cutoff: float = 0.95,
    warmup: bool = True,
    mapping: Mapping = "convex",
) -> ConfidenceThreshold:
  r"""FlexMatch's curriculum thresholds per class (Zhang et al., NeurIPS 2021).

  The state remembers, for every unlabelled sample, the last label it got
  with confidence :math:`\ge \tau` (`selected_label`, -1 if none). The
  learning effect of class :math:`c` is its count of such samples over the
  largest count :math:`\sigma_c = n_c / \max_k n_k`, the maximum taken over
  the classes and the unused bucket (-1) with `warmup`, over the classes
  only without. With :math:`a = \sigma_{\hat y_i}` from the *previous*
  state, the convex mapping (the default) gives

  .. math::
     \text{mask}_i = \Big[\max_c p_{ic} \ge \tau \cdot \frac{a}{2 - a}\Big]

  (linear: :math:`\tau (a + 1) / 2`; concave:
  :math:`\tau (\log(a + 1) + 0.5) / (\log 2 + 0.5)`). Then the samples with
  :math:`\max_c p_{ic} \ge \tau` write their label into
  `selected_label[indices]`, and unless one bucket holds every sample, the
  learning effects are recomputed.

  Equivalent to USB's `FlexMatchThresholdingHook.masking` and `update`
  (`semilearn/algorithms/flexmatch/utils.py`), with pseudo-labels
  `argmax(probs)`. At the start every learning effect is 0, so every sample
  passes (intended: TorchSSL issue 1).

  With `axis_name`, the indices and labels of all devices are gathered and
  every device writes the global batch into its (replicated) state, so the
  state is that of one device on the concatenated batch; USB updates each
  GPU's copy from its own shard only (the copies drift apart). If one index
  appears twice in one (global) batch with different confident labels,
  which label is kept is unspecified, as with PyTorch's `index_put_`.

  A row holding a NaN gets mask 0 and is never written. Counts are exact in
  float32 up to 2**24 unlabelled samples.

  Args:
    num_classes: C, a positive Python int.
    num_unlabelled: the size of the unlabelled dataset, a positive Python int.
    p_cutoff: :math:`\tau`, a Python number in (0, 1].
    warmup: USB's `thresh_warmup`: count the unused samples in the maximum.
    mapping: `"convex"` (FlexMatch's default), `"linear"` or `"concave"`.

  Returns:
    A `ConfidenceThreshold`: `init()` returns a `FlexMatchState`
    (`selected_label [num_unlabelled]` int32 all -1, `classwise_acc
    [num_classes]` float32 all 0); `update(probs [batch, num_classes], state,
    *, indices, axis_name=None)` returns `(ThresholdOutput(mask [batch]
    float32, pseudo_labels [batch] int32), state)`. `indices [batch]` (int,
    in [0, num_unlabelled)) are required: a `ValueError` names them if
    missing; concrete indices out of range are a `ValueError`, traced ones
    are never written.

  Example:
    >>> t = jaxmask.flexmatch(num_classes=2, num_unlabelled=4)
    >>> state = t.init()
    >>> probs = jnp.array([[0.97, 0.03], [0.7, 0.3]])
    >>> out, state = t.update(probs, state, indices=jnp.array([0, 1]))
    >>> out.mask  # learning effects all 0: everything passes at first
    Array([1., 1.], dtype=float32)
    >>> state.selected_label, state.classwise_acc  # class 0: 1; unused: 3
    (Array([ 0, -1, -1, -1], dtype=int32), Array([0.33333334, 0.        ], dtype=float32))
    >>> out, state = t.update(probs, state, indices=jnp.array([2, 3]))
    >>> out.mask  # threshold for class 0: 0.95 * (1/3) / (2 - 1/3) = 0.19
    Array([1., 1.], dtype=float32)
  """
  num_classes = checks.python_int(num_classes, "num_classes", low=1)
  num_unlabelled = checks.python_int(num_unlabelled, "num_unlabelled", low=1)
  p_cutoff = _p_cutoff(p_cutoff)
  warmup = _python_bool(warmup, "warmup")
  checks.one_of(mapping, "mapping", _MAPPINGS)

  def init() -> FlexMatchState:
    return FlexMatchState(
        selected_label=jnp.full((num_unlabelled,), -1, jnp.int32),
        classwise_acc=jnp.zeros((num_classes,), jnp.float32))

  def update(probs, state, *, indices=None, axis_name=None):
    state = _checked_state(state, FlexMatchState, {
        "selected_label": (num_unlabelled,), "classwise_acc": (num_classes,)})
    probs = _checked_probs(probs, num_classes)
    if indices is None:
      raise ValueError(
          "flexmatch's update needs indices: the [batch] dataset indices of"
          " the unlabelled samples (update(probs, state, indices=...)).")
    indices = _checked_indices(indices, probs.shape[0], num_unlabelled)

    # The mask, from the previous state.
    confidence, labels = _max_and_argmax(probs)
    acc = state.classwise_acc.astype(probs.dtype)[labels]
    mask = confidence >= _flexmatch_threshold(p_cutoff, acc, mapping)

    # Confident samples of the global batch write their labels.
    select = _gather(confidence >= p_cutoff, axis_name)
    where = _gather(indices, axis_name)
    where = jnp.where(select & (where >= 0), where, num_unlabelled)  # dropped
    selected = state.selected_label.at[where].set(
        _gather(labels, axis_name), mode="drop")

    # Learning effects, unless one bucket (-1 or a class) holds everything.
    counts = jnp.bincount(selected + 1, length=num_classes + 1)
    biggest = jnp.max(counts)
    denominator = biggest if warmup else jnp.max(counts[1:])
    new_acc = _divide(counts[1:].astype(jnp.float32),
                      jnp.maximum(denominator, 1).astype(jnp.float32))
    classwise_acc = jnp.where(biggest < num_unlabelled, new_acc,
                              state.classwise_acc)
    return _output(mask, labels), FlexMatchState(selected, classwise_acc)

  return ConfidenceThreshold(init, update)


# ---------------------------------------------------------------------------
# FreeMatch.
# ---------------------------------------------------------------------------


def freematch(
    *,
    num_classes: int,
    momentum: float = 0.999,
    use_quantile: bool = False,
    clip_thresh: bool = False,
) -> ConfidenceThreshold:
  r"""FreeMatch's self-adaptive thresholds (Wang et al., ICLR 2023).

  The state is updated *first*, on the (global) batch, with momentum
  :math:`m`:

  .. math::
     \tau &\leftarrow m\,\tau + (1 - m)\,\operatorname{mean}_i \max_c p_{ic}
     \quad (\text{the 0.8-quantile with } \texttt{use\_quantile}) \\
     \tilde p &\leftarrow m\,\tilde p + (1 - m)\,\operatorname{mean}_i p_i \\
     h &\leftarrow m\,h + (1 - m)\,\operatorname{hist}(\hat y) / B

  (:math:`\tau` clipped to [0, 0.95] with `clip_thresh`), then

  .. math::
     \text{mask}_i = \Big[\max_c p_{ic} \ge
     \tau \cdot \frac{\tilde p_{\hat y_i}}{\max_c \tilde p_c}\Big]

  Equivalent to USB's `FreeMatchThresholingHook.update` and `masking`
  (`semilearn/algorithms/freematch/utils.py`), with pseudo-labels
  `argmax(probs)`; the 0.8-quantile is `torch.quantile`'s (linear), bit for
  bit. With `axis_name`, the statistics are those of the global batch
  (gathered, as USB gathers them), so every device holds the state of one
  device on the concatenated batch. `freematch_fairness_loss` takes the
  returned state.

  A row holding a NaN gets mask 0, but it makes the batch statistics NaN,
  as in USB: from then on `time_p` and `p_model` are NaN and every mask 0.

  Args:
    num_classes: C, a positive Python int.
    momentum: :math:`m`, USB's `ema_p`, a Python number in [0, 1].
    use_quantile: use the 0.8-quantile of the confidences instead of their
      mean.
    clip_thresh: clip :math:`\tau` to [0, 0.95] after each update.

  Returns:
    A `ConfidenceThreshold`: `init()` returns a `FreeMatchState` (`time_p []`,
    `p_model [num_classes]`, `label_hist [num_classes]`, all 1/C); `update(
    probs [batch, num_classes], state, *, indices=None, axis_name=None)`
    returns `(ThresholdOutput(mask [batch] float32, pseudo_labels [batch]
    int32), state)`.

  Example:
    >>> t = jaxmask.freematch(num_classes=2, momentum=0.5)
    >>> state = t.init()  # time_p = p_model = label_hist = 1/2
    >>> probs = jnp.array([[0.9, 0.1], [0.6, 0.4]])
    >>> out, state = t.update(probs, state)
    >>> state.time_p  # 0.5 * 0.5 + 0.5 * mean(0.9, 0.6)
    Array(0.625, dtype=float32)
    >>> out.mask  # thresholds 0.625 * p_model / max(p_model) = 0.625
    Array([1., 0.], dtype=float32)
  """
  num_classes = checks.python_int(num_classes, "num_classes", low=1)
  m = checks.python_number(momentum, "momentum", 0.0, 1.0)
  use_quantile = _python_bool(use_quantile, "use_quantile")
  clip_thresh = _python_bool(clip_thresh, "clip_thresh")
  one_minus_m = 1.0 - m  # in float64, as USB's `(1 - self.m)`

  def init() -> FreeMatchState:
    # Three buffers: a state whose fields share one cannot be donated.
    p_model = _uniform(num_classes)
    return FreeMatchState(time_p=_mean(p_model), p_model=p_model,
                          label_hist=_uniform(num_classes))

  def update(probs, state, *, indices=None, axis_name=None):
    state = _checked_state(state, FreeMatchState, {
        "time_p": (), "p_model": (num_classes,), "label_hist": (num_classes,)})
    probs = _checked_probs(probs, num_classes)
    _checked_indices(indices, probs.shape[0])
    dtype = probs.dtype

    # Update first, on the global batch.
    everything = _gather(probs, axis_name)
    max_probs, max_idx = _max_and_argmax(everything)
    if use_quantile:
      statistic = _torch_quantile(max_probs, _FREEMATCH_QUANTILE)
    else:
      statistic = _mean(max_probs)
    time_p = _ema(state.time_p.astype(dtype), m, statistic, one_minus_m)
    if clip_thresh:
      time_p = jnp.clip(time_p, 0.0, _FREEMATCH_CLIP)
    p_model = _ema(state.p_model.astype(dtype), m, _mean(everything, axis=0),
                   one_minus_m)
    hist = jnp.bincount(max_idx, length=num_classes).astype(dtype)
    label_hist = _ema(state.label_hist.astype(dtype), m,
                      _divide(hist, jnp.sum(hist)), one_minus_m)

    # Then the mask, with the new state.
    confidence, labels = _max_and_argmax(probs)
    mod = _divide(p_model, jnp.max(p_model))
    mask = confidence >= time_p * mod[labels]
    new_state = FreeMatchState(time_p, p_model, label_hist)
    new_state = jax.tree.map(lambda x: x.astype(jnp.float32), new_state)
    return _output(mask, labels), new_state

  return ConfidenceThreshold(init, update)


def freematch_fairness_loss(
    strong_logits: jax.typing.ArrayLike,
    mask: jax.typing.ArrayLike,
    state: FreeMatchState,
) -> jax.Array:
  r"""FreeMatch's self-adaptive fairness term, with masked sums.

  Over the selected samples :math:`S = \{i : \text{mask}_i \ne 0\}` of the
  strong view, with :math:`q_i = \operatorname{softmax}(z_i)`, their mean
  :math:`\bar q`, the histogram :math:`h_s` of their argmax normalised to sum
  1, the state's `p_model` :math:`\tilde p` and `label_hist` :math:`h`, and
  :math:`\operatorname{norm}(x) = x / \sum x` with :math:`1/0` read as 0:

  .. math::
     \mathcal{L}_f = \sum_c \operatorname{norm}(\tilde p / h)_c \,
     \log\!\big(\operatorname{norm}(\bar q / h_s)_c + 10^{-12}\big)

  Equivalent to USB's `entropy_loss(mask, logits_x_ulb_s, p_model,
  label_hist)[0]` (`semilearn/algorithms/freematch/freematch.py`), which
  FreeMatch adds with weight 0.01 (`ent_loss_ratio`; the term is <= 0 by
  design, so it is minimised towards a more uniform prediction); masked sums
  replace USB's boolean indexing, so shapes stay static. When no sample is
  selected the loss is 0, as USB skips the term. Gradients flow into
  `strong_logits` only through :math:`\bar q` (USB detaches the
  histograms); unselected rows (even non-finite ones) get zero gradient.
  Like USB, the term is per device: pass the local batch; data-parallel
  gradient averaging then averages it.

  Args:
    strong_logits: `[batch, num_classes]` floating logits of the strong view.
    mask: `[batch]` the mask of `update` (any value != 0 selects).
    state: the `FreeMatchState` returned by the same step's `update`.

  Returns:
    A float32 scalar (float64 for float64 logits).

  Example:
    >>> t = jaxmask.freematch(num_classes=2)
    >>> state = t.init()
    >>> logits = jnp.array([[2.0, 0.0], [0.0, 1.0]])
    >>> loss = jaxmask.freematch_fairness_loss(logits, jnp.array([1.0, 1.0]), state)
    >>> round(float(loss), 4)  # 0.5 log 0.575 + 0.5 log 0.425: both classes predicted
    -0.7045
    >>> jaxmask.freematch_fairness_loss(logits, jnp.zeros(2), state)  # none selected
    Array(0., dtype=float32)
  """
  logits = checks.array(strong_logits, "strong_logits")
  checks.rank(logits, "strong_logits", "[batch, num_classes]")
  checks.floating(logits, "strong_logits")
  if logits.shape[0] < 1 or logits.shape[1] < 1:
    raise ValueError("strong_logits must have shape [batch, num_classes] with"
                     f" batch >= 1 and num_classes >= 1, got {logits.shape}.")
  logits = checks.upcast(logits)
  batch, num_classes = logits.shape
  mask = checks.array(mask, "mask")
  if mask.shape != (batch,):
    raise ValueError(f"mask must have shape [batch] = ({batch},), got"
                     f" {mask.shape}.")
  state = _checked_state(state, FreeMatchState, {
      "time_p": (), "p_model": (num_classes,), "label_hist": (num_classes,)})
  dtype = logits.dtype

  selected = lax.stop_gradient(mask) != 0
  safe_logits = jnp.where(selected[:, None], logits, 0)  # no NaN gradient
  probs = jnp.where(selected[:, None], jax.nn.softmax(safe_logits, axis=-1), 0)
  count = jnp.sum(selected).astype(dtype)
  safe_count = jnp.maximum(count, 1)

  labels = jnp.argmax(lax.stop_gradient(probs), axis=-1)
  hist_s = jnp.sum(jnp.where(selected[:, None], jax.nn.one_hot(
      labels, num_classes, dtype=dtype), 0), axis=0)
  hist_s = hist_s / jnp.maximum(jnp.sum(hist_s), 1)

  def inverse(x):  # USB's `replace_inf_to_zero(1 / x)`
    r = 1 / x
    return jnp.where(r == jnp.inf, 0, r)

  p_model = lax.stop_gradient(state.p_model.astype(dtype))
  label_hist = lax.stop_gradient(state.label_hist.astype(dtype))
  mod_prob_model = p_model * inverse(label_hist)
  mod_prob_model = mod_prob_model / jnp.sum(mod_prob_model)
  mean_prob = jnp.sum(probs, axis=0) / safe_count
  mod_mean_prob = mean_prob * lax.stop_gradient(inverse(hist_s))
  mod_mean_prob = mod_mean_prob / jnp.sum(mod_mean_prob)
  loss = jnp.sum(mod_prob_model * jnp.log(mod_mean_prob + _FAIRNESS_EPS))
  return jnp.where(count > 0, loss, jnp.zeros((), dtype))


# ---------------------------------------------------------------------------
# SoftMatch.
# ---------------------------------------------------------------------------


def softmatch(
    *,
    num_classes: int,
    momentum: float = 0.999,
    n_sigma: float = 2.0,
    dist_align: bool = True,
) -> ConfidenceThreshold:
  r"""SoftMatch's truncated-Gaussian sample weights (Chen et al., ICLR 2023).

  First, uniform distribution alignment (`dist_align`): `p_model`
  :math:`\tilde p` is set to the first (global) batch's mean probabilities,
  then :math:`\tilde p \leftarrow m\,\tilde p + (1 - m)\,\operatorname{mean}_i
  p_i`, and each row is aligned and renormalised,
  :math:`p'_i \propto p_i (1/C + 10^{-6}) / (\tilde p + 10^{-6})`. Then, on
  the aligned confidences :math:`c_i = \max_c p'_{ic}` of the global batch,

  .. math::
     \mu \leftarrow m\,\mu + (1 - m)\,\operatorname{mean}_i c_i, \qquad
     \sigma^2 \leftarrow m\,\sigma^2 + (1 - m)\,\operatorname{var}_i c_i

  (unbiased variance), and the weight is

  .. math::
     \text{mask}_i = \exp\!\Big(-\frac{\min(c_i - \mu, 0)^2}
     {2\sigma^2 / n_\sigma^2}\Big)

  The pseudo-labels are the argmax of the *unaligned* probabilities.

  Equivalent to USB's SoftMatch (`semilearn/algorithms/softmatch/`):
  `DistAlignEMAHook.dist_align` with a uniform target (`dist_uniform=True`),
  then `SoftMatchWeightingHook.masking` (`per_class=False`) on the aligned
  probabilities, and pseudo-labels from the unaligned ones. USB always
  aligns (its own `dist_align` flag is never read); here `dist_align=False`
  skips the alignment (`p_model` then stays as `init` made it). With
  `axis_name`, `p_model`, :math:`\mu` and :math:`\sigma^2` are statistics of
  the global batch.

  Finite where USB gives NaN:

  - A global batch of one sample has no unbiased variance (PyTorch returns
    NaN, which USB writes into its state for good): :math:`\sigma^2` is
    then left unchanged (:math:`\mu` is updated).
  - :math:`\sigma^2 = 0` (momentum 0 and a constant batch) makes
    :math:`0/0` at :math:`c_i = \mu`: the weight there is 1, the limit. The
    batch mean is corrected by its residuals' mean, so a constant batch's
    mean is its value exactly and its variance 0: with momentum 0 every
    weight is 1 (USB's float32 `torch.mean` may miss the value by an ulp,
    which gives weight 0 or NaN there).
  - A NaN weight (a NaN in the probabilities, which also makes the state
    NaN, as in USB) is 0, so `mask` always lies in [0, 1].

  Args:
    num_classes: C, a positive Python int.
    momentum: :math:`m`, USB's `ema_p`, a Python number in [0, 1].
    n_sigma: :math:`n_\sigma`, a Python number > 0.
    dist_align: align the probabilities to the uniform distribution first.

  Returns:
    A `ConfidenceThreshold`: `init()` returns a `SoftMatchState` (`count []`
    int32 0, `p_model [num_classes]` 1/C, `mu []` 1/C, `var []` 1);
    `update(probs [batch, num_classes], state, *, indices=None,
    axis_name=None)` returns `(ThresholdOutput(mask [batch] float32 in [0, 1],
    pseudo_labels [batch] int32), state)`.

  Example:
    >>> t = jaxmask.softmatch(num_classes=2, momentum=0.5, dist_align=False)
    >>> state = t.init()  # mu = 0.5, var = 1
    >>> probs = jnp.array([[0.9, 0.1], [0.5, 0.5], [0.7, 0.3]])
    >>> out, state = t.update(probs, state)
    >>> state.mu, state.var  # 0.5 * 0.5 + 0.5 * 0.7, 0.5 * 1 + 0.5 * 0.04
    (Array(0.6, dtype=float32), Array(0.52, dtype=float32))
    >>> out.mask.round(4)  # 1 at or above mu; exp(-0.1**2 / (2 * 0.52 / 4)) below
    Array([1.    , 0.9623, 1.    ], dtype=float32)
  """
  num_classes = checks.python_int(num_classes, "num_classes", low=1)
  m = checks.python_number(momentum, "momentum", 0.0, 1.0)
  n_sigma = checks.python_number(n_sigma, "n_sigma", 0.0, math.inf)
  if n_sigma == 0.0:
    raise ValueError("n_sigma must be a finite number > 0, got 0.")
  dist_align = _python_bool(dist_align, "dist_align")
  one_minus_m = 1.0 - m
  n_sigma_squared = n_sigma * n_sigma  # inf, not OverflowError, if huge

  def init() -> SoftMatchState:
    return SoftMatchState(
        count=jnp.zeros((), jnp.int32),
        p_model=_uniform(num_classes),
        mu=jnp.asarray(1.0 / num_classes, jnp.float32),
        var=jnp.asarray(1.0, jnp.float32))

  def update(probs, state, *, indices=None, axis_name=None):
    state = _checked_state(state, SoftMatchState, {
        "count": (), "p_model": (num_classes,), "mu": (), "var": ()})
    probs = _checked_probs(probs, num_classes)
    _checked_indices(indices, probs.shape[0])
    dtype = probs.dtype
    labels = jnp.argmax(probs, axis=-1).astype(jnp.int32)  # unaligned

    # Distribution alignment: p_model first (the first batch sets it).
    p_model = state.p_model.astype(dtype)
    aligned = probs
    if dist_align:
      batch_mean = _mean(_gather(probs, axis_name), axis=0)
      p_model = jnp.where(state.count > 0,
                          _ema(p_model, m, batch_mean, one_minus_m), batch_mean)
      p_target = _uniform(num_classes).astype(dtype)
      aligned = _divide(probs * (p_target + _DIST_ALIGN_EPS),
                        p_model + _DIST_ALIGN_EPS)
      aligned = _divide(aligned, jnp.sum(aligned, axis=-1, keepdims=True))

    # The Gaussian's mean and variance, on the global aligned confidences.
    max_probs = jnp.max(aligned, axis=-1)
    everything = _gather(max_probs, axis_name)
    # USB adds `(1 - m) * statistic.item()`, a float64 product rounded once
    # to float32; here the product is float32 (it may differ in the last bit).
    # The mean is corrected once (exact for a constant batch), where
    # `torch.mean` may be an ulp off.
    batch_mean = _corrected_mean(everything)
    mu = _ema(state.mu.astype(dtype), m, batch_mean, one_minus_m)
    var = state.var.astype(dtype)
    if everything.shape[0] > 1:  # the unbiased variance of one value is NaN
      batch_var = _divide(jnp.sum(jnp.square(everything - batch_mean)),
                          jnp.asarray(everything.shape[0] - 1, dtype))
      var = _ema(var, m, batch_var, one_minus_m)

    below = jnp.minimum(max_probs - mu, 0.0)
    weight = jnp.exp(-_divide(below**2, _divide(2 * var, n_sigma_squared)))
    weight = jnp.where(below == 0, jnp.ones_like(weight), weight)
    weight = jnp.where(jnp.isnan(weight), jnp.zeros_like(weight), weight)

    count = jnp.minimum(state.count, _COUNT_MAX) + 1
    new_state = SoftMatchState(count, p_model.astype(jnp.float32),
                               mu.astype(jnp.float32), var.astype(jnp.float32))
    return _output(weight, labels), new_state

  return ConfidenceThreshold(init, update)
