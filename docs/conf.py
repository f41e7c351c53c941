"""Sphinx configuration: the API reference, generated from the docstrings.

Build (CI does this with -W, warnings as errors, in tests/docs/test_docs_build.py):

  python -m sphinx -W --keep-going -b html docs docs/_build/html
"""

import inspect
import os
import re
import sys

# Document the checkout this file lives in, installed or not.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jaxmask  # noqa: E402

project = "jaxmask"
author = "jaxmask authors"
copyright = "jaxmask authors"  # noqa: A001 (Sphinx's name)
version = release = jaxmask.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",  # Google-style Args:/Returns:/Example: sections
    "sphinx.ext.mathjax",  # .. math:: blocks and :math: roles
]

# Google style only; `Example:` sections become an "Example" rubric.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
# "Returns: `(mask, threshold)`: ..." reads as one line, not a separate type.
napoleon_use_rtype = False

# The docstrings write code as `name` (single backticks): resolve them as
# Python objects, linking to jaxmask's own functions where the name matches
# and rendering the rest as code (unresolved references are not warnings).
default_role = "py:obj"

autodoc_default_options = {"member-order": "bysource"}
autodoc_typehints = "signature"  # shown as in the code; see the hooks below
add_module_names = False

templates_path = []
exclude_patterns = ["_build"]

html_theme = "alabaster"
html_title = f"jaxmask {release}"
html_static_path = []


# ------------------------------------------------------------------ hooks
# Signatures: name the public types as users write them. Without this,
# `jax.typing.ArrayLike` prints as its eight-member Union, `jax.Array` as its
# private home `jax.jaxlib._jax.Array`, and a NamedTuple as
# `jaxmask._src.<module>.<Name>` (which does not link to its entry here).
_ARRAY = "~jax.jaxlib._jax.Array"
_ARRAY_LIKE = " | ".join([_ARRAY, "~numpy.ndarray", "~numpy.bool",
                          "~numpy.number", "bool", "int", "float", "complex"])
_PRIVATE_PATH = re.compile(r"~?jaxmask\._src\.[\w.]*?\.(\w+)\b")


def _public_types(text):
  if not text:
    return text
  text = text.replace(_ARRAY_LIKE, "~jax.typing.ArrayLike")
  text = text.replace(_ARRAY, "~jax.Array")
  return _PRIVATE_PATH.sub(
      lambda m: f"~jaxmask.{m.group(1)}" if m.group(1) in jaxmask.__all__
      else m.group(0), text)


def _process_signature(app, what, name, obj, options, signature,
                       return_annotation):
  del app, what, name, obj, options
  return _public_types(signature), _public_types(return_annotation)


# NamedTuple fields: the source documents each field with a trailing comment
# (`probs: jax.Array  # [batch, num_classes] softmax of the logits`), while
# the generated docstring is only "Alias for field number N". Show the comment.
_FIELD_COMMENT = re.compile(r"^\s+(\w+)\s*:[^#\n]*#\s*(.+)$", re.MULTILINE)


def _field_comments(cls):
  try:
    return dict(_FIELD_COMMENT.findall(inspect.getsource(cls)))
  except (OSError, TypeError):
    return {}


def _process_docstring(app, what, name, obj, options, lines):
  del app, what, obj, options
  if not (len(lines) == 1 and lines[0].startswith("Alias for field number")):
    return
  owner, _, field = name.rpartition(".")
  cls = getattr(jaxmask, owner.rpartition(".")[2], None)
  comment = _field_comments(cls).get(field) if inspect.isclass(cls) else None
  if comment:
    lines[:] = [comment]


def setup(app):
  app.connect("autodoc-process-signature", _process_signature)
  app.connect("autodoc-process-docstring", _process_docstring)
  return {"parallel_read_safe": True, "parallel_write_safe": True}
