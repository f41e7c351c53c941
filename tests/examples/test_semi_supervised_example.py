"""End-to-end tests of examples/semi_supervised.py."""

import dataclasses
import json

import numpy as np
import pytest

import _examples

for _module in ("flax", "optax", "sklearn", "matplotlib", "tqdm"):
  pytest.importorskip(_module)


@pytest.fixture(scope="module")
def example():
  return _examples.load("semi_supervised")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
  """The default `--quick` run (every method), in a subprocess: its output dir
  and stdout."""
  out = tmp_path_factory.mktemp("quick")
  # The subprocess inherits conftest's 8 simulated devices; it must use one.
  return out, _examples.run_quick("semi_supervised", out)


METHODS = ["supervised", "all-labels", "pseudo-label", "fixmatch", "flexmatch",
           "freematch", "softmatch", "mlkd"]


def test_quick_run_trains_and_writes_results(quick_run):
  tmp_path, stdout = quick_run
  assert str(tmp_path / "results.json") in stdout
  for method in METHODS:  # The table.
    assert f"\n{method} " in stdout, method

  with open(tmp_path / "results.json") as f:
    results = json.load(f)["results"]
  assert list(results) == METHODS
  for method, r in results.items():
    if method == "all-labels":  # Every training image, labelled.
      assert r["labels_per_class"] is None and r["num_labels"] == 1257
    else:
      assert r["labels_per_class"] == 5 and r["num_labels"] == 50, method
    assert r["devices"] == 1, method
    assert len(r["test_accuracy"]) == 1 and r["wall_seconds"] > 0, method
    # History entries are [evals][seeds]. The unlabelled loss may rise while
    # the teacher grows confident, so the labelled loss is what must fall.
    history = r["history"]
    assert history["labelled_loss"][-1][0] < history["labelled_loss"][0][0], (
        method, history)
    assert r["mean"] > 0.15, (method, r["mean"])  # Chance is 0.1.
    kept = np.asarray(history["kept"])
    assert np.all((kept >= 0) & (kept <= 1)), (method, kept)
    if method in ("supervised", "all-labels"):
      assert not kept.any() and not np.any(history["unlabelled_loss"]), method
    elif method != "fixmatch":  # No weak view passes 0.95 in 100 steps.
      assert kept.any() and np.any(history["unlabelled_loss"]), method
    # FreeMatch's fairness term is <= 0 by design; the others have none.
    fairness = np.asarray(history["fairness_loss"])
    if method == "freematch":
      assert np.all(fairness <= 0) and fairness.any(), fairness
    else:
      assert not fairness.any(), method
  supervised_loss = results["supervised"]["history"]["loss"]
  assert supervised_loss[-1][0] < 0.5 * supervised_loss[0][0], supervised_loss
  png = (tmp_path / "accuracy.png").read_bytes()
  assert png.startswith(b"\x89PNG\r\n\x1a\n")


def test_eight_devices_train_like_one(example, quick_run, tmp_path):
  """Global masks and batch-wide random draws: 8 shards train like 1 batch.

  Gradients agree to ~1e-7; over 100 Adam steps rounding grows to ~1e-4 in
  MLKD's losses, which may move a test image across a decision boundary.
  """
  # FreeMatch: a threshold whose state and fairness term span the global
  # batch; MLKD: a loss on the gathered batch.
  methods = ["freematch", "mlkd"]
  assert example.main(["--quick", "--devices", "8", "--method", *methods,
                       "--out", str(tmp_path)]) == 0
  with open(tmp_path / "results.json") as f:
    got = json.load(f)
  with open(quick_run[0] / "results.json") as f:
    want = json.load(f)["results"]
  assert got["config"]["devices"] == 8
  for method in methods:
    g, w = got["results"][method], want[method]
    assert g["devices"] == 8, method
    for name in ("loss", "labelled_loss", "unlabelled_loss", "fairness_loss",
                 "kept"):
      np.testing.assert_allclose(g["history"][name], w["history"][name],
                                 rtol=2e-3, atol=1e-6, err_msg=method + name)
    np.testing.assert_allclose(g["test_accuracy"], w["test_accuracy"],
                               atol=1.01 / 540, err_msg=method)


def test_method_selection(example):
  method = lambda argv: example.parse_args(argv)[0].method
  assert method([]) == example.DEFAULT_METHODS
  assert {"supervised", "all-labels"} <= set(example.DEFAULT_METHODS)
  assert method(["--quick"]) == tuple(METHODS)
  assert method(["--method", "all"]) == tuple(METHODS)
  assert method(["--method", "mlkd", "all"]) == tuple(METHODS)
  assert method(["--quick", "--method", "softmatch", "fixmatch", "softmatch"]) == (
      "softmatch", "fixmatch")


TINY = dict(method=("fixmatch",), seeds=1, steps=4, eval_every=2, batch_size=8,
            unlabelled_batch_size=8)


def test_train_runs_in_process_and_returns_what_the_command_line_writes(
    example, tmp_path, capsys):
  """`train(Settings(...))` in this process: the results `main` prints and writes."""
  results = example.train(example.Settings(**TINY))
  assert set(results) == {"config", "results"}
  config = results["config"]
  assert config == dataclasses.asdict(example.Settings(**TINY).resolved())
  assert config["method"] == TINY["method"] and config["devices"] == 1
  assert list(results["results"]) == list(TINY["method"])
  history_keys = {"step", "accuracy", "loss", "labelled_loss", "unlabelled_loss",
                  "fairness_loss", "kept"}
  r = results["results"]["fixmatch"]
  assert r["labels_per_class"] == 5 and r["num_labels"] == 50
  assert r["steps"] == 4 and r["seeds"] == [0] and r["devices"] == 1
  assert len(r["test_accuracy"]) == 1 and 0.0 <= r["mean"] <= 1.0
  assert r["std"] == 0.0 and r["wall_seconds"] > 0
  assert set(r["history"]) == history_keys and r["history"]["step"] == [2, 4]
  for name in history_keys - {"step"}:
    values = np.asarray(r["history"][name])
    assert values.shape == (2, 1) and np.isfinite(values).all(), name
  # `main` ends with `report(train(settings), out)`: the table and these numbers.
  capsys.readouterr()
  example.report(results, str(tmp_path))
  assert "\nfixmatch " in capsys.readouterr().out
  with open(tmp_path / "results.json") as f:
    written = json.load(f)
  assert written == json.loads(json.dumps(
      {**results, "config": {**config, "out": str(tmp_path)}}))
  assert (tmp_path / "accuracy.png").read_bytes().startswith(b"\x89PNG")


def test_train_refuses_more_devices_than_exist(example):
  available = example.jax.local_device_count()
  with pytest.raises(ValueError, match=rf"^devices must be an integer in \[0, {available}\]"):
    example.train(example.Settings(devices=available + 1))
