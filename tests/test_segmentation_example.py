"""End-to-end tests of examples/segmentation.py (Mask2Former's Table 5 in miniature)."""

import importlib.util
import json
import math
import os
import pathlib
import subprocess
import sys

import pytest

for _module in ("flax", "optax", "matplotlib", "tqdm"):
  pytest.importorskip(_module)

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "segmentation.py"
METRICS = ("pq", "sq", "rq", "miou", "accuracy")


@pytest.fixture(scope="module")
def example():
  spec = importlib.util.spec_from_file_location("segmentation", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
  """The `--quick` run, in a subprocess: its output dir and stdout."""
  out = tmp_path_factory.mktemp("segmentation")
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(
      p for p in (env.get("PYTHONPATH"), str(ROOT)) if p)
  proc = subprocess.run(
      [sys.executable, str(SCRIPT), "--quick", "--out", str(out)],
      capture_output=True, text=True, env=env, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return out, proc.stdout


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


def test_data_is_fixed_and_well_formed(example):
  a = example.make_dataset(6, 64, 4, split=1)
  b = example.make_dataset(6, 64, 4, split=1)
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
  train = example.make_dataset(6, 64, 4, split=0)
  assert not (train["images"] == a["images"]).all()  # Held out.


@pytest.mark.parametrize("argv, message", [
    (["--loss", "dice"], "invalid choice: 'dice'"),
    (["--seeds", "0"], "--seeds must be positive"),
    (["--steps", "250", "--eval-every", "100"], "multiple of --eval-every"),
    (["--image-size", "100"], "--image-size must be a multiple of 16"),
    (["--image-size", "16"], "--image-size must be a multiple of 16"),
    (["--queries", "3"], "--queries (3) must be at least --max-instances (4)"),
    (["--max-instances", "17", "--queries", "20"],
     "--max-instances must be at most 16"),
    (["--num-points", "0"], "--num-points must be positive"),
    (["--matcher-points", "-5"], "--matcher-points must be positive"),
    (["--class-weight", "-1"], "--class-weight must be >= 0"),
    (["--test-images", "30"], "--test-images must be a multiple of 20"),
    (["--dim", "30"], "--dim must be a multiple of 8"),
    (["--learning-rate", "0"], "--learning-rate must be positive"),
    (["--unknown-flag"], "unrecognized arguments"),
])
def test_bad_flags_exit_with_a_message(example, capsys, argv, message):
  with pytest.raises(SystemExit) as exit_info:
    example.main(argv)
  assert exit_info.value.code == 2
  assert message in capsys.readouterr().err
