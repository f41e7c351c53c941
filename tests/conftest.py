"""Test-wide setup: 8 simulated CPU devices for the axis_name / sharding tests.

XLA reads the flag once, when the backend starts, so it is set here, before any
test module imports jax. Every other test runs on device 0 as usual.
"""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()

import functools  # noqa: E402  (the flag above must be set before jax loads)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import pytest  # noqa: E402

IMPLEMENTATIONS = ("plain", "xla_cpu")


@pytest.fixture(params=IMPLEMENTATIONS)
def implementation(request):
  """Each test that takes it runs over the plain algorithm and the kernel."""
  return request.param


def _eager(fn, **options):
  return functools.partial(fn, **options)


def _jit(fn, **options):
  return jax.jit(functools.partial(fn, **options))


def _vmap(fn, **options):
  """`fn` under `jax.vmap` over a leading axis of one, added and removed."""
  batched = jax.jit(jax.vmap(functools.partial(fn, **options)))

  def call(*arrays):
    out = batched(*[jnp.asarray(a)[None] for a in arrays])
    return jax.tree.map(lambda x: x[0], out)

  return call


VARIANTS = {"eager": _eager, "jit": _jit, "vmap": _vmap}


@pytest.fixture(params=tuple(VARIANTS))
def variant(request):
  """One test body under each transformation (after dm-pix's variants).

  `variant(fn, **options)(*arrays)`: `options` (Python values) are bound
  statically; `arrays` go through eager dispatch, `jax.jit`, or `jax.vmap`
  over a leading axis of one (under jit), and come back without that axis.
  """
  return VARIANTS[request.param]
