"""The parts of examples/segmentation.py, one concern a module.

jaxmask is called in two places: `train.criterion` (`jaxmask.mask2former_loss`,
the point or the full-mask loss) and `evaluate.matched_statistics`
(`jaxmask.hungarian_match`, queries matched to instances by mask IoU).

  settings.py    the flags (`Settings`, their checks) and one run's `Config`
  data.py        the synthetic shapes, from a fixed seed
  model.py       the Flax NNX model: backbone, FPN pixel decoder, transformer
                 decoder with masked attention
  train.py       the criterion, the train step, the backbone's pretraining,
                 a seed's runs
  evaluate.py    panoptic inference, PQ, the matched mIoU and class accuracy
  experiment.py  `train(settings)`: every loss and seed, in the caller's process
  report.py      the table, the figures and results.json
"""
