"""Helpers that tests of more than one concept folder share.

tests/<concept>/ holds one concept's unit, parity, golden, property, fuzz and
hostile-input tests; a helper that one folder alone uses stays in its test
file, and the helpers below, used by several folders, live here (tests/ is on
`sys.path`: `pythonpath` in pyproject.toml). Names keep the spelling of the
test files they came from, so that the test bodies read as before.

* Point sampling (tests/sampling, tests/point_losses, tests/xla_cpu): the
  public samplers jitted once, the documented random draws of
  `sample_points_using_uncertainty`, a float64 NumPy `grid_sample` (the
  oracle), the tolerance of a position rounded differently, and the selection
  rule of `_rules.py` applied against the plain algorithm.
* Parity and golden tests: a torch tensor from an array, seeded logits, the
  folder of the golden vectors (tests/golden).
"""

import functools
import pathlib

import jax
import numpy as np

import jaxmask
import _rules

GOLDEN_DIR = pathlib.Path(__file__).resolve().parent / "golden"


def torch_tensor(x):
  """`x` as a torch tensor (parity tests; they skip without torch first)."""
  import torch  # pylint: disable=g-import-not-at-top
  return torch.from_numpy(np.array(x))


def seeded_logits(shape, seed, scale=3.0):
  """float32 normal logits of standard deviation `scale`, from `seed`."""
  return (np.random.default_rng(seed).normal(size=shape) * scale).astype(np.float32)


# ---------------------------------------------------------------------------
# Point sampling: tests/sampling, tests/point_losses, tests/xla_cpu.
# ---------------------------------------------------------------------------

# Jitted once per shape and implementation: eager dispatch would compile every
# primitive.
point_sample = jax.jit(jaxmask.point_sample,
                       static_argnames=("implementation",))
select_uncertain_points = jax.jit(
    jaxmask.select_uncertain_points,
    static_argnames=("num_uncertain", "uncertainty_fn", "implementation"))


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def documented_draws(key, num_masks, num_candidates, num_fresh):
  """The candidates and fresh points sample_points_using_uncertainty draws."""
  candidate_key, fresh_key = jax.random.split(key)
  return (jax.random.uniform(candidate_key, (num_masks, num_candidates, 2)),
          jax.random.uniform(fresh_key, (num_masks, num_fresh, 2)))


def np_grid_sample(inputs, coords):
  """float64 bilinear sampling, zero padding per neighbour, [N,C,P]."""
  inputs = np.asarray(inputs, np.float64)
  coords = np.asarray(coords, np.float64)
  n, c, h, w = inputs.shape
  ix = coords[..., 0] * w - 0.5
  iy = coords[..., 1] * h - 0.5
  x0, y0 = np.floor(ix), np.floor(iy)
  out = np.zeros((n, c, coords.shape[1]))
  for dx in (0, 1):
    for dy in (0, 1):
      x, y = x0 + dx, y0 + dy
      weight = (1 - np.abs(ix - x)) * (1 - np.abs(iy - y))
      valid = (x >= 0) & (x < w) & (y >= 0) & (y < h)
      xi = np.clip(x, 0, w - 1).astype(int)
      yi = np.clip(y, 0, h - 1).astype(int)
      vals = inputs[np.arange(n)[:, None, None], np.arange(c)[None, :, None],
                    yi[:, None], xi[:, None]]
      out += np.where(valid[:, None], vals * weight[:, None], 0.0)
  return out


def position_rounding_tolerance(inputs, coords):
  """How far a float32 sample may move when its pixel position is rounded
  differently (a multiply-add contracted in one program, not in another).

  grid_sample's position `((2x - 1 + 1) * size - 1) / 2` then moves by at
  most half an ulp of `2 * size` pixels; the value moves by that times the
  local slope of the bilinear surface along the axis (measured on the float64
  oracle, on both sides of a pixel edge), plus a few ulps of its own.
  """
  inputs, coords = np.asarray(inputs), np.asarray(coords, np.float64)
  h, w = inputs.shape[2:]
  value = np_grid_sample(inputs, coords)
  tol = 4 * np.spacing(np.abs(value).astype(np.float32)).astype(np.float64)
  for axis, size in ((0, w), (1, h)):
    step = np.zeros(2)
    step[axis] = 1e-3 / size  # 1e-3 px
    slope = np.maximum(np.abs(np_grid_sample(inputs, coords + step) - value),
                       np.abs(np_grid_sample(inputs, coords - step) - value)
                       ) / 1e-3  # per pixel
    tol += float(np.spacing(np.float32(2 * size))) / 2 * slope
  return tol


def _data(seed, n, c, h, w, p, low=0.0, high=1.0):
  rng = np.random.default_rng(seed)
  inputs = rng.normal(size=(n, c, h, w)).astype(np.float32)
  coords = rng.uniform(low, high, size=(n, p, 2)).astype(np.float32)
  return inputs, coords


def _scores(logits, candidates, implementation):
  """Each candidate's uncertainty as `implementation` samples it, `[n, M]`."""
  return -np.abs(np.asarray(point_sample(
      logits, candidates, implementation=implementation))[:, 0])


def assert_same_selection_as_plain(got, logits, candidates, k,
                                   implementation):
  """`got` (by `implementation`) selects the plain algorithm's set.

  Compared under the rule of `_rules.py`: the kernel's sampled logits agree
  with the plain ones to float rounding (1e-6 here), so a candidate may be in
  one set and not the other only at a near-tie with the k-th score.
  """
  logits, candidates = np.asarray(logits), np.asarray(candidates)
  want = select_uncertain_points(logits, candidates, num_uncertain=k,
                                 implementation="plain")
  _rules.assert_same_selection(
      got, want, candidates,
      got_scores=_scores(logits, candidates, implementation),
      want_scores=_scores(logits, candidates, "plain"), k=k, tol=1e-6)
