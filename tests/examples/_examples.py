"""Loading and running the scripts under examples/ from their tests."""

import importlib
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def script(name: str) -> pathlib.Path:
  """`examples/<name>.py`."""
  return EXAMPLES / f"{name}.py"


def load(name: str):
  """`examples/<name>.py`, or a part such as `segmentation_parts.data`, imported as the
  examples import each other (`examples/` on `sys.path`), without running `main`."""
  if str(EXAMPLES) not in sys.path:
    sys.path.append(str(EXAMPLES))
  return importlib.import_module(name)


def subprocess_env() -> dict[str, str]:
  """This environment, with the repository importable (for `python examples/...`)."""
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(
      p for p in (env.get("PYTHONPATH"), str(ROOT)) if p)
  return env


def run_quick(name: str, out: pathlib.Path, timeout: int = 300) -> str:
  """`python examples/<name>.py --quick --out out` in a subprocess, with the
  repository importable; asserts it exits 0 and returns its stdout."""
  proc = subprocess.run(
      [sys.executable, str(script(name)), "--quick", "--out", str(out)],
      capture_output=True, text=True, env=subprocess_env(), timeout=timeout, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stdout
