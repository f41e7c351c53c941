"""The segmentation example's training: the criterion, `jaxmask.mask2former_loss`
(in `criterion`), the train step, the backbone's pretraining and a seed's runs."""

import functools
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import jaxmask

from .data import DATA_SEED, sample_batch, targets
from .evaluate import METRICS, scores
from .model import MaskFormer, ShapeClassifier
from .settings import Config


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
