"""Both examples check every flag before any work: a bad one exits with argparse's error.

Parse only, nothing trains. Every numeric flag of each parser (found by walking its actions,
so that a new flag without cases fails `test_every_numeric_flag_has_bad_cases`) gets generic
bad values (not a number, infinite, negative, beyond an int32) and cases of its own in `BAD`
(zero where invalid, out of its range, inconsistent with another flag).
"""

import math

import pytest

import _examples

for _module in ("flax", "optax", "sklearn", "matplotlib", "tqdm"):
  pytest.importorskip(_module)

jax = pytest.importorskip("jax")

EXAMPLES = ("semi_supervised", "segmentation")
DEVICES = jax.local_device_count()  # conftest's 8 simulated devices.
INT32_MAX = 2**31 - 1

# Per example: (argv, what stderr must say). The first flag of argv is the flag under test.
BAD = {
    "semi_supervised": [
        (["--labels-per-class", "0"], "--labels-per-class must be an integer in [1, "),
        (["--labels-per-class", "1000"], "at least one must stay unlabelled), got 1000"),
        (["--seeds", "0"], "--seeds must be an integer in [1, "),
        (["--steps", "0"], "--steps must be an integer in [1, "),
        (["--steps", "250", "--eval-every", "100"],
         "--steps (250) must be a multiple of --eval-every (100)"),
        (["--eval-every", "0"], "--eval-every must be an integer in [1, "),
        (["--eval-every", "7"], "--steps (3000) must be a multiple of --eval-every (7)"),
        (["--batch-size", "0"], "--batch-size must be an integer in [1, "),
        (["--batch-size", "12", "--devices", "8"],
         "--batch-size (12) must be divisible by --devices (8)"),
        (["--unlabelled-batch-size", "0"], "--unlabelled-batch-size must be an integer in [1, "),
        (["--unlabelled-batch-size", "60", "--devices", "8"],
         "--unlabelled-batch-size (60) must be divisible by --devices (8)"),
        (["--learning-rate", "0"], "--learning-rate must be a finite number in (0, 1]"),
        (["--learning-rate", "1.5"], "--learning-rate must be a finite number in (0, 1]"),
        (["--weight-decay", "1.5"], "--weight-decay must be a finite number in [0, 1]"),
        (["--ema-decay", "1.0"], "--ema-decay must be a finite number in [0, 1)"),
        (["--unlabelled-weight", "-0.001"],
         "--unlabelled-weight must be a finite number in [0, inf)"),
        (["--q", "100.5"], "--q must be a finite number in [0, 100]"),
        (["--p-cutoff", "0"], "--p-cutoff must be a finite number in (0, 1]"),
        (["--p-cutoff", "1.5"], "--p-cutoff must be a finite number in (0, 1]"),
        (["--threshold-momentum", "1.01"],
         "--threshold-momentum must be a finite number in [0, 1]"),
        (["--fairness-weight", "-0.01"], "--fairness-weight must be a finite number in [0, inf)"),
        (["--devices", str(DEVICES + 1)],
         f"--devices must be an integer in [0, {DEVICES}] (0: all the local devices)"),
        (["--devices", "3"], "--batch-size (32) must be divisible by --devices (3)"),
        (["--num-processes", "0"], "--num-processes must be an integer in [1, "),
        (["--num-processes", "2"], "--num-processes 2 needs --coordinator (process 0's HOST:PORT)"),
        (["--process-id", "1"],
         "--process-id must be an integer in [0, 0] (--num-processes is 1), got 1"),
        (["--process-id", "2", "--num-processes", "2", "--coordinator", "localhost:1234"],
         "--process-id must be an integer in [0, 1] (--num-processes is 2), got 2"),
        (["--coordinator", "localhost", "--num-processes", "2"],
         "--coordinator must be HOST:PORT with a port in [1, 65535], got 'localhost'"),
        (["--coordinator", "localhost:65536", "--num-processes", "2"],
         "--coordinator must be HOST:PORT with a port in [1, 65535], got 'localhost:65536'"),
        (["--coordinator", ":1234", "--num-processes", "2"],
         "--coordinator must be HOST:PORT with a port in [1, 65535], got ':1234'"),
        (["--coordinator", "localhost:1234"], "--coordinator is for --num-processes > 1"),
        (["--distributed", "auto", "--num-processes", "2"],
         "--distributed auto reads the processes from the launcher: drop --num-processes, "
         "--process-id and --coordinator"),
        (["--distributed", "slurm"], "invalid choice: 'slurm'"),
        (["--method", "mixmatch"], "invalid choice: 'mixmatch'"),
        (["--method"], "expected at least one argument"),
        (["--teacher", "peer"], "invalid choice: 'peer'"),
        (["--p-cutoff", "high"], "invalid float value: 'high'"),
        (["--unknown-flag"], "unrecognized arguments"),
    ],
    "segmentation": [
        (["--seeds", "0"], "--seeds must be an integer in [1, "),
        (["--steps", "0"], "--steps must be an integer in [1, "),
        (["--steps", "250", "--eval-every", "100"],
         "--steps (250) must be a multiple of --eval-every (100)"),
        (["--eval-every", "0"], "--eval-every must be an integer in [1, "),
        (["--eval-every", "7"], "--steps (300) must be a multiple of --eval-every (7)"),
        (["--batch-size", "0"], "--batch-size must be an integer in [1, "),
        (["--learning-rate", "0"], "--learning-rate must be a finite number in (0, 1]"),
        (["--learning-rate", "2"], "--learning-rate must be a finite number in (0, 1]"),
        (["--weight-decay", "2"], "--weight-decay must be a finite number in [0, 1]"),
        (["--image-size", "100"], "--image-size must be a multiple of 16"),
        (["--image-size", "16"], "--image-size must be an integer in [32, 1024]"),
        (["--image-size", "1040"], "--image-size must be an integer in [32, 1024]"),
        (["--max-instances", "0"], "--max-instances must be an integer in [1, 16]"),
        (["--max-instances", "17", "--queries", "20"],
         "--max-instances must be an integer in [1, 16]"),
        (["--num-points", "0"], "--num-points must be an integer in [1, 715827882]"),
        (["--num-points", "715827883"], "--num-points must be an integer in [1, 715827882]"),
        (["--matcher-points", "0"], "--matcher-points must be an integer in [1, "),
        (["--layers", "0"], "--layers must be an integer in [1, "),
        (["--queries", "3"], "--queries (3) must be at least --max-instances (4)"),
        (["--queries", "0"], "--queries must be an integer in [1, "),
        (["--dim", "30"], "--dim must be a multiple of 8"),
        (["--dim", "0"], "--dim must be an integer in [1, "),
        (["--class-weight", "-1"], "--class-weight must be a finite number in [0, inf)"),
        (["--pretrain-steps", "-1"], "--pretrain-steps must be an integer in [0, "),
        (["--train-images", "0"], "--train-images must be an integer in [1, "),
        (["--test-images", "30"], "--test-images must be a multiple of 20"),
        (["--test-images", "0"], "--test-images must be an integer in [20, "),
        (["--loss", "dice"], "invalid choice: 'dice'"),
        (["--unknown-flag"], "unrecognized arguments"),
    ],
}


def _numeric_flags(name: str) -> dict[str, type]:
  """The parser's flags that take a number, and its type (int or float)."""
  parser = _examples.load(name).build_parser()
  return {action.option_strings[-1]: action.type for action in parser._actions
          if action.type in (int, float)}


def _generic_cases():
  for name in EXAMPLES:
    for flag, kind in _numeric_flags(name).items():
      values = (["nan", "1.5", "-1", str(INT32_MAX + 1)] if kind is int else
                ["nan", "inf", "-inf", "-1"])
      for value in values:
        yield pytest.param(name, flag, kind, value, id=f"{name}{flag}={value}")


def _refused(name: str, argv, capsys) -> str:
  """stderr of the example's `parse_args(argv)`, which must exit with status 2."""
  with pytest.raises(SystemExit) as exit_info:
    _examples.load(name).parse_args(argv)
  assert exit_info.value.code == 2, argv
  return capsys.readouterr().err


@pytest.mark.parametrize("name", EXAMPLES)
def test_every_numeric_flag_has_bad_cases(name):
  covered = {argv[0] for argv, _ in BAD[name]}
  missing = set(_numeric_flags(name)) - covered
  assert not missing, f"{name}: numeric flags without a case in BAD: {sorted(missing)}"


@pytest.mark.parametrize("name, flag, kind, value", list(_generic_cases()))
def test_numeric_flags_refuse_generic_bad_values(name, flag, kind, value, capsys):
  err = _refused(name, [f"{flag}={value}"], capsys)  # `=`: argparse takes -inf for a flag.
  assert flag in err, err
  if kind is int and value in ("nan", "1.5"):
    assert f"invalid int value: '{value}'" in err, err
  else:
    assert f"{flag} must be a" in err, err


@pytest.mark.parametrize("name, argv, message", [
    pytest.param(name, argv, message, id=f"{name}:{' '.join(argv)}")
    for name, cases in BAD.items() for argv, message in cases])
def test_bad_flags_exit_with_a_message(name, argv, message, capsys):
  assert message in _refused(name, argv, capsys)


@pytest.mark.parametrize("name", EXAMPLES)
def test_out_must_be_a_directory_that_can_be_made(name, tmp_path, capsys):
  a_file = tmp_path / "file"
  a_file.write_text("")
  err = _refused(name, ["--out", str(a_file)], capsys)
  assert f"--out '{a_file}' exists and is not a directory" in err
  err = _refused(name, ["--out", str(a_file / "results")], capsys)
  assert f"--out '{a_file / 'results'}' cannot be created: '{a_file}' is a file" in err
  # A folder that can be made is accepted, and made only when the run starts.
  _, out = _examples.load(name).parse_args(["--out", str(tmp_path / "a" / "b")])
  assert out == str(tmp_path / "a" / "b") and not (tmp_path / "a").exists()


@pytest.mark.parametrize("name", EXAMPLES)
def test_main_refuses_before_any_work(name, tmp_path, capsys):
  with pytest.raises(SystemExit) as exit_info:
    _examples.load(name).main(["--learning-rate", "nan", "--out", str(tmp_path / "out")])
  assert exit_info.value.code == 2
  assert "--learning-rate must be a finite number" in capsys.readouterr().err
  assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", EXAMPLES)
def test_defaults_and_quick_pass_their_checks(name):
  example = _examples.load(name)
  defaults, out = example.parse_args([])
  assert defaults.quick is False and out == f"results/{name}"
  quick, _ = example.parse_args(["--quick", "--steps", "7"])  # --quick sets the steps.
  assert quick.quick is True and quick.seeds == 1 and quick.steps != 7
  assert quick.steps % quick.eval_every == 0
  # Resolving is idempotent: train() resolves what parse_args resolved.
  assert quick.resolved() == quick and defaults.resolved() == defaults


def test_list_flags_take_several_values():
  assert _examples.load("segmentation").parse_args(
      ["--loss", "full", "point", "full"])[0].loss == ("full", "point")
  assert _examples.load("semi_supervised").parse_args(
      ["--method", "mlkd", "fixmatch"])[0].method == ("mlkd", "fixmatch")


@pytest.mark.parametrize("name, field, value, error", [
    ("semi_supervised", "devices", DEVICES + 1, ValueError),
    ("semi_supervised", "q", math.nan, ValueError),
    ("semi_supervised", "steps", 2.5, TypeError),
    ("semi_supervised", "method", ("mixmatch",), ValueError),
    ("semi_supervised", "teacher", "peer", ValueError),
    ("semi_supervised", "num_processes", 0, ValueError),
    ("semi_supervised", "process_id", 1.0, TypeError),
    ("semi_supervised", "coordinator", 1234, ValueError),
    ("semi_supervised", "distributed", "slurm", ValueError),
    ("segmentation", "num_points", 0, ValueError),
    ("segmentation", "class_weight", math.inf, ValueError),
    ("segmentation", "layers", True, TypeError),
    ("segmentation", "loss", "point", ValueError),
])
def test_settings_name_the_bad_field(name, field, value, error):
  """From Python (`train(Settings(...))`), a mistake names the field, not the flag."""
  example = _examples.load(name)
  with pytest.raises(error, match=rf"^{field} must be"):
    example.Settings(**{field: value}).resolved()


def test_batches_split_over_the_devices_of_every_process():
  """With several processes, a batch is split over `--devices` x the processes (checked once
  they have joined; here `Checks.devices` is called with a process count)."""
  example = _examples.load("semi_supervised")
  cli = _examples.load("_cli")
  checks = cli.Checks(example.Settings(batch_size=12, devices=2), as_flags=True)
  assert checks.devices(8, divide=("batch_size",), processes=3) == 2  # 12 = 2 x 3 x 2
  with pytest.raises(ValueError, match=r"^--batch-size \(12\) must be divisible by --devices x "
                     r"the processes \(2 x 4\)\.$"):
    checks.devices(8, divide=("batch_size",), processes=4)


@pytest.mark.parametrize("fields, call", [
    ({}, None),  # one process: no cluster to join
    ({"distributed": "auto"}, {}),  # everything from the launcher's environment
    ({"num_processes": 3, "process_id": 2, "coordinator": "10.0.0.1:1234"},
     dict(coordinator_address="10.0.0.1:1234", num_processes=3, process_id=2,
          cluster_detection_method="deactivate")),
])
def test_cluster_flags_join_through_jax_distributed(fields, call, monkeypatch):
  """The cluster fields become `jax.distributed.initialize`'s arguments (recorded here, not
  run: joining would wait for the other processes); joined, nothing is joined again."""
  calls = []
  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: bool(calls))
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
  settings = _examples.load("semi_supervised").Settings(**fields)
  checks = _examples.load("_cli").Checks(settings, as_flags=False)
  checks.cluster()
  if call is not None:  # resolved() runs twice: in parse_args, then in train
    monkeypatch.setattr(jax, "process_count", lambda: settings.num_processes)
    monkeypatch.setattr(jax, "process_index", lambda: settings.process_id)
    checks.cluster()
  assert calls == ([] if call is None else [call])
