"""Every public docstring's `Example:` section runs, as a doctest.

Each public function must have an `Example:` section with at least one `>>>`
line; its examples run with the standard `doctest` module (ELLIPSIS and
NORMALIZE_WHITESPACE) against a fixed set of globals, one test per name so a
failure names the function. NamedTuple classes' examples run too, if any.
"""

import doctest
import inspect
import re

import jax
import numpy as np
import pytest

import jaxmask

NAMES = list(jaxmask.__all__)
FUNCTIONS = [n for n in NAMES if inspect.isfunction(getattr(jaxmask, n))]
CLASSES = [n for n in NAMES if inspect.isclass(getattr(jaxmask, n))]
OPTIONFLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE

# The `Example:` (or `Examples:`) heading of a Google-style docstring.
_EXAMPLE_SECTION = re.compile(r"^Examples?:\s*$", re.MULTILINE)


def _globals():
  return {"jax": jax, "jnp": jax.numpy, "np": np, "jaxmask": jaxmask}


def _run_examples(name: str) -> None:
  """Runs the examples of `jaxmask.<name>`'s docstring; fails on any failure."""
  doc = inspect.getdoc(getattr(jaxmask, name)) or ""
  test = doctest.DocTestParser().get_doctest(
      doc, _globals(), f"jaxmask.{name}", f"jaxmask.{name}", 0)
  report = []
  runner = doctest.DocTestRunner(optionflags=OPTIONFLAGS, verbose=False)
  results = runner.run(test, out=report.append, clear_globs=True)
  assert results.failed == 0, (
      f"{results.failed} of {results.attempted} examples of jaxmask.{name}"
      " failed:\n" + "".join(report))


@pytest.mark.parametrize("name", FUNCTIONS)
def test_function_docstring_has_an_example(name):
  doc = inspect.getdoc(getattr(jaxmask, name)) or ""
  match = _EXAMPLE_SECTION.search(doc)
  assert match, f"jaxmask.{name}'s docstring has no `Example:` section"
  assert ">>>" in doc[match.end():], (
      f"jaxmask.{name}'s `Example:` section has no `>>>` line")


@pytest.mark.parametrize("name", FUNCTIONS)
def test_function_examples_run(name):
  _run_examples(name)


@pytest.mark.parametrize("name", CLASSES)
def test_class_examples_run(name):
  _run_examples(name)  # NamedTuples: passes trivially if there are none


def test_every_public_name_is_checked():
  assert sorted(FUNCTIONS + CLASSES) == sorted(NAMES)
