"""Uncertainty-based point sampling (Mask2Former, PointRend), plain algorithms.

Layout follows the PyTorch originals so that code ports line for line: mask
logits `[num_masks, channels, height, width]`, point coordinates
`[num_masks, num_points, 2]` with `[..., 0] = x` (width) and `[..., 1] = y`
(height), both normalised to [0, 1].

This module is the algorithm: a bilinear gather of four neighbours with
grid_sample's arithmetic, `-|logit|` uncertainty, `lax.top_k` of uniform
candidates drawn with `jax.random.uniform`. The XLA:CPU kernels in
`jaxmask._src.xla_cpu` compute the same results faster on CPU; the public
functions take `implementation` to choose (see
`jaxmask._src.implementation`).

References:
  Cheng et al., "Masked-attention Mask Transformer for Universal Image
  Segmentation" (Mask2Former), CVPR 2022: `mask2former/modeling/criterion.py`
  and HF transformers' `modeling_mask2former.py`.
  Kirillov et al., "PointRend: Image Segmentation as Rendering", CVPR 2020:
  detectron2's `projects/PointRend/point_rend/point_features.py`.
"""

import functools
from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax

from jaxmask._src import checks
from jaxmask._src import grid
from jaxmask._src import implementation as impl
from jaxmask._src.xla_cpu import sampler as xla_cpu_sampler
from jaxmask._src.xla_cpu import selection as xla_cpu_selection
from jaxmask._src.xla_cpu import threefry as xla_cpu_threefry

UncertaintyFn = Callable[[jax.Array], jax.Array]


# ----------------------------------------------------------------- sampling


def _bilinear(inputs: jax.Array, point_coords: jax.Array) -> jax.Array:
  """grid_sample of one `[C, H, W]` map at `[P, 2]` points -> `[C, P]`."""
  channels, height, width = inputs.shape
  if height * width == 0:  # every point samples the zero padding
    return _empty_map_values(point_coords, channels, inputs.dtype)
  ix, iy = grid.pixel_positions(point_coords, height, width)
  # grid_sample's rule: a NaN or infinite position reads no pixel and
  # samples NaN. It is moved off the map here, so no NaN reaches a gradient.
  finite = jnp.isfinite(ix) & jnp.isfinite(iy)
  ix, iy = jnp.where(finite, ix, -2.0), jnp.where(finite, iy, -2.0)
  x0, y0 = jnp.floor(ix), jnp.floor(iy)

  def pixel(x, y):
    """`inputs[:, y, x]` where `(x, y)` lies on the map, else 0 (padding)."""
    on_map = (x >= 0) & (x <= width - 1) & (y >= 0) & (y <= height - 1)
    col = jnp.clip(x, 0, width - 1).astype(jnp.int32)
    row = jnp.clip(y, 0, height - 1).astype(jnp.int32)
    return jnp.where(on_map, inputs[:, row, col], 0)

  values = (pixel(x0, y0), pixel(x0 + 1, y0), pixel(x0, y0 + 1),
            pixel(x0 + 1, y0 + 1))
  out = grid.weighted_sum(values, grid.bilinear_weights(ix, iy))
  return jnp.where(finite, out, jnp.nan)


def _empty_map_values(point_coords, channels, dtype):
  """What points sample from an empty map: 0, or NaN at a non-finite point."""
  finite = jnp.all(jnp.isfinite(point_coords), axis=-1)
  values = jnp.where(finite, 0.0, jnp.nan).astype(dtype)
  return jnp.broadcast_to(values[..., None, :],
                          (*values.shape[:-1], channels, values.shape[-1]))


def _point_sample(inputs: jax.Array, point_coords: jax.Array) -> jax.Array:
  """The plain sampler on validated `[N, C, H, W]` and float32+ `[N, P, 2]`."""
  return jax.vmap(_bilinear)(inputs, point_coords).astype(inputs.dtype)


def _check_coords(coords: jax.Array, name: str, shape: str) -> None:
  checks.rank(coords, name, shape)
  if coords.shape[-1] != 2:
    raise ValueError(f"{name} must have shape {shape} (x, y last), got"
                     f" {coords.shape}.")
  checks.floating(coords, name)


def point_sample(
    inputs: jax.typing.ArrayLike,
    point_coords: jax.typing.ArrayLike,
    *,
    implementation: impl.Implementation | None = None,
) -> jax.Array:
  r"""Bilinearly samples feature maps at normalised points, one set per map.

  Equivalent to detectron2's `point_sample` and HF transformers'
  `sample_point` with `align_corners=False`: `grid_sample(inputs,
  2 * point_coords - 1)` with bilinear interpolation and zero padding per
  neighbour. The point :math:`(x, y)` lies at pixel position

  .. math::
     i_x = \frac{(2x - 1 + 1) W - 1}{2}, \qquad
     i_y = \frac{(2y - 1 + 1) H - 1}{2},

  computed in that order of operations, as grid_sample's source does. With
  :math:`x_0 = \lfloor i_x \rfloor`, :math:`y_0 = \lfloor i_y \rfloor` the
  value is

  .. math::
     v_{nw} (x_0 + 1 - i_x)(y_0 + 1 - i_y) + v_{ne} (i_x - x_0)(y_0 + 1 - i_y)
     + v_{sw} (x_0 + 1 - i_x)(i_y - y_0) + v_{se} (i_x - x_0)(i_y - y_0),

  summed in that order, where a neighbour off the map contributes zero on its
  own. Every operation is rounded on its own, no product fused into a
  multiply-add (`jaxmask._src.grid`), so every implementation computes the
  same bits, on any platform with IEEE float32 arithmetic (tested on CPU).
  PyTorch's compiled grid_sample fuses the position's and the sum's
  multiply-adds (on FMA hardware and on CUDA), so it agrees with this to an
  ulp of the position and of each product, not bit for bit. As in
  grid_sample, a NaN or infinite coordinate samples NaN; it reads no pixel,
  so it adds nothing to the gradient of `inputs` and its own gradient is 0
  (in x and y alike). So
  does a finite coordinate so large that its pixel position overflows
  float32 (beyond about 1.7e38 / max(H, W)), as in PyTorch. An empty map
  (H or W = 0) samples zeros.

  Positions and weights are computed in float32 (or the coordinates' dtype if
  wider); the result is cast to `inputs.dtype`.

  Args:
    inputs: `[num_masks, channels, height, width]` floating feature maps.
    point_coords: `[num_masks, num_points, 2]` floating `(x, y)` coordinates,
      nominally in [0, 1]; points outside sample the zero padding.
    implementation: `None` (the XLA:CPU kernel on CPU, the plain algorithm
      elsewhere), `"plain"` or `"xla_cpu"`.

  Returns:
    `[num_masks, channels, num_points]` sampled values, dtype of `inputs`.

  Example:
    >>> logits = jnp.arange(16.0).reshape(1, 1, 4, 4)
    >>> coords = jnp.array([[[0.5, 0.5], [0.125, 0.125]]])  # centre, pixel 0
    >>> jaxmask.point_sample(logits, coords)
    Array([[[7.5, 0. ]]], dtype=float32)
  """
  inputs = checks.array(inputs, "inputs")
  point_coords = checks.array(point_coords, "point_coords")
  checks.rank(inputs, "inputs", "[num_masks, channels, height, width]")
  checks.floating(inputs, "inputs")
  _check_coords(point_coords, "point_coords", "[num_masks, num_points, 2]")
  checks.same_size(inputs, point_coords, 0, ("inputs", "point_coords"),
                   "num_masks (first axis)")
  impl.check(implementation)
  # Widen to at least float32: bfloat16 cannot hold x * W to a pixel.
  point_coords = point_coords.astype(
      jnp.promote_types(point_coords.dtype, jnp.float32))
  num_masks, channels, height, width = inputs.shape
  if 0 in (num_masks, channels, point_coords.shape[1]):
    return jnp.zeros((num_masks, channels, point_coords.shape[1]),
                     inputs.dtype)
  if height * width == 0:
    return _empty_map_values(point_coords, channels, inputs.dtype)
  return _point_sample_core(inputs, point_coords, implementation)


# The cores are jitted (shapes and options static) so that eager calls with
# unchanged shapes reuse one compiled program; under an outer jit they inline.
@functools.partial(jax.jit, static_argnames=("implementation",))
def _point_sample_core(inputs, point_coords, implementation):
  return impl.choose(implementation, plain=_point_sample,
                     xla_cpu=xla_cpu_sampler.point_sample,
                     operands=(inputs, point_coords))


def sample_at_drawn_points(inputs: jax.Array, point_coords: jax.Array,
                           implementation: impl.Implementation | None,
                           rows: jax.Array | None = None):
  """`point_sample` at points jaxmask drew itself (finite, in [0, 1)).

  For the losses and the criterion, whose points come from
  `sample_points_using_uncertainty` or `jax.random.uniform`: the kernel may
  then leave out its NaN-coordinate passes (`finite_coords`). With `rows
  [N]`, `point_coords[n]` are read from `inputs[rows[n]]` (the kernel reads
  them in place, without copying `inputs[rows]`).
  """
  num_masks = point_coords.shape[0]
  _, channels, height, width = inputs.shape
  if 0 in (num_masks, channels, height, width, point_coords.shape[1]):
    return jnp.zeros((num_masks, channels, point_coords.shape[1]),
                     inputs.dtype)
  return impl.choose(
      implementation,
      plain=lambda inputs, coords: _point_sample(
          inputs if rows is None else inputs[rows], coords),
      xla_cpu=functools.partial(xla_cpu_sampler.point_sample,
                                finite_coords=True, rows=rows),
      operands=(inputs, point_coords))


def point_sample_single(
    inputs: jax.typing.ArrayLike,
    point_coords: jax.typing.ArrayLike,
    *,
    implementation: impl.Implementation | None = None,
) -> jax.Array:
  """Bilinearly samples one feature map at normalised points.

  The per-mask form of `point_sample`: `point_sample(inputs[None],
  point_coords[None])[0]`; it composes with `jax.vmap`.

  Args:
    inputs: `[channels, height, width]` floating feature map.
    point_coords: `[num_points, 2]` floating `(x, y)` coordinates, nominally in
      [0, 1]; points outside are allowed and sample the zero padding.
    implementation: as in `point_sample`.

  Returns:
    `[channels, num_points]` sampled values, dtype of `inputs`.

  Example:
    >>> jaxmask.point_sample_single(jnp.ones((3, 8, 8)),
    ...                             jnp.full((5, 2), 0.5)).shape
    (3, 5)
  """
  inputs = checks.array(inputs, "inputs")
  point_coords = checks.array(point_coords, "point_coords")
  checks.rank(inputs, "inputs", "[channels, height, width]")
  _check_coords(point_coords, "point_coords", "[num_points, 2]")
  return point_sample(inputs[None], point_coords[None],
                      implementation=implementation)[0]


# -------------------------------------------------------------- uncertainty


def calculate_uncertainty(logits: jax.typing.ArrayLike) -> jax.Array:
  r"""Uncertainty of mask logits, :math:`-|x|` (highest where a logit is 0).

  Equivalent to `calculate_uncertainty` in Mask2Former and HF transformers.

  Args:
    logits: floating array of any shape, e.g. `[num_masks, 1, num_points]`.

  Returns:
    Array of the same shape and dtype.

  Example:
    >>> jaxmask.calculate_uncertainty(jnp.array([-2.0, 0.5, 3.0]))
    Array([-2. , -0.5, -3. ], dtype=float32)
  """
  logits = checks.array(logits, "logits")
  checks.floating(logits, "logits")
  return -jnp.abs(logits)


def _check_mask_logits(logits: jax.Array, name: str = "logits") -> None:
  checks.rank(logits, name, "[num_masks, 1, height, width]")
  if logits.shape[1] != 1:
    raise ValueError(
        f"{name} must have a single channel, shape [num_masks, 1, height,"
        f" width], got {logits.shape}.")
  checks.floating(logits, name)


def scorer(uncertainty_fn: UncertaintyFn):
  """Sampled logits `[N, 1, M]` -> `[N, M]` scores, the shape checked.

  A NaN score (a NaN logit or coordinate) becomes -inf: NaN never wins.
  """

  def score(sampled: jax.Array) -> jax.Array:
    scores = uncertainty_fn(sampled)
    if getattr(scores, "shape", None) != sampled.shape:
      raise ValueError(
          "uncertainty_fn must return the shape of its input [num_masks, 1,"
          f" num_candidates] = {sampled.shape}, got"
          f" {getattr(scores, 'shape', type(scores).__name__)}.")
    scores = scores[:, 0, :]
    if uncertainty_fn is calculate_uncertainty:
      # -|NaN| is a NaN with the sign bit set, which lax.top_k's order (and
      # the kernel's) ranks below -inf: no pass needed.
      return scores
    return jnp.where(jnp.isnan(scores), -jnp.inf, scores)

  return score


def _most_uncertain(logits, candidates, num_uncertain, score):
  """The plain selection: `lax.top_k` of the scores, most uncertain first."""
  # Sampled at float32 positions, as `point_sample` widens coordinates.
  scores = score(_point_sample(logits, checks.upcast(candidates)))
  index = lax.top_k(scores, num_uncertain)[1]
  return jnp.take_along_axis(candidates, index[..., None], axis=1)


def select_uncertain_points(
    logits: jax.typing.ArrayLike,
    candidates: jax.typing.ArrayLike,
    *,
    num_uncertain: int,
    uncertainty_fn: UncertaintyFn = calculate_uncertainty,
    implementation: impl.Implementation | None = None,
) -> jax.Array:
  """Keeps the `num_uncertain` most uncertain candidate points of each mask.

  The deterministic core of `sample_points_using_uncertainty`: samples
  `logits` at the candidates (`point_sample`), scores the sampled logits with
  `uncertainty_fn` and keeps, per mask, the candidates of the `num_uncertain`
  highest scores: the set `lax.top_k` selects (ties keep the lower candidate
  indices). A NaN score (from a NaN logit or coordinate) counts as -inf, so
  NaN never wins a place over a number. Equivalent to the top-k and flat-index-shift gather in
  Mask2Former's `get_uncertain_point_coords_with_randomness`, written as a
  per-row gather. No gradient flows through the result.

  Every implementation samples the candidates bit for bit alike (see
  `point_sample`), so ties and near-ties fall alike and every implementation
  selects the same set; only the order within a row differs: the plain
  algorithm returns decreasing uncertainty (as
  Mask2Former); the XLA:CPU kernel's order is unspecified (increasing
  candidate index for rows of 4096 candidates or more, `lax.top_k`'s below).
  The losses built on the points are sums, so the order does not matter
  there.

  Args:
    logits: `[num_masks, 1, height, width]` floating mask logits.
    candidates: `[num_masks, num_candidates, 2]` floating `(x, y)` points.
    num_uncertain: how many points to keep, in [0, num_candidates].
    uncertainty_fn: maps sampled logits `[num_masks, 1, num_candidates]` to
      scores of the same shape, higher meaning more uncertain.
    implementation: `None` (the XLA:CPU kernel on CPU, the plain algorithm
      elsewhere), `"plain"` or `"xla_cpu"`.

  Returns:
    `[num_masks, num_uncertain, 2]` selected points, dtype of `candidates`.

  Example:
    >>> logits = jnp.array([[[[-3.0, 0.1], [2.0, -0.5]]]])  # [1, 1, 2, 2]
    >>> centres = jnp.array([[[0.25, 0.25], [0.75, 0.25], [0.75, 0.75]]])
    >>> jaxmask.select_uncertain_points(logits, centres, num_uncertain=2,
    ...                                 implementation="plain")
    Array([[[0.75, 0.25],
            [0.75, 0.75]]], dtype=float32)
  """
  logits = checks.array(logits, "logits")
  candidates = checks.array(candidates, "candidates")
  _check_mask_logits(logits)
  _check_coords(candidates, "candidates", "[num_masks, num_candidates, 2]")
  checks.same_size(logits, candidates, 0, ("logits", "candidates"),
                   "num_masks (first axis)")
  num_uncertain = checks.python_int(num_uncertain, "num_uncertain", 0)
  checks.callable_(uncertainty_fn, "uncertainty_fn")
  if num_uncertain > candidates.shape[1]:
    raise ValueError(
        f"num_uncertain must lie in [0, num_candidates={candidates.shape[1]}],"
        f" got {num_uncertain}.")
  impl.check(implementation)
  if candidates.shape[0] == 0 or num_uncertain == 0:
    return jnp.zeros((candidates.shape[0], num_uncertain, 2), candidates.dtype)
  return _select_core(lax.stop_gradient(logits),
                      lax.stop_gradient(candidates), num_uncertain,
                      uncertainty_fn, implementation)


@functools.partial(jax.jit, static_argnames=("num_uncertain", "uncertainty_fn",
                                             "implementation"))
def _select_core(logits, candidates, num_uncertain, uncertainty_fn,
                 implementation):
  score = scorer(uncertainty_fn)
  return impl.choose(
      implementation,
      plain=lambda l, c: _most_uncertain(l, c, num_uncertain, score),
      xla_cpu=lambda l, c: xla_cpu_selection.select_uncertain_points(
          l, c, num_uncertain, score),
      operands=(logits, candidates))


def check_key(key) -> None:
  if not isinstance(key, jax.Array):
    raise TypeError(f"key must be a jax.random key, got {type(key).__name__}.")
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    if key.ndim != 0:
      raise ValueError(f"key must be a single key, got shape {key.shape}.")
  elif key.dtype != jnp.uint32 or key.shape != (2,):
    raise TypeError("key must be a jax.random key (jax.random.key(seed), or"
                    " a raw uint32[2] jax.random.PRNGKey(seed)), got"
                    f" {key.dtype}{list(key.shape)}.")


def check_sampling_options(key, num_points, oversample_ratio,
                           importance_sample_ratio, implementation):
  """Validates `sample_points_using_uncertainty`'s key and options."""
  check_key(key)
  impl.check(implementation)
  num_points = checks.python_int(num_points, "num_points", 1)
  oversample_ratio = checks.python_number(oversample_ratio,
                                          "oversample_ratio", 1.0, 2**31)
  importance_sample_ratio = checks.python_number(
      importance_sample_ratio, "importance_sample_ratio", 0.0, 1.0)
  if int(num_points * oversample_ratio) > 2**31 - 1:  # int32 indices
    raise ValueError(
        "num_points * oversample_ratio (the candidates per mask) must be"
        f" < 2**31, got {num_points} * {oversample_ratio}.")
  return num_points, oversample_ratio, importance_sample_ratio


def sample_points_using_uncertainty(
    key: jax.Array,
    logits: jax.typing.ArrayLike,
    *,
    num_points: int,
    oversample_ratio: float = 3.0,
    importance_sample_ratio: float = 0.75,
    uncertainty_fn: UncertaintyFn = calculate_uncertainty,
    implementation: impl.Implementation | None = None,
) -> jax.Array:
  """Samples points in [0, 1]² biased towards uncertain mask logits.

  Equivalent to HF transformers' `Mask2FormerLoss.sample_points_using_uncertainty`
  and detectron2's `get_uncertain_point_coords_with_randomness`. With P =
  `num_points`:

  1. `M = int(P * oversample_ratio)` uniform candidates per mask,
     `jax.random.uniform(candidate_key, (num_masks, M, 2))`;
  2. `select_uncertain_points` keeps `K = int(importance_sample_ratio * P)`;
  3. `P - K` fresh points, `jax.random.uniform(fresh_key, (num_masks, P - K,
     2))`, are appended.

  Here `candidate_key, fresh_key = jax.random.split(key)`, and both draws are
  float32 (`dtype=jnp.float32`, also under `jax_enable_x64`), so the
  candidates and fresh points can be reproduced (e.g. to feed `torch_ref`);
  every implementation draws them bit for bit alike. No gradient flows through the
  result. Defaults (P = 12544, 3.0, 0.75) give 37632 candidates, 9408
  uncertain and 3136 fresh points per mask.

  Args:
    key: a `jax.random` key.
    logits: `[num_masks, 1, height, width]` floating mask logits.
    num_points: P >= 1, a Python int.
    oversample_ratio: r >= 1, finite.
    importance_sample_ratio: fraction in [0, 1] of points chosen by
      uncertainty.
    uncertainty_fn: see `select_uncertain_points`.
    implementation: `None` (the XLA:CPU kernels on CPU, the plain algorithm
      elsewhere), `"plain"` or `"xla_cpu"`.

  Returns:
    `[num_masks, num_points, 2]` float32 `(x, y)` points in [0, 1): first the
    K uncertain ones, as a set (their order is `select_uncertain_points`'),
    then the P - K fresh ones in the order drawn.

  Example:
    >>> logits = jax.random.normal(jax.random.key(1), (4, 1, 32, 32))
    >>> jaxmask.sample_points_using_uncertainty(
    ...     jax.random.key(0), logits, num_points=100).shape
    (4, 100, 2)
  """
  num_points, oversample_ratio, importance_sample_ratio = (
      check_sampling_options(key, num_points, oversample_ratio,
                             importance_sample_ratio, implementation))
  checks.callable_(uncertainty_fn, "uncertainty_fn")
  logits = checks.array(logits, "logits")
  _check_mask_logits(logits)

  return sample_needed_points(
      key, logits, None, num_points=num_points,
      oversample_ratio=oversample_ratio,
      importance_sample_ratio=importance_sample_ratio,
      uncertainty_fn=uncertainty_fn, implementation=implementation)


def point_counts(num_points, oversample_ratio, importance_sample_ratio):
  """`(candidates, uncertain points)` per mask: `int(P * r)`, `int(b * P)`.

  The originals' counts (HF's `Mask2FormerLoss.sample_points_using_uncertainty`).
  """
  return (int(num_points * oversample_ratio),
          int(importance_sample_ratio * num_points))


def sample_needed_points(key, logits, needed, *, num_points, oversample_ratio,
                         importance_sample_ratio, implementation,
                         uncertainty_fn=calculate_uncertainty):
  """`sample_points_using_uncertainty` of validated arguments, for the rows
  where `needed [N]` is True (every row where `needed` is None).

  A row not needed may get zeros for its uncertain points instead (the
  XLA:CPU kernel skips a chunk of such rows); the points of every needed
  row are those of `sample_points_using_uncertainty`, bit for bit.
  """
  num_candidates, num_uncertain = point_counts(num_points, oversample_ratio,
                                               importance_sample_ratio)
  if logits.shape[0] == 0:
    return jnp.zeros((0, num_points, 2), jnp.float32)
  return _sample_core(key, lax.stop_gradient(logits), needed, num_candidates,
                      num_uncertain, num_points - num_uncertain,
                      uncertainty_fn, implementation)


@functools.partial(jax.jit, static_argnames=(
    "num_candidates", "num_uncertain", "num_fresh", "uncertainty_fn",
    "implementation"))
def _sample_core(key, logits, needed, num_candidates, num_uncertain,
                 num_fresh, uncertainty_fn, implementation):
  num_masks = logits.shape[0]
  score = scorer(uncertainty_fn)

  def plain(key, logits):
    candidate_key, fresh_key = jax.random.split(key)
    candidates = jax.random.uniform(
        candidate_key, (num_masks, num_candidates, 2), jnp.float32)
    uncertain = _most_uncertain(logits, candidates, num_uncertain, score)
    fresh = jax.random.uniform(fresh_key, (num_masks, num_fresh, 2),
                               jnp.float32)
    return jnp.concatenate([uncertain, fresh], axis=1)

  def xla_cpu(key, logits):
    candidate_key, fresh_key = jax.random.split(key)
    uncertain = xla_cpu_selection.select_uniform_candidates(
        candidate_key, logits, num_candidates, num_uncertain, score, needed)
    fresh = xla_cpu_threefry.uniform(fresh_key, (num_masks, num_fresh, 2))
    return jnp.concatenate([uncertain, fresh], axis=1)

  return impl.choose(implementation, plain=plain, xla_cpu=xla_cpu,
                     operands=(key, logits))


# ------------------------------------------------------------ on the grid


def uncertain_point_coords_on_grid(
    uncertainty_map: jax.typing.ArrayLike,
    *,
    num_points: int,
) -> tuple[jax.Array, jax.Array]:
  """Finds the most uncertain cells of a regular grid (PointRend inference).

  Equivalent to detectron2's `get_uncertain_point_coords_on_grid`: takes the
  `K = min(num_points, H * W)` highest-scoring cells of each map (in
  decreasing order; ties keep the lower flat index first) and returns their
  flat indices `row * W + col` and cell-centre coordinates
  `(0.5 / W + col / W, 0.5 / H + row / H)`, computed as detectron2 does in
  float32. No gradient flows through the result.

  Args:
    uncertainty_map: `[num_masks, 1, height, width]` floating scores, higher
      meaning more uncertain.
    num_points: P >= 1, a Python int.

  Returns:
    `(flat_indices, coords)`: `[num_masks, K]` int32 indices into `H * W` and
    `[num_masks, K, 2]` float32 `(x, y)` coordinates in (0, 1).

  Example:
    >>> scores = jnp.array([[[[0.1, 0.9], [0.5, 0.2]]]])  # [1, 1, 2, 2]
    >>> index, coords = jaxmask.uncertain_point_coords_on_grid(
    ...     scores, num_points=2)
    >>> index
    Array([[1, 2]], dtype=int32)
    >>> coords
    Array([[[0.75, 0.25],
            [0.25, 0.75]]], dtype=float32)
  """
  uncertainty_map = checks.array(uncertainty_map, "uncertainty_map")
  _check_mask_logits(uncertainty_map, "uncertainty_map")
  num_points = checks.python_int(num_points, "num_points", 1)

  num_masks, _, height, width = uncertainty_map.shape
  num_points = min(num_points, height * width)
  scores = lax.stop_gradient(uncertainty_map).reshape(num_masks, height * width)
  _, flat_indices = lax.top_k(scores, num_points)
  col = (flat_indices % max(width, 1)).astype(jnp.float32)
  row = (flat_indices // max(width, 1)).astype(jnp.float32)
  w_step = 1.0 / width if width else 0.0
  h_step = 1.0 / height if height else 0.0
  x = jnp.float32(w_step / 2) + col * jnp.float32(w_step)
  y = jnp.float32(h_step / 2) + row * jnp.float32(h_step)
  return flat_indices, jnp.stack([x, y], axis=-1)
