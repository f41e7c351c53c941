"""The release: the wheel's files and metadata, the types it ships, torch_ref's extra.

The wheel is built from a copy of this checkout (so no `build/` left over from
an earlier build can leak into it) with the installed setuptools, without
build isolation (the test extra pins setuptools>=77, which PEP 639 license
metadata needs), so the test needs no network.
"""

import ast
import email.parser
import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
_SKIPPED = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache",
    ".hypothesis", "_build", "out", "results")


def _source_version() -> str:
  """`__version__` as written in jaxmask/__init__.py, the one version source."""
  tree = ast.parse((ROOT / "jaxmask" / "__init__.py").read_text())
  for node in tree.body:
    if (isinstance(node, ast.Assign)
        and [t.id for t in node.targets if isinstance(t, ast.Name)] == ["__version__"]):
      return ast.literal_eval(node.value)
  raise AssertionError("jaxmask/__init__.py sets no literal __version__")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> pathlib.Path:
  tmp = tmp_path_factory.mktemp("wheel")
  source = tmp / "source"
  shutil.copytree(ROOT, source, ignore=_SKIPPED)
  subprocess.run(
      [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
       "-w", str(tmp / "dist"), str(source)],
      check=True, capture_output=True, text=True)
  (built,) = (tmp / "dist").glob("*.whl")
  return built


def _metadata(wheel: pathlib.Path):
  with zipfile.ZipFile(wheel) as z:
    (name,) = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
    return email.parser.Parser().parsestr(z.read(name).decode())


def test_the_wheel_holds_the_packages_the_marker_and_the_license(wheel):
  version = _source_version()
  dist_info = f"jaxmask-{version}.dist-info"
  with zipfile.ZipFile(wheel) as z:
    names = set(z.namelist())
    license_text = z.read(f"{dist_info}/licenses/LICENSE").decode()
  assert {n.split("/")[0] for n in names} == {"jaxmask", "torch_ref", dist_info}
  modules = {p.relative_to(ROOT).as_posix()
             for package in ("jaxmask", "torch_ref")
             for p in (ROOT / package).rglob("*.py")}
  assert modules == {n for n in names if n.endswith(".py")}
  assert "jaxmask/py.typed" in names
  assert license_text == (ROOT / "LICENSE").read_text()
  assert license_text.split()[:4] == ["Apache", "License", "Version", "2.0,"]
  assert wheel.name == f"jaxmask-{version}-py3-none-any.whl"


def test_the_wheel_metadata(wheel):
  meta = _metadata(wheel)
  assert meta["Name"] == "jaxmask"
  assert meta["Version"] == _source_version() == "0.2.0"
  assert meta["License-Expression"] == "Apache-2.0"
  assert meta.get_all("License-File") == ["LICENSE"]
  assert meta["License"] is None  # the deprecated free-text field
  assert meta["Author"] == "jaxmask authors"
  assert "Typing :: Typed" in meta.get_all("Classifier")
  assert not any(c.startswith("License ::") for c in meta.get_all("Classifier"))
  requires = {r.split(">")[0].split("=")[0].split(";")[0].strip()
              for r in meta.get_all("Requires-Dist")
              if "extra ==" not in r}
  assert requires == {"jax", "numpy", "optax"}
  assert {"torch", "examples", "docs", "test"} <= set(meta.get_all("Provides-Extra"))


def test_the_changelog_has_a_section_for_this_version():
  changelog = (ROOT / "CHANGELOG.md").read_text()
  assert f"\n## [{_source_version()}]" in changelog
  assert "\n## [0.1.0]" in changelog


def _mypy(target: pathlib.Path, site: pathlib.Path, cwd: pathlib.Path, cache: pathlib.Path):
  # cwd and the usage file's folder hold no jaxmask: it is found as an
  # installed package (on PYTHONPATH), which mypy reads only with py.typed.
  env = dict(os.environ, PYTHONPATH=str(site))
  return subprocess.run(
      [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
       "--cache-dir", str(cache), "--no-error-summary", str(target)],
      cwd=cwd, env=env, capture_output=True, text=True)


def test_a_checker_sees_the_wheels_types(wheel, tmp_path):
  """tests/packaging/typing_usage.py type-checks against the installed wheel."""
  site = tmp_path / "site"
  with zipfile.ZipFile(wheel) as z:
    z.extractall(site)  # what pip install puts in site-packages (pure Python)
  usage = ROOT / "tests" / "packaging" / "typing_usage.py"
  cache = tmp_path / "cache"
  if (ROOT / ".mypy_cache").is_dir():  # jax's analysis from `mypy` (.ci/run), a copy
    shutil.copytree(ROOT / ".mypy_cache", cache)
  ok = _mypy(usage, site, tmp_path, cache)
  assert ok.returncode == 0, ok.stdout + ok.stderr

  # The control: without the marker, every jaxmask call is Any to mypy.
  (site / "jaxmask" / "py.typed").unlink()
  untyped = _mypy(usage, site, tmp_path, cache)
  assert untyped.returncode == 1, untyped.stdout + untyped.stderr
  assert "missing library stubs or py.typed marker" in untyped.stdout
  assert 'Expression is of type "Any", not "Array"' in untyped.stdout


@pytest.mark.parametrize("missing", ["torch", "scipy"])
@pytest.mark.parametrize("module", ["torch_ref", "torch_ref.sampling"])
def test_torch_ref_without_its_extra_says_what_to_install(module, missing):
  # sys.modules[name] = None makes `import name` raise ImportError, as if absent.
  code = (f"import sys; sys.modules[{missing!r}] = None\n"
          f"try:\n  import {module}\n"
          "except ImportError as e:\n  print(type(e).__name__, e)\n"
          "else:\n  print('imported')\n")
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                       text=True, check=True).stdout
  assert out.startswith("ImportError "), out
  assert 'pip install "jaxmask[torch]"' in out
  assert missing in out
