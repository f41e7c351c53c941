"""Extras for the criterion benchmark: matching at scale, and host round-trips.

    python benchmarks/criterion_extras.py            # both, printed as markdown
    python benchmarks/criterion_extras.py --reps 3   # fewer repetitions

`bench_matching_scaling` times `jaxmask.hungarian_match` (vmapped, jitted)
against scipy's `linear_sum_assignment` image by image at growing sizes, and
checks that both reach the same optimal total cost.

The round-trip functions count what makes a criterion step wait for the host.
HF transformers' `Mask2FormerHungarianMatcher.forward` ends each image with

    assigned_indices = linear_sum_assignment(cost_matrix.cpu())

so one `Mask2FormerLoss` call with L-1 auxiliary layers and B images copies L×B
cost matrices to the host and solves them there, one at a time. On the CPU
`.cpu()` returns the tensor itself, but on a GPU each call is a device→host
copy that waits for every kernel queued before it. They are counted by
wrapping the tensor methods that copy to the host (`.cpu()`, `.item()`,
`.tolist()`, `.numpy()`, the implicit `bool`/`int`/`float`/`index`
conversions) and the `linear_sum_assignment` that HF's module imported, for one
forward + backward call. Python-level wrappers see only the syncs that Python
code asks for, not any a C++ kernel makes by itself; HF's loss, read with
`inspect.getsource`, has none but the matcher's.

Not counted, as the opposite direction: the matcher returns its indices as host
tensors (`torch.as_tensor(i, dtype=torch.int64)`, no `device=`), which then
index the device logits, labels and masks in `loss_masks` and `loss_labels`;
on a GPU each such use uploads the indices first.

jaxmask's `mask2former_loss` matches on the device (optax's Hungarian
algorithm inside the compiled step): `jaxmask_host_round_trips` runs its step
under `jax.transfer_guard("disallow")` and scans the compiled HLO for host
callbacks, infeeds, outfeeds, sends and receives.
"""

import argparse
import collections
import contextlib
import functools
import pathlib
import re
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize
import torch

import jaxmask

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import run  # noqa: E402  (benchmarks/run.py: _compare, _fmt, CRITERION)

try:
  import transformers
  from transformers.models.mask2former import modeling_mask2former as hf
except ImportError:
  transformers = hf = None

# (Q, T): queries × targets of each cost matrix; 8 images per batch.
MATCHING_SIZES = ((100, 20), (200, 100), (300, 300))
MATCHING_BATCH = 8

# run.py's criterion problem (L=10, B=2, 20+13 valid targets) and a one-layer
# batch of 8 images. Q, K and T are run.CRITERION's.
CONFIGS = (
    dict(L=10, B=2, counts=(20, 13)),
    dict(L=1, B=8, counts=(20, 12, 10, 10, 10, 10, 10, 10)),
)

# The round-trip counts do not depend on the logits' or targets' sizes nor on
# the number of points (the syncs are one per image and layer; see the test),
# so round_trip_rows uses small ones.
SMALL = dict(size=16, target_size=32, num_points=256)

# What HF's step may call that copies a tensor to the host (or, for numpy and
# linear_sum_assignment, works on such a copy).
TENSOR_METHODS = ("cpu", "item", "tolist", "numpy")
IMPLICIT_CONVERSIONS = ("__bool__", "__int__", "__float__", "__index__")
# Of those, the ones that start a device→host copy on a GPU: `.numpy()` of a
# device tensor raises there, so HF can only call it on a `.cpu()` copy.
DEVICE_TO_HOST = ("cpu", "item", "tolist") + IMPLICIT_CONVERSIONS

ROUND_TRIP_HEADER = ("criterion step (forward + backward)", "HF .cpu()",
                     "HF .item()", "HF .tolist()", "HF .numpy()",
                     "HF linear_sum_assignment", "HF device→host syncs",
                     "jaxmask host round-trips")


def bench_matching_scaling(reps, rows, sizes=MATCHING_SIZES,
                           batch=MATCHING_BATCH):
  """`hungarian_match` vmapped vs scipy per image; appends run.py-style rows.

  For each (Q, T) in `sizes`, `batch` random float32 [Q, T] cost matrices are
  matched by `jax.jit(jax.vmap(jaxmask.hungarian_match))` and by
  `scipy.optimize.linear_sum_assignment` one image at a time, interleaved rep
  by rep as in run.py's `_compare` (compile time apart). Asserts that both
  assignments are complete and one-to-one and that, image by image, their
  total costs agree to a relative 1e-5 (on exact ties the assignments
  themselves may differ).

  Args:
    reps: timed repetitions of each.
    rows: list to append `(what, jax ms, scipy ms, compile)` rows to.
    sizes: (Q, T) pairs, Q >= T.
    batch: cost matrices per call.

  Returns:
    `rows`.
  """
  match = jax.jit(jax.vmap(jaxmask.hungarian_match))
  for q, t in sizes:
    cost = np.random.default_rng(q).normal(size=(batch, q, t)).astype(np.float32)
    jcost = jnp.asarray(cost)
    jt, tt, compile_s = run._compare(
        lambda jcost=jcost: match(jcost),
        lambda cost=cost: [scipy.optimize.linear_sum_assignment(x) for x in cost],
        reps)
    _check_matching(cost, match(jcost))
    rows.append((f"hungarian_match vmapped vs scipy linear_sum_assignment per "
                 f"image, {batch} images of {q}×{t}", jt, tt, f"{compile_s:.1f} s"))
  return rows


def _check_matching(cost, matching):
  """Asserts jaxmask's matching is a complete assignment of scipy's total cost."""
  query_index = np.asarray(matching.query_index)
  target_index = np.asarray(matching.target_index)
  _, q, t = cost.shape
  for b, c in enumerate(cost.astype(np.float64)):
    qi = query_index[b]
    assert ((qi >= 0) & (qi < q)).all() and len(set(qi.tolist())) == t, qi
    np.testing.assert_array_equal(target_index[b][qi], np.arange(t))
    assert (target_index[b] >= 0).sum() == t
    rows, cols = scipy.optimize.linear_sum_assignment(c)
    np.testing.assert_allclose(c[qi, np.arange(t)].sum(), c[rows, cols].sum(),
                               rtol=1e-5, err_msg=f"image {b} of {q}×{t}")


def criterion_inputs(L, B, counts, *, size=None, target_size=512, seed=0):
  """run.py's `_criterion_inputs` with L, B, the valid counts and sizes as arguments.

  Draws in the same order from the same generator, so with run.CRITERION's
  L, B, counts and size it returns the same arrays.

  Returns:
    (class_logits [L, B, Q, K+1], mask_logits [L, B, Q, size, size], labels
    [B, T] int32, masks [B, T, target_size, target_size] bool, valid [B, T]).
  """
  c = run.CRITERION
  size = c["size"] if size is None else size
  rng = np.random.default_rng(seed)
  class_logits = rng.normal(size=(L, B, c["Q"], c["K"] + 1))
  mask_logits = rng.normal(size=(L, B, c["Q"], size, size)) * 3
  labels = rng.integers(0, c["K"], size=(B, c["T"])).astype(np.int32)
  masks = rng.random((B, c["T"], target_size, target_size)) > 0.5
  valid = np.arange(c["T"])[None, :] < np.array(counts)[:, None]
  return (class_logits.astype(np.float32), mask_logits.astype(np.float32),
          labels, masks, valid)


def hf_criterion_step(L, B, counts, *, size=None, target_size=512,
                      num_points=12544, seed=0):
  """HF's Mask2FormerLoss on `criterion_inputs`, forward + backward.

  Returns a function running one step, weighted as HF's `get_loss_dict` and
  summed as its `get_loss` (float32 targets; run.py times it).
  """
  K = run.CRITERION["K"]
  cl, ml, labels, masks, valid = criterion_inputs(
      L, B, counts, size=size, target_size=target_size, seed=seed)
  config = transformers.Mask2FormerConfig(num_labels=K, train_num_points=num_points)
  weights = {"loss_cross_entropy": 2.0, "loss_mask": 5.0, "loss_dice": 5.0}
  criterion = hf.Mask2FormerLoss(config, weights)
  tcl, tml = torch.from_numpy(cl), torch.from_numpy(ml)
  tlabels = [torch.from_numpy(labels[b][valid[b]]).long() for b in range(B)]
  tmasks = [torch.from_numpy(masks[b][valid[b]].astype(np.float32))
            for b in range(B)]

  def step():
    cl_, ml_ = tcl.clone().requires_grad_(True), tml.clone().requires_grad_(True)
    aux = [{"masks_queries_logits": ml_[l], "class_queries_logits": cl_[l]}
           for l in range(L - 1)]
    losses = criterion(ml_[-1], cl_[-1], tmasks, tlabels,
                       auxiliary_predictions=aux)
    sum(v * sum(w for n, w in weights.items() if n in k)
        for k, v in losses.items()).backward()

  return step


@contextlib.contextmanager
def _counting_host_copies(counts):
  """Counts, into `counts`, calls of the tensor → host methods and HF's scipy.

  Patches `torch.Tensor`'s methods and `modeling_mask2former`'s own
  `linear_sum_assignment` (it did `from scipy.optimize import ...`, so
  patching scipy.optimize would miss it); restores all of them on exit.
  `counts["numpy_of_cpu_copy"]` counts the `.numpy()` calls made on a tensor
  that a counted `.cpu()` returned.
  """
  copies = []
  patched = []

  def patch(owner, name, on_call=None):
    original = vars(owner).get(name)  # None: inherited (restored by delattr)
    fn = getattr(owner, name)

    @functools.wraps(fn)
    def counted(*args, **kwargs):
      counts[name] += 1
      if on_call:
        on_call(*args)
      out = fn(*args, **kwargs)
      if name == "cpu":
        copies.append(out)
      return out

    patched.append((owner, name, original))
    setattr(owner, name, counted)

  def numpy_of(tensor, *_):
    counts["numpy_of_cpu_copy"] += any(tensor is c for c in copies)

  try:
    for name in TENSOR_METHODS + IMPLICIT_CONVERSIONS:
      patch(torch.Tensor, name, numpy_of if name == "numpy" else None)
    patch(hf, "linear_sum_assignment")
    yield counts
  finally:
    for owner, name, original in reversed(patched):
      if original is None:
        delattr(owner, name)
      else:
        setattr(owner, name, original)


def hf_host_round_trips(L, B, counts=None, *, size=None, target_size=512,
                        num_points=12544, seed=0):
  """Host round-trips of one forward + backward call of HF's `Mask2FormerLoss`.

  The step is run.py's `bench_criterion` HF step (last layer plus L-1
  auxiliary ones, B images) on `criterion_inputs` (Q, K, T of
  run.CRITERION); it is called once unpatched (warm-up), then once counted.

  Args:
    L: decoder layers (the matcher runs once per layer).
    B: images.
    counts: valid targets per image (B of them, each <= T); None: T each.
    size: mask logits' side (None: run.CRITERION's 128).
    target_size: target masks' side.
    num_points: HF's `train_num_points` (matcher and loss points).
    seed: of the inputs.

  Returns:
    A dict: "counts", calls per kind (TENSOR_METHODS, IMPLICIT_CONVERSIONS,
    "linear_sum_assignment", "numpy_of_cpu_copy"); "device_to_host", the calls
    that copy a device tensor to the host on a GPU (DEVICE_TO_HOST kinds);
    "expected", L×B: one `.cpu()` per layer and image in the matcher.
  """
  if hf is None:
    raise ImportError("hf_host_round_trips needs transformers")
  counts = (run.CRITERION["T"],) * B if counts is None else counts
  step = hf_criterion_step(L, B, counts, size=size, target_size=target_size,
                  num_points=num_points, seed=seed)
  step()
  calls = collections.Counter()
  with _counting_host_copies(calls):
    step()
  kinds = (TENSOR_METHODS + IMPLICIT_CONVERSIONS
           + ("linear_sum_assignment", "numpy_of_cpu_copy"))
  return {"counts": {k: calls[k] for k in kinds},
          "device_to_host": sum(calls[k] for k in DEVICE_TO_HOST),
          "expected": L * B}


# HLO ops that move data between host and device, or run host code, inside a
# compiled program; custom calls whose target names a host callback or a host
# memory move.
_HLO_HOST_OPS = re.compile(
    r"\s(infeed|outfeed|send|send-done|recv|recv-done|host-compute)\(")
_CUSTOM_CALL = re.compile(r'custom_call_target="([^"]+)"')
_HOST_TARGET = re.compile(r"callback|MoveToHost|MoveToDevice|host", re.I)


def hlo_host_ops(hlo_text):
  """Counts of host-transfer ops and host-callback custom calls in HLO text.

  Returns:
    A dict from op (or `custom-call:<target>`) to its count; empty if none.
  """
  found = collections.Counter(_HLO_HOST_OPS.findall(hlo_text))
  for target in _CUSTOM_CALL.findall(hlo_text):
    if _HOST_TARGET.search(target):
      found[f"custom-call:{target}"] += 1
  return dict(found)


def jaxmask_host_round_trips(L, B, counts=None, *, size=None, target_size=512,
                             num_points=12544, seed=0):
  """Host round-trips of jaxmask's criterion step (none expected).

  The step is run.py's `bench_criterion` one (jit of value_and_grad of
  `mask2former_loss(...).total` with respect to both logits), but with the
  key, labels, masks and valid flags as arguments too, so that every input
  is a device array put there beforehand. After a warm-up call it is called
  once under `jax.transfer_guard("disallow")`, its outputs left on the device
  (`block_until_ready` only), so that any implicit host↔device transfer
  raises; the guard is checked to be live by calling the same step with one
  NumPy argument under it, which must raise. The compiled HLO is scanned with
  `hlo_host_ops`.

  Args: as `hf_host_round_trips`.

  Returns:
    A dict: "round_trips", the number of host ops in the HLO plus 1 if the
    guarded call raised (0 expected); "hlo_host_ops" (`hlo_host_ops`'s dict);
    "guard_error", the guarded call's error or None; "guard_live", whether a
    NumPy argument was refused under the guard; "custom_call_targets", every
    custom call in the program (XLA's own, e.g. TopK; none a callback).
  """
  counts = (run.CRITERION["T"],) * B if counts is None else counts
  arrays = criterion_inputs(L, B, counts, size=size, target_size=target_size,
                            seed=seed)
  args = (*jax.device_put(arrays), jax.random.key(0))
  step = jax.jit(jax.value_and_grad(
      lambda cl, ml, labels, masks, valid, key: jaxmask.mask2former_loss(
          key, cl, ml, labels, masks, valid, num_points=num_points).total,
      argnums=(0, 1)))
  jax.block_until_ready(step(*args))
  guard_error = None
  with jax.transfer_guard("disallow"):
    try:
      jax.block_until_ready(step(*args))
    except RuntimeError as e:  # jax.errors.JaxRuntimeError
      guard_error = str(e)
    try:
      step(arrays[0], *args[1:])
      guard_live = False
    except RuntimeError:
      guard_live = True
  text = step.lower(*args).compile().as_text()
  host_ops = hlo_host_ops(text)
  return {"round_trips": sum(host_ops.values()) + (guard_error is not None),
          "hlo_host_ops": host_ops, "guard_error": guard_error,
          "guard_live": guard_live,
          "custom_call_targets": sorted(set(_CUSTOM_CALL.findall(text)))}


def _describe(config):
  return (f"L={config['L']}, B={config['B']}, "
          f"{'+'.join(map(str, config['counts']))} valid targets")


def round_trip_rows(configs=CONFIGS, **sizes):
  """Markdown-ready rows (columns: ROUND_TRIP_HEADER) for each config.

  Args:
    configs: dicts of L, B and counts (default: CONFIGS, run.py's criterion
      problem and a one-layer batch of 8).
    **sizes: size, target_size, num_points for both functions (default:
      SMALL; the counts do not depend on them).

  Returns:
    One tuple per config: what, HF's `.cpu()`, `.item()`, `.tolist()`,
    `.numpy()` and `linear_sum_assignment` calls, HF's device→host syncs,
    jaxmask's host round-trips.
  """
  sizes = {**SMALL, **sizes}
  rows = []
  for config in configs:
    L, B, counts = config["L"], config["B"], config["counts"]
    ours = jaxmask_host_round_trips(L, B, counts, **sizes)["round_trips"]
    if hf is None:
      theirs = ("n/a",) * 6
    else:
      result = hf_host_round_trips(L, B, counts, **sizes)
      c = result["counts"]
      theirs = (c["cpu"], c["item"], c["tolist"], c["numpy"],
                c["linear_sum_assignment"], result["device_to_host"])
    rows.append((_describe(config), *theirs, ours))
  return rows


def markdown(header, rows):
  """A markdown table of `rows` under `header`."""
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  return lines + ["| " + " | ".join(map(str, row)) + " |" for row in rows]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--reps", type=int, default=5)
  args = parser.parse_args()
  rows = bench_matching_scaling(args.reps, [])
  print("\n".join(run._table(rows)).replace("torch_ref", "scipy"))
  print()
  print("\n".join(markdown(ROUND_TRIP_HEADER, round_trip_rows())))


if __name__ == "__main__":
  main()


# --------------------------------------------------------- where the time goes

# The same breakdown measured before issue 22's changes (commit 7d87f6b,
# 0.2.0), on this machine on 2026-12-06, medians of 5 (bool targets as
# constants of the program, so their conversion to float32 was folded away):
# the matcher sampled both masks map-major in `lax.map` and copied each
# image's targets, its costs took a softplus, a log1p and an exp per logit,
# and the mask losses ran over all L * B * T slots.
PARTS_BEFORE = {
    "L=10, B=2, 20+13 valid targets": {
        "matcher: predictions sampled at the shared points": 156.0,
        "matcher: targets sampled at the shared points": 112.3,
        "matcher: pairwise costs": 61.9,
        "matcher: assignment (hungarian_match)": 1.6,
        "matcher, XLA:CPU loop (what runs)": 306.8,
        "matcher, plain vmapped (the accelerators' program)": 811.0,
        "mask losses, forward": 241.4,
        "mask losses, forward + backward": 399.0,
        "class loss, forward + backward": 0.4,
        "whole criterion, forward + backward": 722.8,
    },
    "L=1, B=8, 20+12+10+10+10+10+10+10 valid targets": {
        "matcher: predictions sampled at the shared points": 64.3,
        "matcher: targets sampled at the shared points": 45.3,
        "matcher: pairwise costs": 28.6,
        "matcher: assignment (hungarian_match)": 1.0,
        "matcher, XLA:CPU loop (what runs)": 123.2,
        "matcher, plain vmapped (the accelerators' program)": 316.9,
        "mask losses, forward": 132.5,
        "mask losses, forward + backward": 168.6,
        "class loss, forward + backward": 0.2,
        "whole criterion, forward + backward": 284.3,
    },
}


def _median_ms(fn, args, reps):
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append((time.perf_counter() - t0) * 1e3)
  return statistics.median(times)


def criterion_parts(config, reps=5, *, max_total_targets=None):
  """Per-part medians (ms) of the criterion on `config`, through its internals.

  The parts are jitted alone, over every layer and image as the criterion
  runs them: the matcher's two samplings (predictions pixel-major, their
  transpose included; targets read in place), its pairwise costs, the
  assignments, the whole matcher (the XLA:CPU loop that runs on CPU and the
  plain vmapped program that runs on accelerators), the mask losses forward
  and forward + backward, the class loss, and the whole criterion (forward +
  backward, targets as arguments). Maintainers' numbers: private functions.
  """
  from jaxmask._src import criterion as C
  from jaxmask._src.xla_cpu import barrier
  from jaxmask._src.xla_cpu import matching as xla_cpu_matching

  L, B, counts = config["L"], config["B"], config["counts"]
  cl, ml, labels, masks, valid = (jnp.asarray(x) for x in criterion_inputs(
      L, B, counts))
  masks = masks.astype(jnp.float32)
  P = run.P
  key = jax.random.key(0)
  points = jax.random.uniform(key, (L, B, P, 2), jnp.float32)
  weights = (2.0, 5.0, 5.0)
  size, tsize = ml.shape[-2:], masks.shape[-2:]
  flat = lambda x: x.reshape(L * B, *x.shape[2:])
  images = jnp.tile(jnp.arange(B), L)

  # Image by image, computed apart from their consumers, as the loop does.
  def sample_preds(ml, points):
    return jax.lax.map(lambda a: barrier.computed_apart(
        lambda rows, p: C._sample_shared(rows, size, p, pixel_major=True),
        C._pixel_rows(a[0]), a[1]), (flat(ml), flat(points)))

  def sample_targets(masks, points):
    return jax.lax.map(lambda a: barrier.computed_apart(
        lambda m, i, p: C._sample_shared(
            m[i].reshape(m.shape[1], -1), tsize, p, pixel_major=False),
        masks, a[1], a[0]), (flat(points), images))

  pred = jax.jit(sample_preds)(ml, points)
  target = jax.jit(sample_targets)(masks, points)
  costs = jax.jit(lambda p, t: jax.lax.map(
      lambda a: C._pairwise_mask_costs(*a), (p, t)))
  cost = jnp.sum(jnp.stack(costs(pred, target)), 0)
  assign = jax.jit(lambda c, v: jax.vmap(C._hungarian_match)(c, v))
  kernel = functools.partial(
      xla_cpu_matching.match_image_by_image,
      functools.partial(C._match_image, cost_weights=weights),
      functools.partial(C._match_every_image, cost_weights=weights))
  plain = functools.partial(C._match_every_image, cost_weights=weights)
  match_args = (points, cl, ml, labels, masks, valid)
  matching = jax.jit(kernel)(*match_args)
  num_masks = jnp.float32(sum(counts))

  def mask_losses(ml, masks, valid, query_index, target_index):
    loss_mask, loss_dice = C._mask_losses(
        key, ml, masks, valid, query_index, target_index,
        num_masks, num_points=P, oversample_ratio=run.R,
        importance_sample_ratio=run.BETA, max_total_targets=max_total_targets,
        implementation=None)
    return jnp.sum(loss_mask) + jnp.sum(loss_dice)

  loss_args = (ml, masks, valid, matching.query_index, matching.target_index)
  class_loss = jax.vmap(C._class_loss, in_axes=(0, None, 0, None, None))
  whole = jax.value_and_grad(
      lambda cl, ml, labels, masks, valid: jaxmask.mask2former_loss(
          key, cl, ml, labels, masks, valid,
          max_total_targets=max_total_targets).total, argnums=(0, 1))
  parts = [
      ("matcher: predictions sampled at the shared points", sample_preds,
       (ml, points)),
      ("matcher: targets sampled at the shared points", sample_targets,
       (masks, points)),
      ("matcher: pairwise costs", costs, (pred, target)),
      ("matcher: assignment (hungarian_match)", assign,
       (cost, jnp.tile(valid, (L, 1)))),
      ("matcher, XLA:CPU loop (what runs)", kernel, match_args),
      ("matcher, plain vmapped (the accelerators' program)", plain,
       match_args),
      ("mask losses, forward", mask_losses, loss_args),
      ("mask losses, forward + backward", jax.value_and_grad(mask_losses),
       loss_args),
      ("class loss, forward + backward", jax.value_and_grad(
          lambda cl: class_loss(cl, labels, matching.target_index,
                                run.CRITERION["K"], 0.1).sum()), (cl,)),
      ("whole criterion, forward + backward", whole,
       (cl, ml, labels, masks, valid)),
  ]
  return [(name, _median_ms(jax.jit(fn), args, reps))
          for name, fn, args in parts]


def parts_table(reps=5):
  """Markdown lines: before (PARTS_BEFORE) and now, per part, both configs."""
  lines = ["| config | part | before (7d87f6b) ms | now ms | now, "
           "`max_total_targets` = valid count, ms |", "|---|---|---|---|---|"]
  for config in CONFIGS:
    what = _describe(config)
    now = criterion_parts(config, reps)
    capped = dict(criterion_parts(config, reps,
                                  max_total_targets=sum(config["counts"])))
    before = PARTS_BEFORE.get(what, {})
    for name, ms in now:
      cap = capped[name] if "mask losses" in name or "whole" in name else None
      lines.append(f"| {what} | {name} | {before.get(name, float('nan')):.1f} | "
                   f"{ms:.1f} | {'' if cap is None else f'{cap:.1f}'} |")
  return lines
