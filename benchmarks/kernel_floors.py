"""Internal: floors of the XLA:CPU kernels' parts; rewrites KERNEL_FLOORS.md.

    python benchmarks/kernel_floors.py

For maintainers of `jaxmask/_src/xla_cpu/`, not for users: these rows time
private functions (the point sampler's gather loop without its border and
block set-up; the unrolled Threefry that draws the candidates), which may
change or vanish without notice. What users call is timed by
`benchmarks/run.py` through the public API only.
"""

import argparse
import os
import pathlib
import platform
import sys

import jax
import jax.numpy as jnp
import numpy as np
import torch

import jaxmask
from jaxmask._src import grid
from jaxmask._src.xla_cpu import sampler as xla_cpu_sampler
from jaxmask._src.xla_cpu import threefry as xla_cpu_threefry
import torch_ref

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402  (this folder's runner: timing and table helpers)


def bench_floors(n, size, reps):
  rows = []
  pred, _ = run._inputs(n, size)
  cand = np.random.default_rng(1).random((n, run.M, 2)).astype(np.float32)
  jl, jc = jnp.asarray(pred[:, None]), jnp.asarray(cand)
  tl, tc = torch.from_numpy(pred[:, None]), torch.from_numpy(cand)
  torch_sample = lambda: torch_ref.point_sample(tl, tc)

  # The sampler's floor: its gather loop alone, with the zero border and the
  # block offsets computed beforehand (not timed), checked against the
  # public sampler.
  padded = jnp.pad(jl, ((0, 0), (0, 0), (1, 1), (1, 1)))
  start = jax.jit(lambda c: xla_cpu_sampler.positions_and_block_starts(
      c, jl.shape, padded=True)[2])(jc)
  loop = jax.jit(lambda f, s, c: xla_cpu_sampler.interpolate(
      f, s, *grid.pixel_positions(c, size, size), None, padded.shape[2:],
      False, 1))
  flat = padded.reshape(-1)
  np.testing.assert_allclose(loop(flat, start, jc), jaxmask.point_sample(jl, jc)[:, 0],
                             atol=1e-6)
  jt, tt, c = run._compare(lambda: loop(flat, start, jc), torch_sample, reps)
  rows.append((f"point_sample's gather loop alone, N={n}, {size}², P={run.M}"
               " (vs torch_ref.point_sample)", jt, tt, f"{c:.1f} s"))

  key = jax.random.key(0)
  for name, draw in (("jax.random.uniform", jax.random.uniform),
                     ("the XLA:CPU unrolled Threefry (same bits)", xla_cpu_threefry.uniform)):
    uniform = jax.jit(lambda k, draw=draw: draw(k, (n, run.M, 2)))
    jt, tt, c = run._compare(lambda uniform=uniform: uniform(key),
                             lambda: torch.rand(n, run.M, 2), reps)
    rows.append((f"candidates {n}×{run.M}×2: {name} vs torch.rand", jt, tt, f"{c:.1f} s"))
  return rows


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--reps", type=int, default=9)
  parser.add_argument("--out", type=pathlib.Path,
                      default=pathlib.Path(__file__).with_name("KERNEL_FLOORS.md"))
  parser.add_argument("--note", default=None,
                      help="a line added to the header, e.g. what else shared the cores")
  args = parser.parse_args(argv)
  if args.reps < 1:
    parser.error(f"--reps must be >= 1, got {args.reps}")
  torch.set_num_threads(os.cpu_count())
  rows = bench_floors(200, 128, args.reps)
  lines = [
      "# Internal: floors of the XLA:CPU kernels' parts",
      "",
      "Regenerate with `python benchmarks/kernel_floors.py` (this file is rewritten).",
      "These rows time private parts of `jaxmask/_src/xla_cpu/` for maintainers;",
      "they are not an API. `RESULTS.md` times the public functions.",
      "",
      f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
      f"jax {jax.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads)",
      f"- times in ms: median (min–max) of {args.reps} interleaved repetitions; "
      "ratio = torch median / JAX median",
      *([f"- {args.note}"] if args.note else []),
      "",
      *run._table(rows),
  ]
  args.out.write_text("\n".join(lines) + "\n")
  print("\n".join(lines))
  print(f"\nwrote {args.out}")


if __name__ == "__main__":
  main()
