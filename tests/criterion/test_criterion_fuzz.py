"""Fuzzing the Mask2Former criterion: a named error or the contract.

The rule (tests/_strategies.py, from `jaxmask/_src/checks.py`): every call
made here either (a) raises `ValueError` or `TypeError` whose message names
one of the function's own parameters, or (b) returns a result that keeps the
function's documented contract: the shapes and dtypes of its docstring, and
value properties that hold whatever the data (below). Anything else is a
library bug.

Oracles: the documented composition of the public point losses and
samplers, and `scipy.optimize.linear_sum_assignment`; nothing is copied from
the implementation.

* `mask_matching_cost`: finite float32 `[Q, T]`; the documented composition
  (`5 * pairwise_sigmoid_ce_loss - 2 * probs[:, labels] + 5 *
  pairwise_dice_loss` at the sampled points) where it is finite; non-finite
  entries become one sentinel above every finite entry.
* `hungarian_match` (`MaskMatching`): a valid matching of every valid
  target; scipy's optimum where the costs are finite.
* `mask2former_loss` (`Mask2FormerLoss`): the documented loss keys, float32
  scalars `>= 0` for finite logits, `total` the weighted sum; both
  implementations.

Hostile arguments (one bad argument at a time on a valid baseline) must
raise (a).

`COVERED` names the test that fuzzes each of these public names, `HOSTILE`
the bad values of each function's arguments;
tests/test_api.py::test_every_public_name_is_fuzzed checks that every public
name of jaxmask has both across the concept folders. Settings: `_fuzz`,
derandomized with no example database, so CI runs the same examples every
time.
"""

from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmask
from _strategies import BAD_IMPORTANCE
from _strategies import BAD_KEY
from _strategies import BAD_OVERSAMPLE
from _strategies import BAD_TARGETS
from _strategies import IMPLEMENTATIONS
from _strategies import INF
from _strategies import KEY
from _strategies import NAN
from _strategies import _L23
from _strategies import _PTS
from _strategies import _bad_array
from _strategies import _bad_int
from _strategies import _expect_named_error
from _strategies import _floats
from _strategies import _fuzz
from _strategies import _impl_bad
from _strategies import _unit

# NumPy oracles meet inf - inf and overflow on purpose; casts to float16
# overflow; complex q warns when cast.
pytestmark = pytest.mark.filterwarnings(
    "ignore:invalid value encountered:RuntimeWarning",
    "ignore:overflow encountered:RuntimeWarning",
    "ignore:divide by zero encountered:RuntimeWarning",
    "ignore::numpy.exceptions.ComplexWarning")


# Public name -> the test in this file that fuzzes it. tests/test_api.py
# (`test_every_public_name_is_fuzzed`) collects these from every
# tests/<concept>/test_<concept>_fuzz.py: each public name must have one.
COVERED = {
    "Mask2FormerLoss": "test_mask2former_loss_contract",
    "MaskMatching": "test_hungarian_match_contract",
    "hungarian_match": "test_hungarian_match_contract",
    "mask2former_loss": "test_mask2former_loss_contract",
    "mask_matching_cost": "test_mask_matching_cost_contract",
}


# ---------------------------------------------------------------------------
# (b) The Mask2Former criterion.
# ---------------------------------------------------------------------------


@_fuzz(20)
@given(data=st.data(), q=st.sampled_from((2, 4)), t=st.sampled_from((0, 1, 2)),
       nonfinite=st.booleans(), target_dtype=st.sampled_from(("float32", "bool")))
def test_mask_matching_cost_contract(data, q, t, nonfinite, target_dtype):
  """Finite float32 `[Q, T]`; the documented composition where it is finite."""
  cls = data.draw(_floats((q, 4), huge=False, nonfinite=nonfinite))
  masks = data.draw(_floats((q, 3, 5), huge=False, nonfinite=nonfinite))
  labels = np.asarray(data.draw(hnp.arrays(np.int32, (t,),
                                           elements=st.integers(0, 2))))
  targets = np.asarray(data.draw(_unit((t, 4, 4))))
  if target_dtype == "bool":
    targets = targets > 0.5
  points = np.asarray(data.draw(_unit((6, 2))))
  cost = jaxmask.mask_matching_cost(cls, masks, labels, targets, points)
  assert cost.shape == (q, t) and cost.dtype == jnp.float32
  assert np.isfinite(np.asarray(cost)).all()
  if t == 0:
    return
  probs = jax.nn.softmax(jnp.asarray(cls), axis=-1)
  pred = jaxmask.point_sample_single(masks, points)
  target = jaxmask.point_sample_single(np.float32(targets), points)
  want = np.asarray(5.0 * jaxmask.pairwise_sigmoid_ce_loss(pred, target)
                    - 2.0 * probs[:, labels]
                    + 5.0 * jaxmask.pairwise_dice_loss(pred, target))
  finite = np.isfinite(want)
  np.testing.assert_allclose(np.asarray(cost)[finite], want[finite],
                             rtol=1e-5, atol=1e-5)
  # Non-finite entries become one sentinel above every finite entry.
  if not finite.all():
    assert (np.asarray(cost)[~finite] > np.abs(want[finite]).max(initial=0)).all()


@_fuzz(40)
@given(data=st.data(), shape=st.sampled_from(((1, 1), (3, 2), (5, 5), (6, 3))),
       nonfinite=st.booleans())
def test_hungarian_match_contract(data, shape, nonfinite):
  """A valid matching of every valid target; scipy's optimum where finite."""
  from scipy.optimize import linear_sum_assignment
  cost = np.asarray(data.draw(_floats(shape, huge=False, nonfinite=nonfinite)))
  valid = np.asarray(data.draw(hnp.arrays(np.bool_, (shape[1],))))
  out = jaxmask.hungarian_match(cost, target_valid=valid)
  assert isinstance(out, jaxmask.MaskMatching)
  query, target = np.asarray(out.query_index), np.asarray(out.target_index)
  assert query.shape == (shape[1],) and target.shape == (shape[0],)
  assert query.dtype == target.dtype == np.int32
  assert (query[~valid] == -1).all() and (query[valid] >= 0).all()
  assert len(set(query[valid])) == valid.sum()
  assert all(target[query[t]] == t for t in np.flatnonzero(valid))
  assert (target >= 0).sum() == valid.sum()
  sub = cost[:, valid].astype(np.float64)
  if np.isfinite(sub).all() and valid.any():
    rows, cols = linear_sum_assignment(sub)
    got = sub[query[valid], np.arange(valid.sum())].sum()
    np.testing.assert_allclose(got, sub[rows, cols].sum(), rtol=1e-5, atol=1e-4)


_CRITERION_CASES = (  # L, B, Q, K, T, H, W, Ht, Wt, num_points
    (1, 1, 2, 2, 1, 3, 4, 4, 4, 4),
    (2, 2, 3, 3, 2, 4, 3, 5, 6, None),
)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@_fuzz(8)
@given(case=st.sampled_from(_CRITERION_CASES), data=st.data(),
       seed=st.integers(0, 3))
def test_mask2former_loss_contract(implementation, case, data, seed):
  """Keys, float32 scalars >= 0 for finite logits, total = weighted sum."""
  L, B, Q, K, T, H, W, Ht, Wt, num_points = case
  cls = data.draw(_floats((L, B, Q, K + 1), huge=False))
  masks = data.draw(_floats((L, B, Q, H, W), huge=False))
  labels = np.asarray(data.draw(hnp.arrays(np.int32, (B, T),
                                           elements=st.integers(0, K - 1))))
  targets = np.asarray(data.draw(_unit((B, T, Ht, Wt))))
  valid = np.asarray(data.draw(hnp.arrays(np.bool_, (B, T))))
  out = jaxmask.mask2former_loss(
      jax.random.key(seed), cls, masks, labels, targets, valid,
      num_points=num_points, num_matcher_points=4,
      implementation=implementation)
  assert isinstance(out, jaxmask.Mask2FormerLoss)
  names = ["loss_cross_entropy", "loss_mask", "loss_dice"]
  assert set(out.losses) == set(names) | {
      f"{n}_{i}" for n in names for i in range(L - 1)}
  for value in (out.total, *out.losses.values()):
    assert value.shape == () and value.dtype == jnp.float32
    assert np.isfinite(value) and value >= -1e-6
  weights = {"loss_cross_entropy": 2.0, "loss_mask": 5.0, "loss_dice": 5.0}
  want = sum(weights[k.rstrip("_0123456789")] * float(v)
             for k, v in out.losses.items())
  np.testing.assert_allclose(out.total, want, rtol=1e-5, atol=1e-6)
  if not valid.any():
    assert float(out.losses["loss_mask"]) == float(out.losses["loss_dice"]) == 0


# ---------------------------------------------------------------------------
# (a) Hostile arguments: a ValueError or TypeError naming an argument.
# ---------------------------------------------------------------------------

_CLS = jnp.linspace(-2.0, 2.0, 18).reshape(2, 1, 3, 3)  # [L, B, Q, K + 1]
_MASKS = jnp.linspace(-3.0, 3.0, 72).reshape(2, 1, 3, 3, 4)  # [L, B, Q, H, W]
BAD_WEIGHT = st.sampled_from((-1.0, NAN, INF, "2", True, [1.0], 1j,
                              jnp.float32(2.0)))


# Function -> (valid keyword arguments, {argument: strategy of bad values}).
HOSTILE = {
    "mask_matching_cost": (
        dict(class_logits=_CLS[0, 0], mask_logits=_MASKS[0, 0],
             target_labels=jnp.array([0, 1]), target_masks=jnp.ones((2, 4, 4)),
             point_coords=_PTS[0]),
        dict(class_logits=_bad_array((3, 3), also=(jnp.zeros((4, 3)),
                                                   jnp.zeros((3, 1)))),
             mask_logits=_bad_array((3, 3, 4), also=(jnp.zeros((2, 3, 4)),)),
             target_labels=st.sampled_from((
                 jnp.array([0, 2]), jnp.array([-1, 0]), jnp.array([0.0, 1.0]),
                 jnp.zeros((2, 1), jnp.int32), jnp.zeros(3, jnp.int32),
                 jnp.zeros(4, jnp.int32), None, "0")),
             target_masks=_bad_array((2, 4, 4), floating=False) | BAD_TARGETS,
             point_coords=_bad_array((6, 2), also=(jnp.zeros((6, 3)),
                                                   jnp.zeros((0, 2)))),
             cost_class=BAD_WEIGHT, cost_mask=BAD_WEIGHT, cost_dice=BAD_WEIGHT)),
    "hungarian_match": (
        dict(cost=_L23.T, target_valid=jnp.array([True, False])),
        dict(cost=_bad_array((3, 2), also=(jnp.zeros((2, 3)),)),
             target_valid=st.sampled_from((
                 jnp.ones(2, jnp.int32), jnp.ones(3, bool), jnp.ones((2, 1), bool),
                 "all", 1.0)))),
    "mask2former_loss": (
        dict(key=KEY, class_logits=_CLS, mask_logits=_MASKS,
             target_labels=jnp.array([[0, 1]]),
             target_masks=jnp.ones((1, 2, 4, 4)),
             target_valid=jnp.array([[True, False]]), num_points=4),
        dict(key=BAD_KEY,
             class_logits=_bad_array((2, 1, 3, 3), also=(
                 jnp.zeros((2, 1, 3, 1)), jnp.zeros((2, 1, 1, 3)),
                 jnp.zeros((0, 1, 3, 3)))),
             mask_logits=_bad_array((2, 1, 3, 3, 4), also=(
                 jnp.zeros((1, 1, 3, 3, 4)), jnp.zeros((2, 2, 3, 3, 4)))),
             target_labels=st.sampled_from((
                 jnp.array([[2, 0]]), jnp.array([[-1, 0]]), jnp.array([[0.0, 1.0]]),
                 jnp.zeros((1, 3), jnp.int32), jnp.zeros(2, jnp.int32))),
             target_masks=st.sampled_from((
                 jnp.full((1, 2, 4, 4), 2.0), jnp.ones((1, 3, 4, 4)),
                 jnp.ones((2, 4, 4)), jnp.ones((1, 2, 4, 4), jnp.complex64))),
             target_valid=st.sampled_from((
                 jnp.ones((1, 2), jnp.int32), jnp.ones((1, 3), bool),
                 jnp.ones(2, bool), None)),
             class_weight=BAD_WEIGHT, mask_weight=BAD_WEIGHT,
             dice_weight=BAD_WEIGHT, no_object_weight=BAD_WEIGHT,
             cost_class=BAD_WEIGHT,
             # None is valid for both (full-mask losses; the default points).
             num_points=_bad_int(1).filter(lambda v: v is not None),
             oversample_ratio=BAD_OVERSAMPLE,
             importance_sample_ratio=BAD_IMPORTANCE,
             num_matcher_points=_bad_int(1).filter(lambda v: v is not None),
             implementation=_impl_bad())),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
@_fuzz(40)
@given(data=st.data())
def test_hostile_argument_raises_a_named_error(name, data):
  fn = getattr(jaxmask, name)
  valid, bad = HOSTILE[name]
  argument = data.draw(st.sampled_from(sorted(bad)), label="argument")
  value = data.draw(bad[argument], label="value")
  _expect_named_error(fn, **{**valid, argument: value})


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_the_valid_hostile_baselines_return(name):
  """The baselines above are valid: the errors come from the one bad value."""
  valid, _ = HOSTILE[name]
  jax.block_until_ready(getattr(jaxmask, name)(**valid))
