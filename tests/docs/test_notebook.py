"""Executes examples/colab_tpu.ipynb on CPU, in one kernel, so that the notebook cannot rot.

The notebook must run in its kernel's own process (a TPU opens in one process
only): no cell may start a process that imports JAX, and the install cell may
run pip and git only. CI runs the training cell with the example's `--quick`
preset on three methods (the notebook's full run takes minutes on 2 cores);
every other cell runs as written.
"""

import os
import pathlib
import re

import pytest

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")

ROOT = pathlib.Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "examples" / "colab_tpu.ipynb"
FULL_RUN = "semi_supervised.Settings(devices=0)"
CI_RUN = ('semi_supervised.Settings(devices=0, quick=True,'
          ' method=("supervised", "fixmatch", "flexmatch"))')


def _code_cells(nb):
  return [cell.source for cell in nb.cells if cell.cell_type == "code"]


def test_no_cell_starts_another_jax_process():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  for source in _code_cells(nb):
    for line in source.splitlines():
      stripped = line.strip()
      assert not stripped.startswith(("!", "%")), f"shell escape in the notebook: {line}"
      assert not re.search(r"\b(os\.system|os\.exec\w*|Popen|multiprocessing|"
                           r"concurrent\.futures)\b", line), line
      if re.search(r"\bsubprocess\.", line):
        assert re.search(r'"-m", "pip"|"git"', line), (
            f"a subprocess other than pip or git: {line}")


def test_notebook_runs_in_one_kernel_on_cpu():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  training = [cell for cell in nb.cells if FULL_RUN in cell.source]
  assert len(training) == 1, "the training cell moved: update FULL_RUN"
  training[0].source = training[0].source.replace(FULL_RUN, CI_RUN)
  # The kernel inherits conftest's 8 simulated CPU devices, so the training
  # cell runs data-parallel over 8 devices, as on a TPU host.
  client = nbclient.NotebookClient(
      nb, timeout=900, kernel_name="python3",
      resources={"metadata": {"path": str(ROOT)}})
  client.execute(env={**os.environ, "PYTHONPATH": str(ROOT)})
  outputs = [o for cell in nb.cells for o in cell.get("outputs", [])]
  text = "".join(o.get("text", "") for o in outputs)
  assert not [o for o in outputs if o.get("output_type") == "error"]
  assert "Traceback" not in text
  assert "jaxmask 0.2.0 from the checkout" in text and "kept: jax==" in text
  assert "parity smoke check passed on cpu" in text
  assert "devices: 8" in text
  assert "test accuracy" in text.lower()
  assert any("image/png" in o.get("data", {}) for o in outputs), "no plot shown"
  assert re.search(r"point-loss step, 200 masks, fwd\+bwd: +[\d.]+ ms on cpu", text), text
  assert re.search(r"mask2former_loss, L=10, B=2, fwd\+bwd: +[\d.]+ ms on cpu", text), text
