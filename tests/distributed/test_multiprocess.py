"""Two JAX processes x 2 CPU devices agree with one process on the whole batch.

The test writes the global batches to `inputs.npz` and starts two worker
processes (`_multiprocess_worker.py`) on a free port: each joins the cluster
with `jax.distributed.initialize` (gloo collectives on CPU), feeds its half of
every batch into a `jax.shard_map` over the 4 global devices with
`axis_name="data"`, and writes its rows of the sharded outputs and its copy
of the replicated ones. Here, one process (this one) computes the same
functions without `axis_name` on the concatenated batch, and the tests
compare: values to stated float32 tolerances, masks and pseudo-labels under
the one tie rule of `_rules.py`.

The workers run once per test session (under pytest-xdist, the first xdist
worker that needs them runs them and the other reads the same files); a
worker that fails or runs past `TIMEOUT_S` fails every test here with its
stderr, and every worker's process group is killed before the fixture
returns.
"""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import filelock  # a dependency of torch (the test extra pins torch)
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import _rules
import jaxmask

pytestmark = pytest.mark.multiprocess

WORKER = pathlib.Path(__file__).with_name("_multiprocess_worker.py")
NUM_PROCESSES = 2
DEVICES_PER_PROCESS = 2
NUM_DEVICES = NUM_PROCESSES * DEVICES_PER_PROCESS
TIMEOUT_S = 120  # for both workers together; each needs ~10 s of CPU

# Values that two programs compute in different orders (the psum of partial
# class sums, a loss rescaled by num_masks) agree to a few float32 ulps; 1e-6
# relative is ~8 ulps. Integer state and 0/1 masks are compared exactly, except
# at rounding ties (`_rules.py`).
RTOL = 1e-6
SOFTMATCH_ATOL = 1e-6  # SoftMatch's weights in [0, 1], an exp of state

MASK_CASES = {  # name: (q, keep)
    "q50_low": (50.0, "low"),
    "q20_high": (20.0, "high"),
    # Process 0's shard all confident, process 1's all unsure.
    "uneven": (50.0, "low"),
}
PMASK_CASES = {"q30_high": (30.0, "high"), "q50_low": (50.0, "low")}
BATCH, CLASSES, UNLABELLED, STEPS = 16, 10, 32, 20
THRESHOLDS = {  # name: (jaxmask factory, options)
    "fixmatch": ("fixmatch", {"p_cutoff": 0.7}),
    "percentile": ("percentile_threshold", {"q": 20.0, "keep": "high"}),
    "flexmatch": ("flexmatch", {"num_classes": CLASSES,
                                "num_unlabelled": UNLABELLED, "p_cutoff": 0.7}),
    "freematch": ("freematch", {"num_classes": CLASSES, "momentum": 0.7}),
    "freematch_quantile": ("freematch", {"num_classes": CLASSES, "momentum": 0.7,
                                         "use_quantile": True}),
    "softmatch": ("softmatch", {"num_classes": CLASSES, "momentum": 0.7}),
}
M2F_COUNTS = {  # valid targets per image; 2 images per device
    "mixed": [0, 1, 3, 2, 1, 0, 0, 2],  # num_masks = 9 / 4
    "few": [0, 0, 0, 1, 0, 0, 0, 0],  # 1 / 4, clamped to 1; process 1 has none
}
M2F_OPTIONS = {"seed": 0, "num_points": 16}
M2F_WEIGHTS = {"loss_cross_entropy": 2.0, "loss_mask": 5.0, "loss_dice": 5.0}


def threshold_update(t, state, probs, **kw):
  """`t.update` in today's argument order: the one line to change if it changes."""
  return t.update(probs, state, **kw)


# --------------------------------------------------------------- the inputs


def _softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return (e / e.sum(-1, keepdims=True)).astype(np.float32)


def _inputs():
  """Every global batch the workers shard, as one flat dict of arrays."""
  rng = np.random.default_rng(23)
  out = {"masks/names": np.array(list(MASK_CASES))}
  for name, (q, keep) in MASK_CASES.items():
    x = rng.normal(size=(BATCH, CLASSES)) * rng.uniform(0.5, 3.0, (BATCH, 1))
    if name == "uneven":
      x = rng.normal(size=(BATCH, CLASSES))
      x[:BATCH // 2, 0] += 12.0
      x[BATCH // 2:] *= 0.01
    out.update({f"masks/{name}/logits": x.astype(np.float32),
                f"masks/{name}/q": np.float64(q), f"masks/{name}/keep": np.str_(keep)})
  out["pmask/names"] = np.array(list(PMASK_CASES))
  for name, (q, keep) in PMASK_CASES.items():
    out.update({f"pmask/{name}/values": rng.random(24).astype(np.float32),
                f"pmask/{name}/q": np.float64(q), f"pmask/{name}/keep": np.str_(keep)})

  # Process 0's half of every batch more confident than process 1's, so a
  # per-process statistic would differ from the global one; the classes
  # skewed, so FlexMatch's learning effects (and thresholds) differ by class.
  scale = np.concatenate([rng.uniform(2.0, 5.0, (STEPS, BATCH // 2, 1)),
                          rng.uniform(0.3, 2.0, (STEPS, BATCH // 2, 1))], axis=1)
  skew = np.linspace(2.0, 0.0, CLASSES)
  out["thresholds/probs"] = _softmax(
      rng.normal(size=(STEPS, BATCH, CLASSES)) * scale + skew)
  out["thresholds/indices"] = np.stack([
      rng.choice(UNLABELLED, BATCH, replace=False) for _ in range(STEPS)]).astype(np.int32)
  out["thresholds/config"] = np.str_(json.dumps(THRESHOLDS))

  L, B, Q, K, T, H, HT = 2, 8, 5, 3, 3, 8, 16
  out["m2f/names"] = np.array(list(M2F_COUNTS))
  out["m2f/options"] = np.str_(json.dumps(M2F_OPTIONS))
  for name, counts in M2F_COUNTS.items():
    out.update({
        f"m2f/{name}/class_logits": rng.normal(size=(L, B, Q, K + 1)).astype(np.float32),
        f"m2f/{name}/mask_logits": (2 * rng.normal(size=(L, B, Q, H, H))).astype(np.float32),
        f"m2f/{name}/labels": rng.integers(0, K, (B, T)).astype(np.int32),
        f"m2f/{name}/masks": (rng.random((B, T, HT, HT)) < 0.4).astype(np.float32),
        f"m2f/{name}/valid": np.arange(T)[None, :] < np.array(counts)[:, None],
    })
  return out


INPUTS = _inputs()


# ---------------------------------------------------------- the two workers


class WorkerFailure(Exception):
  """A worker exited non-zero, or the workers ran past their time."""

  def __init__(self, message: str, pids: list[int]):
    super().__init__(message)
    self.pids = pids  # every worker's pid (its process group's id)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _worker_env() -> dict:
  env = {k: v for k, v in os.environ.items()
         # A launcher's variables would steer jax.distributed's auto-detection.
         if not k.startswith(("SLURM_", "OMPI_", "PMI_", "PMIX_"))}
  # Replaces (not extends) conftest.py's 8 devices.
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={DEVICES_PER_PROCESS}"
  env["JAX_PLATFORMS"] = "cpu"
  return env


def _tail(path: pathlib.Path, chars: int = 4000) -> str:
  text = path.read_text(errors="replace") if path.exists() else ""
  return text[-chars:]


def run_workers(workdir: pathlib.Path, inputs, *, timeout_s: float = TIMEOUT_S,
                port: int | None = None) -> list[int]:
  """Runs one worker per entry of `inputs` (its inputs file); returns their pids.

  Raises `WorkerFailure` (with every worker's stderr) as soon as one exits
  non-zero, or when `timeout_s` passes. Either way every worker's process
  group is killed and reaped before this returns.
  """
  port = _free_port() if port is None else port
  env = _worker_env()
  procs = []
  try:
    for i, path in enumerate(inputs):
      with open(workdir / f"stdout_{i}.txt", "wb") as stdout, \
           open(workdir / f"stderr_{i}.txt", "wb") as stderr:
        procs.append(subprocess.Popen(
            [sys.executable, str(WORKER), "--port", str(port), "--process-id",
             str(i), "--inputs", str(path),
             "--output", str(workdir / f"result_{i}.npz")],
            stdout=stdout, stderr=stderr, env=env, cwd=workdir,
            start_new_session=True))  # its own process group, killed below
    deadline = time.monotonic() + timeout_s
    while True:
      codes = [p.poll() for p in procs]
      if all(c == 0 for c in codes):
        return [p.pid for p in procs]
      failed = [i for i, c in enumerate(codes) if c not in (None, 0)]
      if failed or time.monotonic() > deadline:
        break
      time.sleep(0.05)
    what = (f"worker(s) {failed} exited with {[codes[i] for i in failed]}" if failed
            else f"workers still running after {timeout_s:g} s (codes {codes})")
    raise WorkerFailure(what + "".join(
        f"\n--- worker {i} stderr (last 4000 characters) ---\n"
        f"{_tail(workdir / f'stderr_{i}.txt')}" for i in range(len(procs))),
        [p.pid for p in procs])
  finally:
    for p in procs:
      try:
        os.killpg(p.pid, signal.SIGKILL)
      except ProcessLookupError:
        pass  # the group is gone already
      p.wait()


def _run_once(root: pathlib.Path) -> None:
  """Runs the workers on `INPUTS` unless an earlier call in `root` did."""
  outcome = root / "outcome.json"
  if not outcome.exists():
    np.savez(root / "inputs.npz", **INPUTS)
    started = time.monotonic()
    for _ in range(2):
      try:
        run_workers(root, [root / "inputs.npz"] * NUM_PROCESSES)
        error = None
        break
      except WorkerFailure as e:
        error = str(e)
        # Another program took the free port before the coordinator bound it:
        # once more on a new port; any other failure stands.
        if "Failed to start RPC server" not in error:
          break
    outcome.write_text(json.dumps(
        {"error": error, "seconds": time.monotonic() - started}))
  error = json.loads(outcome.read_text())["error"]
  if error is not None:
    pytest.fail(f"multi-process run failed: {error}", pytrace=False)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
  """Each process's outputs: `[dict(result_0.npz), dict(result_1.npz)]`."""
  if os.environ.get("PYTEST_XDIST_WORKER"):  # share one run between xdist workers
    root = tmp_path_factory.getbasetemp().parent / "jaxmask_multiprocess"
    root.mkdir(exist_ok=True)
    with filelock.FileLock(str(root / "lock")):
      _run_once(root)
  else:
    root = tmp_path_factory.mktemp("multiprocess")
    _run_once(root)
  out = []
  for i in range(NUM_PROCESSES):
    with np.load(root / f"result_{i}.npz", allow_pickle=False) as f:
      out.append(dict(f))
  return out


def _rows(results, key):
  """The global batch: the processes' rows of a sharded output, concatenated."""
  return np.concatenate([r[key] for r in results], axis=0)


def _each(results, key):
  """Every process's copy of a replicated output, with its process id."""
  return [(i, r[key]) for i, r in enumerate(results)]


# ---------------------------------------------------------------- the checks


@pytest.mark.parametrize("name", list(MASK_CASES))
def test_confidence_masks(results, name):
  q, keep = MASK_CASES[name]
  want = jaxmask.confidence_masks(INPUTS[f"masks/{name}/logits"], q=q, keep=keep)
  got = jaxmask.ConfidenceMasks(**{
      f: _rows(results, f"masks/{name}/{f}") for f in ("probs", "confidence",
                                                       "pseudo_labels", "mask")},
      **{f: results[0][f"masks/{name}/{f}"] for f in (
          "threshold", "class_confidence", "class_threshold", "class_mask")})
  for field in ("threshold", "class_confidence", "class_threshold", "class_mask"):
    for i, value in _each(results, f"masks/{name}/{field}"):
      if field == "class_mask":
        np.testing.assert_array_equal(value, got.class_mask, f"process {i}")
      else:
        np.testing.assert_allclose(value, getattr(want, field), rtol=RTOL,
                                   err_msg=f"{field}, process {i}")
  np.testing.assert_allclose(got.probs, want.probs, rtol=RTOL)
  np.testing.assert_allclose(got.confidence, want.confidence, rtol=RTOL)
  _rules.assert_confidence_masks_match(got, want, err_msg=name)
  _rules.assert_same_argmax(got.pseudo_labels, want.pseudo_labels, want.probs,
                            tol=_rules.ulps(1.0), err_msg=name)


def test_uneven_shards_use_the_global_statistic(results):
  """Process 0's samples all confident, process 1's all unsure (q=50, "low").

  The global median lies between the two halves: process 0 keeps none of its
  samples and process 1 all of its; a per-process median would keep half of
  each.
  """
  mask = _rows(results, "masks/uneven/mask")
  half = BATCH // 2
  assert not mask[:half].any() and mask[half:].all(), mask
  logits = INPUTS["masks/uneven/logits"]
  per_process = np.concatenate([
      np.asarray(jaxmask.confidence_masks(part).mask)
      for part in np.split(logits, NUM_PROCESSES)])
  assert (per_process != mask).sum() >= half


@pytest.mark.parametrize("name", list(PMASK_CASES))
def test_percentile_mask(results, name):
  q, keep = PMASK_CASES[name]
  values = INPUTS[f"pmask/{name}/values"]
  want_mask, want_threshold = jaxmask.percentile_mask(values, q=q, keep=keep)
  np.testing.assert_array_equal(want_threshold, np.percentile(values, q))  # the oracle
  for i, threshold in _each(results, f"pmask/{name}/threshold"):
    np.testing.assert_allclose(threshold, want_threshold, rtol=RTOL,
                               err_msg=f"process {i}")
  _rules.assert_equal_except_ties(
      _rows(results, f"pmask/{name}/mask"), want_mask, got_values=values,
      want_values=values, got_threshold=results[0][f"pmask/{name}/threshold"],
      want_threshold=want_threshold, tol=_rules.ulps(want_threshold), err_msg=name)


def _per_sample_threshold(name, options, before, after, probs):
  """Each sample's threshold, from a program's state (the docstrings' formulas)."""
  labels = probs.argmax(1)
  if name == "fixmatch":
    return np.full(len(probs), options["p_cutoff"])
  if name == "percentile":
    return np.full(len(probs), np.percentile(probs.max(1), options["q"]))
  if name == "flexmatch":  # convex mapping, from the state before the update
    a = np.asarray(before["classwise_acc"], np.float64)[labels]
    return options["p_cutoff"] * a / (2.0 - a)
  if name.startswith("freematch"):  # from the state after the update
    p_model = np.asarray(after["p_model"], np.float64)
    return float(after["time_p"]) * p_model[labels] / p_model.max()
  raise AssertionError(name)


@pytest.mark.parametrize("name", list(THRESHOLDS))
def test_adaptive_threshold(results, name):
  """20 steps: the state on each process and the masks, every step."""
  factory, options = THRESHOLDS[name]
  t = getattr(jaxmask, factory)(**options)
  update = jax.jit(lambda s, p, i: threshold_update(t, s, p, indices=i))
  state = t.init()
  fields = state._fields
  got_states = [{f: r[f"thresholds/{name}/state/{f}"] for f in fields}
                for r in results]
  got_masks = np.concatenate([r[f"thresholds/{name}/mask"] for r in results], axis=1)
  got_labels = np.concatenate(
      [r[f"thresholds/{name}/pseudo_labels"] for r in results], axis=1)
  kept = 0
  for step in range(STEPS):
    probs = INPUTS["thresholds/probs"][step]
    indices = INPUTS["thresholds/indices"][step]
    before = state
    want, state = update(state, jnp.asarray(probs), jnp.asarray(indices))
    context = f"{name}, step {step}"
    for i, got_state in enumerate(got_states):
      for field in fields:
        got_leaf, want_leaf = got_state[field][step], np.asarray(getattr(state, field))
        if np.issubdtype(want_leaf.dtype, np.integer):  # selected_label, count
          np.testing.assert_array_equal(got_leaf, want_leaf,
                                        f"{field}, {context}, process {i}")
        else:
          np.testing.assert_allclose(got_leaf, want_leaf, rtol=RTOL,
                                     err_msg=f"{field}, {context}, process {i}")
    _rules.assert_same_argmax(got_labels[step], want.pseudo_labels, probs,
                              tol=_rules.ulps(1.0), err_msg=context)
    kept += int((np.asarray(want.mask) == 1).sum())
    if name == "softmatch":  # weights, not a 0/1 mask
      np.testing.assert_allclose(got_masks[step], want.mask, rtol=0,
                                 atol=SOFTMATCH_ATOL, err_msg=context)
      continue
    assert set(np.unique(got_masks[step])) <= {0.0, 1.0}, context
    # Each program's per-sample threshold, from its own state (process 0's).
    got_before = ({f: got_states[0][f][step - 1] for f in fields} if step
                  else before._asdict())
    got_after = {f: got_states[0][f][step] for f in fields}
    got_thr = _per_sample_threshold(name, options, got_before, got_after, probs)
    want_thr = _per_sample_threshold(name, options, before._asdict(),
                                     state._asdict(), probs)
    _rules.assert_equal_except_ties(
        got_masks[step] != 0, np.asarray(want.mask) != 0,
        got_values=probs.max(1), want_values=probs.max(1),
        got_threshold=got_thr, want_threshold=want_thr,
        tol=_rules.ulps(np.max(want_thr)), err_msg=context)
  assert 0 < kept < STEPS * BATCH  # the masks are neither all 0 nor all 1
  if name == "flexmatch":  # the global selected_label filled up
    assert (np.asarray(state.selected_label) >= 0).sum() >= UNLABELLED // 2


def test_mask2former_loss(results):
  """num_masks is the global mean count (>= 1); the losses are per device.

  Each device's class loss is that of its own images; its mask losses are
  its sums over matched masks divided by the global `num_masks`, i.e. one
  device's losses on its images (divided by `max(local count, 1)`) rescaled
  by `max(local count, 1) / num_masks`. The draws depend only on the key and
  the per-device shapes, so one process reproduces them device by device.
  (Both cases in one test: under xdist, one worker compiles the criterion.)
  """
  options = dict(M2F_OPTIONS)
  key = jax.random.key(options.pop("seed"))
  for name in M2F_COUNTS:
    get = lambda k, name=name: INPUTS[f"m2f/{name}/{k}"]
    valid = get("valid")
    num_masks = np.float32(max(valid.sum() / NUM_DEVICES, 1.0))
    np.testing.assert_array_equal(_rows(results, f"m2f/{name}/num_masks"),
                                  np.full(NUM_DEVICES, num_masks), name)
    per_device = len(valid) // NUM_DEVICES
    for d in range(NUM_DEVICES):
      s = slice(d * per_device, (d + 1) * per_device)
      local = jaxmask.mask2former_loss(
          key, get("class_logits")[:, s], get("mask_logits")[:, s],
          get("labels")[s], get("masks")[s], valid[s], **options)
      scale = max(valid[s].sum(), 1) / num_masks
      want_total = 0.0
      for loss_name, value in local.losses.items():
        base = loss_name.rstrip("_0123456789")
        want = float(value) * (1.0 if base == "loss_cross_entropy" else scale)
        want_total += M2F_WEIGHTS[base] * want
        got = _rows(results, f"m2f/{name}/losses/{loss_name}")[d]
        np.testing.assert_allclose(got, want, rtol=RTOL,
                                   err_msg=f"{name}: {loss_name}, device {d}")
      np.testing.assert_allclose(_rows(results, f"m2f/{name}/total")[d],
                                 want_total, rtol=RTOL,
                                 err_msg=f"{name}: total, device {d}")


# ------------------------------------------------------- the harness itself


def _assert_gone(pids):
  for pid in pids:  # each worker led its own process group
    with pytest.raises(ProcessLookupError):
      os.killpg(pid, 0)


def test_a_failing_worker_fails_with_its_stderr_and_leaves_no_process(tmp_path):
  """Worker 1 cannot read its inputs; worker 0 would wait for it in vain."""
  np.savez(tmp_path / "inputs.npz", **INPUTS)
  with pytest.raises(WorkerFailure) as failure:
    run_workers(tmp_path, [tmp_path / "inputs.npz", tmp_path / "missing.npz"])
  assert "worker(s) [1] exited" in str(failure.value)
  assert "missing.npz" in str(failure.value)  # worker 1's traceback
  _assert_gone(failure.value.pids)


def test_a_hanging_worker_is_killed_at_the_timeout(tmp_path):
  """A lone worker waits for its partner in `initialize`: killed at 1 s."""
  started = time.monotonic()
  with pytest.raises(WorkerFailure, match="still running after 1 s") as failure:
    run_workers(tmp_path, [tmp_path / "unused.npz"], timeout_s=1)
  assert time.monotonic() - started < 10
  _assert_gone(failure.value.pids)
