"""Mask2Former's Table 5 in miniature: the point loss against the full-mask loss.

A Flax (NNX) + optax example. Mask2Former (Cheng et al., CVPR 2022) computes
its mask losses at a few thousand sampled points per mask instead of at every
pixel, and its Table 5 reports the same quality for about a third of the
training memory. This example runs that comparison end to end on data the
code draws itself:

- **Data**: a synthetic instance-segmentation set from a fixed seed: discs,
  squares and triangles (K = 3 classes, upright), 1-4 instances per image, of
  varied size, position and colour, overlapping (each instance's target is
  its visible part), on shaded backgrounds with Gaussian noise of varied
  strength. The held-out test images come from another seed.
- **Model**, in Mask2Former's form: a small convolutional backbone
  (pretrained once, shared by every run, as Mask2Former starts from an
  ImageNet checkpoint: here by classifying the training instances from their
  true masks, see `ShapeClassifier`) and an
  FPN pixel decoder give per-pixel embeddings at 1/4 of the image size and
  multi-scale features at 1/16 and 1/8; a transformer decoder updates Q
  learned queries layer by layer (masked cross-attention to the multi-scale
  features in turn, self-attention, an MLP); each query gets class logits
  `[K + 1]` and mask logits (its embedding dot the per-pixel embeddings),
  from the learned queries and after every layer, so that every decoder
  layer has its auxiliary loss.
- **Losses**: `jaxmask.mask2former_loss`, identical matching (on the same
  points) and class loss; the mask losses either at `num_points` sampled
  points per mask (`point`: uncertain points of the prediction plus random
  ones; by default Mask2Former's 12544 points at 1024² scaled to the target
  area, 196 at 128²) or over every target pixel with the 1/4-resolution
  logits upsampled (`full`, `num_points=None`). As in Mask2Former the logits
  are at 1/4 of the target resolution. Both models of a seed start from the
  same parameters and see the same batches and keys, so the table also gives
  their difference seed by seed.

Reported per loss, over the seeds, on the held-out images: panoptic quality
(PQ, with SQ and RQ) after Mask2Former's panoptic inference, and the mean
mask IoU and class accuracy of the instances matched one to one to queries
by mask IoU; and the train step's memory (XLA's compiled memory analysis:
temporaries + arguments + outputs) and wall time. Output under `--out`: a
table, `results.json`, `curves.png` (training loss, test PQ and mIoU) and
`predictions.png` (test images with true and predicted masks).

Usage (from the repository root, with jaxmask importable: `pip install -e
".[examples]"` or `PYTHONPATH=.`):
  python examples/segmentation.py                  # both losses, 3 seeds
  python examples/segmentation.py --quick          # a smoke run, ~50 s
  python examples/segmentation.py --steps 1200 --eval-every 200  # longer
"""

import argparse
import concurrent.futures
import functools
import io
import json
import os
import sys
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
import tqdm

import jaxmask

CLASSES = ("disc", "square", "triangle")
LOSSES = ("point", "full")
METRICS = ("pq", "sq", "rq", "miou", "accuracy")
DATA_SEED = 0  # The data set is the same for every seed and loss.
# Mask2Former samples 12544 = 112² points per mask for targets padded to
# 1024²; the default keeps that fraction of the target's pixels.
REFERENCE_POINTS, REFERENCE_SIZE = 12544, 1024
# Mask2Former's panoptic inference: a query is kept when its best class is
# an object with probability above this, and its segment when at least this
# fraction of its mask survives the argmax over the kept queries.
OBJECT_THRESHOLD, OVERLAP_THRESHOLD = 0.8, 0.8


class Config(NamedTuple):
  """Hyper-parameters of one run (static under jit)."""

  loss: str
  image_size: int
  max_instances: int
  num_points: int
  matcher_points: int
  steps: int
  eval_every: int
  batch_size: int
  learning_rate: float
  weight_decay: float
  layers: int
  queries: int
  dim: int
  class_weight: float


# --------------------------------------------------------------------------
# Data: `images [N, S, S, 3]` uint8, `ids [N, S, S]` uint8 (0: background,
# t + 1: instance t, its visible pixels) and `labels [N, T]` int32 (-1: no
# instance), T = max_instances.


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


# --------------------------------------------------------------------------
# Model.


class Attention(nnx.Module):
  """Multi-head attention; `mask [B, Nq, Nk]` True where a query may look."""

  def __init__(self, dim: int, heads: int, *, rngs: nnx.Rngs):
    self.heads = heads
    self.query = nnx.Linear(dim, dim, rngs=rngs)
    self.key = nnx.Linear(dim, dim, rngs=rngs)
    self.value = nnx.Linear(dim, dim, rngs=rngs)
    self.out = nnx.Linear(dim, dim, rngs=rngs)

  def __call__(self, q, k, v, mask=None):
    b, n, d = q.shape
    split = lambda x: x.reshape(*x.shape[:2], self.heads, d // self.heads)
    q, k, v = split(self.query(q)), split(self.key(k)), split(self.value(v))
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(d // self.heads)
    if mask is not None:
      logits = jnp.where(mask[:, None], logits, -1e9)
    weights = jax.nn.softmax(logits, axis=-1)
    return self.out(jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, n, d))


class DecoderLayer(nnx.Module):
  """Mask2Former's layer: masked cross-attention, self-attention, MLP."""

  def __init__(self, dim: int, heads: int, *, rngs: nnx.Rngs):
    self.cross = Attention(dim, heads, rngs=rngs)
    self.self_attention = Attention(dim, heads, rngs=rngs)
    self.norms = nnx.List([nnx.LayerNorm(dim, rngs=rngs) for _ in range(3)])
    self.hidden = nnx.Linear(dim, 2 * dim, rngs=rngs)
    self.output = nnx.Linear(2 * dim, dim, rngs=rngs)

  def __call__(self, x, query_pos, memory, memory_pos, mask):
    x = self.norms[0](x + self.cross(x + query_pos, memory + memory_pos,
                                     memory, mask))
    x = self.norms[1](x + self.self_attention(x + query_pos, x + query_pos, x))
    return self.norms[2](x + self.output(nnx.relu(self.hidden(x))))


def upsample2(x: jax.Array) -> jax.Array:
  """Nearest-neighbour 2x upsampling of `[B, H, W, C]`."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def space_to_depth2(x: jax.Array) -> jax.Array:
  """`[B, H, W, C]` -> `[B, H/2, W/2, 4C]`: each 2x2 block as channels."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h // 2, w // 2, 4 * c)


class ConvNorm(nnx.Module):
  """Convolution, GroupNorm (8 groups), ReLU."""

  def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, *,
               rngs: nnx.Rngs):
    self.conv = nnx.Conv(cin, cout, (kernel, kernel), stride, rngs=rngs)
    self.norm = nnx.GroupNorm(cout, num_groups=8, rngs=rngs)

  def __call__(self, x):
    return nnx.relu(self.norm(self.conv(x)))


WIDTHS = (16, 32, 64, 96)  # Backbone channels at 1/2, 1/4, 1/8 and 1/16.


class Backbone(nnx.Module):
  """A small convolutional backbone: features at 1/4, 1/8 and 1/16.

  The image as 2x2 blocks, a 3x3 convolution at 1/2, then stride-2
  convolutions to 1/4, 1/8 and 1/16 with a residual block at each (a 4x4
  patch stem straight to 1/4 is cheaper, but its features did not learn to
  tell the shapes apart within this example's budget).
  """

  def __init__(self, *, rngs: nnx.Rngs):
    c0, c1, c2, c3 = WIDTHS
    block = functools.partial(ConvNorm, rngs=rngs)
    self.stem = nnx.List([block(12, c0), block(c0, c1, stride=2)])
    self.stages = nnx.List([block(c1, c1), block(c2, c2), block(c3, c3)])
    self.downs = nnx.List([block(c1, c2, stride=2), block(c2, c3, stride=2)])

  def __call__(self, images):
    """`images [B, S, S, 3]` uint8 -> `(f1, f2, f3)` at 1/4, 1/8, 1/16."""
    x = space_to_depth2(images.astype(jnp.float32) / 255.0 - 0.5)
    for layer in self.stem:
      x = layer(x)
    features = []
    for i, stage in enumerate(self.stages):
      if i:
        x = self.downs[i - 1](x)
      x = x + stage(x)
      features.append(x)
    return tuple(features)


def instance_masks(ids, num_targets: int, side: int) -> jax.Array:
  """`[B, T, side, side]`: each instance's share of every cell of a grid."""
  return block_mean(one_hot_instances(ids, num_targets), side)


class ShapeClassifier(nnx.Module):
  """The backbone's pretraining task: each instance's class from its 1/16
  features averaged over its true mask, by a linear head.

  Mask2Former starts from an ImageNet-pretrained backbone; this example has
  no such checkpoint and no downloads, so it pretrains its backbone on the
  training images' instance labels instead (the same images and labels the
  criterion sees). Trained from scratch by the criterion alone, the backbone
  learns to tell the shapes apart far more slowly than the masks: after 800
  steps of 4 images, a linear probe on its 1/16 features classifies 50-60% of
  the held-out instances from their true masks; 300 steps of 8 images of this
  task reach 74%.
  """

  def __init__(self, *, rngs: nnx.Rngs):
    self.backbone = Backbone(rngs=rngs)
    self.head = nnx.Linear(WIDTHS[-1], len(CLASSES), rngs=rngs)

  def __call__(self, images, ids, num_targets: int):
    """`[B, T, K]` class logits of every (padded) instance slot."""
    f3 = self.backbone(images)[-1]
    masks = instance_masks(ids, num_targets, f3.shape[1])
    area = jnp.maximum(masks.sum((2, 3)), 1e-6)[..., None]
    return self.head(jnp.einsum("bthw,bhwc->btc", masks, f3) / area)


class MaskFormer(nnx.Module):
  """A small mask-classification network in Mask2Former's form.

  `__call__(images [B, S, S, 3] uint8)` returns `class_logits [L, B, Q, K +
  1]` and `mask_logits [L, B, Q, S/4, S/4]`, L = layers + 1: the prediction
  of the learned queries, then that of every decoder layer (the last is the
  model's output).

  `Backbone`, then a pixel decoder: an FPN (lateral 1x1s, a top-down path)
  whose 1/4 level gives the per-pixel mask embeddings and whose 1/16 and 1/8
  levels are the transformer decoder's memory.
  """

  def __init__(self, config: Config, *, rngs: nnx.Rngs, heads: int = 4):
    _, c1, c2, c3 = WIDTHS
    dim = config.dim
    block = functools.partial(ConvNorm, rngs=rngs)
    conv = functools.partial(nnx.Conv, rngs=rngs)
    self.backbone = Backbone(rngs=rngs)
    self.lateral3, self.lateral2 = conv(c3, dim, (1, 1)), conv(c2, dim, (1, 1))
    self.smooth2 = block(dim, dim)
    self.lateral1, self.reduce = conv(c1, c1, (1, 1)), conv(dim, c1, (1, 1))
    self.smooth1 = block(c1, c1)
    self.mask_features = conv(c1, c1, (1, 1))
    size = config.image_size
    self.level_sizes = (size // 16, size // 8)
    init = nnx.initializers.normal(0.02)
    self.level_pos = nnx.List([nnx.Param(init(rngs.params(), (s * s, dim)))
                               for s in self.level_sizes])
    self.query_feat = nnx.Param(init(rngs.params(), (config.queries, dim)))
    self.query_pos = nnx.Param(init(rngs.params(), (config.queries, dim)))
    self.layers = nnx.List([DecoderLayer(dim, heads, rngs=rngs)
                            for _ in range(config.layers)])
    self.norm = nnx.LayerNorm(dim, rngs=rngs)
    self.classes = nnx.Linear(dim, len(CLASSES) + 1, rngs=rngs)
    self.mask_mlp = nnx.List([nnx.Linear(dim, dim, rngs=rngs),
                              nnx.Linear(dim, dim, rngs=rngs),
                              nnx.Linear(dim, c1, rngs=rngs)])

  def pixel_decoder(self, images):
    """`(pixel embeddings [B, S/4, S/4, 32], (1/16 and 1/8 memories))`."""
    f1, f2, f3 = self.backbone(images)
    p3 = self.lateral3(f3)
    p2 = self.smooth2(self.lateral2(f2) + upsample2(p3))
    p1 = self.smooth1(self.lateral1(f1) + upsample2(self.reduce(p2)))
    return self.mask_features(p1), (p3, p2)

  def predict(self, queries, pixels):
    x = self.norm(queries)
    embedding = x
    for i, linear in enumerate(self.mask_mlp):
      embedding = linear(embedding if i == 0 else nnx.relu(embedding))
    return self.classes(x), jnp.einsum("bqc,bhwc->bqhw", embedding, pixels)

  def __call__(self, images):
    pixels, levels = self.pixel_decoder(images)
    b = images.shape[0]
    memories = [f.reshape(b, -1, f.shape[-1]) for f in levels]
    queries = jnp.broadcast_to(self.query_feat[...],
                               (b,) + self.query_feat.shape)
    query_pos = jnp.broadcast_to(self.query_pos[...], queries.shape)
    outputs = [self.predict(queries, pixels)]
    for i, layer in enumerate(self.layers):
      level = i % len(levels)
      side = self.level_sizes[level]
      # Masked attention: each query attends where its previous mask is
      # foreground at this level's resolution (everywhere if nowhere).
      masks = outputs[-1][1]
      pooled = block_mean(masks, side)
      attend = jax.lax.stop_gradient(pooled.reshape(*masks.shape[:2], -1) > 0)
      attend |= ~jnp.any(attend, axis=-1, keepdims=True)
      queries = layer(queries, query_pos, memories[level],
                      self.level_pos[level][...], attend)
      outputs.append(self.predict(queries, pixels))
    return (jnp.stack([c for c, _ in outputs]),
            jnp.stack([m for _, m in outputs]))


# --------------------------------------------------------------------------
# Training.


class TrainState(NamedTuple):
  params: Any  # nnx.State
  opt_state: Any


def make_optimizer(config: Config) -> optax.GradientTransformation:
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, config.learning_rate, min(100, config.steps // 10), config.steps)
  return optax.chain(optax.clip_by_global_norm(1.0),
                     optax.adamw(schedule, weight_decay=config.weight_decay))


def pretrain_backbone(data, test, *, steps: int, batch_size: int,
                      learning_rate: float, weight_decay: float, bar=None):
  """Pretrains a `Backbone` on `ShapeClassifier`'s task; once, for all runs.

  Mask2Former's runs share one ImageNet checkpoint; here every seed and loss
  shares this backbone, and each seed draws the rest of the model afresh.
  AdamW at a constant `learning_rate`, batches drawn with replacement from a
  fixed seed. Returns `(backbone state, accuracy)`: the held-out instances'
  class accuracy in %, of the classifier on their true masks.
  """
  num_targets = data["labels"].shape[1]
  graphdef, params = nnx.split(ShapeClassifier(
      rngs=nnx.Rngs(params=jax.random.key(DATA_SEED))))
  optimizer = optax.adamw(learning_rate, weight_decay=weight_decay)

  def loss_fn(params, batch):
    logits = nnx.merge(graphdef, params)(batch["images"], batch["ids"],
                                         num_targets)
    valid = batch["labels"] >= 0  # Every image has an instance.
    loss = optax.softmax_cross_entropy_with_integer_labels(
        logits, jnp.maximum(batch["labels"], 0))
    return jnp.sum(jnp.where(valid, loss, 0.0)) / jnp.sum(valid)

  @jax.jit
  def step(params, opt_state, batch):
    grads = jax.grad(loss_fn)(params, batch)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  @jax.jit
  def correct(params, test):
    logits = nnx.merge(graphdef, params)(test["images"], test["ids"],
                                         num_targets)
    valid = test["labels"] >= 0
    hits = valid & (jnp.argmax(logits, axis=-1) == test["labels"])
    return jnp.sum(hits), jnp.sum(valid)

  opt_state = optimizer.init(params)
  rng = np.random.default_rng([DATA_SEED, 2])
  for _ in range(steps):
    params, opt_state = step(params, opt_state,
                             sample_batch(rng, data, batch_size))
    if bar is not None:
      bar.update(1)
  hits, count = jax.device_get(correct(params, test))
  backbone = nnx.state(nnx.merge(graphdef, params).backbone)
  return backbone, float(100 * hits / max(count, 1))


def init_params(config: Config, key, backbone=None):
  """A model's parameters drawn from `key`; its backbone's from `backbone`
  (an `nnx.State` of `Backbone`) when given."""
  model = MaskFormer(config, rngs=nnx.Rngs(params=key))
  if backbone is not None:
    nnx.update(model.backbone, backbone)
  return nnx.split(model)[1]


def criterion(config: Config, key, class_logits, mask_logits, batch):
  """`jaxmask.mask2former_loss`; the two losses differ in `num_points` only."""
  masks, labels, valid = targets(batch)
  return jaxmask.mask2former_loss(
      key, class_logits, mask_logits, labels, masks, valid,
      class_weight=config.class_weight,
      num_points=config.num_points if config.loss == "point" else None,
      num_matcher_points=config.matcher_points)


def train_step(config: Config, graphdef, state: TrainState, batch, key):
  """One optimisation step of one model: `(new state, loss)`."""

  def loss_fn(params):
    class_logits, mask_logits = nnx.merge(graphdef, params)(batch["images"])
    return criterion(config, key, class_logits, mask_logits, batch).total

  loss, grads = jax.value_and_grad(loss_fn)(state.params)
  updates, opt_state = make_optimizer(config).update(grads, state.opt_state,
                                                     state.params)
  params = optax.apply_updates(state.params, updates)
  return TrainState(params, opt_state), loss


# --------------------------------------------------------------------------
# Inference and panoptic quality.


def panoptic_inference(class_logits, mask_logits, size: int):
  """Mask2Former's panoptic inference for one image (things only).

  `class_logits [Q, K + 1]`, `mask_logits [Q, h, w]` -> `(segments [Q, S, S]
  bool, non-overlapping; classes [Q]; kept [Q] bool)`.
  """
  probs = jax.nn.softmax(class_logits, axis=-1)
  scores, classes = jnp.max(probs, axis=-1), jnp.argmax(probs, axis=-1)
  keep = (classes != len(CLASSES)) & (scores > OBJECT_THRESHOLD)
  mask_logits = jax.image.resize(mask_logits, mask_logits.shape[:1] +
                                 (size, size), method="linear")
  mask_probs = jax.nn.sigmoid(mask_logits)
  weighted = jnp.where(keep[:, None, None], scores[:, None, None] * mask_probs,
                       -1.0)
  owner = jnp.argmax(weighted, axis=0)  # [S, S]
  owned = owner[None] == jnp.arange(class_logits.shape[0])[:, None, None]
  owned &= keep[:, None, None]
  confident = mask_probs >= 0.5
  segments = owned & confident
  area, original = owned.sum((1, 2)), confident.sum((1, 2))
  kept = (keep & (segments.sum((1, 2)) > 0) & (original > 0)
          & (area >= OVERLAP_THRESHOLD * original))
  return segments & kept[:, None, None], classes, kept


def pq_statistics(segments, classes, kept, ids, labels):
  """Per-class `[K, 4]` (IoU sum, TP, FP, FN) of one image's segments."""
  num_targets = labels.shape[0]
  truth = one_hot_instances(ids, num_targets)  # [T, S, S]
  valid = labels >= 0
  inter = jnp.einsum("qhw,thw->qt", segments.astype(jnp.float32),
                     truth.astype(jnp.float32))
  union = segments.sum((1, 2))[:, None] + truth.sum((1, 2))[None] - inter
  iou = inter / jnp.maximum(union, 1.0)
  # Segments do not overlap, so IoU > 0.5 pairs are unique (PQ's matching).
  match = ((iou > 0.5) & (classes[:, None] == labels[None]) & kept[:, None]
           & valid[None])
  onehot = lambda c: jax.nn.one_hot(c, len(CLASSES))
  tp_iou = jnp.sum(jnp.where(match, iou, 0.0), axis=1) @ onehot(classes)
  tp = jnp.sum(match, axis=1).astype(jnp.float32) @ onehot(classes)
  fp = (kept & ~jnp.any(match, axis=1)).astype(jnp.float32) @ onehot(classes)
  fn = (valid & ~jnp.any(match, axis=0)).astype(jnp.float32) @ onehot(labels)
  return jnp.stack([tp_iou, tp, fp, fn], axis=-1)


def matched_statistics(class_logits, mask_logits, ids, labels, size: int):
  """`[3]`: (IoU sum, correct classes, instances) of one image's matching.

  Every true instance is matched to a distinct query by maximum total mask
  IoU (`jaxmask.hungarian_match`, class-agnostic, no thresholds on scores);
  the matched query's mask (logit > 0, upsampled) gives the IoU and its most
  likely object class (no-object excluded) the class accuracy.
  """
  num_targets = labels.shape[0]
  truth = one_hot_instances(ids, num_targets).astype(jnp.float32)
  valid = labels >= 0
  masks = jax.image.resize(mask_logits, mask_logits.shape[:1] + (size, size),
                           method="linear") > 0
  masks = masks.astype(jnp.float32)
  inter = jnp.einsum("qhw,thw->qt", masks, truth)
  union = masks.sum((1, 2))[:, None] + truth.sum((1, 2))[None] - inter
  iou = inter / jnp.maximum(union, 1.0)  # [Q, T]
  query = jnp.maximum(
      jaxmask.hungarian_match(-iou, target_valid=valid).query_index, 0)
  matched_iou = iou[query, jnp.arange(num_targets)]
  predicted = jnp.argmax(class_logits[query, :len(CLASSES)], axis=-1)
  return jnp.stack([jnp.sum(jnp.where(valid, matched_iou, 0.0)),
                    jnp.sum(valid & (predicted == labels)),
                    jnp.sum(valid)]).astype(jnp.float32)


def evaluate(graphdef, params, test, image_size: int, batch_size: int = 20):
  """Summed statistics over the test set: `(pq [K, 4], matched [3])`."""
  model = nnx.merge(graphdef, params)

  def one_batch(batch):
    class_logits, mask_logits = model(batch["images"])
    class_logits, mask_logits = class_logits[-1], mask_logits[-1]
    segments, classes, kept = jax.vmap(
        panoptic_inference, (0, 0, None))(class_logits, mask_logits,
                                          image_size)
    pq = jax.vmap(pq_statistics)(segments, classes, kept, batch["ids"],
                                 batch["labels"])
    matched = jax.vmap(matched_statistics, (0, 0, 0, 0, None))(
        class_logits, mask_logits, batch["ids"], batch["labels"], image_size)
    return pq.sum(0), matched.sum(0)

  batches = jax.tree.map(
      lambda x: x.reshape(-1, batch_size, *x.shape[1:]), test)
  return jax.tree.map(lambda x: x.sum(0), jax.lax.map(one_batch, batches))


def scores(pq_stats: np.ndarray, matched: np.ndarray) -> dict[str, float]:
  """PQ, SQ and RQ (in %, averaged over the classes that occur), and the
  matched instances' mean mask IoU and class accuracy (in %)."""
  tp_iou, tp, fp, fn = np.moveaxis(np.asarray(pq_stats, np.float64), -1, 0)
  denominator = tp + 0.5 * fp + 0.5 * fn
  present = denominator > 0
  pq = np.where(present, tp_iou / np.maximum(denominator, 1e-9), 0.0)
  sq = np.where(tp > 0, tp_iou / np.maximum(tp, 1e-9), 0.0)
  rq = np.where(present, tp / np.maximum(denominator, 1e-9), 0.0)
  mean = lambda x: float(100 * x[present].mean()) if present.any() else 0.0
  iou_sum, correct, count = np.asarray(matched, np.float64)
  return dict(pq=mean(pq), sq=mean(sq), rq=mean(rq),
              miou=float(100 * iou_sum / max(count, 1)),
              accuracy=float(100 * correct / max(count, 1)))


def predict_segments(graphdef, params, images, image_size: int):
  """`(ids [N, S, S] int, classes [N, Q])`: panoptic ids 1..Q, 0 = none."""
  class_logits, mask_logits = nnx.merge(graphdef, params)(images)
  segments, classes, _ = jax.vmap(panoptic_inference, (0, 0, None))(
      class_logits[-1], mask_logits[-1], image_size)
  q = jnp.arange(1, segments.shape[1] + 1)[None, :, None, None]
  return jnp.max(jnp.where(segments, q, 0), axis=1), classes


# --------------------------------------------------------------------------
# Running.


def compile_step(config: Config, graphdef, state, batch, key):
  """The jitted train step, compiled, and its memory in bytes.

  XLA's compiled memory analysis: `temp` (the step's scratch buffers, its
  working set), `argument` (state and batch) and `output` (the new state);
  `peak` is their sum (nothing is donated).
  """
  step = jax.jit(functools.partial(train_step, config, graphdef))
  compiled = step.lower(state, batch, key).compile()
  stats = compiled.memory_analysis()
  memory = dict(temp=int(stats.temp_size_in_bytes),
                argument=int(stats.argument_size_in_bytes),
                output=int(stats.output_size_in_bytes))
  memory["peak"] = memory["temp"] + memory["argument"] + memory["output"]
  return compiled, memory


def sample_batch(rng: np.random.Generator, data, batch_size: int):
  """A batch drawn with replacement."""
  index = rng.integers(0, len(data["images"]), batch_size)
  return {k: jnp.asarray(v[index]) for k, v in data.items()}


def train_seed(configs: dict[str, Config], seed: int, compiled, params,
               train_data, eval_fn, bar) -> dict[str, Any]:
  """Trains one model per loss from `params`; their histories and params.

  Every loss draws the same batches and keys; the losses take turns every
  `eval_every` steps, so their step times are measured on the same machine
  state.
  """
  config = next(iter(configs.values()))
  states = {loss: TrainState(params, make_optimizer(c).init(params))
            for loss, c in configs.items()}
  rngs = {loss: np.random.default_rng([seed, 1]) for loss in configs}
  key = jax.random.fold_in(jax.random.key(seed), 1)
  histories = {loss: dict(step=[], loss=[], step_seconds=[],
                          **{name: [] for name in METRICS})
               for loss in configs}
  for chunk in range(config.steps // config.eval_every):
    for loss in configs:
      bar.set_description(f"{loss:>5} seed {seed}")
      history, losses = histories[loss], []
      start = time.perf_counter()
      for i in range(config.eval_every):
        step = chunk * config.eval_every + i + 1
        batch = sample_batch(rngs[loss], train_data, config.batch_size)
        states[loss], step_loss = compiled[loss](
            states[loss], batch, jax.random.fold_in(key, step))
        losses.append(step_loss)
        bar.update(1)
      chunk_loss = float(jnp.mean(jnp.stack(losses)))  # Waits for the chunk.
      history["step_seconds"].append(
          (time.perf_counter() - start) / config.eval_every)
      evaluation = scores(*jax.device_get(eval_fn(states[loss].params)))
      history["step"].append(step)
      history["loss"].append(chunk_loss)
      for name in METRICS:
        history[name].append(evaluation[name])
      bar.set_postfix(loss=f"{chunk_loss:.2f}", PQ=f"{evaluation['pq']:.1f}",
                      mIoU=f"{evaluation['miou']:.1f}")
  return dict(histories=histories,
              params={loss: state.params for loss, state in states.items()})


# --------------------------------------------------------------------------
# Command line and reporting.


def default_points(image_size: int) -> int:
  return max(1, round(REFERENCE_POINTS * (image_size / REFERENCE_SIZE) ** 2))


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      description=__doc__.split("\n\n")[0],
      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  parser.add_argument("--loss", nargs="+", default=list(LOSSES),
                      choices=LOSSES, help="mask losses to train with")
  parser.add_argument("--seeds", type=int, default=3,
                      help="number of seeds (0, 1, ...) per loss")
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--eval-every", type=int, default=100)
  parser.add_argument("--batch-size", type=int, default=8)
  parser.add_argument("--learning-rate", type=float, default=1e-3)
  parser.add_argument("--weight-decay", type=float, default=1e-4)
  parser.add_argument("--image-size", type=int, default=128,
                      help="image and target side, a multiple of 16; the "
                      "mask logits are at 1/4 of it")
  parser.add_argument("--max-instances", type=int, default=4,
                      help="instances per image: 1 to this many")
  parser.add_argument("--num-points", type=int, default=None,
                      help="points per mask of the point loss; default: "
                      "Mask2Former's 12544 at 1024² scaled to the target "
                      "area (196 at 128²)")
  parser.add_argument("--matcher-points", type=int, default=None,
                      help="points of the matcher's cost, for both losses; "
                      "default: --num-points")
  parser.add_argument("--layers", type=int, default=6,
                      help="transformer decoder layers (the losses see "
                      "layers + 1 predictions)")
  parser.add_argument("--queries", type=int, default=8)
  parser.add_argument("--dim", type=int, default=64,
                      help="width of the queries and of the decoder")
  parser.add_argument("--class-weight", type=float, default=5.0,
                      help="weight of the class loss (and the matcher's "
                      "class cost); Mask2Former's is 2")
  parser.add_argument("--pretrain-steps", type=int, default=300,
                      help="steps of the backbone's pretraining (instance "
                      "classification on true masks), shared by every run; "
                      "0: the criterion trains the backbone from scratch")
  parser.add_argument("--train-images", type=int, default=1600)
  parser.add_argument("--test-images", type=int, default=300)
  parser.add_argument("--out", default=os.path.join("results", "segmentation"),
                      help="directory for results.json, curves.png and "
                      "predictions.png")
  parser.add_argument("--quick", action="store_true",
                      help="a smoke run: 1 seed, 64² images, 2 layers, "
                      "40 steps")
  args = parser.parse_args(argv)
  if args.quick:
    args.seeds, args.steps, args.eval_every = 1, 40, 20
    args.pretrain_steps = 20
    args.image_size, args.layers = 64, 2
    args.train_images, args.test_images = 160, 40
  positive = ("seeds", "steps", "eval_every", "batch_size", "learning_rate",
              "image_size", "max_instances", "layers", "queries", "dim",
              "train_images", "test_images")
  for name in positive:
    if not getattr(args, name) > 0:
      parser.error(f"--{name.replace('_', '-')} must be positive, got "
                   f"{getattr(args, name)}.")
  if args.steps % args.eval_every:
    parser.error(f"--steps ({args.steps}) must be a multiple of --eval-every "
                 f"({args.eval_every}).")
  if args.image_size % 16 or args.image_size < 32:
    parser.error("--image-size must be a multiple of 16 and at least 32 (the "
                 f"pixel decoder works at 1/4, 1/8 and 1/16), got "
                 f"{args.image_size}.")
  if args.max_instances > args.queries:
    parser.error(f"--queries ({args.queries}) must be at least "
                 f"--max-instances ({args.max_instances}): every instance "
                 "needs a query of its own.")
  if args.max_instances > 16:
    parser.error("--max-instances must be at most 16 (instances are placed "
                 f"by rejection until each is 40% visible), got "
                 f"{args.max_instances}.")
  if args.dim % 8:
    parser.error("--dim must be a multiple of 8 (4 attention heads, 8 norm "
                 f"groups), got {args.dim}.")
  for name in ("weight_decay", "class_weight", "pretrain_steps"):
    if not getattr(args, name) >= 0:
      parser.error(f"--{name.replace('_', '-')} must be >= 0, got "
                   f"{getattr(args, name)}.")
  if args.test_images % 20:
    parser.error("--test-images must be a multiple of 20 (the evaluation "
                 f"batch), got {args.test_images}.")
  if args.num_points is None:
    args.num_points = default_points(args.image_size)
  if args.matcher_points is None:
    args.matcher_points = args.num_points
  for name in ("num_points", "matcher_points"):
    if getattr(args, name) < 1:
      parser.error(f"--{name.replace('_', '-')} must be positive, got "
                   f"{getattr(args, name)}.")
  args.loss = list(dict.fromkeys(args.loss))
  return args


def summarise(args, runs, memory) -> dict[str, Any]:
  """Per loss: final test scores per seed, their mean and std, memory, time.

  History entries are `[evals][seeds]`. `step_ms` is the median over chunks
  and seeds of a chunk's wall time per step.
  """
  results = {}
  for loss in args.loss:
    seed_histories = [run["histories"][loss] for run in runs]
    history = {name: [list(values) for values in zip(
        *(h[name] for h in seed_histories))] for name in seed_histories[0]}
    history["step"] = [steps[0] for steps in history["step"]]
    results[loss] = dict(
        num_points=args.num_points if loss == "point" else None,
        matcher_points=args.matcher_points,
        step_ms=1e3 * float(np.median(history["step_seconds"])),
        memory_bytes=memory[loss], seeds=list(range(args.seeds)))
    for name in METRICS:
      final = history[name][-1]
      results[loss].update({name: final, f"{name}_mean": float(np.mean(final)),
                            f"{name}_std": float(np.std(final))})
    results[loss]["history"] = history
  return results


def paired_differences(results) -> dict[str, dict[str, Any]]:
  """Per metric, point minus full mask seed by seed, and its mean and std.

  Both models of a seed start from the same parameters and see the same
  batches and keys, so the per-seed difference removes what the seeds share;
  its mean is the comparison the example makes, its std (over seeds) the
  noise on it.
  """
  if not set(LOSSES) <= set(results):
    return {}
  paired = {}
  for name in METRICS:
    diffs = [p - f for p, f in zip(results["point"][name],
                                   results["full"][name])]
    paired[name] = dict(per_seed=diffs, mean=float(np.mean(diffs)),
                        std=float(np.std(diffs)))
  return paired


def label(loss: str, r) -> str:
  return f"point ({r['num_points']})" if loss == "point" else "full mask"


def print_table(results, image_size: int) -> None:
  print(f"\n{image_size}² images and targets, mask logits at "
        f"{image_size // 4}²; mean ± std over {len(next(iter(results.values()))['seeds'])} "
        "seed(s), held-out images")
  print(f"{'loss':<13}{'PQ':>13}{'mask mIoU':>13}{'class acc':>13}"
        f"{'step memory':>13}{'step time':>11}")
  for loss, r in results.items():
    cell = lambda name, r=r: f"{r[name + '_mean']:.1f} ± {r[name + '_std']:.1f}"
    print(f"{label(loss, r):<13}{cell('pq'):>13}{cell('miou'):>13}"
          f"{cell('accuracy'):>13}"
          f"{r['memory_bytes']['peak'] / 2**20:>9.1f} MiB"
          f"{r['step_ms']:>8.0f} ms")
  paired = paired_differences(results)
  if paired:
    p, f = results["point"], results["full"]
    cell = lambda name: (f"{paired[name]['mean']:+.1f} ± "
                         f"{paired[name]['std']:.1f}")
    print(f"point - full, paired by seed: PQ {cell('pq')}, mIoU "
          f"{cell('miou')}, class accuracy {cell('accuracy')} points; "
          f"point / full: memory "
          f"{p['memory_bytes']['peak'] / f['memory_bytes']['peak']:.2f}x, "
          f"step time {p['step_ms'] / f['step_ms']:.2f}x")


def plot_curves(results, path: str) -> None:
  """Training loss, test PQ and matched mIoU against steps."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  panels = (("loss", "training loss (mean over each chunk)"),
            ("pq", "test PQ (%)"), ("miou", "test mask mIoU, matched (%)"))
  fig, axes = plt.subplots(1, len(panels), figsize=(13, 3.8))
  for loss, r in results.items():
    steps = r["history"]["step"]
    for ax, (name, _) in zip(axes, panels):
      values = np.asarray(r["history"][name])  # [evals, seeds]
      ax.plot(steps, values.mean(1), label=label(loss, r))
      ax.fill_between(steps, values.min(1), values.max(1), alpha=0.2)
  for ax, (name, title) in zip(axes, panels):
    ax.set(xlabel="step", ylabel=title, yscale="log" if name == "loss" else
           "linear")
    ax.grid(alpha=0.3)
    ax.legend()
  fig.suptitle("Mask2Former's criterion, point loss vs full-mask loss "
               "(mean and range over seeds)")
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def overlay(image, ids, classes):
  """The image with each segment tinted by its class and outlined."""
  colours = np.array([[1.0, 0.2, 0.2], [0.2, 0.9, 0.2], [0.2, 0.4, 1.0]])
  out = image.astype(np.float32) / 255 * 0.45 + 0.275
  for i in np.unique(ids[ids > 0]):
    mask = ids == i
    colour = colours[classes[i - 1]]
    out[mask] = 0.4 * out[mask] + 0.6 * colour
    edge = mask & ~(np.roll(mask, 1, 0) & np.roll(mask, -1, 0)
                    & np.roll(mask, 1, 1) & np.roll(mask, -1, 1))
    out[edge] = colour * 0.5
  return out


def plot_predictions(test, predictions, path: str, count: int) -> None:
  """Rows: test images, true masks, then each loss's predicted masks."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  rows = 2 + len(predictions)
  fig, axes = plt.subplots(rows, count, figsize=(1.6 * count, 1.7 * rows),
                           squeeze=False)
  titles = ["image", "truth"] + [
      "point loss" if loss == "point" else "full-mask loss"
      for loss in predictions]
  for j in range(count):
    panels = [test["images"][j], overlay(test["images"][j], test["ids"][j],
                                         test["labels"][j])]
    panels += [overlay(test["images"][j], ids[j], classes[j])
               for ids, classes in predictions.values()]
    for i, panel in enumerate(panels):
      axes[i, j].imshow(panel, interpolation="nearest")
      axes[i, j].set_xticks([])
      axes[i, j].set_yticks([])
      if j == 0:
        axes[i, j].set_ylabel(titles[i], fontsize=9)
  fig.suptitle("held-out images (seed 0); red disc, green square, blue "
               "triangle", fontsize=9)
  fig.tight_layout(pad=0.3)
  buffer = io.BytesIO()
  fig.savefig(buffer, dpi=64)
  plt.close(fig)
  # Noisy images compress poorly: a 256-colour palette keeps the file small.
  from PIL import Image  # pylint: disable=g-import-not-at-top
  Image.open(buffer).convert("RGB").quantize(256).save(path, optimize=True)


def main(argv=None) -> int:
  args = parse_args(argv)
  start = time.perf_counter()
  seeds = list(range(args.seeds))
  train_data = make_dataset(args.train_images, args.image_size,
                            args.max_instances, split=0)
  test_np = make_dataset(args.test_images, args.image_size,
                         args.max_instances, split=1)
  test = {k: jnp.asarray(v) for k, v in test_np.items()}
  print(f"shapes: {args.train_images} training and {args.test_images} "
        f"held-out {args.image_size}² images, {len(CLASSES)} classes, 1-"
        f"{args.max_instances} instances each; logits at "
        f"{args.image_size // 4}², point loss on {args.num_points} points per "
        f"mask, matcher on {args.matcher_points}; seeds {seeds}; "
        f"{jax.devices()[0].platform}")
  configs = {loss: Config(
      loss=loss, image_size=args.image_size, max_instances=args.max_instances,
      num_points=args.num_points, matcher_points=args.matcher_points,
      steps=args.steps, eval_every=args.eval_every,
      batch_size=args.batch_size, learning_rate=args.learning_rate,
      weight_decay=args.weight_decay, layers=args.layers,
      queries=args.queries, dim=args.dim, class_weight=args.class_weight)
             for loss in args.loss}
  config = next(iter(configs.values()))
  graphdef, _ = nnx.split(nnx.eval_shape(
      lambda: MaskFormer(config, rngs=nnx.Rngs(0))))
  init = jax.jit(functools.partial(init_params, config))
  eval_fn = jax.jit(functools.partial(evaluate, graphdef,
                                      image_size=args.image_size))
  eval_fn = functools.partial(eval_fn, test=test)
  # One compiled step per loss, measured, then used for every seed.
  params = init(jax.random.key(0), None)
  example_batch = sample_batch(np.random.default_rng(0), train_data,
                               args.batch_size)
  # XLA compiles with the GIL released: the steps compile in the background
  # while the backbone pretrains.
  pool = concurrent.futures.ThreadPoolExecutor(len(configs))
  compiling = {loss: pool.submit(
      compile_step, cfg, graphdef,
      TrainState(params, make_optimizer(cfg).init(params)), example_batch,
      jax.random.key(0)) for loss, cfg in configs.items()}
  grid = min(6, args.test_images)
  predict = jax.jit(functools.partial(predict_segments, graphdef,
                                      image_size=args.image_size))
  runs, predictions = [], {}
  backbone, pretraining = None, dict(steps=args.pretrain_steps)
  with tqdm.tqdm(total=args.pretrain_steps + args.steps * len(seeds)
                 * len(args.loss), unit="step", file=sys.stdout,
                 dynamic_ncols=True, mininterval=1.0) as bar:
    if args.pretrain_steps:
      bar.set_description("pretrain")
      pretrain_start = time.perf_counter()
      backbone, accuracy = pretrain_backbone(
          train_data, test, steps=args.pretrain_steps,
          batch_size=args.batch_size, learning_rate=args.learning_rate,
          weight_decay=args.weight_decay, bar=bar)
      pretraining.update(accuracy=accuracy,
                         seconds=time.perf_counter() - pretrain_start)
      bar.write(f"backbone pretrained: {args.pretrain_steps} steps in "
                f"{pretraining['seconds']:.0f} s; held-out instances "
                f"classified from their true masks: {accuracy:.1f}%")
    compiled, memory = {}, {}
    for loss, future in compiling.items():
      compiled[loss], memory[loss] = future.result()
    pool.shutdown()
    for seed in seeds:
      run = train_seed(configs, seed, compiled,
                       init(jax.random.key(seed), backbone),
                       train_data, eval_fn, bar)
      if seed == 0:
        for loss, loss_params in run["params"].items():
          ids, classes = predict(loss_params, test["images"][:grid])
          predictions[loss] = (np.asarray(ids), np.asarray(classes))
      del run["params"]
      runs.append(run)
  results = summarise(args, runs, memory)
  print_table(results, args.image_size)
  os.makedirs(args.out, exist_ok=True)
  json_path = os.path.join(args.out, "results.json")
  curves_path = os.path.join(args.out, "curves.png")
  plot_curves(results, curves_path)
  grid_path = os.path.join(args.out, "predictions.png")
  plot_predictions(test_np, predictions, grid_path, grid)
  wall = time.perf_counter() - start
  with open(json_path, "w") as f:
    json.dump(dict(config=vars(args), wall_seconds=wall,
                   pretraining=pretraining, results=results,
                   point_minus_full=paired_differences(results)), f, indent=2)
  print(f"wrote {json_path}, {curves_path} and {grid_path} "
        f"({wall:.0f} s in all)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
