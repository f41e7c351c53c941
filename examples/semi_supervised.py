"""Semi-supervised digits with a mean teacher and jaxmask confidence masks.

A Flax (NNX) + optax example. scikit-learn's 8x8 handwritten digits (shipped
with the package, no download) are split once into a held-out test set and a
training set; a few labels per class are kept and the rest of the training set
is unlabelled. These methods are compared, each over several seeds:

- `supervised`: cross-entropy on the labelled images only (the baseline).
- `all-labels`: the same network and training on every training label (the
  ceiling; no unlabelled loss).
- The confidence thresholds, as USB (microsoft/Semi-supervised-learning)
  uses them: the teacher's probabilities on the weak view of each unlabelled
  image give pseudo-labels and a per-sample mask (or weight), and the student
  learns `mean(ce(student(strong view), pseudo_labels) * mask)` over the
  whole unlabelled batch. Each is one `jaxmask` threshold, `(init, update)`,
  whose state rides in the training state:
  - `pseudo-label`: `jaxmask.percentile_threshold(q=20, keep="high")`, the
    confident 80% of each batch (MLKD's batch percentile, kept high);
  - `fixmatch`: `jaxmask.fixmatch()`, a fixed 0.95 threshold;
  - `flexmatch`: `jaxmask.flexmatch(...)`, per-class curriculum thresholds
    (it needs the unlabelled images' dataset indices);
  - `freematch`: `jaxmask.freematch(...)`, self-adaptive global and class
    thresholds, plus `jaxmask.freematch_fairness_loss` with weight 0.01
    (USB's `ent_loss_ratio` default);
  - `softmatch`: `jaxmask.softmatch(...)`, truncated-Gaussian weights on
    uniformly aligned probabilities.
- `mlkd`: `jaxmask.mlkd_loss`, MLKD's multi-temperature KD + class- and
  batch-correlation objective, from the teacher to the student on the
  unlabelled images (its low-confidence masks are computed inside).

The teacher is an exponential moving average of the student (a mean teacher)
and is the model evaluated, for every method alike; it also labels the weak
views (USB uses the student itself, `--teacher student`: measured as accurate
on average here, and more variable over seeds). Augmentations are written in
JAX with explicit keys, so a whole chunk of training steps is one jitted
`lax.scan`; the seeds of a method run side by side under `jax.vmap`.

With `--devices N` the training is data-parallel: a `jax.shard_map` over a
mesh with a `data` axis splits each batch into N shards, parameters and
optimiser state are replicated, losses and gradients are `lax.pmean`'d and the
masks are computed with `axis_name="data"`, so every threshold is that of the
global batch. Random draws are made for the global batch, so N devices train
exactly as one does (up to float rounding). To simulate 8 devices on a CPU, set
`XLA_FLAGS=--xla_force_host_platform_device_count=8`.

Across N processes (hosts, or GPUs with one process each), the mesh spans
`--devices` devices of every process (all their local devices with
`--devices 0`). Every process draws the same global batches and keys, gathers
its own block of each batch's rows and feeds it to its devices
(`jax.make_array_from_process_local_data`); the state is replicated. So N
processes of D devices train as one process of N x D devices does (up to float
rounding: the collectives may sum in another order). Only process 0 prints
and writes `--out`; the others print only errors. Start every process with the
same flags but `--process-id`, explicitly (process 0 listens at HOST:PORT):
  python examples/semi_supervised.py --num-processes 2 --process-id 0 \
      --coordinator HOST:PORT --devices 0     # on host 0; on host 1: --process-id 1
or under a launcher that `jax.distributed.initialize()` reads (SLURM's srun,
Open MPI's mpirun, a TPU pod slice), with `--distributed auto`:
  srun --ntasks-per-node=8 --gpus-per-node=8 python examples/semi_supervised.py \
      --distributed auto --devices 0
On one machine, `examples/launch_local.py` starts N CPU processes (gloo):
  python examples/launch_local.py -n 2 --devices-per-process 2 \
      examples/semi_supervised.py --quick --method flexmatch --devices 0

Usage (from the repository root, with jaxmask importable: `pip install -e
".[examples]"` or `PYTHONPATH=.`):
  python examples/semi_supervised.py                 # the main methods, 3 seeds
  python examples/semi_supervised.py --method all    # every method
  python examples/semi_supervised.py --quick         # every method, a smoke run
  python examples/semi_supervised.py --method mlkd --labels-per-class 10
  python examples/semi_supervised.py --devices 0     # all local devices

From Python (a notebook), in the caller's process, with `examples/` on `sys.path`:
  import semi_supervised
  results = semi_supervised.train(semi_supervised.Settings(quick=True))
`Settings` has a field per flag (but `--out`); `train` returns what the command line
prints and writes to `results.json`, and writes nothing itself.
"""

import dataclasses
import functools
import itertools
import os
import sys
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax import lax
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from sklearn import datasets
from sklearn import model_selection

import _cli
import jaxmask

# Methods whose loss is `mean(ce(strong, pseudo_labels) * mask)` with a
# jaxmask threshold (see `make_threshold`).
THRESHOLD_METHODS = ("pseudo-label", "fixmatch", "flexmatch", "freematch",
                     "softmatch")
METHODS = ("supervised", "all-labels", *THRESHOLD_METHODS, "mlkd")
# What the main command runs: the baseline, the ceiling and USB's four
# thresholds (the best methods here).
DEFAULT_METHODS = ("supervised", "all-labels", "fixmatch", "flexmatch",
                   "freematch", "softmatch")
NUM_CLASSES = 10
TEST_FRACTION = 0.3
SPLIT_SEED = 0  # The test split is the same for every seed and method.
# MLKD's objective sums 15 distillation terms, so it takes a smaller weight.
UNLABELLED_WEIGHTS = {"supervised": 0.0, "all-labels": 0.0, "mlkd": 0.5,
                      **{method: 2.0 for method in THRESHOLD_METHODS}}


class Config(NamedTuple):
  """Hyper-parameters of one run (static under jit)."""

  method: str
  steps: int
  eval_every: int
  batch_size: int
  unlabelled_batch_size: int
  learning_rate: float
  weight_decay: float
  ema_decay: float
  teacher: str
  unlabelled_weight: float
  q: float
  p_cutoff: float
  threshold_momentum: float
  fairness_weight: float
  num_unlabelled: int


# What `--quick` sets, whatever the flags say.
QUICK = dict(seeds=1, steps=100, eval_every=25)


@dataclasses.dataclass(frozen=True)
class Settings(_cli.Training, _cli.Cluster):
  """The command line's flags (but `--out`): what `train` runs.

  Also `_cli.Training`'s `seeds`, `eval_every` and `weight_decay`, and
  `_cli.Cluster`'s `num_processes`, `process_id`, `coordinator` and
  `distributed`.

  `resolved()` applies `quick` (the `QUICK` preset; every method unless `method`
  is given), expands `method` (None: `DEFAULT_METHODS`; "all": `METHODS`) and
  `devices` (0: every local device), and checks every field: a bad one raises a
  ValueError (TypeError for a wrong type) naming it, as a flag if `as_flags`.
  With several processes it joins them (`jax.distributed.initialize`) after
  every other check and before checking `devices`, this process's devices.
  """

  method: tuple[str, ...] | None = _cli.flag(
      None, f"methods to run, of {', '.join(METHODS)}, or 'all'; default: "
      f"{', '.join(DEFAULT_METHODS)} (with --quick: all)",
      choices=(*METHODS, "all"), metavar="METHOD")
  labels_per_class: int = _cli.flag(
      5, "labelled training images per class (the rest are unlabelled)")
  steps: int = _cli.flag(3000, "training steps")
  batch_size: int = _cli.flag(32, "labelled images per step")
  unlabelled_batch_size: int = _cli.flag(64, "unlabelled images per step")
  learning_rate: float = _cli.flag(
      3e-3, "AdamW's peak learning rate, decayed on a cosine, in (0, 1]")
  ema_decay: float = _cli.flag(0.99, "the mean teacher's decay, in [0, 1)")
  teacher: str = _cli.flag(
      "ema", "mean teacher, or the student itself (no EMA)",
      choices=("ema", "student"))
  unlabelled_weight: float | None = _cli.flag(
      None, "weight of the unlabelled loss; None: mlkd 0.5, the threshold "
      "methods 2.0")
  q: float = _cli.flag(
      20.0, "pseudo-label: keep the unlabelled images whose confidence is at "
      "or above this percentile of the batch")
  p_cutoff: float = _cli.flag(
      0.95, "fixmatch and flexmatch: the confidence threshold")
  threshold_momentum: float = _cli.flag(
      0.999, "freematch and softmatch: the momentum of their statistics "
      "(USB's ema_p)")
  fairness_weight: float = _cli.flag(
      0.01, "freematch: weight of the fairness loss (USB's ent_loss_ratio)")
  devices: int = _cli.flag(
      1, "local devices to split each batch over (0: all); with several "
      "processes, each process's (every batch is split over this many times "
      "--num-processes)")
  quick: bool = _cli.flag(
      False, "a smoke run: 1 seed, 100 steps, every method unless --method "
      "is given")

  def resolved(self, *, as_flags: bool = False) -> "Settings":
    checks = _cli.Checks(self, as_flags=as_flags, preset=QUICK)
    s = checks.settings
    if s.method is None:
      method = METHODS if s.quick else DEFAULT_METHODS
    else:
      method = checks.choices("method", (*METHODS, "all"))
      method = METHODS if "all" in method else method
    available = rarest_training_class()
    checks.integer("labels_per_class", 1, available - 1, why=(
        f"the training split has {available} images of its rarest class and at least one "
        "must stay unlabelled"))
    checks.training()
    checks.integer("unlabelled_batch_size")
    checks.number("ema_decay", 0.0, 1.0, open_high=True)
    if s.teacher not in ("ema", "student"):
      raise ValueError(f"{checks.name('teacher')} must be 'ema' or 'student', got "
                       f"{s.teacher!r}.")
    if s.unlabelled_weight is not None:
      checks.weight("unlabelled_weight")
    checks.number("q", 0.0, 100.0)
    checks.number("p_cutoff", 0.0, 1.0, open_low=True)
    checks.number("threshold_momentum", 0.0, 1.0)
    checks.weight("fairness_weight")
    checks.cluster()  # Last: it may wait for the other processes.
    devices = checks.devices(jax.local_device_count(),
                             divide=("batch_size", "unlabelled_batch_size"),
                             processes=jax.process_count())
    return dataclasses.replace(s, method=tuple(method), devices=devices)


# --------------------------------------------------------------------------
# Data.


@functools.cache
def split_digits() -> tuple[np.ndarray, ...]:
  """The digits in [0, 1] as `[n, 8, 8, 1]`, split once: `(x_train, x_test,
  y_train, y_test)`."""
  digits = datasets.load_digits()
  images = (digits.images / 16.0).astype(np.float32)[..., None]
  return tuple(model_selection.train_test_split(
      images, digits.target, test_size=TEST_FRACTION,
      stratify=digits.target, random_state=SPLIT_SEED))


def rarest_training_class() -> int:
  """How many training images the rarest class has."""
  return int(np.bincount(split_digits()[2], minlength=NUM_CLASSES).min())


def load_data(labels_per_class: int, seeds: list[int]) -> dict[str, Any]:
  """The digits split per seed: `labels_per_class` labelled images per class.

  Returns a dict of NumPy arrays: `x_test`, `y_test`, `x_train`, `y_train`
  (shared by all seeds) and, stacked over seeds, `x_labelled [seeds, L, 8, 8,
  1]`, `y_labelled [seeds, L]` and `x_unlabelled [seeds, U, 8, 8, 1]`.
  """
  x_train, x_test, y_train, y_test = split_digits()
  labelled, unlabelled = [], []
  for seed in seeds:
    rng = np.random.default_rng(seed)
    chosen = np.concatenate([
        rng.choice(np.flatnonzero(y_train == c), labels_per_class,
                   replace=False) for c in range(NUM_CLASSES)])
    labelled.append(chosen)
    unlabelled.append(np.setdiff1d(np.arange(len(y_train)), chosen))
  return dict(
      x_test=x_test, y_test=y_test.astype(np.int32),
      x_train=x_train, y_train=y_train.astype(np.int32),
      x_labelled=x_train[np.stack(labelled)],
      y_labelled=y_train[np.stack(labelled)].astype(np.int32),
      x_unlabelled=x_train[np.stack(unlabelled)])


# --------------------------------------------------------------------------
# Augmentations: `[batch, 8, 8, 1]` images in [0, 1], one key per batch.
#
# With `axis_name` (inside `shard_map`), `images` is this device's shard of the
# batch; the random draws are made for the global batch and sliced, so the
# augmented global batch does not depend on the number of devices.


def global_size(local_size: int, axis_name) -> int:
  return local_size * (1 if axis_name is None else lax.axis_size(axis_name))


def local_rows(x: jax.Array, axis_name) -> jax.Array:
  """This device's contiguous rows of `x`, an array over the global batch."""
  if axis_name is None:
    return x
  size = x.shape[0] // lax.axis_size(axis_name)
  return lax.dynamic_slice_in_dim(x, lax.axis_index(axis_name) * size, size)


def shift(images: jax.Array, offsets: jax.Array) -> jax.Array:
  """Translates image `i` by `offsets[i] = (rows, cols)` pixels, zero-filled.

  A product with 0/1 shift matrices: cheaper to compile than a gather.
  """
  _, h, w, _ = images.shape
  shift_matrix = lambda size, k: (  # [n, size, size]: out[i] = in[i - k].
      jnp.arange(size)[:, None] - jnp.arange(size)[None, :] == k[:, None, None]
  ).astype(images.dtype)
  return jnp.einsum("nab,nbcz,ndc->nadz", shift_matrix(h, offsets[:, 0]),
                    images, shift_matrix(w, offsets[:, 1]))


def cutout(images: jax.Array, centres: jax.Array, size: int) -> jax.Array:
  """Zeroes the `size`x`size` square around `centres[i] = (row, col)`."""
  _, h, w, _ = images.shape
  rows = jnp.arange(h)[None, :, None] - centres[:, 0, None, None]
  cols = jnp.arange(w)[None, None, :] - centres[:, 1, None, None]
  inside = (jnp.abs(rows) <= size // 2) & (jnp.abs(cols) <= size // 2)
  return jnp.where(inside[..., None], 0.0, images)


def weak_augment(key: jax.Array, images: jax.Array,
                 axis_name=None) -> jax.Array:
  """A random shift of at most one pixel."""
  n = global_size(images.shape[0], axis_name)
  offsets = jax.random.randint(key, (n, 2), -1, 2)
  return shift(images, local_rows(offsets, axis_name))


def strong_augment(key: jax.Array, images: jax.Array,
                   axis_name=None) -> jax.Array:
  """Shift (<= 1 px), intensity jitter, Gaussian noise and a 3x3 cutout.

  On these 8x8 digits a shift of up to 2 px (a quarter of the image) was
  measured to cost FixMatch 1.6 points of test accuracy (94.8% against
  96.4%, 3 seeds, 3,000 steps).
  """
  uniform_key, noise_key = jax.random.split(key)
  n, h, w, c = images.shape
  n = global_size(n, axis_name)
  # One draw for every per-image parameter keeps the jitted step small.
  u = local_rows(jax.random.uniform(uniform_key, (n, 5)), axis_name)
  images = shift(images, jnp.floor(u[:, :2] * 3).astype(jnp.int32) - 1)
  images *= 0.8 + 0.4 * u[:, 2, None, None, None]
  images += 0.08 * local_rows(jax.random.normal(noise_key, (n, h, w, c)),
                              axis_name)
  images = cutout(images, jnp.floor(u[:, 3:] * h).astype(jnp.int32), size=3)
  return jnp.clip(images, 0.0, 1.0)


# --------------------------------------------------------------------------
# Model and training.


def patches3x3(images: jax.Array) -> jax.Array:
  """`[n, h, w, c]` -> `[n, h, w, 9c]`: each pixel's 3x3 neighbourhood."""
  _, h, w, _ = images.shape
  padded = jnp.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)))
  return jnp.concatenate(
      [padded[:, i:i + h, j:j + w] for i in range(3) for j in range(3)], -1)


class Net(nnx.Module):
  """A 3x3 convolution, 2x2 max-pooling, and an MLP on the pooled maps.

  The convolution is a `Linear` on 3x3 patches: on this CPU, XLA's own
  convolutions on 8x8 inputs (and their gradients, batched over seeds) are
  many times slower to compile and run than this matmul.
  """

  def __init__(self, *, rngs: nnx.Rngs, channels: int = 32, hidden: int = 256):
    self.conv = nnx.Linear(9, channels, rngs=rngs)
    self.hidden = nnx.Linear(16 * channels, hidden, rngs=rngs)
    self.logits = nnx.Linear(hidden, NUM_CLASSES, rngs=rngs)

  def __call__(self, images: jax.Array) -> jax.Array:
    x = nnx.relu(self.conv(patches3x3(images)))
    n, h, w, c = x.shape
    x = x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))  # 2x2 max-pool.
    x = nnx.relu(self.hidden(x.reshape(x.shape[0], -1)))
    return self.logits(x)


class TrainState(NamedTuple):
  params: Any  # The student's nnx.State.
  teacher: Any  # The EMA of `params`.
  opt_state: Any
  threshold: Any  # The threshold's state (None for the other methods).


def make_optimizer(config: Config) -> optax.GradientTransformation:
  schedule = optax.cosine_decay_schedule(config.learning_rate, config.steps)
  return optax.adamw(schedule, weight_decay=config.weight_decay)


def init_params(keys: jax.Array):
  """The network's graph definition and its parameters for each key."""
  graphdef, _ = nnx.split(nnx.eval_shape(lambda: Net(rngs=nnx.Rngs(0))))
  init = lambda key: nnx.split(Net(rngs=nnx.Rngs(params=key)))[1]
  return graphdef, jax.jit(jax.vmap(init))(keys)


def make_threshold(config: Config) -> jaxmask.ConfidenceThreshold | None:
  """The method's jaxmask threshold; None for the methods without one.

  Every threshold is used alike (see `train_step`), so swapping methods is
  this one line.
  """
  if config.method == "pseudo-label":
    return jaxmask.percentile_threshold(q=config.q, keep="high")
  if config.method == "fixmatch":
    return jaxmask.fixmatch(p_cutoff=config.p_cutoff)
  if config.method == "flexmatch":
    return jaxmask.flexmatch(num_classes=NUM_CLASSES,
                             num_unlabelled=config.num_unlabelled,
                             p_cutoff=config.p_cutoff)
  if config.method == "freematch":
    return jaxmask.freematch(num_classes=NUM_CLASSES,
                             momentum=config.threshold_momentum)
  if config.method == "softmatch":
    return jaxmask.softmatch(num_classes=NUM_CLASSES,
                             momentum=config.threshold_momentum)
  return None


def mlkd_unlabelled_loss(student, teacher, weak, strong, axis_name=None):
  """MLKD's loss on unlabelled images and the fraction its mask keeps.

  The teacher sees the weak view in both slots, so the student's strong view
  is pulled toward the teacher's clean prediction (the teacher on the strong
  view, as in MLKD's supervised setting, measured 5 points worse here).
  """
  logits = [student(weak), student(strong), teacher(weak)]
  if axis_name is not None:
    # MLKD's batch- and class-correlation losses do not split over shards, so
    # every device computes the loss of the gathered global batch. Gradients
    # stay right: all_gather's transpose sums the N devices' (equal)
    # cotangents, and the gradients' pmean divides by N again.
    logits = [lax.all_gather(x, axis_name, tiled=True) for x in logits]
  student_weak, student_strong, teacher_weak = logits
  losses = jaxmask.mlkd_loss(student_weak, student_strong, teacher_weak,
                             teacher_weak)
  return losses.total, jnp.mean(losses.mask.astype(jnp.float32))


def fairness_loss(strong_logits, mask, state, axis_name=None):
  """FreeMatch's fairness term, on the global batch with `axis_name`.

  USB computes it per device; here the strong logits and masks are gathered
  (the gradient argument of `mlkd_unlabelled_loss` applies), so N devices
  train as one.
  """
  if axis_name is not None:
    strong_logits, mask = (lax.all_gather(x, axis_name, tiled=True)
                           for x in (strong_logits, mask))
  return jaxmask.freematch_fairness_loss(strong_logits, mask, state)


def train_step(config: Config, graphdef, state: TrainState, batch, key,
               axis_name=None):
  """One optimisation step; a pure function of (state, batch, key).

  With `axis_name`, `batch` is this device's shard of the global batch.
  """
  labelled_key, weak_key, strong_key = jax.random.split(key, 3)
  x_labelled = weak_augment(labelled_key, batch["x_labelled"], axis_name)
  teacher_params = (state.teacher if config.teacher == "ema" else
                    jax.lax.stop_gradient(state.params))
  teacher = nnx.merge(graphdef, teacher_params)
  unlabelled = config.method not in ("supervised", "all-labels")
  if unlabelled:
    x_weak = weak_augment(weak_key, batch["x_unlabelled"], axis_name)
    x_strong = strong_augment(strong_key, batch["x_unlabelled"], axis_name)
  threshold = make_threshold(config)
  threshold_state = state.threshold
  if threshold is not None:
    # The weak view's probabilities (no gradient) give the pseudo-labels and
    # the mask; the threshold's state is updated on this (global) batch.
    probs = jax.nn.softmax(lax.stop_gradient(teacher(x_weak)), axis=-1)
    targets, threshold_state = threshold.update(
        probs, state.threshold, indices=batch["indices"], axis_name=axis_name)

  def loss_fn(params):
    student = nnx.merge(graphdef, params)
    zero = jnp.zeros(())
    metrics = dict(
        labelled_loss=optax.softmax_cross_entropy_with_integer_labels(
            student(x_labelled), batch["y_labelled"]).mean(),
        unlabelled_loss=zero, kept=zero, fairness_loss=zero)
    if threshold is not None:
      strong_logits = student(x_strong)
      per_sample = optax.softmax_cross_entropy_with_integer_labels(
          strong_logits, targets.pseudo_labels)
      metrics["unlabelled_loss"] = jnp.mean(per_sample * targets.mask)
      metrics["kept"] = jnp.mean(targets.mask)
      if config.method == "freematch":
        metrics["fairness_loss"] = fairness_loss(
            strong_logits, targets.mask, threshold_state, axis_name)
    elif unlabelled:  # mlkd
      metrics["unlabelled_loss"], metrics["kept"] = mlkd_unlabelled_loss(
          student, teacher, x_weak, x_strong, axis_name)
    metrics["loss"] = (metrics["labelled_loss"] +
                       config.unlabelled_weight * metrics["unlabelled_loss"] +
                       config.fairness_weight * metrics["fairness_loss"])
    return metrics["loss"], metrics

  (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  if axis_name is not None:  # Equal shards: the global means.
    metrics, grads = lax.pmean((metrics, grads), axis_name)
  updates, opt_state = make_optimizer(config).update(grads, state.opt_state,
                                                     state.params)
  params = optax.apply_updates(state.params, updates)
  teacher = optax.incremental_update(params, state.teacher,
                                     1.0 - config.ema_decay)
  return TrainState(params, teacher, opt_state, threshold_state), metrics


def draw_batches(config: Config, keys: jax.Array, num_labelled: int,
                 num_unlabelled: int):
  """The random draws of a chunk of `config.eval_every` steps, every seed's.

  `keys` is one key per seed. Returns `(step_keys, labelled, unlabelled)`,
  `[seeds, steps]` keys for `train_step` and the rows of each step's global
  batches (drawn with replacement): `[seeds, steps, batch_size]` labelled and
  `[seeds, steps, unlabelled_batch_size]` unlabelled images.
  """
  def one_step(key):
    batch_key, step_key = jax.random.split(key)
    labelled_key, unlabelled_key = jax.random.split(batch_key)
    labelled = jax.random.randint(labelled_key, (config.batch_size,), 0,
                                  num_labelled)
    unlabelled = jax.random.randint(
        unlabelled_key, (config.unlabelled_batch_size,), 0, num_unlabelled)
    return step_key, labelled, unlabelled

  one_seed = lambda key: jax.vmap(one_step)(
      jax.random.split(key, config.eval_every))
  return jax.vmap(one_seed)(keys)


def process_batches(data, labelled: np.ndarray, unlabelled: np.ndarray,
                    part: int, parts: int) -> dict[str, np.ndarray]:
  """The images that process `part` of `parts` feeds for a chunk's batches.

  `labelled` and `unlabelled` are `draw_batches`' rows of every global batch,
  `[seeds, steps, n]`; the process gathers block `part` of `parts` equal,
  contiguous blocks of them from its copy of the data. (Every process has the
  digits; a real input pipeline would read only these images.) `indices` are
  the unlabelled images' rows in `data["x_unlabelled"]` (FlexMatch's).
  """
  def block(rows):
    n = rows.shape[-1] // parts
    return rows[..., part * n:(part + 1) * n]

  i, j = block(labelled), block(unlabelled)
  seed = np.arange(i.shape[0])[:, None, None]
  return dict(x_labelled=data["x_labelled"][seed, i],
              y_labelled=data["y_labelled"][seed, i],
              x_unlabelled=data["x_unlabelled"][seed, j], indices=j)


def accuracy(graphdef, params, x, y) -> jax.Array:
  logits = nnx.merge(graphdef, params)(x)
  return jnp.mean(jnp.argmax(logits, -1) == y)


def train_chunk(config: Config, graphdef, state, batches, step_keys, test,
                axis_name=None):
  """`config.eval_every` steps for every seed, then the test accuracy.

  `state`, `batches` (`[seeds, steps, batch, ...]`, as `process_batches`) and
  `step_keys` (`[seeds, steps]`, as raw key data) carry a leading seed axis.
  With `axis_name`, `batches` holds this device's rows of every batch.
  """
  def one_seed(state, batches, step_keys):
    def body(state, inputs):
      batch, key_data = inputs
      return train_step(config, graphdef, state, batch,
                        jax.random.wrap_key_data(key_data), axis_name)

    state, metrics = jax.lax.scan(body, state, (batches, step_keys))
    metrics = jax.tree.map(jnp.mean, metrics)
    eval_params = state.teacher if config.teacher == "ema" else state.params
    metrics["accuracy"] = accuracy(graphdef, eval_params, test["x"], test["y"])
    return state, metrics

  return jax.vmap(one_seed)(state, batches, step_keys)


def data_mesh(devices: int) -> Mesh:
  """A mesh whose one axis, `data`, spans the first `devices` local devices of
  every process, ordered by process: process p's devices hold block p of the
  rows of every batch, the block that `process_batches` gives it."""
  ordered = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
  by_process = itertools.groupby(ordered, key=lambda d: d.process_index)
  return Mesh(np.array([d for _, local in by_process
                        for d in list(local)[:devices]]), ("data",))


def main_process() -> bool:
  """Whether this process prints and writes: process 0 (of 1 or more)."""
  return jax.process_index() == 0


def run_method(config: Config, graphdef, params, data, keys: jax.Array,
               xla_opt_level: int, devices: int = 1):
  """Trains one method for every seed at once; returns its history.

  `params` (the initial parameters) and `keys` carry a leading seed axis.
  Every batch is split over `devices` local devices of each process (of
  `jax.process_count()`, all of them running this with the same arguments).

  `xla_opt_level` is XLA's backend optimisation level: compiling dominates
  short runs, and level 1 compiles about twice as fast as the default (2) with
  the same step time on CPU; level 0 compiles faster still but runs slower.
  """
  start = time.perf_counter()
  chunk_fn = functools.partial(train_chunk, config, graphdef)
  mesh = data_mesh(devices)
  processes, me = jax.process_count(), jax.process_index()
  put = feed = jnp.array  # A copy: `state` is donated, `params` reused.
  if mesh.size > 1:
    # The state and the test set are replicated; each process feeds its rows
    # of every batch to its devices (`process_batches`).
    chunk_fn = jax.shard_map(
        functools.partial(chunk_fn, axis_name="data"), mesh=mesh,
        in_specs=(P(), P(None, None, "data"), P(), P()), out_specs=P(),
        check_vma=False)
    replicated = NamedSharding(mesh, P())
    put = lambda x: jax.make_array_from_process_local_data(
        replicated, np.array(x))
    feed = lambda x: jax.make_array_from_process_local_data(
        NamedSharding(mesh, P(None, None, "data")), x,
        (*x.shape[:2], x.shape[2] * processes, *x.shape[3:]))
  chunk_fn = jax.jit(
      chunk_fn, donate_argnums=0,
      compiler_options=dict(xla_backend_optimization_level=xla_opt_level))
  draw = jax.jit(functools.partial(  # Integers: the same at every level.
      draw_batches, config, num_labelled=data["y_labelled"].shape[1],
      num_unlabelled=data["x_unlabelled"].shape[1]),
      compiler_options=dict(xla_backend_optimization_level=xla_opt_level))
  copy = lambda tree: jax.tree.map(put, tree)
  threshold = make_threshold(config)
  seeds = jax.tree.leaves(params)[0].shape[0]
  threshold_state = None if threshold is None else jax.tree.map(
      lambda x: jnp.broadcast_to(x, (seeds, *x.shape)), threshold.init())
  state = TrainState(copy(params), copy(params),
                     copy(jax.vmap(make_optimizer(config).init)(params)),
                     copy(threshold_state))
  test = dict(x=put(data["x_test"]), y=put(data["y_test"]))
  history = dict(step=[], accuracy=[], loss=[], labelled_loss=[],
                 unlabelled_loss=[], fairness_loss=[], kept=[])
  chunks = config.steps // config.eval_every
  with _cli.progress(config.steps, f"{config.method:>12}",
                     disable=not main_process()) as bar:
    for chunk in range(chunks):
      # Every process draws the same global batches and keys.
      step_keys, labelled, unlabelled = draw(
          jax.vmap(jax.random.fold_in, (0, None))(keys, chunk))
      batches = process_batches(data, *jax.device_get((labelled, unlabelled)),
                                part=me, parts=processes)
      state, metrics = chunk_fn(
          state, jax.tree.map(feed, batches),
          put(jax.random.key_data(step_keys)), test)
      metrics = jax.device_get(metrics)
      history["step"].append((chunk + 1) * config.eval_every)
      for name, value in metrics.items():
        history[name].append(value.tolist())
      bar.set_postfix(acc=f"{metrics['accuracy'].mean():.3f}",
                      loss=f"{metrics['loss'].mean():.3f}")
      bar.update(config.eval_every)
  history["wall_seconds"] = time.perf_counter() - start
  return history


# --------------------------------------------------------------------------
# The experiment, in the caller's process.


def train(settings: Settings) -> dict[str, Any]:
  """Trains every method of `settings` over its seeds; returns the results.

  Runs here, in the caller's process (a notebook's kernel, say), on its local
  devices, and writes nothing. A bad setting raises a ValueError (or
  TypeError) naming it, e.g. `devices` beyond the local devices. With
  `num_processes > 1` (or `distributed="auto"`), every process calls this
  with the same settings but `process_id`; each gets the same results, and
  only process 0 prints.

  Returns `dict(config=<the resolved settings>, results={method: ...})`, what
  `results.json` holds (see `summarise`).
  """
  settings = settings.resolved()
  seeds = list(range(settings.seeds))
  data = load_data(settings.labels_per_class, seeds)
  processes = jax.process_count()
  if main_process():
    print(f"digits: {data['y_labelled'].shape[1]} labelled, "
          f"{data['x_unlabelled'].shape[1]} unlabelled, "
          f"{len(data['y_test'])} test images; seeds {seeds}; "
          f"{settings.devices} {jax.devices()[0].platform} device(s)"
          + (f" in each of {processes} processes" if processes > 1 else ""))
  # Every method starts from the same parameters and draws the same keys.
  init_keys, train_keys = jnp.unstack(
      jnp.stack([jax.random.split(jax.random.key(seed)) for seed in seeds]),
      axis=1)
  graphdef, params = init_params(init_keys)
  # Compiling dominates a short run: XLA's level 0 compiles fastest (see `run_method`).
  xla_opt_level = 0 if settings.quick or settings.steps <= QUICK["steps"] else 1
  # `all-labels` trains on every training image, labelled, for every seed.
  stack = lambda x: np.broadcast_to(x, (len(seeds), *x.shape))
  every_label = dict(data, x_labelled=stack(data["x_train"]),
                     y_labelled=stack(data["y_train"]))
  histories = {}
  for method in settings.method:
    config = Config(
        method=method, steps=settings.steps, eval_every=settings.eval_every,
        batch_size=settings.batch_size,
        unlabelled_batch_size=settings.unlabelled_batch_size,
        learning_rate=settings.learning_rate,
        weight_decay=settings.weight_decay, ema_decay=settings.ema_decay,
        teacher=settings.teacher,
        unlabelled_weight=(UNLABELLED_WEIGHTS[method]
                           if settings.unlabelled_weight is None else
                           settings.unlabelled_weight),
        q=settings.q, p_cutoff=settings.p_cutoff,
        threshold_momentum=settings.threshold_momentum,
        fairness_weight=(settings.fairness_weight if method == "freematch"
                         else 0.0),
        num_unlabelled=data["x_unlabelled"].shape[1])
    method_data = every_label if method == "all-labels" else data
    histories[method] = run_method(config, graphdef, params, method_data,
                                   train_keys,
                                   xla_opt_level=xla_opt_level,
                                   devices=settings.devices)
  return dict(config=dataclasses.asdict(settings),
              results=summarise(settings, data, histories))


def summarise(settings: Settings, data, histories) -> dict[str, Any]:
  """Per method: final test accuracy per seed, mean, std and the history.

  `all-labels` trains on every training label: its `labels_per_class` is
  None and `num_labels` the training set's size. `devices` counts those of
  all `processes`.
  """
  results = {}
  for method, history in histories.items():
    final = np.asarray(history["accuracy"][-1])
    every_label = method == "all-labels"
    results[method] = dict(
        test_accuracy=final.tolist(), mean=float(final.mean()),
        std=float(final.std()),
        labels_per_class=None if every_label else settings.labels_per_class,
        num_labels=int(len(data["y_train"]) if every_label else
                       data["y_labelled"].shape[1]),
        steps=settings.steps,
        wall_seconds=history["wall_seconds"],
        seeds=list(range(settings.seeds)),
        devices=settings.devices * jax.process_count(),
        processes=jax.process_count(),
        history={k: v for k, v in history.items() if k != "wall_seconds"})
  return results


# --------------------------------------------------------------------------
# Command line and reporting.


def print_table(results) -> None:
  print(f"\n{'method':<14}{'test accuracy (%)':>22}{'labels':>8}"
        f"{'wall (s)':>10}")
  for method, r in results.items():
    acc = _cli.mean_std(r["mean"], r["std"], 100)
    print(f"{method:<14}{acc:>22}{r['num_labels']:>8}"
          f"{r['wall_seconds']:>10.1f}")


def plot(results, path: str, labels_per_class: int) -> None:
  plt = _cli.pyplot()
  fig, ax = plt.subplots(figsize=(6, 4))
  for method, r in results.items():
    acc = 100 * np.asarray(r["history"]["accuracy"])  # [evals, seeds]
    steps = r["history"]["step"]
    line, = ax.plot(steps, acc.mean(1),
                    linestyle="--" if method == "all-labels" else "-",
                    label=f"{method} ({100 * r['mean']:.1f}%)")
    ax.fill_between(steps, acc.min(1), acc.max(1), alpha=0.2,
                    color=line.get_color())
  # Zoom in on where the methods differ; the first evaluations may fall below.
  lowest = min(100 * r["mean"] for r in results.values())
  ax.set_ylim(max(0.0, 10 * np.floor(lowest / 10) - 10), 100.5)
  ax.set(xlabel="step", ylabel="test accuracy (%)",
         title=f"Digits, {labels_per_class} labels per class "
         "(mean and range over seeds)")
  ax.grid(alpha=0.3)
  ax.legend(loc="lower right", fontsize="small")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def report(results: dict[str, Any], out: str) -> None:
  """Prints `train`'s table and writes results.json and accuracy.png."""
  print_table(results["results"])
  json_path = _cli.write_json(out, results)
  plot_path = os.path.join(out, "accuracy.png")
  plot(results["results"], plot_path, results["config"]["labels_per_class"])
  print(f"wrote {json_path} and {plot_path}")


# The command line: `parse_args(argv) -> (settings, out)`, `main(argv) -> 0`.
COMMAND = _cli.Command(Settings, __doc__, "semi_supervised",
                       "results.json and accuracy.png", train, report,
                       main_process)
build_parser, parse_args, main = (COMMAND.build_parser, COMMAND.parse_args,
                                  COMMAND.main)


if __name__ == "__main__":
  sys.exit(main())
