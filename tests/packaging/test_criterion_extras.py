"""benchmarks/criterion_extras.py: host round-trips of HF's criterion and jaxmask's.

HF transformers' Mask2FormerLoss copies one cost matrix to the host per
decoder layer and image (`linear_sum_assignment(cost_matrix.cpu())` in its
matcher), and nothing else; jaxmask's step transfers nothing. Also checks
the benchmark's own checks: the matching-cost comparison with scipy, the
inputs' equality with run.py's, and that the counters see what they count.
Tiny sizes: the counts do not depend on them (two sizes are compared).
"""

import collections
import pathlib
import sys
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
scipy_optimize = pytest.importorskip("scipy.optimize")

import jaxmask  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "benchmarks"))
import criterion_extras  # noqa: E402
import run  # noqa: E402  (benchmarks/run.py)

TINY = dict(size=8, target_size=16, num_points=64)


def test_inputs_are_run_pys():
  c = run.CRITERION
  with mock.patch.dict(c, size=4):
    expected = run._criterion_inputs(8)
  got = criterion_extras.criterion_inputs(c["L"], c["B"], c["counts"], size=4,
                                          target_size=8)
  for e, g in zip(expected, got, strict=True):
    np.testing.assert_array_equal(g, e)


@pytest.mark.parametrize("L, B, counts, size", [(2, 2, (3, 2), 8),
                                                (1, 3, (4, 1, 2), 16)])
def test_hf_syncs_once_per_layer_and_image(L, B, counts, size):
  pytest.importorskip("transformers")
  result = criterion_extras.hf_host_round_trips(
      L, B, counts, size=size, target_size=2 * size, num_points=size * size)
  n = L * B
  assert result["expected"] == n
  assert result["device_to_host"] == n
  # One `.cpu()` per matcher call; scipy's np.asarray then calls `.numpy()`
  # on that host copy (Tensor.__array__), inside linear_sum_assignment.
  assert result["counts"] == {
      "cpu": n, "item": 0, "tolist": 0, "numpy": n, "__bool__": 0,
      "__int__": 0, "__float__": 0, "__index__": 0,
      "linear_sum_assignment": n, "numpy_of_cpu_copy": n}


def test_counting_sees_every_kind_and_restores():
  hf = pytest.importorskip(
      "transformers.models.mask2former.modeling_mask2former")
  calls = collections.Counter()
  with criterion_extras._counting_host_copies(calls):
    t = torch.tensor([1.0])
    bool(t), int(t), float(t), [0, 1][torch.tensor(1)], t.item(), t.tolist()
    hf.linear_sum_assignment(t[None].cpu())
  assert all(calls[k] == 1 for k in (
      criterion_extras.TENSOR_METHODS + criterion_extras.IMPLICIT_CONVERSIONS
      + ("linear_sum_assignment", "numpy_of_cpu_copy"))), calls
  names = criterion_extras.TENSOR_METHODS + criterion_extras.IMPLICIT_CONVERSIONS
  assert not set(names) & set(vars(torch.Tensor))
  assert hf.linear_sum_assignment is scipy_optimize.linear_sum_assignment


def test_jaxmask_step_has_no_host_round_trips():
  result = criterion_extras.jaxmask_host_round_trips(2, 2, (3, 2), **TINY)
  assert result["guard_live"]
  assert result["guard_error"] is None
  assert result["hlo_host_ops"] == {}
  assert result["round_trips"] == 0


def test_hlo_scan_finds_a_host_callback():
  f = jax.jit(lambda x: jax.pure_callback(
      lambda a: np.asarray(a) * 2, jax.ShapeDtypeStruct((3,), jnp.float32), x))
  ops = criterion_extras.hlo_host_ops(f.lower(jnp.ones(3)).compile().as_text())
  assert sum(ops.values()) >= 1, ops


def test_matching_scaling_checks_cost():
  rows = []
  criterion_extras.bench_matching_scaling(1, rows, sizes=((10, 4), (6, 6)),
                                          batch=3)
  assert [r[0][-4:] for r in rows] == ["10×4", " 6×6"]
  assert all(len(r[1]) == len(r[2]) == 1 for r in rows)
  # A valid but suboptimal assignment fails the cost check.
  cost = np.random.default_rng(0).normal(size=(1, 5, 3)).astype(np.float32)
  queries, targets = scipy_optimize.linear_sum_assignment(-cost[0])  # the worst
  worst = np.empty(3, np.int32)
  worst[targets] = queries
  target_index = np.full(5, -1, np.int32)
  target_index[worst] = np.arange(3)
  bad = jaxmask.MaskMatching(query_index=worst[None],
                             target_index=target_index[None])
  with pytest.raises(AssertionError):
    criterion_extras._check_matching(cost, bad)
