"""The segmentation example's settings: its flags (`Settings`) and one run's `Config`."""

import dataclasses
from typing import NamedTuple

import _cli

LOSSES = ("point", "full")
# Mask2Former samples 12544 = 112² points per mask for targets padded to
# 1024²; the default keeps that fraction of the target's pixels.
REFERENCE_POINTS, REFERENCE_SIZE = 12544, 1024
# mask2former_loss draws int(num_points * 3.0) candidates per mask (its
# oversample_ratio) and indexes them in int32.
MAX_POINTS = _cli.INT32_MAX // 3
# Instances are placed by rejection until each is 40% visible.
MAX_INSTANCES = 16
MAX_IMAGE_SIZE = 1024  # Mask2Former's.
EVAL_BATCH = 20  # Test images per evaluation batch.
# What `--quick` sets, whatever the flags say.
QUICK = dict(seeds=1, steps=40, eval_every=20, pretrain_steps=20,
             image_size=64, layers=2, train_images=160, test_images=40)


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



def default_points(image_size: int) -> int:
  return max(1, round(REFERENCE_POINTS * (image_size / REFERENCE_SIZE) ** 2))


@dataclasses.dataclass(frozen=True)
class Settings(_cli.Training):
  """The command line's flags (but `--out`): what `train` runs.

  Also `_cli.Training`'s, with its defaults: `seeds` 3, `steps` 300,
  `eval_every` 100, `batch_size` 8, `learning_rate` 1e-3, `weight_decay` 1e-4.

  `resolved()` applies `quick` (the `QUICK` preset) and the default point
  counts (`num_points` None: Mask2Former's 12544 at 1024² scaled to the
  target area; `matcher_points` None: `num_points`), and checks every field:
  a bad one raises a ValueError (TypeError for a wrong type) naming it, as a
  flag if `as_flags`.
  """

  loss: tuple[str, ...] = _cli.flag(LOSSES, "mask losses to train with",
                                    choices=LOSSES)
  image_size: int = _cli.flag(
      128, "image and target side, a multiple of 16; the mask logits are at "
      "1/4 of it")
  max_instances: int = _cli.flag(4, "instances per image: 1 to this many")
  num_points: int | None = _cli.flag(
      None, "points per mask of the point loss; default: Mask2Former's 12544 "
      "at 1024² scaled to the target area (196 at 128²)")
  matcher_points: int | None = _cli.flag(
      None, "points of the matcher's cost, for both losses; default: "
      "--num-points")
  layers: int = _cli.flag(
      6, "transformer decoder layers (the losses see layers + 1 predictions)")
  queries: int = _cli.flag(8, "learned queries, at least --max-instances")
  dim: int = _cli.flag(64, "width of the queries and of the decoder")
  class_weight: float = _cli.flag(
      5.0, "weight of the class loss (and the matcher's class cost); "
      "Mask2Former's is 2")
  pretrain_steps: int = _cli.flag(
      300, "steps of the backbone's pretraining (instance classification on "
      "true masks), shared by every run; 0: the criterion trains the "
      "backbone from scratch")
  train_images: int = _cli.flag(1600, "training images")
  test_images: int = _cli.flag(300, "held-out images, a multiple of 20")
  quick: bool = _cli.flag(False, "a smoke run: 1 seed, 64² images, 2 layers, "
                          "40 steps")

  def resolved(self, *, as_flags: bool = False) -> "Settings":
    checks = _cli.Checks(self, as_flags=as_flags, preset=QUICK)
    s = checks.settings
    name = checks.name
    loss = checks.choices("loss", LOSSES)
    checks.training()
    checks.integer("image_size", 32, MAX_IMAGE_SIZE)
    if s.image_size % 16:
      raise ValueError(f"{name('image_size')} must be a multiple of 16 (the "
                       "pixel decoder works at 1/4, 1/8 and 1/16), got "
                       f"{s.image_size}.")
    checks.integer("max_instances", 1, MAX_INSTANCES, why=(
        "instances are placed by rejection until each is 40% visible"))
    checks.integer("queries")
    if s.max_instances > s.queries:
      raise ValueError(f"{name('queries')} ({s.queries}) must be at least "
                       f"{name('max_instances')} ({s.max_instances}): every "
                       "instance needs a query of its own.")
    checks.integer("layers")
    checks.integer("dim")
    if s.dim % 8:
      raise ValueError(f"{name('dim')} must be a multiple of 8 (4 attention "
                       f"heads, 8 norm groups), got {s.dim}.")
    checks.weight("class_weight")
    checks.integer("pretrain_steps", 0)
    checks.integer("train_images")
    checks.integer("test_images", EVAL_BATCH)
    if s.test_images % EVAL_BATCH:
      raise ValueError(f"{name('test_images')} must be a multiple of "
                       f"{EVAL_BATCH} (the evaluation batch), got "
                       f"{s.test_images}.")
    num_points = (default_points(s.image_size) if s.num_points is None
                  else s.num_points)
    s = dataclasses.replace(
        s, loss=loss, num_points=num_points,
        matcher_points=(num_points if s.matcher_points is None
                        else s.matcher_points))
    checks = _cli.Checks(s, as_flags=as_flags)
    checks.integer("num_points", 1, MAX_POINTS,
                   why="mask2former_loss's int32 indices")
    checks.integer("matcher_points")
    return s
