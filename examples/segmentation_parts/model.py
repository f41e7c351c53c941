"""The segmentation example's model: a small Mask2Former in Flax NNX.

A convolutional `Backbone`, an FPN pixel decoder and a transformer decoder
with masked attention (`MaskFormer`), and the backbone's pretraining task
(`ShapeClassifier`).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .data import CLASSES, block_mean, instance_masks
from .settings import Config


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
