"""Speed and memory of jaxmask against the PyTorch reference; rewrites RESULTS.md.

    python benchmarks/run.py            # everything (a few minutes on 2 cores)
    python benchmarks/run.py --reps 5   # fewer repetitions

JAX and torch_ref run on the same inputs in the same process, interleaved rep
by rep (these machines are noisy), torch with as many threads as XLA gets
cores. Times are medians (min–max) of jitted, compiled calls; compile times
are reported separately. Peak memory comes from XLA's compiled memory
analysis (arguments + outputs + temporaries of the whole step). When
`transformers` is installed, HF's own Mask2Former functions are timed too.
The step rows are repeated in a child process with malloc on transparent huge
pages (`GLIBC_TUNABLES=glibc.malloc.hugetlb=1`), with page-fault counts, to
show how much of the JAX step is faulting in fresh temporaries.

Every row here times jaxmask's public API (and torch_ref / HF transformers).
Floors of the XLA:CPU kernels' internal parts live apart, in
`benchmarks/kernel_floors.py` (maintainers' numbers, not an API).
"""

import argparse
import json
import os
import pathlib
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch

import jaxmask
# Named entry points of the XLA:CPU kernels, for the rows that time a
# kernel's part alone (the sampler's floor, the candidate draw).
import torch_ref

try:
  import transformers
  from transformers.models.mask2former import modeling_mask2former as hf
except ImportError as e:
  transformers = hf = None
  _HF_SKIPPED = f"HF transformers rows skipped: import transformers failed ({e})"

# glibc >= 2.35 then backs malloc'd memory with transparent huge pages.
HUGE_PAGES = "glibc.malloc.hugetlb=1"

P, R, BETA = 12544, 3.0, 0.75
M, K = int(P * R), int(BETA * P)


def _time(fn, reps):
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    fn()
    times.append((time.perf_counter() - t0) * 1e3)
  return times


def _compare(jax_fn, torch_fn, reps):
  """Interleaves the two; returns (jax times, torch times, compile seconds)."""
  t0 = time.perf_counter()
  jax.block_until_ready(jax_fn())
  compile_s = time.perf_counter() - t0
  torch_fn()
  jt, tt = [], []
  for _ in range(reps):
    jt += _time(lambda: jax.block_until_ready(jax_fn()), 1)
    tt += _time(torch_fn, 1)
  return jt, tt, compile_s


def _fmt(times):
  return (f"{statistics.median(times):.1f} ({min(times):.0f}–{max(times):.0f})")


def _inputs(n, size, seed=0):
  rng = np.random.default_rng(seed)
  pred = rng.normal(size=(n, size, size)).astype(np.float32) * 3
  target = (rng.random((n, size, size)) > 0.5).astype(np.float32)
  return pred, target


def _page_faults(fn, reps=3):
  """Minor page faults per call of `fn` (memory touched for the first time)."""
  jax.block_until_ready(fn())
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  for _ in range(reps):
    jax.block_until_ready(fn())
  return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / reps


def _fault_row(name, jitted, args, torch_fn):
  """(name, JAX temporaries in bytes, JAX faults per call, torch's)."""
  temp = jitted.lower(*args).compile().memory_analysis().temp_size_in_bytes
  return (name, temp, _page_faults(lambda: jitted(*args)),
          _page_faults(torch_fn))


def bench_step(n, size, reps, rows, faults=None, implementation=None):
  """Whole point-loss step (select + sample + CE + dice), forward + backward."""
  pred, target = _inputs(n, size)
  key = jax.random.key(0)
  step = jax.jit(jax.value_and_grad(
      lambda p, t: sum(jaxmask.point_mask_losses(
          key, p, t, float(n), implementation=implementation))))
  jp, jt_ = jnp.asarray(pred), jnp.asarray(target)
  tp = torch.from_numpy(pred)
  tt_ = torch.from_numpy(target)

  def torch_step():
    p = tp.clone().requires_grad_(True)
    loss = sum(torch_ref.point_mask_losses(p, tt_, float(n)))
    loss.backward()

  jt, tt, compile_s = _compare(lambda: step(jp, jt_), torch_step, reps)
  name = f"point-loss step fwd+bwd, N={n}, {size}²"
  if implementation:
    name += f", implementation={implementation!r}"
  rows.append((name, jt, tt, f"{compile_s:.1f} s"))
  if faults is not None:
    faults.append(_fault_row(name, step, (jp, jt_), torch_step))


def bench_parts(n, size, reps, rows, faults=None):
  pred, _ = _inputs(n, size)
  logits = pred[:, None]
  cand = np.random.default_rng(1).random((n, M, 2)).astype(np.float32)
  jl, jc = jnp.asarray(logits), jnp.asarray(cand)
  tl, tc = torch.from_numpy(logits), torch.from_numpy(cand)

  select = jax.jit(lambda l, c: jaxmask.select_uncertain_points(
      l, c, num_uncertain=K))
  jt, tt, c = _compare(lambda: select(jl, jc), lambda: torch_ref.select_uncertain_points(
      tl, tc, num_uncertain=K), reps)
  rows.append((f"select_uncertain_points, N={n}, M={M}, k={K}", jt, tt, f"{c:.1f} s"))
  select_plain = jax.jit(lambda l, c: jaxmask.select_uncertain_points(
      l, c, num_uncertain=K, implementation="plain"))
  jt, tt, c = _compare(lambda: select_plain(jl, jc), lambda: torch_ref.select_uncertain_points(
      tl, tc, num_uncertain=K), reps)
  rows.append((f"select_uncertain_points, implementation='plain', N={n}, M={M}, k={K}",
               jt, tt, f"{c:.1f} s"))

  sample = jax.jit(jaxmask.point_sample)
  torch_sample = lambda: torch_ref.point_sample(tl, tc)
  jt, tt, c = _compare(lambda: sample(jl, jc), torch_sample, reps)
  name = f"point_sample, N={n}, {size}², P={M}"
  rows.append((name, jt, tt, f"{c:.1f} s"))
  if faults is not None:
    faults.append(_fault_row(name, sample, (jl, jc), torch_sample))
  sample_plain = jax.jit(lambda l, c: jaxmask.point_sample(
      l, c, implementation="plain"))
  jt, tt, c = _compare(lambda: sample_plain(jl, jc), torch_sample, reps)
  rows.append((f"point_sample, implementation='plain', N={n}, {size}², P={M}",
               jt, tt, f"{c:.1f} s"))

  scores = -np.abs(np.random.default_rng(2).normal(size=(n, M))).astype(np.float32)
  js, ts = jnp.asarray(scores), torch.from_numpy(scores)
  fast = jax.jit(lambda s: jaxmask.top_k_indices(s, k=K))
  plain = jax.jit(lambda s: jaxmask.top_k_indices(s, k=K,
                                                  implementation="plain"))
  for name, jax_fn, torch_fn in (
      ("top_k_indices vs torch.topk", fast, lambda: torch.topk(ts, K, dim=1)),
      ("top_k_indices vs torch.topk(sorted=False)", fast,
       lambda: torch.topk(ts, K, dim=1, sorted=False)),
      ("lax.top_k (implementation='plain') vs torch.topk", plain,
       lambda: torch.topk(ts, K, dim=1))):
    jt, tt, c = _compare(lambda jax_fn=jax_fn: jax_fn(js), torch_fn, reps)
    rows.append((f"{name}, {n}×{M}, k={K}", jt, tt, f"{c:.1f} s"))


def bench_hf(n, size, reps, rows):
  """HF transformers' Mask2Former point sampling and loss against jaxmask."""
  loss = hf.Mask2FormerLoss(transformers.Mask2FormerConfig(), weight_dict={})
  pred, target = _inputs(n, size)
  cand = np.random.default_rng(1).random((n, M, 2)).astype(np.float32)
  jl, jc = jnp.asarray(pred[:, None]), jnp.asarray(cand)
  tp, tt_ = torch.from_numpy(pred), torch.from_numpy(target)
  tl, tc = tp[:, None], torch.from_numpy(cand)
  key = jax.random.key(0)

  def hf_points(logits):
    with torch.no_grad():
      return loss.sample_points_using_uncertainty(
          logits, loss.calculate_uncertainty, P, R, BETA)

  sample = jax.jit(jaxmask.point_sample)
  jt, tt, c = _compare(lambda: sample(jl, jc), lambda: hf.sample_point(
      tl, tc, align_corners=False), reps)
  rows.append((f"vs HF transformers: sample_point, N={n}, {size}², P={M}", jt,
               tt, f"{c:.1f} s"))

  points = jax.jit(lambda k, l: jaxmask.sample_points_using_uncertainty(
      k, l, num_points=P, oversample_ratio=R, importance_sample_ratio=BETA))
  jt, tt, c = _compare(lambda: points(key, jl), lambda: hf_points(tl), reps)
  rows.append((f"vs HF transformers: sample_points_using_uncertainty, N={n}, "
               f"{size}²", jt, tt, f"{c:.1f} s"))

  def hf_step():
    """`Mask2FormerLoss.loss_masks` after matching, forward + backward."""
    p = tp.clone().requires_grad_(True)
    with torch.no_grad():
      coords = hf_points(p[:, None])
      labels = hf.sample_point(tt_[:, None], coords,
                               align_corners=False).squeeze(1)
    logits = hf.sample_point(p[:, None], coords, align_corners=False).squeeze(1)
    (hf.sigmoid_cross_entropy_loss(logits, labels, n)
     + hf.dice_loss(logits, labels, n)).backward()

  step = jax.jit(jax.value_and_grad(
      lambda p, t: sum(jaxmask.point_mask_losses(key, p, t, float(n)))))
  jp, jt_ = jnp.asarray(pred), jnp.asarray(target)
  jt, tt, c = _compare(lambda: step(jp, jt_), hf_step, reps)
  rows.append((f"vs HF transformers: point-loss step fwd+bwd, N={n}, {size}²",
               jt, tt, f"{c:.1f} s"))


def _full_mask_loss(pred_lowres, target, num_masks):
  """The loss point sampling replaces: upsample logits to the target, CE + dice."""
  n, h, w = target.shape
  up = jax.image.resize(pred_lowres, (n, h, w), method="bilinear")
  flat_logits, flat_target = up.reshape(n, -1), target.reshape(n, -1)
  return (jaxmask.sigmoid_ce_loss(flat_logits, flat_target, num_masks)
          + jaxmask.dice_loss(flat_logits, flat_target, num_masks))


def bench_memory(n, target_size, reps, mem_rows):
  low = target_size // 4
  pred = jax.ShapeDtypeStruct((n, low, low), jnp.float32)
  target = jax.ShapeDtypeStruct((n, target_size, target_size), jnp.float32)
  key = jax.random.key(0)
  point = jax.jit(jax.value_and_grad(
      lambda p, t: sum(jaxmask.point_mask_losses(key, p, t, float(n)))))
  full = jax.jit(jax.value_and_grad(lambda p, t: _full_mask_loss(p, t, float(n))))
  result = []
  rng = np.random.default_rng(0)
  args = (jnp.asarray(rng.normal(size=pred.shape), jnp.float32),
          jnp.asarray(rng.random(target.shape) > 0.5, jnp.float32))
  for name, fn in (("point loss", point), ("full-mask loss", full)):
    compiled = fn.lower(pred, target).compile()
    mem = compiled.memory_analysis()
    peak = (mem.argument_size_in_bytes + mem.output_size_in_bytes
            + mem.temp_size_in_bytes)
    times = _time(lambda compiled=compiled: jax.block_until_ready(compiled(*args)),
                  reps)
    result.append((name, peak, mem.temp_size_in_bytes, times))
  mem_rows.append((n, low, target_size, result))


# The criterion's benchmark problem (the issue's): 10 decoder layers, 2 images,
# 100 queries, 133 classes (COCO panoptic), up to 20 targets per image.
CRITERION = dict(L=10, B=2, Q=100, K=133, T=20, counts=(20, 13), size=128)


def _criterion_inputs(target_size, seed=0):
  """CRITERION's problem at `target_size`: `criterion_extras.criterion_inputs`."""
  import criterion_extras
  c = CRITERION
  return criterion_extras.criterion_inputs(
      c["L"], c["B"], c["counts"], target_size=target_size, seed=seed)


def bench_criterion(reps, rows):
  """The whole criterion, forward + backward, against HF's and torch_ref's.

  Both configurations of `criterion_extras.CONFIGS` (the issue's), with
  jaxmask's defaults and with `max_total_targets` at the batch's valid count.
  The targets are float32 for every framework (HF's matcher needs floats)
  and are arguments of the jitted step, as a training loop's data would be.
  """
  import criterion_extras
  for config in criterion_extras.CONFIGS:
    _bench_criterion_config(config, reps, rows)


def _bench_criterion_config(config, reps, rows):
  """One configuration's rows for `bench_criterion`."""
  import criterion_extras
  L, B, counts = config["L"], config["B"], config["counts"]
  cl, ml, labels, masks, valid = criterion_extras.criterion_inputs(
      L, B, counts)
  masks = masks.astype(np.float32)
  key = jax.random.key(0)
  args = [jnp.asarray(x) for x in (cl, ml, labels, masks, valid)]
  tcl, tml = torch.from_numpy(cl), torch.from_numpy(ml)
  tlabels = [torch.from_numpy(labels[b][valid[b]]).long() for b in range(B)]
  tmasks = [torch.from_numpy(masks[b][valid[b]]) for b in range(B)]
  what = (f"L={L}, B={B}, Q={CRITERION['Q']}, K={CRITERION['K']}, "
          f"{'+'.join(map(str, counts))} targets of {CRITERION['T']}, "
          f"{CRITERION['size']}² logits, 512² targets")
  hf_step = (criterion_extras.hf_criterion_step(L, B, counts, num_points=P)
             if hf else None)
  for cap in (None, sum(counts)):
    step = jax.jit(jax.value_and_grad(
        lambda cl, ml, labels, masks, valid, cap=cap: jaxmask.mask2former_loss(
            key, cl, ml, labels, masks, valid,
            max_total_targets=cap).total, argnums=(0, 1)))
    option = "" if cap is None else f", max_total_targets={cap}"
    if hf:
      jt, tt, compile_s = _compare(lambda step=step: step(*args), hf_step,
                                   reps)
      rows.append((f"vs HF transformers: Mask2FormerLoss fwd+bwd, {what}"
                   f"{option}", jt, tt, f"{compile_s:.1f} s"))
    if cap is None and L == CRITERION["L"]:
      def torch_ref_step():
        cl_ = tcl.clone().requires_grad_(True)
        ml_ = tml.clone().requires_grad_(True)
        total, _ = torch_ref.mask2former_loss(cl_, ml_, tlabels, tmasks)
        total.backward()

      jt, tt, compile_s = _compare(lambda step=step: step(*args),
                                   torch_ref_step, max(3, reps // 2))
      rows.append((f"mask2former_loss fwd+bwd, {what} (vs torch_ref)", jt,
                   tt, f"{compile_s:.1f} s"))


def criterion_sections(reps):
  """RESULTS.md lines: the criterion's parts, host round-trips, matching."""
  import criterion_extras
  match_rows = criterion_extras.bench_matching_scaling(reps, [])
  return [
      "### Where the criterion's time goes",
      "",
      "Each part jitted alone over every layer and image (private functions;",
      "medians of 5), before issue 22 (commit 7d87f6b, 0.2.0, measured on this",
      "machine the same day) and now. The matcher runs as the XLA:CPU loop on",
      "CPU; the plain vmapped matcher is what GPUs and TPUs run: vmapped,",
      "XLA:CPU fuses the sampling gathers into the costs' elementwise math,",
      "which then runs as scalar code, so on CPU it costs more than its parts.",
      "",
      *criterion_extras.parts_table(),
      "",
      "### Host round-trips per step",
      "",
      "HF's matcher copies each image's cost matrix to the host for scipy",
      "(`linear_sum_assignment(cost_matrix.cpu())`, once per layer and image):",
      "on a GPU each is a device-to-host sync that stalls the device. jaxmask's",
      "step needs none: it runs under `jax.transfer_guard(\"disallow\")` and",
      "its compiled program holds no host callback, infeed, outfeed, send or",
      "recv (`benchmarks/criterion_extras.py`).",
      "",
      *criterion_extras.markdown(criterion_extras.ROUND_TRIP_HEADER,
                                 criterion_extras.round_trip_rows()),
      "",
      "### Matching that scales: `hungarian_match` vs scipy",
      "",
      "`jax.vmap(hungarian_match)` over 8 cost matrices (optax's",
      "`hungarian_algorithm`, on the device) against scipy's",
      "`linear_sum_assignment` called image by image (torch_ref column: scipy);",
      "totals checked equal.",
      "",
      *_table(match_rows),
      "",
  ]


def bench_criterion_memory(mem_rows):
  """Compiled peak memory of the point criterion and the full-mask one."""
  key = jax.random.key(0)
  for target_size in (512, 1024):
    cl, ml, labels, masks, valid = _criterion_inputs(target_size)
    result = []
    for name, num_points in (("points (12544)", 12544), ("full mask", None)):
      step = jax.jit(jax.value_and_grad(
          lambda cl, ml, labels, masks, valid, num_points=num_points:
          jaxmask.mask2former_loss(key, cl, ml, labels, masks, valid,
                                   num_points=num_points).total,
          argnums=(0, 1)))
      mem = step.lower(cl, ml, labels, masks, valid).compile().memory_analysis()
      result.append((name, mem.argument_size_in_bytes + mem.output_size_in_bytes
                     + mem.temp_size_in_bytes, mem.temp_size_in_bytes))
    mem_rows.append((target_size, result))


def _table(rows):
  lines = ["| what | JAX (jit) | torch_ref | ratio | JAX compile |",
           "|---|---|---|---|---|"]
  for name, jt, tt, compile_s in rows:
    ratio = statistics.median(tt) / statistics.median(jt)
    lines.append(f"| {name} | {_fmt(jt)} | {_fmt(tt)} | {ratio:.2f}× | "
                 f"{compile_s} |")
  return lines


def write_results(rows, mem_rows, faults, huge_rows, crit_rows,
                  crit_mem_rows, path, reps, crit_extra=None):
  cores = os.cpu_count()
  lines = [
      "# Benchmarks: jaxmask vs the PyTorch reference (torch_ref)",
      "",
      "Regenerate with `python benchmarks/run.py` (this file is rewritten).",
      "",
      f"- machine: {platform.processor() or platform.machine()}, {cores} cores, "
      f"{jax.default_backend().upper()} backend ({jax.devices()[0].device_kind})",
      f"- jax {jax.__version__}, torch {torch.__version__} "
      f"({torch.get_num_threads()} threads), Python {platform.python_version()}"
      + (f", transformers {transformers.__version__}" if hf else ""),
      f"- times in ms: median (min–max) of {reps} interleaved repetitions; "
      "ratio = torch median / JAX median (> 1: JAX is faster)",
      f"- point sampling defaults: num_points={P}, oversample_ratio={R}, "
      f"importance_sample_ratio={BETA} (M={M} candidates, k={K} kept)",
      ("- rows \"vs HF transformers\" time transformers' own Mask2Former "
       "functions in the torch_ref column" if hf else f"- {_HF_SKIPPED}"),
      "",
      *_table(rows),
      "",
      "## Where the time goes: fresh pages",
      "",
      "XLA:CPU allocates each call's temporaries as one block. Above glibc's",
      "mmap threshold (32 MiB at most) that block is fresh memory on every",
      "call, and all of its pages fault in again (~0.5 µs each on one core,",
      "more when both cores fault); below it, malloc's heap serves it without",
      "faults, as it serves torch's op-by-op allocations at N=50.",
      "",
      "| what | JAX temporaries MiB | JAX page faults per call | torch page faults per call |",
      "|---|---|---|---|",
      *[f"| {name} | {temp / 2**20:.0f} | {jax_faults:.0f} | {torch_faults:.0f} |"
        for name, temp, jax_faults, torch_faults in faults],
      "",
      f"The same steps in a second process with `GLIBC_TUNABLES={HUGE_PAGES}`",
      "(malloc on transparent huge pages, glibc >= 2.35; both frameworks):",
      "",
      *_table(huge_rows),
  ]
  lines += [
      "",
      "## Memory: point loss vs full-mask loss (forward + backward, JAX)",
      "",
      "Mask logits at 1/4 of the target resolution; the full-mask loss upsamples",
      "them bilinearly to the target and takes sigmoid CE + dice over every pixel",
      "(what point sampling replaces; Mask2Former, Table 5). Peak = XLA's compiled",
      "arguments + outputs + temporaries.",
      "",
      "| masks | logits | targets | loss | peak MiB | temp MiB | time ms |",
      "|---|---|---|---|---|---|---|",
  ]
  for n, low, size, result in mem_rows:
    for name, peak, temp, times in result:
      lines.append(f"| {n} | {low}² | {size}² | {name} | {peak / 2**20:.0f} | "
                   f"{temp / 2**20:.0f} | {_fmt(times)} |")
    ratio = result[0][1] / result[1][1]
    lines.append(f"| | | | point / full peak | {ratio:.2f} | | |")
  c = CRITERION
  lines += [
      "",
      "## The Mask2Former criterion",
      "",
      "`mask2former_loss` (matching on the device with optax's Hungarian",
      "algorithm, every layer in one program) against HF transformers' own",
      "`Mask2FormerLoss` (scipy matching on the host, image by image) and",
      "torch_ref's transcription, forward + backward, default options (12544",
      "matcher and loss points), float32 targets for both frameworks, passed",
      "to the jitted step as arguments. The issue-22 problems: 10 decoder",
      "layers and 2 images (20 + 13 valid targets), and 1 layer and 8 images",
      "(92 valid of 160 target slots), each with jaxmask's defaults and with",
      "`max_total_targets` set to the batch's valid count (the mask losses",
      "then run over the valid slots only, as HF's; by default, on CPU, they",
      "skip the chunks of padded slots, valid slots first).",
      "",
      *_table(crit_rows),
      "",
      *(crit_extra or []),
      f"Compiled peak memory (arguments + outputs + temporaries) of the same step,"
      f" L={c['L']}, B={c['B']}, Q={c['Q']}, {c['size']}² logits, with point",
      "sampling and with `num_points=None` (every target pixel, logits",
      "upsampled: the full-mask loss of Mask2Former's Table 5):",
      "",
      "| targets | loss | peak MiB | temp MiB |",
      "|---|---|---|---|",
  ]
  for size, result in crit_mem_rows:
    for name, peak, temp in result:
      lines.append(f"| {size}² | {name} | {peak / 2**20:.0f} | {temp / 2**20:.0f} |")
    lines.append(f"| | points / full peak | {result[0][1] / result[1][1]:.2f} | |")
  path.write_text("\n".join(lines) + "\n")
  print("\n".join(lines))
  print(f"\nwrote {path}")


STEPS = ((200, 128), (50, 128), (200, 256))


def steps_with_huge_pages(reps):
  """The step rows again, in a child process with `GLIBC_TUNABLES` set."""
  with tempfile.TemporaryDirectory() as tmp:
    out = pathlib.Path(tmp, "rows.json")
    env = dict(os.environ, GLIBC_TUNABLES=HUGE_PAGES)
    subprocess.run([sys.executable, __file__, "--reps", str(reps),
                    "--steps-json", str(out)], env=env, check=True)
    return [tuple(row) for row in json.loads(out.read_text())]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--reps", type=int, default=9)
  parser.add_argument("--out", type=pathlib.Path,
                      default=pathlib.Path(__file__).with_name("RESULTS.md"))
  parser.add_argument("--steps-json", type=pathlib.Path,
                      help=argparse.SUPPRESS)  # the child of the huge-page run
  args = parser.parse_args()
  torch.set_num_threads(os.cpu_count())
  rows, mem_rows, faults = [], [], []
  if args.steps_json:
    for n, size in STEPS:
      bench_step(n, size, args.reps, rows)
    args.steps_json.write_text(json.dumps(rows))
    return
  for n, size in STEPS:
    bench_step(n, size, args.reps, rows, faults)
  # What the XLA:CPU kernels buy: the plain algorithms, as GPUs and TPUs run.
  bench_step(200, 128, args.reps, rows, implementation="plain")
  bench_parts(200, 128, args.reps, rows, faults)
  if hf:
    bench_hf(200, 128, args.reps, rows)
  for target_size in (512, 1024):
    bench_memory(50, target_size, 3, mem_rows)
  crit_rows, crit_mem_rows = [], []
  bench_criterion(args.reps, crit_rows)
  bench_criterion_memory(crit_mem_rows)
  crit_extra = criterion_sections(args.reps)
  huge_rows = steps_with_huge_pages(args.reps)
  write_results(rows, mem_rows, faults, huge_rows, crit_rows, crit_mem_rows,
                args.out, args.reps, crit_extra)


if __name__ == "__main__":
  main()
