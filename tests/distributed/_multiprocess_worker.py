"""One of the two processes that tests/distributed/test_multiprocess.py starts.

Usage (the test runs it; nothing here compares anything)::

  python _multiprocess_worker.py --port PORT --process-id I \
      --inputs inputs.npz --output result_I.npz

The process joins a 2-process JAX cluster on this machine (CPU devices, gloo
collectives, 2 devices per process from `XLA_FLAGS`, set by the test), reads
the *global* batches the test wrote, feeds only its own half of each batch
(`jax.make_array_from_process_local_data`) into a `jax.shard_map` over all 4
global devices, and writes what it got: its process-local rows of every
batch-sharded output and its copy of every replicated one (thresholds, state,
`num_masks`). The test compares them with one process's results on the
concatenated batch.
"""

import argparse
import json
import os
import sys
import threading
import time
import traceback

import numpy as np

NUM_PROCESSES = 2
# The fields of `ConfidenceMasks` with a batch axis (the others are replicated).
BATCH_FIELDS = ("probs", "confidence", "pseudo_labels", "mask")


def threshold_update(t, state, probs, **kw):
  """`t.update` in today's argument order: the one line to change if it changes."""
  return t.update(probs, state, **kw)


def _exit_with_parent():
  """Exits if the test process dies (it kills the workers; this covers SIGKILL)."""
  parent = os.getppid()

  def watch():
    while os.getppid() == parent:
      time.sleep(1.0)
    os._exit(2)

  threading.Thread(target=watch, daemon=True).start()


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--port", type=int, required=True)
  parser.add_argument("--process-id", type=int, required=True)
  parser.add_argument("--inputs", required=True)
  parser.add_argument("--output", required=True)
  args = parser.parse_args()
  started = time.monotonic()
  _exit_with_parent()

  def log(what):  # to stdout_I.txt: where the time went
    print(f"process {args.process_id}: {what} done at"
          f" {time.monotonic() - started:.1f} s ({time.process_time():.1f} s"
          " CPU)", flush=True)

  import jax  # after argparse: `--help` needs no JAX
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(
      coordinator_address=f"localhost:{args.port}",
      coordinator_bind_address=f"localhost:{args.port}",
      num_processes=NUM_PROCESSES, process_id=args.process_id,
      cluster_detection_method="deactivate",  # not SLURM's or MPI's job
      initialization_timeout=60)
  log("import jax, initialize")

  import jax.numpy as jnp
  from jax.sharding import Mesh
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P

  import jaxmask

  me = jax.process_index()
  # The mesh orders devices by process, so process p holds global rows
  # [p * n / 2, (p + 1) * n / 2) of every batch: the concatenation of the
  # processes' local batches is the global batch.
  devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
  mesh = Mesh(np.array(devices), ("data",))
  per_process = len(jax.local_devices())
  if len(devices) != NUM_PROCESSES * per_process or [
      d.process_index for d in devices[me * per_process:(me + 1) * per_process]
  ] != [me] * per_process:
    raise RuntimeError(f"unexpected device layout: {devices}")
  inputs = np.load(args.inputs, allow_pickle=False)
  out = {}

  def local_part(x, axis=0):
    """This process's half of a global batch (numpy, from the inputs file)."""
    n = x.shape[axis] // NUM_PROCESSES
    return np.take(x, np.arange(me * n, (me + 1) * n), axis=axis)

  def feed(x, axis=0):
    """The global array of which this process holds (and passes) its half."""
    spec = P(*([None] * axis + ["data"]))
    return jax.make_array_from_process_local_data(
        NamedSharding(mesh, spec), local_part(x, axis), x.shape)

  def local_rows(x):
    """This process's rows of a batch-sharded global output."""
    shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start)
    return np.concatenate([np.asarray(s.data) for s in shards])

  def replicated(tree):
    return jax.device_put(tree, NamedSharding(mesh, P()))

  # confidence_masks and percentile_mask.
  for name in inputs["masks/names"]:
    q, keep = float(inputs[f"masks/{name}/q"]), str(inputs[f"masks/{name}/keep"])
    fn = jax.jit(jax.shard_map(
        lambda x, q=q, keep=keep: jaxmask.confidence_masks(
            x, q=q, keep=keep, axis_name="data"),
        mesh=mesh, in_specs=P("data"),
        out_specs=jaxmask.ConfidenceMasks(
            *[P("data") if f in BATCH_FIELDS else P()
              for f in jaxmask.ConfidenceMasks._fields]),
        # The thresholds come from an all_gather, which shard_map types as
        # varying: its replication check cannot see that they are replicated.
        check_vma=False))
    got = fn(feed(inputs[f"masks/{name}/logits"]))
    for field, value in got._asdict().items():
      out[f"masks/{name}/{field}"] = (
          local_rows(value) if field in BATCH_FIELDS else np.asarray(value))

  for name in inputs["pmask/names"]:
    q, keep = float(inputs[f"pmask/{name}/q"]), str(inputs[f"pmask/{name}/keep"])
    fn = jax.jit(jax.shard_map(
        lambda v, q=q, keep=keep: jaxmask.percentile_mask(
            v, q=q, keep=keep, axis_name="data"),
        mesh=mesh, in_specs=P("data"), out_specs=(P("data"), P()),
        check_vma=False))  # as above
    mask, threshold = fn(feed(inputs[f"pmask/{name}/values"]))
    out[f"pmask/{name}/mask"] = local_rows(mask)
    out[f"pmask/{name}/threshold"] = np.asarray(threshold)

  log("masks")
  # Every adaptive threshold over the same batches; state replicated.
  configs = json.loads(str(inputs["thresholds/config"]))
  probs_steps = inputs["thresholds/probs"]
  index_steps = inputs["thresholds/indices"]
  for name, (factory, options) in configs.items():
    t = getattr(jaxmask, factory)(**options)
    state = replicated(t.init())
    state_spec = jax.tree.map(lambda _: P(), state)
    update = jax.jit(jax.shard_map(
        lambda s, p, i, t=t: threshold_update(t, s, p, indices=i,
                                              axis_name="data"),
        mesh=mesh, in_specs=(state_spec, P("data"), P("data")),
        out_specs=(jaxmask.ThresholdOutput(P("data"), P("data")), state_spec)))
    masks, labels, states = [], [], []
    for probs, indices in zip(probs_steps, index_steps):
      got, state = update(state, feed(probs), feed(indices))
      masks.append(local_rows(got.mask))
      labels.append(local_rows(got.pseudo_labels))
      states.append([np.asarray(leaf) for leaf in state])
    out[f"thresholds/{name}/mask"] = np.stack(masks)
    out[f"thresholds/{name}/pseudo_labels"] = np.stack(labels)
    for k, field in enumerate(state._fields):
      out[f"thresholds/{name}/state/{field}"] = np.stack([s[k] for s in states])

  log("thresholds")
  # mask2former_loss: per-device losses, num_masks from the global count.
  options = json.loads(str(inputs["m2f/options"]))
  seed = options.pop("seed")

  def criterion(cl, ml, labels, masks, valid):
    loss = jaxmask.mask2former_loss(
        jax.random.key(seed), cl, ml, labels, masks, valid, axis_name="data",
        **options)
    num_masks = jaxmask.num_masks_normalizer(jnp.sum(valid), axis_name="data")
    return jax.tree.map(lambda x: x[None], (loss, num_masks))

  batch = (P(None, "data"), P(None, "data"), P("data"), P("data"), P("data"))
  fn = jax.jit(jax.shard_map(criterion, mesh=mesh, in_specs=batch,
                             out_specs=P("data"), check_vma=False))
  for name in inputs["m2f/names"]:
    args_ = [feed(inputs[f"m2f/{name}/{k}"], spec.index("data"))
             for k, spec in zip(("class_logits", "mask_logits", "labels",
                                 "masks", "valid"), batch)]
    loss, num_masks = fn(*args_)
    out[f"m2f/{name}/num_masks"] = local_rows(num_masks)
    out[f"m2f/{name}/total"] = local_rows(loss.total)
    for key, value in loss.losses.items():
      out[f"m2f/{name}/losses/{key}"] = local_rows(value)

  log("mask2former_loss")
  np.savez(args.output, **out)
  jax.distributed.shutdown()


if __name__ == "__main__":
  try:
    main()
  except BaseException:
    traceback.print_exc()
    sys.stderr.flush()
    # Exit now: JAX's exit hook would wait (minutes) for the other process to
    # shut down too, and it may be blocked in a collective that needs this one.
    os._exit(1)
