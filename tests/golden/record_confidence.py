"""Records torch_ref's confidence masks and MLKD losses into confidence.npz.

Run from the repository root (needs torch): python tests/golden/record_confidence.py
The golden tests (tests/percentile/test_confidence_masks_golden.py,
tests/distill/test_distill_golden.py) replay them without torch.
"""

import pathlib

import numpy as np
import torch

import torch_ref

CASES = [(1, 5, 50.0), (4, 5, 50.0), (7, 10, 50.0), (64, 100, 25.0), (257, 10, 90.0)]
TEMPERATURE = 4.0


def main():
  out = {}
  rng = np.random.default_rng(2024)
  for i, (batch, classes, q) in enumerate(CASES):
    views = (rng.normal(size=(4, batch, classes)) * 3).astype(np.float32)
    out[f"{i}/views"] = views
    out[f"{i}/q"] = np.float64(q)
    for keep in ("low", "high"):
      m = torch_ref.confidence_masks(torch.from_numpy(views[2]), q=q, keep=keep)
      out[f"{i}/probs"] = m.probs.numpy()
      for name in ("confidence", "pseudo_labels", "mask",
                   "class_confidence", "class_mask"):
        out[f"{i}/{keep}/{name}"] = getattr(m, name).numpy()
      out[f"{i}/{keep}/threshold"] = np.float32(m.threshold)
      out[f"{i}/{keep}/class_threshold"] = np.float32(m.class_threshold)
    for mode in ("faithful", "masked"):
      sw, ss = (torch.tensor(v, requires_grad=True) for v in views[:2])
      losses = torch_ref.mlkd_loss(sw, ss, *map(torch.from_numpy, views[2:]),
                                   temperature=TEMPERATURE, mode=mode)
      sum(losses).backward()
      out[f"{i}/{mode}/losses"] = np.stack([l.detach().numpy() for l in losses])
      out[f"{i}/{mode}/grad_weak"] = sw.grad.numpy()
      out[f"{i}/{mode}/grad_strong"] = ss.grad.numpy()
  path = pathlib.Path(__file__).with_name("confidence.npz")
  np.savez_compressed(path, **out)
  print(f"wrote {path} ({path.stat().st_size} bytes, torch {torch.__version__})")


if __name__ == "__main__":
  main()
