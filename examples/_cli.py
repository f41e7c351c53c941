"""The examples' shared command line: flags, their checks, the output folder, progress.

Each example (`semi_supervised.py`, `segmentation.py`) keeps its settings in a frozen dataclass
whose fields (made by `flag`) are its flags, with their defaults and help. Its `resolved()` method
applies the `--quick` preset and the derived defaults and validates every field with `Checks`,
which names a mistake as the flag (`--eval-every`) on the command line and as the field
(`eval_every`) in Python. `Command` runs an example's `train(settings)` from its command line:
every flag and `--out` are checked before any work starts, and a bad one exits with argparse's
error (status 2) naming it.

An example whose settings also subclass `Cluster` runs as one of N JAX processes (one per host,
or per GPU): `Checks.cluster` checks those flags and joins the processes with
`jax.distributed.initialize`; only process 0 makes `--out` and reports (`Command.main_process`).
"""

import argparse
import dataclasses
import json
import math
import numbers
import os
import sys
import types
import typing
from typing import Any, Callable, NamedTuple

import tqdm

# Counts (steps, seeds, images, points...) must fit an int32: JAX folds steps into keys and
# indexes with int32.
INT32_MAX = 2**31 - 1


# --------------------------------------------------------------------------
# Flags.


def flag(default, help: str, **options) -> Any:
  """A settings field that is a flag too: `--<field-name>`, with this `default` and `help`;
  `options` (`choices`, `metavar`) go to `add_argument`."""
  return dataclasses.field(default=default, metadata=dict(help=help, **options))


@dataclasses.dataclass(frozen=True)
class Training:
  """The flags both examples take (checked by `Checks.training`). An example's settings
  subclass this and redeclare a field to change its default."""

  seeds: int = flag(3, "number of seeds (0, 1, ...), each a run of every method or loss")
  steps: int = flag(300, "training steps")
  eval_every: int = flag(100, "steps between evaluations; divides --steps")
  batch_size: int = flag(8, "images per step")
  learning_rate: float = flag(1e-3, "AdamW's peak learning rate, in (0, 1]")
  weight_decay: float = flag(1e-4, "AdamW's weight decay, in [0, 1]")


@dataclasses.dataclass(frozen=True)
class Cluster:
  """The flags that make a run one of N JAX processes (checked, and the processes joined, by
  `Checks.cluster`)."""

  num_processes: int = flag(
      1, "processes of the run (one per host, or per GPU); with N > 1 they join through "
      "jax.distributed and every batch is split over the devices of all N; "
      "examples/launch_local.py starts N on this machine")
  process_id: int = flag(
      0, "this process's id, in [0, --num-processes); process 0 prints and writes the results")
  coordinator: str | None = flag(
      None, "HOST:PORT where process 0 listens for the others; needed with --num-processes > 1",
      metavar="HOST:PORT")
  distributed: str | None = flag(
      None, "'auto': join the processes that a launcher describes (srun under SLURM, mpirun "
      "under Open MPI, a TPU pod slice): jax.distributed.initialize() without arguments, "
      "instead of --num-processes, --process-id and --coordinator", choices=("auto",))


def make_parser(settings_type, doc: str, name: str, files: str) -> argparse.ArgumentParser:
  """A flag for each field of the dataclass `settings_type` (made by `flag`), and `--out`
  (default `results/<name>`, the directory for `files`); described by the first paragraph of
  the example's `doc`.

  A field's flag takes its type from the annotation: `bool` is a switch; `int`, `float`,
  `str` (or the type `| None`) one value; `tuple[str, ...]` one or more.
  """
  parser = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  cluster = {field.name for field in dataclasses.fields(Cluster)}
  # `Cluster`'s flags last, in --help too.
  for field in sorted(dataclasses.fields(settings_type), key=lambda f: f.name in cluster):
    options = dict(field.metadata, default=field.default)
    kind = field.type
    if isinstance(kind, types.UnionType):  # `T | None`: T.
      kind = next(t for t in typing.get_args(kind) if t is not types.NoneType)
    if kind is bool:
      options["action"] = "store_true"
    elif typing.get_origin(kind) is tuple:
      options.update(nargs="+", type=typing.get_args(kind)[0])
    else:
      options["type"] = kind
    parser.add_argument("--" + field.name.replace("_", "-"), **options)
  parser.add_argument("--out", default=os.path.join("results", name),
                      help=f"directory for {files}")
  return parser


# --------------------------------------------------------------------------
# Checks.


class Checks:
  """Validates one settings value; each mistake raises a ValueError (a TypeError for a value of
  the wrong type) that names the setting as a flag (`as_flags`) or as a field.

  With `preset` (the `--quick` preset) and `settings.quick`, `self.settings` is `settings` with
  the preset's fields replaced.
  """

  def __init__(self, settings, *, as_flags: bool, preset: dict[str, Any] | None = None):
    if preset and settings.quick:
      settings = dataclasses.replace(settings, **preset)
    self.settings = settings
    self.as_flags = as_flags

  def name(self, field: str) -> str:
    return "--" + field.replace("_", "-") if self.as_flags else field

  def integer(self, field: str, low: int = 1, high: int = INT32_MAX, why: str = "") -> int:
    """The field, an int in `[low, high]`; `why` explains the range."""
    value = getattr(self.settings, field)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
      raise TypeError(f"{self.name(field)} must be an int, got {value!r}.")
    if not low <= value <= high:
      raise ValueError(f"{self.name(field)} must be an integer in [{low}, {high}]"
                       f"{f' ({why})' if why else ''}, got {value}.")
    return int(value)

  def number(self, field: str, low: float, high: float, *, open_low: bool = False,
             open_high: bool = False) -> float:
    """The field, a finite real number in the interval from `low` to `high` (either end open)."""
    value = getattr(self.settings, field)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
      raise TypeError(f"{self.name(field)} must be a number, got {value!r}.")
    inside = (math.isfinite(value) and (low < value if open_low else low <= value)
              and (value < high if open_high else value <= high))
    if not inside:
      interval = f"{'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"
      raise ValueError(f"{self.name(field)} must be a finite number in {interval}, got "
                       f"{value}.")
    return float(value)

  def weight(self, field: str) -> float:
    """A loss weight: finite, >= 0."""
    return self.number(field, 0.0, math.inf, open_high=True)

  def divides(self, field: str, multiple: str) -> None:
    """`field` divides `multiple`."""
    a, b = getattr(self.settings, field), getattr(self.settings, multiple)
    if b % a:
      raise ValueError(f"{self.name(multiple)} ({b}) must be a multiple of {self.name(field)} "
                       f"({a}).")

  def choices(self, field: str, allowed) -> tuple:
    """The field, a non-empty sequence of the `allowed` strings, repeats dropped, as a tuple."""
    value = getattr(self.settings, field)
    if isinstance(value, str) or not value:
      raise ValueError(f"{self.name(field)} must be a non-empty list of {', '.join(allowed)}; "
                       f"got {value!r}.")
    unknown = [v for v in value if v not in allowed]
    if unknown:
      raise ValueError(f"{self.name(field)} must be of {', '.join(allowed)}; got {unknown}.")
    return tuple(dict.fromkeys(value))  # Drop repeats, keep order.

  def training(self) -> None:
    """The fields of `Training`."""
    for field in ("seeds", "steps", "eval_every", "batch_size"):
      self.integer(field)
    self.divides("eval_every", "steps")
    self.number("learning_rate", 0.0, 1.0, open_low=True)
    self.number("weight_decay", 0.0, 1.0)

  def devices(self, available: int, *, divide: tuple[str, ...] = (), processes: int = 1) -> int:
    """The number of devices to use per process (0: all `available`); `devices * processes`
    divides the `divide` fields."""
    value = self.integer("devices", 0, available, why="0: all the local devices")
    devices = value or available
    for field in divide:
      if getattr(self.settings, field) % (devices * processes):
        by = (f"{self.name('devices')} ({devices})" if processes == 1 else
              f"{self.name('devices')} x the processes ({devices} x {processes})")
        raise ValueError(f"{self.name(field)} ({getattr(self.settings, field)}) must be "
                         f"divisible by {by}.")
    return devices

  def cluster(self) -> None:
    """The fields of `Cluster`; then, for a run of several processes, joins them (once per
    process: `jax.distributed.initialize`, which must come before any other JAX call).

    Every other field should be checked first: joining waits for the other processes.
    """
    s = self.settings
    processes = self.integer("num_processes")
    self.integer("process_id", 0, processes - 1, why=f"{self.name('num_processes')} is "
                 f"{processes}")
    if s.distributed is not None:
      if s.distributed != "auto":
        raise ValueError(f"{self.name('distributed')} must be 'auto' or None, got "
                         f"{s.distributed!r}.")
      if processes != 1 or s.process_id != 0 or s.coordinator is not None:
        raise ValueError(f"{self.name('distributed')} auto reads the processes from the "
                         f"launcher: drop {self.name('num_processes')}, "
                         f"{self.name('process_id')} and {self.name('coordinator')}.")
    elif s.coordinator is not None:
      host, _, port = str(s.coordinator).rpartition(":")
      if not isinstance(s.coordinator, str) or not host or not (
          port.isdigit() and 1 <= int(port) <= 65535):
        raise ValueError(f"{self.name('coordinator')} must be HOST:PORT with a port in "
                         f"[1, 65535], got {s.coordinator!r}.")
      if processes == 1:
        raise ValueError(f"{self.name('coordinator')} is for {self.name('num_processes')} "
                         "> 1.")
    elif processes > 1:
      raise ValueError(f"{self.name('num_processes')} {processes} needs "
                       f"{self.name('coordinator')} (process 0's HOST:PORT).")
    if processes == 1 and s.distributed is None:
      return
    import jax  # pylint: disable=g-import-not-at-top
    if jax.distributed.is_initialized():  # Joined already (`resolved()` runs twice).
      if s.distributed is None and (jax.process_count(), jax.process_index()) != (
          processes, s.process_id):
        raise ValueError(f"this process is process {jax.process_index()} of "
                         f"{jax.process_count()} already, not {self.name('process_id')} "
                         f"{s.process_id} of {processes}.")
      return
    if s.distributed == "auto":
      jax.distributed.initialize()
    else:  # Only the flags: no SLURM or MPI variable steers the processes.
      jax.distributed.initialize(coordinator_address=s.coordinator, num_processes=processes,
                                 process_id=s.process_id, cluster_detection_method="deactivate")


def check_out(out: str) -> None:
  """Raises a ValueError naming `--out` unless `out` is, or can be made, a directory."""
  if os.path.exists(out) and not os.path.isdir(out):
    raise ValueError(f"--out {out!r} exists and is not a directory.")
  parent = os.path.abspath(out)
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    raise ValueError(f"--out {out!r} cannot be created: {parent!r} is a file.")
  if not os.access(parent, os.W_OK | os.X_OK):
    raise ValueError(f"--out {out!r} cannot be created: {parent!r} is not writable.")


# --------------------------------------------------------------------------
# Running.


def parse(parser: argparse.ArgumentParser, argv, settings_type) -> tuple[Any, str]:
  """`(settings, out)` from `argv`, resolved and checked; exits with status 2 if one is bad."""
  args = vars(parser.parse_args(argv))
  out = args.pop("out")
  try:
    settings = settings_type(**args).resolved(as_flags=True)
    check_out(out)
  except ValueError as e:
    parser.error(str(e))
  return settings, out


class Command(NamedTuple):
  """An example's command line: the flags of its settings (`settings_type`, a dataclass of
  `flag` fields with a `resolved` method; its `doc`, its `name`, the `files` it writes) and
  `--out`, then `report(train(settings), out)`."""

  settings_type: type
  doc: str
  name: str
  files: str
  train: Callable[[Any], dict[str, Any]]
  report: Callable[[dict[str, Any], str], None]
  # Whether this process makes `--out` and reports: process 0 of a multi-process run.
  main_process: Callable[[], bool] = lambda: True

  def build_parser(self) -> argparse.ArgumentParser:
    return make_parser(self.settings_type, self.doc, self.name, self.files)

  def parse_args(self, argv=None) -> tuple[Any, str]:
    """`(settings, out)`, resolved and checked; exits with status 2 if one is bad."""
    return parse(self.build_parser(), argv, self.settings_type)

  def main(self, argv=None) -> int:
    """Checks every flag and `--out`, makes `--out`, trains, reports; a process other than the
    main one sends its stdout to /dev/null and neither makes `--out` nor reports."""
    settings, out = self.parse_args(argv)
    main_process = self.main_process()
    if main_process:
      try:
        os.makedirs(out, exist_ok=True)
      except OSError as e:
        self.build_parser().error(f"--out {out!r} cannot be created: {e.strerror}.")
    else:  # Its output (gloo's too) would repeat process 0's; its errors still show.
      sys.stdout.flush()
      os.dup2(os.open(os.devnull, os.O_WRONLY), sys.__stdout__.fileno())
    results = self.train(settings)
    if main_process:
      self.report(results, out)
    return 0


def progress(total: int, desc: str | None = None, **options) -> tqdm.tqdm:
  """A progress bar of steps on stdout."""
  return tqdm.tqdm(total=total, desc=desc, unit="step", file=sys.stdout, dynamic_ncols=True,
                   **options)


def write_json(out: str, results: dict[str, Any]) -> str:
  """Writes `train`'s `results`, `out` added to its `config`, to `out/results.json`; returns
  the path."""
  path = os.path.join(out, "results.json")
  with open(path, "w") as f:
    json.dump({**results, "config": {**results["config"], "out": out}}, f, indent=2)
  return path


def pyplot():
  """matplotlib's pyplot on the Agg backend (files only, no display)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def mean_std(mean: float, std: float, scale: float = 1.0) -> str:
  """`mean ± std`, times `scale`, to one decimal."""
  return f"{scale * mean:.1f} ± {scale * std:.1f}"
