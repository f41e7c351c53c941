"""The segmentation example's experiment, `train(settings)`: every loss and
seed, in the caller's process."""

import concurrent.futures
import dataclasses
import functools
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import _cli

from .data import CLASSES, make_dataset, sample_batch
from .evaluate import METRICS, evaluate, paired_differences, predict_segments
from .model import MaskFormer
from .settings import Config, Settings
from .train import (TrainState, compile_step, init_params, make_optimizer,
                    pretrain_backbone, train_seed)


def train(settings: Settings) -> dict[str, Any]:
  """Pretrains the backbone, then trains every loss of `settings` per seed.

  Runs here, in the caller's process (a notebook's kernel, say), and writes
  nothing. A bad setting raises a ValueError (or TypeError) naming it.

  Returns what `results.json` holds, `dict(config=<the resolved settings>,
  wall_seconds, pretraining, results={loss: ...} (see `summarise`),
  point_minus_full (see `paired_differences`))`, and `predictions`: seed 0's
  predicted segments of the first test images, NumPy arrays for
  `predictions.png`, `dict(test={images, ids, labels}, losses={loss: (ids,
  classes)})`.
  """
  settings = settings.resolved()
  start = time.perf_counter()
  seeds = list(range(settings.seeds))
  train_data = make_dataset(settings.train_images, settings.image_size,
                            settings.max_instances, split=0)
  test_np = make_dataset(settings.test_images, settings.image_size,
                         settings.max_instances, split=1)
  test = {k: jnp.asarray(v) for k, v in test_np.items()}
  print(f"shapes: {settings.train_images} training and {settings.test_images} "
        f"held-out {settings.image_size}² images, {len(CLASSES)} classes, 1-"
        f"{settings.max_instances} instances each; logits at "
        f"{settings.image_size // 4}², point loss on {settings.num_points} points per "
        f"mask, matcher on {settings.matcher_points}; seeds {seeds}; "
        f"{jax.devices()[0].platform}")
  configs = {loss: Config(
      loss=loss, image_size=settings.image_size, max_instances=settings.max_instances,
      num_points=settings.num_points, matcher_points=settings.matcher_points,
      steps=settings.steps, eval_every=settings.eval_every,
      batch_size=settings.batch_size, learning_rate=settings.learning_rate,
      weight_decay=settings.weight_decay, layers=settings.layers,
      queries=settings.queries, dim=settings.dim, class_weight=settings.class_weight)
             for loss in settings.loss}
  config = next(iter(configs.values()))
  graphdef, _ = nnx.split(nnx.eval_shape(
      lambda: MaskFormer(config, rngs=nnx.Rngs(0))))
  init = jax.jit(functools.partial(init_params, config))
  eval_fn = jax.jit(functools.partial(evaluate, graphdef,
                                      image_size=settings.image_size))
  eval_fn = functools.partial(eval_fn, test=test)
  # One compiled step per loss, measured, then used for every seed.
  params = init(jax.random.key(0), None)
  example_batch = sample_batch(np.random.default_rng(0), train_data,
                               settings.batch_size)
  # XLA compiles with the GIL released: the steps compile in the background
  # while the backbone pretrains.
  pool = concurrent.futures.ThreadPoolExecutor(len(configs))
  compiling = {loss: pool.submit(
      compile_step, cfg, graphdef,
      TrainState(params, make_optimizer(cfg).init(params)), example_batch,
      jax.random.key(0)) for loss, cfg in configs.items()}
  grid = min(6, settings.test_images)
  predict = jax.jit(functools.partial(predict_segments, graphdef,
                                      image_size=settings.image_size))
  runs, predictions = [], {}
  backbone, pretraining = None, dict(steps=settings.pretrain_steps)
  with _cli.progress(settings.pretrain_steps + settings.steps * len(seeds)
                     * len(settings.loss), mininterval=1.0) as bar:
    if settings.pretrain_steps:
      bar.set_description("pretrain")
      pretrain_start = time.perf_counter()
      backbone, accuracy = pretrain_backbone(
          train_data, test, steps=settings.pretrain_steps,
          batch_size=settings.batch_size, learning_rate=settings.learning_rate,
          weight_decay=settings.weight_decay, bar=bar)
      pretraining.update(accuracy=accuracy,
                         seconds=time.perf_counter() - pretrain_start)
      bar.write(f"backbone pretrained: {settings.pretrain_steps} steps in "
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
  results = summarise(settings, runs, memory)
  return dict(
      config=dataclasses.asdict(settings), wall_seconds=time.perf_counter() - start,
      pretraining=pretraining, results=results,
      point_minus_full=paired_differences(results),
      predictions=dict(test={k: v[:grid] for k, v in test_np.items()},
                       losses=predictions))


def summarise(settings: Settings, runs, memory) -> dict[str, Any]:
  """Per loss: final test scores per seed, their mean and std, memory, time.

  History entries are `[evals][seeds]`. `step_ms` is the median over chunks
  and seeds of a chunk's wall time per step.
  """
  results = {}
  for loss in settings.loss:
    seed_histories = [run["histories"][loss] for run in runs]
    history = {name: [list(values) for values in zip(
        *(h[name] for h in seed_histories))] for name in seed_histories[0]}
    history["step"] = [steps[0] for steps in history["step"]]
    results[loss] = dict(
        num_points=settings.num_points if loss == "point" else None,
        matcher_points=settings.matcher_points,
        step_ms=1e3 * float(np.median(history["step_seconds"])),
        memory_bytes=memory[loss], seeds=list(range(settings.seeds)))
    for name in METRICS:
      final = history[name][-1]
      results[loss].update({name: final, f"{name}_mean": float(np.mean(final)),
                            f"{name}_std": float(np.std(final))})
    results[loss]["history"] = history
  return results
