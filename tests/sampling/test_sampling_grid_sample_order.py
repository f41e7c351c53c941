"""grid_sample's order of operations, the same bits in every implementation.

The plain sampler, the XLA:CPU kernel and the criterion's shared-point
sampler compute grid_sample's bilinear rule in its source's order. They used
to leave XLA free to contract multiply-adds, which it did in one program and
not in another (even for x and not for y within one): the plain sampler
differed from the kernel in the last bit on 10-17% of values, even on a
constant map, so near-ties selected different points and `mask2former_loss`
differed by ~0.7% between implementations with one key. Every product is now
rounded where it stands (`jaxmask._src.grid`), and every sampler equals a
float32 NumPy transcription of grid_sample's source bit for bit. PyTorch's
compiled grid_sample contracts its multiply-adds (FMA hardware, CUDA), so it
is compared to within an ulp of the position and of each product.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmask
from jaxmask._src import criterion

IMPLEMENTATIONS = (None, "plain", "xla_cpu")
_CONSTANTS = (0.7310586, -1.3, 0.1, 3.0e-3)
_F = np.float32


def _np_grid_sample(maps, coords):
  """grid_sample(maps, 2 * coords - 1) as its source reads, in float32.

  aten/src/ATen/native/GridSampler.h and cuda/GridSampler.cu: bilinear, zero
  padding, align_corners=False; every operation rounded on its own (NumPy
  fuses no multiply-add).
  """
  n, c, h, w = maps.shape
  grid = _F(2) * coords - _F(1)
  ix = ((grid[..., 0] + _F(1)) * _F(w) - _F(1)) / _F(2)
  iy = ((grid[..., 1] + _F(1)) * _F(h) - _F(1)) / _F(2)
  x0, y0 = np.floor(ix), np.floor(iy)
  x1, y1 = x0 + _F(1), y0 + _F(1)
  weights = ((x1 - ix) * (y1 - iy), (ix - x0) * (y1 - iy),
             (x1 - ix) * (iy - y0), (ix - x0) * (iy - y0))

  def pixel(x, y):
    on_map = (x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)
    col = np.clip(x, 0, w - 1).astype(int)[:, None, :]
    row = np.clip(y, 0, h - 1).astype(int)[:, None, :]
    value = maps[np.arange(n)[:, None, None], np.arange(c)[None, :, None],
                 row, col]
    return np.where(on_map[:, None, :], value, _F(0))

  values = (pixel(x0, y0), pixel(x1, y0), pixel(x0, y1), pixel(x1, y1))
  out = values[0] * weights[0][:, None]
  for value, weight in zip(values[1:], weights[1:]):
    out = out + value * weight[:, None]
  assert out.dtype == _F
  return out


def _maps(kind, shape, rng):
  if kind == "random":
    return rng.standard_normal(shape).astype(_F)
  return np.full(shape, _CONSTANTS[kind], _F)


_SHAPES = [  # N, C, H, W, P: the kernel's padded and clamped (8+ pixels per
    (3, 1, 16, 16, 4000),  # point) paths, one and several channels
    (2, 1, 13, 29, 3000),
    (2, 3, 7, 5, 2000),
    (2, 1, 96, 80, 500),
    (1, 4, 64, 48, 300),
    (1, 1, 255, 257, 2000),
]
_KINDS = ["random", *range(len(_CONSTANTS))]
_kind_id = lambda k: k if k == "random" else f"constant{k}"


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("shape", _SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("kind", _KINDS, ids=_kind_id)
def test_point_sample_follows_grid_sample_bit_for_bit(kind, shape,
                                                      implementation):
  n, c, h, w, p = shape
  rng = np.random.default_rng([_KINDS.index(kind), *shape])
  maps = _maps(kind, (n, c, h, w), rng)
  # Inside the map, and beyond it on every side (the zero padding).
  coords = rng.uniform(-0.1, 1.1, (n, p, 2)).astype(_F)
  want = _np_grid_sample(maps, coords)
  got = jaxmask.point_sample(maps, coords, implementation=implementation)
  np.testing.assert_array_equal(np.asarray(got), want)
  jitted = jax.jit(lambda m, x: jaxmask.point_sample(
      m, x, implementation=implementation))
  np.testing.assert_array_equal(np.asarray(jitted(maps, coords)), want)


@pytest.mark.parametrize("kind", ["random", 0, 1], ids=_kind_id)
def test_the_criterions_shared_point_sampler_follows_grid_sample(kind):
  """`mask_matching_cost` samples all masks at shared points: the same rule."""
  rng = np.random.default_rng(7)
  maps = _maps(kind, (5, 13, 29), rng)
  coords = rng.uniform(-0.1, 1.1, (3000, 2)).astype(_F)
  want = _np_grid_sample(maps[None], coords[None])[0]
  for pixel_major in (True, False):
    table = (criterion._pixel_rows(maps) if pixel_major else
             maps.reshape(maps.shape[0], -1))
    got = jax.jit(lambda t, c, pm=pixel_major: criterion._sample_shared(
        t, maps.shape[-2:], c, pixel_major=pm))(table, coords)
    np.testing.assert_array_equal(np.asarray(got).T, want)


@pytest.mark.parametrize("shape", [(2, 3, 13, 29), (1, 1, 255, 257)])
def test_pytorch_agrees_to_an_ulp_of_the_position_and_the_products(shape):
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(8)
  maps = rng.standard_normal(shape).astype(_F)
  coords = rng.uniform(-0.1, 1.1, (shape[0], 3000, 2)).astype(_F)
  grid = 2.0 * torch.from_numpy(coords)[:, :, None, :] - 1.0
  want = torch.nn.functional.grid_sample(
      torch.from_numpy(maps), grid, mode="bilinear", padding_mode="zeros",
      align_corners=False)[..., 0].numpy()
  got = np.asarray(jaxmask.point_sample(maps, coords))
  # An ulp of the position (size * 2**-24) times the slope (at most 2 max|v|),
  # plus an ulp of each of the four products.
  scale = np.abs(maps).max() * 2.0**-24
  np.testing.assert_allclose(got, want, rtol=0,
                             atol=2 * scale * (2 * max(shape[2:]) + 8))


def test_gradients_agree_between_implementations_and_with_autodiff():
  """The rounding pass is the identity to autodiff (its JVP is the identity)."""
  rng = np.random.default_rng(3)
  maps = jnp.asarray(rng.standard_normal((2, 2, 9, 11)).astype(_F))
  coords = jnp.asarray(rng.uniform(-0.1, 1.1, (2, 50, 2)).astype(_F))

  def grad(implementation):
    return jax.grad(lambda m, x: jnp.sum(jaxmask.point_sample(
        m, x, implementation=implementation) ** 2), argnums=(0, 1))(maps, coords)

  plain, kernel = grad("plain"), grad("xla_cpu")
  for a, b in zip(plain, kernel):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  # Against finite differences of the (exact) float64 NumPy rule.
  probe = rng.standard_normal(maps.shape)
  step = 1e-3
  loss = lambda m: np.sum(_np_grid_sample(m.astype(_F), np.asarray(coords))
                          .astype(np.float64) ** 2)
  m64 = np.asarray(maps, np.float64)
  numeric = (loss(m64 + step * probe) - loss(m64 - step * probe)) / (2 * step)
  np.testing.assert_allclose(np.vdot(np.asarray(plain[0]), probe), numeric,
                             rtol=2e-2)


@pytest.mark.parametrize("constant", [0.7310586, -0.02])
def test_near_ties_select_the_same_set_in_every_implementation(constant):
  """A constant logit map: every score ties up to the sampler's last bit."""
  logits = np.full((6, 1, 32, 32), constant, _F)
  points = [np.asarray(jaxmask.sample_points_using_uncertainty(
      jax.random.key(4), logits, num_points=300, implementation=i))
            for i in IMPLEMENTATIONS]
  k = int(0.75 * 300)
  as_set = lambda x: np.sort(x[:, :k].view(np.int64), axis=1)
  for got in points:
    np.testing.assert_array_equal(as_set(got), as_set(points[1]))
    np.testing.assert_array_equal(got[:, k:], points[1][:, k:])


@pytest.mark.parametrize("size", [16, 32])
def test_point_mask_losses_agree_between_implementations_on_near_ties(size):
  """A constant prediction: the points, so the sampled targets, must agree.

  (Here the implementations differed by 0.1-0.4% in both losses.)
  """
  pred = np.full((6, size, size), 0.7310586, _F)
  targets = np.random.default_rng(size).uniform(size=(6, 48, 48)) > 0.5
  out = [jaxmask.point_mask_losses(jax.random.key(1), pred, targets, 6.0,
                                   num_points=300, implementation=i)
         for i in IMPLEMENTATIONS]
  for got in out[1:]:
    np.testing.assert_allclose(got, out[0], rtol=2e-6)


def test_mask2former_loss_agrees_between_implementations_on_near_ties():
  """The issue's case: one key, a two-level map, the same losses."""
  rng = np.random.default_rng(5)
  L, B, Q, K, T = 2, 2, 5, 3, 3
  class_logits = rng.standard_normal((L, B, Q, K + 1)).astype(_F)
  mask_logits = np.full((L, B, Q, 24, 24), 0.25, _F)
  mask_logits[..., :12, :] = -0.25  # ties within each half
  labels = rng.integers(0, K, (B, T)).astype(np.int32)
  targets = rng.uniform(size=(B, T, 32, 32)) > 0.5
  valid = np.ones((B, T), bool)
  out = [jaxmask.mask2former_loss(
      jax.random.key(6), class_logits, mask_logits, labels, targets, valid,
      num_points=200, implementation=i) for i in IMPLEMENTATIONS]
  for got in out[1:]:
    for name, value in got.losses.items():
      np.testing.assert_allclose(value, out[0].losses[name], rtol=2e-6,
                                 err_msg=name)
