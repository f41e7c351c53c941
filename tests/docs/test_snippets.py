"""Every Python code block of README.md and of the user guide runs as written.

Each file is one program: its blocks run in order, in one fresh process, so a
block may use what an earlier block of the same file defined and nothing
else. A block whose first line is a comment starting with `# not run` (code
that needs several processes or an accelerator) is only compiled.
"""

import pathlib
import re
import subprocess
import sys
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "guide"
_SKIP = "# not run"


def markdown_blocks(text: str) -> list[str]:
  """The ```python fenced blocks of a Markdown file."""
  return re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)


def rst_blocks(text: str) -> list[str]:
  """The `.. code-block:: python` blocks of a reStructuredText file."""
  blocks = []
  for match in re.finditer(r"^\.\. code-block:: python\n((?:[ \t]*:.*\n)*)\n"
                           r"((?:(?:[ \t]+.*)?\n)+)", text, re.M):
    blocks.append(textwrap.dedent(match.group(2)))
  return blocks


def program(blocks: list[str]) -> tuple[str, list[str]]:
  """The blocks that run, joined into one program, and those only compiled."""
  run = [b for b in blocks if not b.lstrip().startswith(_SKIP)]
  skipped = [b for b in blocks if b.lstrip().startswith(_SKIP)]
  return "\n".join(run), skipped


def _blocks(path: pathlib.Path) -> list[str]:
  text = path.read_text()
  return markdown_blocks(text) if path.suffix == ".md" else rst_blocks(text)


def _files():
  """README.md and every guide page with a Python block (some hold only shell commands)."""
  return [p for p in [ROOT / "README.md", *sorted(GUIDE.glob("*.rst"))] if _blocks(p)]


@pytest.mark.parametrize("path", _files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_code_blocks_run(path, tmp_path):
  code, skipped = program(_blocks(path))
  for block in skipped:  # not run, but it must at least be Python
    compile(block, f"{path.name} (not run)", "exec")
  if not code.strip():
    return  # every block is marked `# not run`, and each compiled above
  script = tmp_path / (path.stem + "_snippets.py")
  script.write_text(code)
  proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                        text=True, timeout=600, check=False)
  assert proc.returncode == 0, (
      f"{path.relative_to(ROOT)}'s code blocks failed:\n{proc.stderr[-4000:]}")


def test_extraction_finds_the_blocks():
  md = "text\n```python\nx = 1\n```\n```bash\nls\n```\n```python\ny = x\n```\n"
  assert markdown_blocks(md) == ["x = 1\n", "y = x\n"]
  rst = ("Title\n\n.. code-block:: python\n\n   a = 1\n\n   b = a\n\ntext\n\n"
         ".. code-block:: python\n   :caption: c\n\n   # not run: needs 2 processes\n"
         "   c = b\n\n.. code-block:: bash\n\n   ls\n")
  blocks = rst_blocks(rst)
  assert blocks == ["a = 1\n\nb = a\n\n", "# not run: needs 2 processes\nc = b\n\n"]
  code, skipped = program(blocks)
  assert "b = a" in code and "c = b" not in code and len(skipped) == 1


def test_the_tutorial_pages_have_code():
  """The guide's tutorials (all but the installation, performance and examples
  pages, which hold shell commands and measured results) show Python code."""
  have_code = {p.stem for p in _files()}
  for page in GUIDE.glob("*.rst"):
    if page.stem not in ("installation", "performance", "examples"):
      assert page.stem in have_code, page.name
  assert "README" in have_code
