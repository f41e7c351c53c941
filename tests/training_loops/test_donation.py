"""Buffer donation: the optax-style loop `jax.jit(t.update, donate_argnums=1)`.

Donating the state lets XLA write the new state into the old one's buffers.
It fails ("Attempt to donate the same buffer twice") if two fields of a
state share one array, so every `init()` (and every `update`) must return
distinct buffers; and a donated loop must train exactly as an undonated one.
The criterion's inputs are donated as a training step donates the logits it
returns gradients for.
"""

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmask


def _update(threshold, state, probs, indices=None):
  """`update` in optax's order, `update(probs, state)`."""
  return threshold.update(probs, state, indices=indices)


_INDICES = np.array([[0, 3, 5, 7, 8, 9], [1, 2, 4, 6, 0, 3], [9, 8, 7, 1, 2, 5],
                     [4, 4, 6, 0, 1, 2]], np.int32)

THRESHOLDS = {
    "fixmatch": lambda: jaxmask.fixmatch(p_cutoff=0.5),
    "percentile_threshold": lambda: jaxmask.percentile_threshold(
        q=30, keep="high"),
    "flexmatch": lambda: jaxmask.flexmatch(num_classes=4, num_unlabelled=10,
                                           p_cutoff=0.5),
    "flexmatch_no_warmup": lambda: jaxmask.flexmatch(
        num_classes=4, num_unlabelled=10, p_cutoff=0.5, warmup=False),
    "freematch": lambda: jaxmask.freematch(num_classes=4, momentum=0.7),
    "freematch_quantile": lambda: jaxmask.freematch(
        num_classes=4, momentum=0.7, use_quantile=True, clip_thresh=True),
    "softmatch": lambda: jaxmask.softmatch(num_classes=4, momentum=0.7),
    "softmatch_unaligned": lambda: jaxmask.softmatch(
        num_classes=4, momentum=0.7, dist_align=False),
}


def _batches():
  rng = np.random.default_rng(0)
  logits = 3 * rng.standard_normal((len(_INDICES), 6, 4)).astype(np.float32)
  return np.asarray(jax.nn.softmax(logits, axis=-1))


def _pointers(state):
  return [x.unsafe_buffer_pointer() for x in jax.tree.leaves(state)]


@pytest.mark.parametrize("name", THRESHOLDS)
def test_init_and_update_return_distinct_buffers(name):
  t = THRESHOLDS[name]()
  state = t.init()
  assert len(set(_pointers(state))) == len(jax.tree.leaves(state))
  for probs, indices in zip(_batches(), _INDICES):
    _, state = _update(t, state, probs, indices)
    assert len(set(_pointers(state))) == len(jax.tree.leaves(state))


@pytest.mark.parametrize("name", THRESHOLDS)
def test_donated_state_trains_as_undonated(name):
  t = THRESHOLDS[name]()
  plain = jax.jit(functools.partial(_update, t))
  donating = jax.jit(t.update, donate_argnums=1)  # (probs, state): the state
  want, got = [], []
  state = t.init()
  for probs, indices in zip(_batches(), _INDICES):
    out, state = plain(state, probs, indices)
    want.append((out, state))
  # From init() and, after one eager step, from an eager update's state.
  for eager_steps in (0, 1):
    state, got = t.init(), []
    for step, (probs, indices) in enumerate(zip(_batches(), _INDICES)):
      if step < eager_steps:
        out, state = _update(t, state, probs, indices)
      else:
        old = state
        out, state = donating(probs, state, indices=indices)
        # CPU honours donation: the old state's buffers are gone.
        assert all(x.is_deleted() for x in jax.tree.leaves(old))
      got.append(jax.tree.map(np.array, (out, state)))  # read before donated
    for g, w in zip(got, want):
      jax.tree.map(np.testing.assert_array_equal, g, w)


def _criterion_inputs():
  rng = np.random.default_rng(1)
  L, B, Q, K, T = 2, 2, 4, 3, 2
  return dict(
      class_logits=rng.standard_normal((L, B, Q, K + 1)).astype(np.float32),
      mask_logits=rng.standard_normal((L, B, Q, 8, 8)).astype(np.float32),
      labels=np.array([[0, 2], [1, 1]], np.int32),
      targets=rng.uniform(size=(B, T, 12, 12)) > 0.5,
      valid=np.array([[True, True], [True, False]]))


@pytest.mark.parametrize("max_total_targets", [None, 3])
@pytest.mark.parametrize("num_points", [16, None])
def test_criterion_logits_donated_to_a_training_step(num_points, implementation,
                                                     max_total_targets):
  """`value_and_grad` of the criterion, the logits donated to their gradients."""
  data = _criterion_inputs()

  def step(key, class_logits, mask_logits, labels, targets, valid):
    def loss(class_logits, mask_logits):
      return jaxmask.mask2former_loss(
          key, class_logits, mask_logits, labels, targets, valid,
          num_points=num_points, num_matcher_points=20,
          max_total_targets=max_total_targets,
          implementation=implementation).total
    return jax.value_and_grad(loss, argnums=(0, 1))(class_logits, mask_logits)

  args = lambda: (jax.random.key(0), *map(jnp.asarray, data.values()))
  want = jax.jit(step)(*args())
  donated = args()
  with warnings.catch_warnings():
    # XLA may not reuse every donated buffer; it must still compute the same.
    warnings.filterwarnings("ignore", "Some donated buffers were not usable")
    got = jax.jit(step, donate_argnums=(1, 2))(*donated)
  assert donated[1].is_deleted() and donated[2].is_deleted()
  jax.tree.map(np.testing.assert_array_equal, got, want)


def test_point_losses_logits_donated_to_a_training_step(implementation):
  data = _criterion_inputs()
  pred = jnp.asarray(data["mask_logits"][0, :, :2].reshape(4, 8, 8))
  targets = jnp.asarray(data["targets"].reshape(4, 12, 12))

  def step(pred, targets):
    def loss(pred):
      out = jaxmask.point_mask_losses(jax.random.key(0), pred, targets, 4.0,
                                      num_points=20,
                                      implementation=implementation)
      return out.loss_mask + out.loss_dice
    return jax.value_and_grad(loss)(pred)

  want = jax.jit(step)(pred, targets)
  donated = jnp.array(pred)
  got = jax.jit(step, donate_argnums=0)(donated, targets)
  assert donated.is_deleted()
  jax.tree.map(np.testing.assert_array_equal, got, want)
