"""A traced `q` gives `np.percentile(values, np.float32(q))` bit for bit on every x86 CPU.

XLA:CPU compiles for the CPU it runs on: with FMA (AVX2, AVX-512) it may fuse a
multiply and a following add into one rounding, which NumPy never does. The
percentile keeps its products opaque so that no CPU can fuse them. Each case
runs in a fresh process with XLA's instruction set capped by
`--xla_cpu_max_isa`, so one machine checks the code generated for CPUs without
AVX (SSE4.2), with AVX but no FMA, with AVX2 + FMA and with AVX-512.
"""

import os
import platform
import subprocess
import sys

import pytest

# 364 q on a grid and 37 random float32 q in [0, 100]: 401 values, for several
# batch sizes, under jit (scalar q) and jit(vmap) (a batch of q), and through
# percentile_mask. The probe says whether XLA fused `a * b + c` in this process.
_SCRIPT = r"""
import numpy as np, jax, jax.numpy as jnp, jaxmask

rng = np.random.default_rng(0)
qs = np.concatenate([np.linspace(0, 100, 364), rng.uniform(0, 100, 37)]).astype(np.float32)
one = jax.jit(jaxmask.percentile)
many = jax.jit(jax.vmap(jaxmask.percentile, in_axes=(None, 0)))
mask = jax.jit(lambda v, q: jaxmask.percentile_mask(v, q=q)[1])
bad = []
for n in (2, 5, 37, 64, 1000):
  for values in (rng.standard_normal(n), rng.random(n)):
    values = values.astype(np.float32)
    want = np.array([np.percentile(values, np.float32(q)) for q in qs])
    got = {"jit": np.array([one(values, q) for q in qs]),
           "vmap": np.asarray(many(values, qs)),
           "percentile_mask": np.array([mask(values, q) for q in qs[::7]])}
    for name, g in got.items():
      w = want[::7] if name == "percentile_mask" else want
      differ = np.nonzero(g != w)[0]
      if differ.size:
        bad.append(f"{name} n={n}: {differ.size} of {w.size} differ, e.g. q={qs[differ[0]]!r}")
a, b, c = (rng.standard_normal(1000).astype(np.float32) for _ in range(3))
fused = bool((np.asarray(jax.jit(lambda a, b, c: a * b + c)(a, b, c)) != a * b + c).any())
print("FUSED" if fused else "UNFUSED")
print("\n".join(bad) if bad else "EXACT")
"""

_X86 = platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")


def _run(isa):
  env = dict(os.environ)
  flags = env.get("XLA_FLAGS", "")
  env["XLA_FLAGS"] = f"{flags} --xla_cpu_max_isa={isa}".strip() if isa else flags
  proc = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True,
                        text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stdout.split()[0], proc.stdout


def _cpu_has_fma() -> bool | None:
  try:
    with open("/proc/cpuinfo") as f:
      return " fma " in f.read().replace("\n", " ")
  except OSError:
    return None


@pytest.mark.parametrize("isa", [None, "SSE4_2", "AVX", "AVX2", "AVX512"])
def test_traced_q_is_numpy_exact_for_every_instruction_set(isa):
  if isa is not None and not _X86:
    pytest.skip(f"--xla_cpu_max_isa={isa} names an x86 instruction set; this CPU is"
                f" {platform.machine()} (its native code runs in the `None` case)")
  fused, out = _run(isa)
  assert out.rstrip().endswith("EXACT"), out
  # The check is not vacuous: where the CPU has FMA, XLA fuses a plain
  # `a * b + c` (so the percentile's products must be kept from fusing), and
  # capped below AVX2 it cannot.
  if _X86 and _cpu_has_fma():
    assert fused == ("UNFUSED" if isa in ("SSE4_2", "AVX") else "FUSED"), out
