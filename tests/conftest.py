"""Test-wide setup: 8 simulated CPU devices for the axis_name / sharding tests.

XLA reads the flag once, when the backend starts, so it is set here, before any
test module imports jax. Every other test runs on device 0 as usual.
"""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
