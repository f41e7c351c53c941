"""End-to-end tests of examples/segmentation.py (Mask2Former's Table 5 in miniature) and of
its parts, examples/segmentation_parts/."""

import json
import math

import numpy as np
import pytest

import _examples

for _module in ("flax", "optax", "matplotlib", "tqdm"):
  pytest.importorskip(_module)

METRICS = ("pq", "sq", "rq", "miou", "accuracy")


jax = pytest.importorskip("jax")
jnp = jax.numpy


@pytest.fixture(scope="module")
def parts():
  """The modules of examples/segmentation_parts/, by name."""
  names = ("settings", "data", "train", "evaluate")
  return {name: _examples.load(f"segmentation_parts.{name}") for name in names}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
  """The `--quick` run, in a subprocess: its output dir and stdout."""
  out = tmp_path_factory.mktemp("segmentation")
  return out, _examples.run_quick("segmentation", out)


def test_quick_run_writes_a_table_and_results(quick_run):
  out, stdout = quick_run
  assert "mask mIoU" in stdout and "point (49)" in stdout, stdout[-2000:]
  assert "full mask" in stdout
  assert str(out / "results.json") in stdout
  with open(out / "results.json") as f:
    saved = json.load(f)
  assert saved["config"]["quick"] is True
  assert saved["config"]["num_points"] == 49  # 12544 * (64 / 1024)².
  assert saved["wall_seconds"] > 0
  results = saved["results"]
  assert list(results) == ["point", "full"]
  assert results["point"]["num_points"] == 49
  assert results["full"]["num_points"] is None
  evals = saved["config"]["steps"] // saved["config"]["eval_every"]
  for loss, r in results.items():
    assert r["seeds"] == [0], loss
    memory = r["memory_bytes"]
    assert memory["peak"] == (memory["temp"] + memory["argument"]
                              + memory["output"]) > 0, loss
    assert r["step_ms"] > 0, loss
    history = r["history"]
    assert history["step"] == [20, 40], (loss, history["step"])
    for name in ("loss", "step_seconds") + METRICS:
      assert len(history[name]) == evals, (loss, name)
      assert all(len(row) == 1 for row in history[name]), (loss, name)
    assert all(math.isfinite(v) for row in history["loss"] for v in row)
    for name in METRICS:
      assert len(r[name]) == 1 and 0.0 <= r[name][0] <= 100.0, (loss, name)
      assert r[f"{name}_mean"] == r[name][0] and r[f"{name}_std"] == 0.0
  assert "paired by seed" in stdout and "backbone pretrained" in stdout
  pretraining = saved["pretraining"]
  assert pretraining["steps"] == saved["config"]["pretrain_steps"] == 20
  assert 0.0 <= pretraining["accuracy"] <= 100.0
  assert pretraining["seconds"] > 0
  paired = saved["point_minus_full"]
  assert set(paired) == set(METRICS)
  for name in METRICS:
    expected = results["point"][name][0] - results["full"][name][0]
    assert paired[name]["per_seed"] == pytest.approx([expected])
    assert paired[name]["mean"] == pytest.approx(expected)
    assert paired[name]["std"] == 0.0
  # Both losses differ only in how the matched masks are supervised: the
  # point loss keeps no target-sized buffers per layer.
  assert (results["point"]["memory_bytes"]["temp"]
          < results["full"]["memory_bytes"]["temp"])


def test_quick_run_draws_its_plots(quick_run):
  out, _ = quick_run
  for name in ("curves.png", "predictions.png"):
    png = (out / name).read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n"), name
    assert len(png) < 300_000, (name, len(png))


def test_data_is_fixed_and_well_formed(parts):
  data = parts["data"]
  a = data.make_dataset(6, 64, 4, split=1)
  b = data.make_dataset(6, 64, 4, split=1)
  for name in ("images", "ids", "labels"):
    assert (a[name] == b[name]).all(), name
  assert a["images"].shape == (6, 64, 64, 3) and a["images"].dtype == "uint8"
  assert a["ids"].shape == (6, 64, 64) and a["labels"].shape == (6, 4)
  for ids, labels in zip(a["ids"], a["labels"]):
    count = int((labels >= 0).sum())
    assert 1 <= count <= 4 and (labels[:count] >= 0).all()
    assert (labels[count:] == -1).all()
    assert set(range(1, count + 1)) <= set(ids.ravel().tolist())
    assert ids.max() == count
  train = data.make_dataset(6, 64, 4, split=0)
  assert not (train["images"] == a["images"]).all()  # Held out.


def test_instance_masks_are_area_shares(parts):
  ids = np.zeros((1, 8, 8), np.uint8)
  ids[0, :4, :4] = 1  # Instance 1: the top-left cell of a 2x2 grid.
  ids[0, 4:, :2] = 2  # Instance 2: half of the bottom-left cell.
  shares = np.asarray(parts["data"].instance_masks(ids, 3, 2))
  assert shares.shape == (1, 3, 2, 2)
  np.testing.assert_array_equal(shares[0, 0], [[1.0, 0.0], [0.0, 0.0]])
  np.testing.assert_array_equal(shares[0, 1], [[0.0, 0.0], [0.5, 0.0]])
  np.testing.assert_array_equal(shares[0, 2], np.zeros((2, 2)))  # Padding.


def test_pretrained_backbone_is_shared_and_the_rest_drawn(parts):
  train = parts["train"]
  config = parts["settings"].Config(
      loss="point", image_size=64, max_instances=4, num_points=49,
      matcher_points=49, steps=2, eval_every=1, batch_size=2,
      learning_rate=1e-3, weight_decay=0.0, layers=1, queries=4, dim=16,
      class_weight=5.0)
  data = parts["data"].make_dataset(4, 64, 4, split=0)
  backbone, accuracy = train.pretrain_backbone(
      data, {k: jnp.asarray(v) for k, v in data.items()}, steps=2,
      batch_size=2, learning_rate=1e-2, weight_decay=0.0)
  assert 0.0 <= accuracy <= 100.0
  fresh = train.init_params(config, jax.random.key(0))
  a = train.init_params(config, jax.random.key(0), backbone)
  b = train.init_params(config, jax.random.key(1), backbone)
  leaves = lambda state: jax.tree.leaves(state)
  # The backbone is the pretrained one in every seed, and not a fresh draw.
  for x, y, z in zip(leaves(a["backbone"]), leaves(b["backbone"]),
                     leaves(backbone)):
    np.testing.assert_array_equal(x, z)
    np.testing.assert_array_equal(y, z)
  assert any(not np.array_equal(x, y) for x, y in zip(
      leaves(a["backbone"]), leaves(fresh["backbone"])))
  # Everything else comes from the seed's key.
  for x, y in zip(leaves(a["query_feat"]), leaves(fresh["query_feat"])):
    np.testing.assert_array_equal(x, y)
  assert not np.array_equal(leaves(a["query_feat"])[0],
                            leaves(b["query_feat"])[0])


def test_paired_differences_are_per_seed(parts):
  paired_differences = parts["evaluate"].paired_differences
  metrics = dict(pq=[10.0, 20.0, 30.0], sq=[1.0, 1.0, 1.0],
                 rq=[0.0, 0.0, 0.0], miou=[50.0, 60.0, 70.0],
                 accuracy=[40.0, 40.0, 40.0])
  shifted = dict(pq=[12.0, 19.0, 33.0], sq=[1.0, 1.0, 1.0],
                 rq=[0.0, 0.0, 0.0], miou=[50.0, 60.0, 70.0],
                 accuracy=[30.0, 40.0, 50.0])
  paired = paired_differences(dict(point=shifted, full=metrics))
  assert paired["pq"]["per_seed"] == [2.0, -1.0, 3.0]
  assert paired["pq"]["mean"] == pytest.approx(4.0 / 3.0)
  # std over seeds of (2, -1, 3): sqrt(((2/3)² + (7/3)² + (5/3)²) / 3).
  assert paired["pq"]["std"] == pytest.approx((78 / 27) ** 0.5)
  assert paired["miou"] == dict(per_seed=[0.0, 0.0, 0.0], mean=0.0, std=0.0)
  # Seed-wise pairing: equal means, yet each seed differs.
  assert paired["accuracy"]["mean"] == 0.0
  assert paired["accuracy"]["std"] == pytest.approx((200 / 3) ** 0.5)
  assert paired_differences(dict(point=shifted)) == {}
