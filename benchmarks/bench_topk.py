"""Micro-benchmark: `top_k_indices` vs `lax.top_k` vs `torch.topk` on CPU.

Rows of `-|logit|` sampled bilinearly at random points (the uncertainty
scores of Mask2Former's point selection), M = 37632 candidates, k = 9408, at
N = 200 and N = 50 rows. All contenders run interleaved in one process, torch
with 2 threads; prints medians, min-max and ratios (plain text).

  PYTHONPATH=. python benchmarks/bench_topk.py [--reps 15]
"""

import argparse
import os
import time

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import torch

import jaxmask

M, K, SIDE = 37632, 9408, 128


def scores(n: int, seed: int = 0) -> np.ndarray:
  """[n, M] float32 `-|logit|` at uniform points of n random SIDE² maps."""
  rng = np.random.default_rng(seed)
  logits = rng.standard_normal((n, SIDE, SIDE)).astype(np.float32)
  xy = rng.random((n, M, 2), dtype=np.float32) * (SIDE - 1)
  x0 = np.floor(xy).astype(np.int64)
  x1 = np.minimum(x0 + 1, SIDE - 1)
  f = xy - x0
  rows = np.arange(n)[:, None]

  def at(ix, iy):
    return logits[rows, iy, ix]

  top = at(x0[..., 0], x0[..., 1]) * (1 - f[..., 0]) + at(
      x1[..., 0], x0[..., 1]) * f[..., 0]
  bottom = at(x0[..., 0], x1[..., 1]) * (1 - f[..., 0]) + at(
      x1[..., 0], x1[..., 1]) * f[..., 0]
  return -np.abs(top * (1 - f[..., 1]) + bottom * f[..., 1]).astype(np.float32)


def timed(fn):
  start = time.perf_counter()
  fn()
  return (time.perf_counter() - start) * 1e3


def bench(n: int, reps: int) -> None:
  x = scores(n)
  xj = jnp.asarray(x)
  xt = torch.from_numpy(x)
  fast = jax.jit(lambda s: jaxmask.top_k_indices(s, K))
  sort = jax.jit(lambda s: lax.top_k(s, K)[1])
  compile_ms = timed(lambda: fast.lower(xj).compile())
  got = np.sort(np.asarray(fast(xj)), axis=1)
  same = np.array_equal(got, np.sort(np.asarray(sort(xj)), axis=1))
  contenders = {
      "top_k_indices": lambda: jax.block_until_ready(fast(xj)),
      "lax.top_k": lambda: jax.block_until_ready(sort(xj)),
      "torch.topk": lambda: torch.topk(xt, K, dim=1),
      "torch.topk unsorted": lambda: torch.topk(xt, K, dim=1, sorted=False),
  }
  for fn in contenders.values():  # warm up
    fn()
  times = {name: [] for name in contenders}
  for _ in range(reps):
    for name, fn in contenders.items():
      times[name].append(timed(fn))
  med = {name: float(np.median(t)) for name, t in times.items()}
  print(f"N={n} M={M} k={K}  reps={reps}  same set as lax.top_k: {same}  "
        f"top_k_indices compile: {compile_ms:.0f} ms")
  for name, t in times.items():
    print(f"  {name:22s} median {med[name]:7.1f} ms  "
          f"[{min(t):7.1f}, {max(t):7.1f}]  "
          f"= {med[name] / med['top_k_indices']:5.2f}x top_k_indices")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--reps", type=int, default=15)
  args = parser.parse_args()
  torch.set_num_threads(2)
  print(f"jax {jax.__version__} ({jax.default_backend()}, "
        f"{jax.device_count()} devices), torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), {os.cpu_count()} cpus, "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
  for n in (200, 50):
    bench(n, args.reps)


if __name__ == "__main__":
  main()
