"""End-to-end tests of examples/semi_supervised.py."""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest

for _module in ("flax", "optax", "sklearn", "matplotlib", "tqdm"):
  pytest.importorskip(_module)

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "semi_supervised.py"


@pytest.fixture(scope="module")
def example():
  spec = importlib.util.spec_from_file_location("semi_supervised", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_quick_run_trains_and_writes_results(tmp_path):
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(
      p for p in (env.get("PYTHONPATH"), str(ROOT)) if p)
  # The subprocess inherits conftest's 8 simulated devices; it must use one.
  proc = subprocess.run(
      [sys.executable, str(SCRIPT), "--quick", "--out", str(tmp_path)],
      capture_output=True, text=True, env=env, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert str(tmp_path / "results.json") in proc.stdout

  with open(tmp_path / "results.json") as f:
    results = json.load(f)["results"]
  assert list(results) == ["supervised", "pseudo-label", "mlkd"]
  for method, r in results.items():
    assert r["labels_per_class"] == 5 and r["num_labels"] == 50, method
    assert len(r["test_accuracy"]) == 1 and r["wall_seconds"] > 0, method
    # History entries are [evals][seeds]. The unlabelled loss may rise while
    # the teacher grows confident, so the labelled loss is what must fall.
    history = r["history"]
    assert history["labelled_loss"][-1][0] < history["labelled_loss"][0][0], (
        method, history)
    assert r["mean"] > 0.15, (method, r["mean"])  # Chance is 0.1.
  supervised_loss = results["supervised"]["history"]["loss"]
  assert supervised_loss[-1][0] < 0.5 * supervised_loss[0][0], supervised_loss
  png = (tmp_path / "accuracy.png").read_bytes()
  assert png.startswith(b"\x89PNG\r\n\x1a\n")


@pytest.mark.parametrize("argv, message", [
    (["--method", "fixmatch"], "invalid choice: 'fixmatch'"),
    (["--labels-per-class", "0"], "--labels-per-class must be at least 1"),
    (["--seeds", "0"], "--seeds must be positive"),
    (["--steps", "250", "--eval-every", "100"], "multiple of --eval-every"),
    (["--ema-decay", "1.0"], "--ema-decay must lie in [0, 1)"),
    (["--q", "101"], "--q must lie in [0, 100]"),
    (["--unknown-flag"], "unrecognized arguments"),
])
def test_bad_flags_exit_with_a_message(example, capsys, argv, message):
  with pytest.raises(SystemExit) as exit_info:
    example.main(argv)
  assert exit_info.value.code == 2
  assert message in capsys.readouterr().err


def test_more_labels_than_exist_exits_with_a_message(example, capsys):
  assert example.main(["--labels-per-class", "1000"]) == 2
  err = capsys.readouterr().err
  assert "--labels-per-class must be between 1 and" in err
