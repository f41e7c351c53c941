"""Executes examples/colab_tpu.ipynb on CPU so that the notebook cannot rot."""

import os
import pathlib

import pytest

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_colab_notebook_runs_on_cpu():
  nb = nbformat.read(ROOT / "examples" / "colab_tpu.ipynb", as_version=4)
  # The kernel inherits conftest's 8 simulated CPU devices, so the training
  # cell runs data-parallel over 8 devices, as on a TPU host.
  client = nbclient.NotebookClient(
      nb, timeout=600, kernel_name="python3",
      resources={"metadata": {"path": str(ROOT)}})
  client.execute(env={**os.environ, "PYTHONPATH": str(ROOT)})
  outputs = "".join(o.get("text", "") for cell in nb.cells
                    for o in cell.get("outputs", []))
  assert "parity smoke check passed on cpu" in outputs
  assert "devices: 8" in outputs
  assert "test accuracy" in outputs.lower()
