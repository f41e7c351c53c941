"""Starts N JAX processes of an example on this machine, to try a multi-process run.

Each process runs `python SCRIPT ARGS... --num-processes N --process-id I --coordinator
localhost:PORT` (the flags of `examples/semi_supervised.py`) on the CPU (`JAX_PLATFORMS=cpu`),
with `--devices-per-process` simulated devices (`XLA_FLAGS=--xla_force_host_platform_device_count`,
replacing any count already there) and gloo collectives (JAX's default on CPU); process 0 listens
on a free port (or `--port`). `{process_id}` in ARGS becomes each process's id.

The processes share this terminal's stdout (the examples print only from process 0); each one's
stderr is kept and printed when it ends. If a process exits non-zero, the others are killed and
this exits with its status after printing its stderr; past `--timeout` every process is killed
and this exits with 124. Interrupted (Ctrl-C, SIGTERM), it kills them too, and on Linux a
process dies with this launcher even if it is killed outright (`PR_SET_PDEATHSIG`).

Usage (from the repository root, with jaxmask importable):
  python examples/launch_local.py -n 2 --devices-per-process 2 \\
      examples/semi_supervised.py --quick --method flexmatch --devices 0

That run splits every batch over 2 x 2 devices and trains as one process does on 4
(`--devices 4` with `XLA_FLAGS=--xla_force_host_platform_device_count=4`), up to float rounding.
On several hosts, start one process per host yourself (or under srun or mpirun with
`--distributed auto`): see the example's docstring.
"""

import argparse
import ctypes
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

TIMEOUT_STATUS = 124  # as timeout(1)
PR_SET_PDEATHSIG = 1  # from <sys/prctl.h>


def free_port() -> int:
  """A TCP port that is free now (another program may take it before the coordinator does)."""
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def process_env(devices_per_process: int) -> dict[str, str]:
  """This environment, with `devices_per_process` CPU devices per process."""
  env = dict(os.environ)
  flags = re.sub(r"--xla_force_host_platform_device_count=\S*", "", env.get("XLA_FLAGS", ""))
  env["XLA_FLAGS"] = " ".join(
      [*flags.split(), f"--xla_force_host_platform_device_count={devices_per_process}"])
  env["JAX_PLATFORMS"] = "cpu"
  return env


def _die_with_parent(parent: int):
  """For `preexec_fn`: this child gets SIGKILL when the launcher dies (Linux only)."""
  def set_death_signal():
    if sys.platform.startswith("linux"):
      ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
      if os.getppid() != parent:  # The launcher died before the prctl.
        os._exit(1)
  return set_death_signal


def _stderr_tail(path: str, chars: int = 20000) -> str:
  with open(path, errors="replace") as f:
    text = f.read()
  return text if len(text) <= chars else f"[... {len(text) - chars} characters]\n{text[-chars:]}"


def _terminate(signum, frame):
  raise SystemExit(128 + signum)  # Runs `launch`'s cleanup.


def launch(script: str, args: list[str], num_processes: int, devices_per_process: int, *,
           timeout: float | None = None, port: int | None = None) -> int:
  """Runs the processes (see the module docstring); returns the exit status for this launcher:
  0 when every process exited 0, else the first failure's status (1 for a signal), or 124 past
  `timeout` seconds. Every process is dead and reaped when this returns or raises."""
  coordinator = f"localhost:{free_port() if port is None else port}"
  env = process_env(devices_per_process)
  procs, stderr_paths = [], []
  started = time.monotonic()
  with tempfile.TemporaryDirectory(prefix="launch_local_") as logs:
    try:
      for i in range(num_processes):
        stderr_paths.append(os.path.join(logs, f"stderr_{i}.txt"))
        with open(stderr_paths[-1], "wb") as stderr:
          procs.append(subprocess.Popen(
              [sys.executable, script,
               *(a.replace("{process_id}", str(i)) for a in args),
               "--num-processes", str(num_processes), "--process-id", str(i),
               "--coordinator", coordinator],
              stderr=stderr, env=env, preexec_fn=_die_with_parent(os.getpid())))
      while True:
        codes = [p.poll() for p in procs]
        failed = [i for i, code in enumerate(codes) if code not in (None, 0)]
        if failed or all(code == 0 for code in codes):
          break
        if timeout is not None and time.monotonic() - started > timeout:
          break
        time.sleep(0.05)
    finally:
      for p in procs:
        if p.poll() is None:
          p.kill()
        p.wait()
    for i, path in enumerate(stderr_paths):  # Their warnings, or the failures' tracebacks.
      if (not failed or i in failed) and os.path.getsize(path):
        print(f"--- process {i} stderr ---\n{_stderr_tail(path)}", file=sys.stderr, end="")
  seconds = time.monotonic() - started
  if failed:
    i = failed[0]
    code = codes[i]
    what = (f"exited with status {code}" if code > 0 else
            f"was killed by {signal.Signals(-code).name}")
    killed = [j for j, c in enumerate(codes) if c is None]
    print(f"launch_local: process {i} {what} after {seconds:.1f} s"
          + (f"; killed process(es) {killed}" if killed else ""), file=sys.stderr)
    return code if code > 0 else 1
  if any(code is None for code in codes):
    print(f"launch_local: timed out after {timeout:g} s; killed every process", file=sys.stderr)
    return TIMEOUT_STATUS
  return 0


def positive(kind):
  def parse(text):
    value = kind(text)
    if not value > 0:
      raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value
  return parse


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      description=__doc__.split("\n\n")[0],
      epilog="Everything after SCRIPT goes to it.",
      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  parser.add_argument("-n", "--num-processes", type=positive(int), default=2,
                      help="processes to start")
  parser.add_argument("--devices-per-process", type=positive(int), default=2,
                      help="simulated CPU devices of each process")
  parser.add_argument("--timeout", type=positive(float), default=None,
                      help="seconds after which every process is killed (None: no limit)")
  parser.add_argument("--port", type=int, default=None,
                      help="process 0's coordinator port (None: a free one)")
  parser.add_argument("script", help="the example, e.g. examples/semi_supervised.py")
  parser.add_argument("args", nargs=argparse.REMAINDER, help="its flags")
  args = parser.parse_args(argv)
  if args.port is not None and not 1 <= args.port <= 65535:
    parser.error(f"--port must be in [1, 65535], got {args.port}")
  signal.signal(signal.SIGTERM, _terminate)
  try:
    return launch(args.script, args.args, args.num_processes, args.devices_per_process,
                  timeout=args.timeout, port=args.port)
  except KeyboardInterrupt:  # The processes are gone.
    return 128 + signal.SIGINT


if __name__ == "__main__":
  sys.exit(main())
