"""Records golden vectors for point sampling from torch_ref.

Run from the repository root: `python tests/golden/record_point_sampling.py`.
Writes tests/golden/point_sampling.npz (a few KB), which
tests/sampling/test_sampling_golden.py and
tests/point_losses/test_point_losses_golden.py check jaxmask against
without PyTorch.
Inputs come from a seeded NumPy generator; the point_mask_losses coordinates
are drawn with jax.random from the key split that jaxmask documents
(`candidate_key, fresh_key = jax.random.split(jax.random.key(PML_SEED))`) and
stored too, so the golden test can tell a changed PRNG from a changed loss.
"""

import os

import jax
import numpy as np
import torch

import torch_ref

PML_SEED = 5


def t(x):
  return torch.from_numpy(np.array(x))


def record() -> dict[str, np.ndarray]:
  rng = np.random.default_rng(2024)
  g = {}
  # point_sample: C > 1, H != W, coordinates outside [0, 1].
  g["ps_inputs"] = (rng.normal(size=(3, 2, 7, 5)) * 3).astype(np.float32)
  g["ps_coords"] = rng.uniform(-0.1, 1.1, (3, 40, 2)).astype(np.float32)
  g["ps_out"] = torch_ref.point_sample(t(g["ps_inputs"]),
                                       t(g["ps_coords"])).numpy()
  # select_uncertain_points.
  g["sel_logits"] = (rng.normal(size=(3, 1, 12, 10)) * 3).astype(np.float32)
  g["sel_candidates"] = rng.uniform(size=(3, 60, 2)).astype(np.float32)
  g["sel_num_uncertain"] = np.int64(20)
  g["sel_out"] = torch_ref.select_uncertain_points(
      t(g["sel_logits"]), t(g["sel_candidates"]), num_uncertain=20).numpy()
  # uncertain_point_coords_on_grid.
  g["grid_scores"] = rng.normal(size=(2, 1, 6, 7)).astype(np.float32)
  g["grid_num_points"] = np.int64(10)
  indices, coords = torch_ref.uncertain_point_coords_on_grid(
      t(g["grid_scores"]), num_points=10)
  g["grid_indices"], g["grid_coords"] = indices.numpy(), coords.numpy()
  # Point losses and their gradients.
  g["loss_logits"] = (rng.normal(size=(4, 200)) * 4).astype(np.float32)
  g["loss_labels"] = rng.uniform(size=(4, 200)).astype(np.float32)
  g["loss_num_masks"] = np.float32(3.0)
  for name in ("sigmoid_ce_loss", "dice_loss"):
    x = t(g["loss_logits"]).requires_grad_()
    value = getattr(torch_ref, name)(x, t(g["loss_labels"]), 3.0)
    value.backward()
    g[f"{name}"], g[f"{name}_grad"] = value.detach().numpy(), x.grad.numpy()
  # Matcher costs.
  g["pw_logits"] = (rng.normal(size=(5, 300)) * 4).astype(np.float32)
  g["pw_labels"] = (rng.uniform(size=(3, 300)) > 0.5).astype(np.float32)
  for name in ("pairwise_sigmoid_ce_loss", "pairwise_dice_loss"):
    g[name] = getattr(torch_ref, name)(t(g["pw_logits"]),
                                       t(g["pw_labels"])).numpy()
  # point_mask_losses, targets at another resolution.
  g["pml_pred"] = (rng.normal(size=(3, 12, 10)) * 3).astype(np.float32)
  g["pml_target"] = (rng.uniform(size=(3, 18, 15)) > 0.5).astype(np.float32)
  g["pml_num_points"] = np.int64(40)
  g["pml_seed"] = np.int64(PML_SEED)
  candidate_key, fresh_key = jax.random.split(jax.random.key(PML_SEED))
  g["pml_candidates"] = np.asarray(jax.random.uniform(candidate_key,
                                                      (3, 120, 2)))
  g["pml_fresh"] = np.asarray(jax.random.uniform(fresh_key, (3, 10, 2)))
  pred = t(g["pml_pred"]).requires_grad_()
  loss_mask, loss_dice = torch_ref.point_mask_losses(
      pred, t(g["pml_target"]), 3.0, num_points=40,
      candidates=t(g["pml_candidates"]), random_points=t(g["pml_fresh"]))
  (loss_mask + loss_dice).backward()
  g["pml_loss_mask"] = loss_mask.detach().numpy()
  g["pml_loss_dice"] = loss_dice.detach().numpy()
  g["pml_grad"] = pred.grad.numpy()
  return g


if __name__ == "__main__":
  path = os.path.join(os.path.dirname(__file__), "point_sampling.npz")
  np.savez_compressed(path, **record())
  print(f"wrote {path} ({os.path.getsize(path)} bytes)")
