"""examples/semi_supervised.py as 2 JAX processes x 2 CPU devices trains as 1 process x 4.

`examples/launch_local.py` starts the two processes (gloo collectives, a free port); every
test runs the launcher in a process group of its own, checks that nothing of that group
outlives it, and kills the group whatever happens. The launcher's own duties (a failing
process's stderr and status, the others killed, the timeout, dying with the launcher) are
tested on a stand-in script that needs no JAX.
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import _examples

pytestmark = pytest.mark.multiprocess

for _module in ("flax", "optax", "sklearn", "matplotlib", "tqdm"):
  pytest.importorskip(_module)

LAUNCHER = _examples.script("launch_local")
# Generous: the launcher's two processes and the baseline here each compile two methods' steps
# (~35 s of CPU in all); on 2 cores shared with other jobs (load ~7) the test took 40 to 63 s.
TIMEOUT_S = 180
# A tiny run (2 seeds side by side, 4 steps) of FlexMatch, which takes the dataset `indices` of
# each process's rows, and FreeMatch, whose state and fairness term come from the global batch
# (the fairness loss gathers it across processes): a per-process statistic would show in its
# losses. (FlexMatch's global `selected_label` does not reach its losses within 4 steps, its
# warm-up; tests/distributed/test_multiprocess.py checks it across processes.) Every gradient is
# pmean'd across processes.
METHODS = ("flexmatch", "freematch")
TINY = dict(method=METHODS, seeds=2, steps=4, eval_every=2, batch_size=8,
            unlabelled_batch_size=8)
TINY_FLAGS = ["--method", *METHODS, "--seeds", "2", "--steps", "4", "--eval-every", "2",
              "--batch-size", "8", "--unlabelled-batch-size", "8"]
# 2 x 2 devices against 1 x 4: the same draws and shards, but the cross-process all-reduce
# (gloo) may add the devices' partial sums in another order than XLA:CPU does in one process.
# Measured: the losses differ by at most 1.6e-7 relative (9.5e-7 at 6.0, 2 float32 ulps), the
# fractions kept and the accuracies not at all. 2e-6 relative is ~16 ulps.
RTOL, ATOL = 2e-6, 1e-7


def run_launcher(argv, *, timeout=TIMEOUT_S, during=None):
  """`python examples/launch_local.py ARGV` in its own process group; runs `during()` (if
  given) meanwhile. Returns `(status, stdout, stderr, what during returned, survivors)`, where
  `survivors` says whether any process of the group outlived the launcher. The group is
  killed before this returns or raises."""
  proc = subprocess.Popen([sys.executable, str(LAUNCHER), *argv], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=_examples.subprocess_env(),
                          start_new_session=True)
  try:
    during_result = during() if during else None
    try:
      stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
      os.killpg(proc.pid, signal.SIGKILL)
      stdout, stderr = proc.communicate()
      pytest.fail(f"the launcher ran past {timeout} s; its stderr:\n{stderr[-6000:]}")
    try:
      os.killpg(proc.pid, 0)
      survivors = True
    except ProcessLookupError:
      survivors = False
  finally:
    try:
      os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
      pass
    proc.wait()
  return proc.returncode, stdout, stderr, during_result, survivors


def test_two_processes_train_like_one_process_with_four_devices(tmp_path):
  example = _examples.load("semi_supervised")
  # `{process_id}`: each process gets its own --out, so a write by process 1 would show.
  out = tmp_path / "out_{process_id}"
  argv = ["-n", "2", "--devices-per-process", "2", "--timeout", str(TIMEOUT_S),
          str(_examples.script("semi_supervised")), *TINY_FLAGS, "--devices", "0",
          "--out", str(out)]
  # Meanwhile, the same run in this process on 4 of conftest's 8 devices.
  baseline = lambda: example.train(example.Settings(**TINY, devices=4))
  started = time.monotonic()
  status, stdout, stderr, want, survivors = run_launcher(argv, during=baseline)
  if status and "Failed to start RPC server" in stderr:
    # Another program took the free port before the coordinator bound it: once more.
    status, stdout, stderr, _, survivors = run_launcher(argv)
  seconds = time.monotonic() - started
  assert status == 0, stderr[-6000:]
  assert not survivors, "a process of the launcher's group outlived it"
  assert seconds < TIMEOUT_S

  # Only process 0 wrote and printed (the others' stdout goes to /dev/null).
  assert not (tmp_path / "out_1").exists()
  with open(tmp_path / "out_0" / "results.json") as f:
    got = json.load(f)
  assert (tmp_path / "out_0" / "accuracy.png").read_bytes().startswith(b"\x89PNG")
  for method in METHODS:  # the table
    assert stdout.count(f"\n{method} ") == 1, stdout
  assert stdout.count("digits: ") == 1, stdout
  assert "2 cpu device(s) in each of 2 processes" in stdout, stdout
  assert got["config"]["num_processes"] == 2 and got["config"]["devices"] == 2
  assert got["config"]["process_id"] == 0

  assert list(got["results"]) == list(METHODS)
  for method in METHODS:
    g, w = got["results"][method], want["results"][method]
    assert (g["devices"], g["processes"]) == (4, 2), method
    assert (w["devices"], w["processes"]) == (4, 1), method
    assert g["history"]["step"] == w["history"]["step"] == [2, 4], method
    for name in ("loss", "labelled_loss", "unlabelled_loss", "fairness_loss", "kept"):
      np.testing.assert_allclose(g["history"][name], w["history"][name], rtol=RTOL, atol=ATOL,
                                 err_msg=f"{method}: {name}")
    # A test image moves across a decision boundary only if its logits tie to ~1e-7.
    np.testing.assert_allclose(g["history"]["accuracy"], w["history"]["accuracy"],
                               atol=1.01 / 540, err_msg=method)
  assert np.all(np.asarray(got["results"]["freematch"]["history"]["fairness_loss"]) < 0)


# ------------------------------------------------- the launcher, on a stand-in script

STAND_IN = '''
import json, os, sys, time
argv = sys.argv[1:]
folder, behaviour = argv[0], argv[1]
me = int(argv[argv.index("--process-id") + 1])
with open(os.path.join(folder, f"started_{me}.tmp"), "w") as f:
  json.dump(dict(argv=argv, pid=os.getpid(), xla_flags=os.environ["XLA_FLAGS"],
                 platforms=os.environ["JAX_PLATFORMS"]), f)
os.replace(os.path.join(folder, f"started_{me}.tmp"),  # whole, or not there
           os.path.join(folder, f"started_{me}.json"))
if behaviour == "fail" and me == 1:
  deadline = time.monotonic() + 30
  while not os.path.exists(os.path.join(folder, "started_0.json")):  # both started
    assert time.monotonic() < deadline
    time.sleep(0.01)
  print("process 1: something went wrong", file=sys.stderr)
  sys.exit(3)
time.sleep(120)
'''


@pytest.fixture
def stand_in(tmp_path):
  path = tmp_path / "stand_in.py"
  path.write_text(STAND_IN)
  return path


def _started(folder: pathlib.Path, i: int) -> dict:
  with open(folder / f"started_{i}.json") as f:
    return json.load(f)


def test_a_failing_process_stops_the_others_and_its_status_and_stderr_come_back(
    tmp_path, stand_in):
  started = time.monotonic()
  status, stdout, stderr, _, survivors = run_launcher(
      ["-n", "2", "--devices-per-process", "3", str(stand_in), str(tmp_path), "fail",
       "--tag", "p{process_id}"])
  assert time.monotonic() - started < 30  # not process 0's 120 s sleep
  assert status == 3, stderr
  assert "--- process 1 stderr ---\nprocess 1: something went wrong" in stderr
  assert "launch_local: process 1 exited with status 3" in stderr
  assert "killed process(es) [0]" in stderr
  assert not survivors
  for i in range(2):
    info = _started(tmp_path, i)
    port = info["argv"][info["argv"].index("--coordinator") + 1]
    assert info["argv"] == [str(tmp_path), "fail", "--tag", f"p{i}", "--num-processes", "2",
                            "--process-id", str(i), "--coordinator", port]
    assert port.startswith("localhost:") and 0 < int(port.split(":")[1]) < 65536
    # The launcher's device count replaces conftest's 8.
    assert info["xla_flags"].split() == ["--xla_force_host_platform_device_count=3"]
    assert info["platforms"] == "cpu"


def test_every_process_is_killed_at_the_timeout(tmp_path, stand_in):
  started = time.monotonic()
  status, _, stderr, _, survivors = run_launcher(
      ["-n", "2", "--timeout", "1", str(stand_in), str(tmp_path), "sleep"])
  assert time.monotonic() - started < 30
  assert status == 124, stderr
  assert "launch_local: timed out after 1 s; killed every process" in stderr
  assert not survivors


def _running(pid: int) -> bool:
  """Whether `pid` runs (a zombie does not: it waits for a parent to reap it)."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[0] != "Z"
  except FileNotFoundError:
    return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_the_processes_die_with_the_launcher(tmp_path, stand_in):
  """SIGKILL leaves the launcher no time to clean up: the kernel kills its processes."""
  proc = subprocess.Popen(
      [sys.executable, str(LAUNCHER), "-n", "2", str(stand_in), str(tmp_path), "sleep"],
      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_examples.subprocess_env(),
      start_new_session=True)
  try:
    deadline = time.monotonic() + 30
    while not all((tmp_path / f"started_{i}.json").exists() for i in range(2)):
      assert time.monotonic() < deadline and proc.poll() is None
      time.sleep(0.01)
    pids = [_started(tmp_path, i)["pid"] for i in range(2)]
    os.kill(proc.pid, signal.SIGKILL)  # the launcher only, not its group
    proc.wait()
    deadline = time.monotonic() + 10
    while any(_running(pid) for pid in pids):
      assert time.monotonic() < deadline, "a process outlived its launcher"
      time.sleep(0.05)
  finally:
    try:
      os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
      pass
    proc.wait()
