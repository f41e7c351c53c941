"""API rules for the public surface (after dm-pix's API test).

Also: every public name is fuzzed (tests/<concept>/test_<concept>_fuzz.py).
"""

import importlib.util
import inspect
import pathlib
import sys

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


def _literal_choices(annotation):
  """The values a `Literal[...]` (or `Literal[...] | None`) annotation allows."""
  import typing
  if typing.get_origin(annotation) is typing.Literal:
    return set(typing.get_args(annotation))
  choices = set()
  for arg in typing.get_args(annotation):
    choices |= {None} if arg is type(None) else _literal_choices(arg)
  return choices


def test_options_with_fixed_choices_are_literals():
  cases = [(jaxmask.confidence_masks, "keep", {"low", "high"}),
           (jaxmask.percentile_mask, "keep", {"low", "high"}),
           (jaxmask.mlkd_loss, "mode", {"faithful", "masked"}),
           (jaxmask.percentile_threshold, "keep", {"low", "high"}),
           (jaxmask.flexmatch, "mapping", {"convex", "linear", "concave"})]
  cases += [(fn, "implementation", {None, "plain", "xla_cpu"}) for fn in (
      jaxmask.top_k_indices, jaxmask.point_sample,
      jaxmask.point_sample_single, jaxmask.select_uncertain_points,
      jaxmask.sample_points_using_uncertainty, jaxmask.point_mask_losses,
      jaxmask.mask2former_loss)]
  for fn, name, choices in cases:
    annotation = inspect.signature(fn).parameters[name].annotation
    assert _literal_choices(annotation) == choices, (fn.__name__, name)


def test_named_results():
  for cls, fields in ((jaxmask.ConfidenceMasks, 8), (jaxmask.MLKDLoss, 5),
                      (jaxmask.PointMaskLosses, 2)):
    assert issubclass(cls, tuple) and len(cls._fields) == fields
  assert jaxmask.PointMaskLosses._fields == ("loss_mask", "loss_dice")
  assert jaxmask.MaskMatching._fields == ("query_index", "target_index")
  assert jaxmask.Mask2FormerLoss._fields == ("total", "losses")
  assert jaxmask.ThresholdOutput._fields == ("mask", "pseudo_labels")
  assert jaxmask.ConfidenceThreshold._fields == ("init", "update")
  assert jaxmask.FlexMatchState._fields == ("selected_label", "classwise_acc")
  assert jaxmask.FreeMatchState._fields == ("time_p", "p_model", "label_hist")
  assert jaxmask.SoftMatchState._fields == ("count", "p_model", "mu", "var")


def test_kernels_stay_behind_the_public_functions():
  """The XLA:CPU kernels are reached only through `implementation`."""
  import pathlib
  src = pathlib.Path(jaxmask.__file__).parent / "_src"
  importers = []
  for path in src.glob("*.py"):
    text = path.read_text()
    if "from jaxmask._src.xla_cpu import" in text:
      # A concept module names its kernel only to hand it to the chooser.
      assert "impl.choose(" in text, path.name
      importers.append(path.name)
  assert sorted(importers) == ["criterion.py", "point_losses.py",
                               "sampling.py", "topk.py"]
  for path in (src / "xla_cpu").glob("*.py"):  # kernels never import back
    for line in path.read_text().splitlines():
      if line.startswith(("import ", "from ")) and "jaxmask" in line:
        assert "jaxmask._src.xla_cpu" in line or line.endswith(
            "import grid"), (path.name, line)


def _fuzz_modules():
  """The concept folders' fuzz files (tests/*/test_*_fuzz.py), imported.

  A file pytest has already imported (its basename is the module name) is
  reused; otherwise it is loaded from its path under that name, outside
  `sys.modules`.
  """
  modules = {}
  for path in sorted(pathlib.Path(__file__).resolve().parent.glob("*/test_*_fuzz.py")):
    module = sys.modules.get(path.stem)
    if module is None or pathlib.Path(module.__file__).resolve() != path:
      spec = importlib.util.spec_from_file_location(path.stem, path)
      module = importlib.util.module_from_spec(spec)
      spec.loader.exec_module(module)
    modules[path.stem] = module
  return modules


def test_every_public_name_is_fuzzed():
  """Each public name has a fuzz test, each public function a HOSTILE entry.

  Every fuzz file declares `COVERED` (public name -> the test in that file
  that fuzzes it) and `HOSTILE` (function -> its valid arguments and bad
  values); together they must cover `jaxmask.__all__`.
  """
  modules = _fuzz_modules()
  assert modules, "no tests/<concept>/test_<concept>_fuzz.py found"
  covered, hostile = {}, set()
  for stem, module in modules.items():
    for name, test in module.COVERED.items():
      assert callable(getattr(module, test, None)), (stem, name, test)
      covered.setdefault(name, []).append(f"{stem}.{test}")
    hostile |= set(module.HOSTILE)
  assert set(covered) == set(jaxmask.__all__), (
      set(jaxmask.__all__) - set(covered), set(covered) - set(jaxmask.__all__))
  functions = {n for n in jaxmask.__all__
               if inspect.isfunction(getattr(jaxmask, n))}
  assert functions <= hostile, functions - hostile
