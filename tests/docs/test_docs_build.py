"""The user guide and API reference (docs/) build with Sphinx, warnings as errors.

Runs the build README documents, `python -m sphinx -W --keep-going -b html
docs <out>`, in a subprocess into a temporary folder, so a docstring that
Sphinx cannot render (bad indentation in an example or math block, an
unknown role, a stray `*`) fails CI. Takes a few seconds.
"""

import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_sphinx_build_has_no_warnings(tmp_path):
  pytest.importorskip(
      "sphinx", reason="sphinx is not installed (pip install -e '.[docs]')")
  result = subprocess.run(
      [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q",
       "-b", "html", "-d", str(tmp_path / "doctrees"),
       str(ROOT / "docs"), str(tmp_path / "html")],
      cwd=ROOT, capture_output=True, text=True, timeout=300,
      check=False)
  assert result.returncode == 0, (
      f"sphinx exited with {result.returncode}:\n{result.stdout}\n"
      f"{result.stderr}")
  html = tmp_path / "html"
  assert (html / "api" / "index.html").is_file()
  for page in sorted((ROOT / "docs" / "guide").glob("*.rst")):
    assert (html / "guide" / f"{page.stem}.html").is_file(), page.name
  # NamedTuple fields carry their own descriptions, not Python's
  # generated "Alias for field number N".
  for page in sorted((html / "api").glob("*.html")):
    assert "Alias for field number" not in page.read_text(), page.name


def test_api_reference_lists_every_public_name():
  import jaxmask
  documented = []
  for page in sorted((ROOT / "docs" / "api").glob("*.rst")):
    documented += re.findall(r"^\.\. auto(?:function|class):: (\w+)$",
                             page.read_text(), re.MULTILINE)
  assert sorted(documented) == sorted(jaxmask.__all__)
