"""API rules for the public surface (after dm-pix's API test)."""

import inspect

import jaxmask

FUNCTIONS = [getattr(jaxmask, n) for n in jaxmask.__all__
             if inspect.isfunction(getattr(jaxmask, n))]


def test_all_lists_exactly_the_public_names():
  public = {n for n in dir(jaxmask) if not n.startswith("_")} - {"_src"}
  assert set(jaxmask.__all__) == public
  assert list(jaxmask.__all__) == sorted(jaxmask.__all__)


def test_key_comes_first_and_defaults_are_keyword_only():
  for fn in FUNCTIONS:
    params = list(inspect.signature(fn).parameters.values())
    if "key" in [p.name for p in params]:
      assert params[0].name == "key", fn.__name__
    for p in params:
      if p.default is not inspect.Parameter.empty:
        assert p.kind == inspect.Parameter.KEYWORD_ONLY, (fn.__name__, p.name)


def test_every_public_function_is_documented_with_shapes():
  for fn in FUNCTIONS:
    doc = inspect.getdoc(fn)
    assert doc and "Args:" in doc and "Returns:" in doc, fn.__name__
    assert "[" in doc, f"{fn.__name__} docstring names no shapes"


def test_torch_ref_mirrors_jaxmask_names():
  import pytest
  pytest.importorskip("torch")
  import torch_ref
  assert set(torch_ref.__all__) <= set(jaxmask.__all__)
