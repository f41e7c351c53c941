"""Loading and running the scripts under examples/ from their tests."""

import importlib.util
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def script(name: str) -> pathlib.Path:
  """`examples/<name>.py`."""
  return ROOT / "examples" / f"{name}.py"


def load(name: str):
  """The example as a module, imported without running its `main`."""
  spec = importlib.util.spec_from_file_location(name, script(name))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def run_quick(name: str, out: pathlib.Path, timeout: int = 300) -> str:
  """`python examples/<name>.py --quick --out out` in a subprocess, with the
  repository importable; asserts it exits 0 and returns its stdout."""
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(
      p for p in (env.get("PYTHONPATH"), str(ROOT)) if p)
  proc = subprocess.run(
      [sys.executable, str(script(name)), "--quick", "--out", str(out)],
      capture_output=True, text=True, env=env, timeout=timeout, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stdout
