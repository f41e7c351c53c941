"""Test-wide setup: 8 simulated CPU devices for the axis_name / sharding tests.

XLA reads the flag once, when the backend starts, so it is set here, before any
test module imports jax. Every other test runs on device 0 as usual.
"""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()

import pytest  # noqa: E402  (after XLA_FLAGS, before any test imports jax)

IMPLEMENTATIONS = ("plain", "xla_cpu")


@pytest.fixture(params=IMPLEMENTATIONS)
def implementation(request):
  """Each test that takes it runs over the plain algorithm and the kernel."""
  return request.param
