"""Kernel: the criterion's matching on XLA:CPU, one image at a time.

Why: the plain matcher (`criterion._match_every_image`) vmaps one image's
cost and assignment over the `L x B` images. Vmapped, XLA:CPU fuses the
sampling gathers (`Q` query maps and `T` target maps at shared points) into
the cost's elementwise math (a softplus and an exp per query and point),
which then runs as scalar code: the costs of L = 10 layers, B = 2 images,
Q = 100 queries at 12544 points took 1.5 s instead of 0.6 s. Here a loop
(`lax.map`) runs the images one by one and the sampled masks are computed
apart (`barrier.computed_apart`, a conditional XLA:CPU does not fuse across;
under vmap it would become a select and compute both branches), the targets
read in place from the whole batch (sliced per image, each image's targets
were copied into the conditional: 20 MiB an image at 20 x 512²), and only the
valid targets are sampled (`criterion._sample_valid_targets`; L = 1, B = 8,
40% padded: the matcher 97 -> 79 ms).

What it must equal: the plain matcher's matchings, bit for bit (the same
operations on the same values, in another schedule). Only the costs of
padded targets differ (their samples are zeros), and the assignment sets
those to 0 in both.
"""

from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax

from jaxmask._src.xla_cpu import barrier


def match_image_by_image(match_image: Callable, plain: Callable, points,
                         class_logits, mask_logits, labels, target_masks,
                         target_valid):
  """The kernel's entry point: `match_image` over `[L, B, ...]`, in a loop.

  `match_image(points, class_logits, mask_logits, labels, target_masks,
  image, valid, *, apart)` matches image `image` of the batch, evaluating its
  samplings with `apart(fn, *args)`; `points [L, B, M, 2]`, `class_logits [L,
  B, Q, K + 1]`, `mask_logits [L, B, Q, H, W]`, and the targets `labels [B,
  T]`, `target_masks [B, T, Ht, Wt]`, `target_valid [B, T]`, shared by the
  layers and passed whole (an image's targets are read in place, not
  copied). Returns `match_image`'s result with leading axes `[L, B]`;
  `plain`, the plain matcher of the same arguments, answers for no image.
  """
  num_layers, batch_size = class_logits.shape[:2]
  if num_layers * batch_size == 0:
    # No image (B = 0): the loop's body would index an empty batch; the
    # plain form, mapped over no image, gives the (empty) result's shapes.
    return plain(points, class_logits, mask_logits, labels, target_masks,
                 target_valid)

  def one_image(args):
    points, class_logits, mask_logits, image = args
    return match_image(points, class_logits, mask_logits, labels,
                       target_masks, image, target_valid,
                       apart=barrier.computed_apart)

  flat = lambda x: x.reshape(num_layers * batch_size, *x.shape[2:])
  images = jnp.tile(jnp.arange(batch_size), num_layers)
  out = lax.map(one_image, (flat(points), flat(class_logits),
                            flat(mask_logits), images))
  return jax.tree.map(
      lambda x: x.reshape(num_layers, batch_size, *x.shape[1:]), out)
