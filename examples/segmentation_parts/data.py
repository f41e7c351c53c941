"""The segmentation example's data: synthetic shapes, drawn from a fixed seed.

`images [N, S, S, 3]` uint8, `ids [N, S, S]` uint8 (0: background, t + 1:
instance t, its visible pixels) and `labels [N, T]` int32 (-1: no instance),
T = max_instances.
"""

import jax
import jax.numpy as jnp
import numpy as np

CLASSES = ("disc", "square", "triangle")
DATA_SEED = 0  # The data set is the same for every seed and loss.


def shape_mask(kind: int, yy, xx, cy, cx, radius) -> np.ndarray:
  """A disc, an upright square or an upright equilateral triangle.

  `radius` is the disc's radius and the triangle's circumradius; the square's
  half side is 0.8 `radius`, so the three are of comparable size.
  """
  dy, dx = yy - cy, xx - cx
  if kind == 0:
    return dx * dx + dy * dy <= radius * radius
  if kind == 1:
    return (np.abs(dx) <= 0.8 * radius) & (np.abs(dy) <= 0.8 * radius)
  inside = np.ones(dx.shape, bool)
  for angle in (np.pi / 2, np.pi / 2 + 2 * np.pi / 3, np.pi / 2 + 4 * np.pi / 3):
    inside &= np.cos(angle) * dx + np.sin(angle) * dy <= radius / 2
  return inside


def render_image(rng: np.random.Generator, size: int, max_instances: int):
  """One image, its instance-id map and its padded labels."""
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
  while True:
    low, high = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = ((np.cos(angle) * xx + np.sin(angle) * yy) / size + 1) / 2
    image = low + 0.5 * (high - low) * ramp[..., None]
    count = rng.integers(1, max_instances + 1)
    labels = rng.integers(0, len(CLASSES), count)
    ids = np.zeros((size, size), np.uint8)
    areas = []
    for i in range(count):
      radius = rng.uniform(0.12, 0.28) * size
      cy, cx = rng.uniform(0.6 * radius, size - 0.6 * radius, 2)
      mask = shape_mask(labels[i], yy, xx, cy, cx, radius)
      under = image[mask].mean(0)
      colour = rng.uniform(0, 1, 3)
      while np.abs(colour - under).sum() < 0.5:  # Visible against its ground.
        colour = rng.uniform(0, 1, 3)
      shade = colour + 0.15 * rng.uniform(-1, 1) * (ramp[..., None] - 0.5)
      image = np.where(mask[..., None], shade, image)
      ids[mask] = i + 1
      areas.append(mask.sum())
    visible = np.bincount(ids.ravel(), minlength=count + 1)[1:]
    # Overlap, but every instance keeps 40% of itself (and 30 pixels at 128²).
    if np.all(visible >= 0.4 * np.asarray(areas)) and np.all(
        visible >= 30 * (size / 128) ** 2):
      break
  image = image + rng.normal(0, rng.uniform(0.02, 0.08), image.shape)
  padded = np.full(max_instances, -1, np.int32)
  padded[:count] = labels
  return np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8), ids, padded


def make_dataset(num_images: int, size: int, max_instances: int,
                 split: int) -> dict[str, np.ndarray]:
  """`num_images` images drawn from the fixed seed `(DATA_SEED, split)`."""
  rng = np.random.default_rng([DATA_SEED, split])
  images, ids, labels = zip(*(render_image(rng, size, max_instances)
                              for _ in range(num_images)))
  return dict(images=np.stack(images), ids=np.stack(ids),
              labels=np.stack(labels))


def one_hot_instances(ids, num_targets: int) -> jax.Array:
  """`ids [..., S, S]` -> `[..., T, S, S]` bool: instance t's pixels."""
  instance = jnp.arange(1, num_targets + 1, dtype=ids.dtype)
  return ids[..., None, :, :] == instance[:, None, None]


def block_mean(x, side: int) -> jax.Array:
  """`[..., S, S]` -> `[..., side, side]`: the mean of each (S/side)² block."""
  f = x.shape[-1] // side
  return x.reshape(*x.shape[:-2], side, f, side, f).mean((-3, -1))


def targets(batch):
  """`(masks [B, T, S, S] bool, labels [B, T] >= 0, valid [B, T])`."""
  masks = one_hot_instances(batch["ids"], batch["labels"].shape[1])
  valid = batch["labels"] >= 0
  return masks, jnp.maximum(batch["labels"], 0), valid



def instance_masks(ids, num_targets: int, side: int) -> jax.Array:
  """`[B, T, side, side]`: each instance's share of every cell of a grid."""
  return block_mean(one_hot_instances(ids, num_targets), side)



def sample_batch(rng: np.random.Generator, data, batch_size: int):
  """A batch drawn with replacement."""
  index = rng.integers(0, len(data["images"]), batch_size)
  return {k: jnp.asarray(v[index]) for k, v in data.items()}
