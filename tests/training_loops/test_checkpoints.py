"""Restored checkpoints: a state saved with `np.savez` and loaded back.

`np.load` (like orbax and flax's msgpack) restores NumPy arrays, not JAX
arrays: every threshold's `update` must take them, eagerly and under `jit`,
and continue training bit for bit. A field of the wrong dtype (a checkpoint
of another configuration, a float64 copy) is a TypeError naming the field.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmask


def _update(threshold, state, probs, indices=None):
  """The one place that calls `update` (its argument order may change)."""
  return threshold.update(probs, state, indices=indices)


_INDICES = np.array([[0, 3, 5, 7, 8, 9], [1, 2, 4, 6, 0, 3], [9, 8, 7, 1, 2, 5],
                     [4, 4, 6, 0, 1, 2], [5, 6, 7, 8, 9, 0], [3, 1, 4, 1, 5, 9]],
                    np.int32)

THRESHOLDS = {
    "fixmatch": lambda: jaxmask.fixmatch(p_cutoff=0.5),
    "percentile_threshold": lambda: jaxmask.percentile_threshold(
        q=30, keep="high"),
    "flexmatch": lambda: jaxmask.flexmatch(num_classes=4, num_unlabelled=10,
                                           p_cutoff=0.5),
    "flexmatch_concave": lambda: jaxmask.flexmatch(
        num_classes=4, num_unlabelled=10, p_cutoff=0.5, warmup=False,
        mapping="concave"),
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
  return list(zip(np.asarray(jax.nn.softmax(logits, axis=-1)), _INDICES))


def _save_and_load(state, tmp_path):
  path = tmp_path / "state.npz"
  np.savez(path, **state._asdict())
  with np.load(path) as saved:
    restored = type(state)(**{name: saved[name] for name in state._fields})
  assert all(type(x) is np.ndarray for x in restored)
  return restored


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("name", THRESHOLDS)
def test_restored_state_continues_bit_for_bit(name, jit, tmp_path):
  t = THRESHOLDS[name]()
  update = lambda *args: _update(t, *args)
  update = jax.jit(update) if jit else update
  batches = _batches()
  state = t.init()
  for probs, indices in batches[:3]:
    _, state = update(state, probs, indices)
  restored = _save_and_load(state, tmp_path)
  jax.tree.map(np.testing.assert_array_equal, restored, state)
  for probs, indices in batches[3:]:
    want = update(state, probs, indices)
    got = update(restored, probs, indices)
    jax.tree.map(np.testing.assert_array_equal, got, want)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      assert a.dtype == b.dtype
    (_, state), (_, restored) = want, got
  if name.startswith("freematch"):  # the fairness loss takes the state too
    logits = np.linspace(-2, 2, 24, dtype=np.float32).reshape(6, 4)
    mask = np.ones(6, np.float32)
    np.testing.assert_array_equal(
        jaxmask.freematch_fairness_loss(logits, mask,
                                        _save_and_load(state, tmp_path)),
        jaxmask.freematch_fairness_loss(logits, mask, state))


def _wrong_dtypes(x, jit):
  """Arrays of `x`'s shape and another dtype, NumPy and JAX alike.

  64-bit NumPy arrays only eagerly: `jit` converts them to 32 bits (with
  x64 off) before the function sees them.
  """
  x = np.asarray(x)
  if x.dtype == np.int32:
    wide, other, half = np.int64, np.float32, jnp.int16
  else:
    wide, other, half = np.float64, np.int32, jnp.bfloat16
  return ([] if jit else [x.astype(wide)]) + [
      x.astype(other), jnp.asarray(x, half)]


STATEFUL = [n for n in THRESHOLDS if n.startswith(("flex", "free", "soft"))]


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("name", STATEFUL)
def test_state_field_of_another_dtype_is_a_named_type_error(name, jit):
  t = THRESHOLDS[name]()
  update = lambda *args: _update(t, *args)
  update = jax.jit(update) if jit else update
  probs, indices = _batches()[0]
  state = t.init()
  for field in state._fields:
    for bad in _wrong_dtypes(getattr(state, field), jit):
      with pytest.raises(TypeError, match=rf"state\.{field}\b.*dtype"):
        update(state._replace(**{field: bad}), probs, indices)
    # Not an array at all: a list, a Python number, None (only eagerly: to
    # `jit` a number is an array and None an empty pytree).
    not_arrays = [np.asarray(getattr(state, field)).tolist(), 0.5, None]
    for bad in [] if jit else not_arrays:
      with pytest.raises(TypeError, match=rf"state\.{field}\b"):
        update(state._replace(**{field: bad}), probs, indices)


def test_fairness_loss_names_a_state_field_of_another_dtype():
  state = jaxmask.freematch(num_classes=4).init()
  logits = np.zeros((6, 4), np.float32)
  for field in state._fields:
    bad = state._replace(**{field: np.asarray(getattr(state, field),
                                              np.float64)})
    with pytest.raises(TypeError, match=re.escape(f"state.{field}")):
      jaxmask.freematch_fairness_loss(logits, np.ones(6), bad)
