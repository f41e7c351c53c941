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

From Python (a notebook), in the caller's process, with `examples/` on
`sys.path`:
  import segmentation
  results = segmentation.train(segmentation.Settings(quick=True))
`Settings` has a field per flag (but `--out`); `train` returns what the
command line prints and writes, and writes nothing itself.

The code is in `examples/segmentation_parts/`, one concern a module (see its
`__init__.py`); jaxmask is called in `train.py` (`jaxmask.mask2former_loss`)
and `evaluate.py` (`jaxmask.hungarian_match`). This file is the command line.
"""

import sys

import _cli
from segmentation_parts.experiment import train
from segmentation_parts.report import report
from segmentation_parts.settings import Settings

__all__ = ["Settings", "build_parser", "main", "parse_args", "train"]

# The command line: `parse_args(argv) -> (settings, out)`, `main(argv) -> 0`.
COMMAND = _cli.Command(Settings, __doc__, "segmentation",
                       "results.json, curves.png and predictions.png", train,
                       report)
build_parser, parse_args, main = (COMMAND.build_parser, COMMAND.parse_args,
                                  COMMAND.main)


if __name__ == "__main__":
  sys.exit(main())
