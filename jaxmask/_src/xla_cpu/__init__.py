"""XLA:CPU kernels: the same results as the plain algorithms, fast on CPU.

Each module here re-arranges one plain algorithm of `jaxmask._src` for
XLA:CPU's code generator, and says in its docstring why it exists and what it
must equal:

- `topk.py`: the set of `lax.top_k`, by a sample-bracket selection;
- `threefry.py`: `jax.random.uniform`, bit for bit, with Threefry unrolled;
- `sampler.py`: `point_sample` as two gathers of neighbour pairs per point,
  with a hand-written VJP;
- `selection.py`: uncertainty-based selection a few masks at a time, the
  candidates drawn inside the loop;
- `barrier.py`: computing a value in its own pass, apart from a gathering
  consumer.

None of them is imported by user code: the public functions choose between a
kernel and its plain algorithm in one place, `jaxmask._src.implementation`,
and every test runs over both.
"""
