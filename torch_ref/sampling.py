"""PyTorch reference for jaxmask's point sampling (Mask2Former, PointRend).

Transcribed in meaning from HF transformers' Mask2Former
(`sample_point`, `Mask2FormerLoss.sample_points_using_uncertainty`,
`calculate_uncertainty`) and detectron2's PointRend (`point_sample`,
`get_uncertain_point_coords_on_grid`). The optional `candidates=` and
`random_points=` arguments replace what `torch.rand` would draw, so tests can
feed both frameworks the same coordinates.
"""

import torch
from torch.nn import functional as F


def point_sample(inputs, point_coords):
  """`[N, C, H, W]` x `[N, P, 2]` (x, y in [0, 1]) -> `[N, C, P]`."""
  grid = 2.0 * point_coords.unsqueeze(2) - 1.0
  return F.grid_sample(inputs, grid, align_corners=False).squeeze(3)


def point_sample_single(inputs, point_coords):
  """`[C, H, W]` x `[P, 2]` -> `[C, P]`."""
  return point_sample(inputs[None], point_coords[None])[0]


def calculate_uncertainty(logits):
  return -torch.abs(logits)


def select_uncertain_points(logits, candidates, *, num_uncertain,
                            uncertainty_fn=calculate_uncertainty):
  """Top-k of the sampled uncertainty, gathered with Mask2Former's flat shift."""
  num_boxes, num_candidates = candidates.shape[:2]
  uncertainties = uncertainty_fn(point_sample(logits, candidates))
  idx = torch.topk(uncertainties[:, 0, :], k=num_uncertain, dim=1)[1]
  shift = num_candidates * torch.arange(num_boxes, dtype=torch.long,
                                        device=logits.device)
  idx += shift[:, None]
  return candidates.view(-1, 2)[idx.view(-1), :].view(
      num_boxes, num_uncertain, 2)


@torch.no_grad()
def sample_points_using_uncertainty(logits, *, num_points,
                                    oversample_ratio=3.0,
                                    importance_sample_ratio=0.75,
                                    uncertainty_fn=calculate_uncertainty,
                                    candidates=None, random_points=None):
  """`[N, 1, H, W]` -> `[N, num_points, 2]`, as in HF transformers."""
  num_boxes = logits.shape[0]
  num_points_sampled = int(num_points * oversample_ratio)
  if candidates is None:
    candidates = torch.rand(num_boxes, num_points_sampled, 2,
                            device=logits.device)
  num_uncertain_points = int(importance_sample_ratio * num_points)
  num_random_points = num_points - num_uncertain_points
  point_coordinates = select_uncertain_points(
      logits, candidates, num_uncertain=num_uncertain_points,
      uncertainty_fn=uncertainty_fn)
  if num_random_points > 0:
    if random_points is None:
      random_points = torch.rand(num_boxes, num_random_points, 2,
                                 device=logits.device)
    point_coordinates = torch.cat([point_coordinates, random_points], dim=1)
  return point_coordinates


def uncertain_point_coords_on_grid(uncertainty_map, *, num_points):
  """detectron2's `get_uncertain_point_coords_on_grid`."""
  R, _, H, W = uncertainty_map.shape
  h_step = 1.0 / float(H)
  w_step = 1.0 / float(W)
  num_points = min(H * W, num_points)
  point_indices = torch.topk(uncertainty_map.view(R, H * W), k=num_points,
                             dim=1)[1]
  point_coords = torch.zeros(R, num_points, 2, dtype=torch.float,
                             device=uncertainty_map.device)
  point_coords[:, :, 0] = w_step / 2.0 + (point_indices % W).to(
      torch.float) * w_step
  point_coords[:, :, 1] = h_step / 2.0 + (point_indices // W).to(
      torch.float) * h_step
  return point_indices, point_coords
