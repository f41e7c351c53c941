"""The segmentation example's report: the table, `curves.png`, `predictions.png` and
`results.json`."""

import io
import os
from typing import Any

import numpy as np

import _cli

from .evaluate import paired_differences


def label(loss: str, r) -> str:
  return f"point ({r['num_points']})" if loss == "point" else "full mask"


def print_table(results, image_size: int) -> None:
  print(f"\n{image_size}² images and targets, mask logits at "
        f"{image_size // 4}²; mean ± std over {len(next(iter(results.values()))['seeds'])} "
        "seed(s), held-out images")
  print(f"{'loss':<13}{'PQ':>13}{'mask mIoU':>13}{'class acc':>13}"
        f"{'step memory':>13}{'step time':>11}")
  for loss, r in results.items():
    cell = lambda name, r=r: _cli.mean_std(r[name + "_mean"], r[name + "_std"])
    print(f"{label(loss, r):<13}{cell('pq'):>13}{cell('miou'):>13}"
          f"{cell('accuracy'):>13}"
          f"{r['memory_bytes']['peak'] / 2**20:>9.1f} MiB"
          f"{r['step_ms']:>8.0f} ms")
  paired = paired_differences(results)
  if paired:
    p, f = results["point"], results["full"]
    cell = lambda name: (f"{paired[name]['mean']:+.1f} ± "
                         f"{paired[name]['std']:.1f}")
    print(f"point - full, paired by seed: PQ {cell('pq')}, mIoU "
          f"{cell('miou')}, class accuracy {cell('accuracy')} points; "
          f"point / full: memory "
          f"{p['memory_bytes']['peak'] / f['memory_bytes']['peak']:.2f}x, "
          f"step time {p['step_ms'] / f['step_ms']:.2f}x")


def plot_curves(results, path: str) -> None:
  """Training loss, test PQ and matched mIoU against steps."""
  plt = _cli.pyplot()
  panels = (("loss", "training loss (mean over each chunk)"),
            ("pq", "test PQ (%)"), ("miou", "test mask mIoU, matched (%)"))
  fig, axes = plt.subplots(1, len(panels), figsize=(13, 3.8))
  for loss, r in results.items():
    steps = r["history"]["step"]
    for ax, (name, _) in zip(axes, panels):
      values = np.asarray(r["history"][name])  # [evals, seeds]
      ax.plot(steps, values.mean(1), label=label(loss, r))
      ax.fill_between(steps, values.min(1), values.max(1), alpha=0.2)
  for ax, (name, title) in zip(axes, panels):
    ax.set(xlabel="step", ylabel=title, yscale="log" if name == "loss" else
           "linear")
    ax.grid(alpha=0.3)
    ax.legend()
  fig.suptitle("Mask2Former's criterion, point loss vs full-mask loss "
               "(mean and range over seeds)")
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def overlay(image, ids, classes):
  """The image with each segment tinted by its class and outlined."""
  colours = np.array([[1.0, 0.2, 0.2], [0.2, 0.9, 0.2], [0.2, 0.4, 1.0]])
  out = image.astype(np.float32) / 255 * 0.45 + 0.275
  for i in np.unique(ids[ids > 0]):
    mask = ids == i
    colour = colours[classes[i - 1]]
    out[mask] = 0.4 * out[mask] + 0.6 * colour
    edge = mask & ~(np.roll(mask, 1, 0) & np.roll(mask, -1, 0)
                    & np.roll(mask, 1, 1) & np.roll(mask, -1, 1))
    out[edge] = colour * 0.5
  return out


def plot_predictions(test, predictions, path: str, count: int) -> None:
  """Rows: test images, true masks, then each loss's predicted masks."""
  plt = _cli.pyplot()
  rows = 2 + len(predictions)
  fig, axes = plt.subplots(rows, count, figsize=(1.6 * count, 1.7 * rows),
                           squeeze=False)
  titles = ["image", "truth"] + [
      "point loss" if loss == "point" else "full-mask loss"
      for loss in predictions]
  for j in range(count):
    panels = [test["images"][j], overlay(test["images"][j], test["ids"][j],
                                         test["labels"][j])]
    panels += [overlay(test["images"][j], ids[j], classes[j])
               for ids, classes in predictions.values()]
    for i, panel in enumerate(panels):
      axes[i, j].imshow(panel, interpolation="nearest")
      axes[i, j].set_xticks([])
      axes[i, j].set_yticks([])
      if j == 0:
        axes[i, j].set_ylabel(titles[i], fontsize=9)
  fig.suptitle("held-out images (seed 0); red disc, green square, blue "
               "triangle", fontsize=9)
  fig.tight_layout(pad=0.3)
  buffer = io.BytesIO()
  fig.savefig(buffer, dpi=64)
  plt.close(fig)
  # Noisy images compress poorly: a 256-colour palette keeps the file small.
  from PIL import Image  # pylint: disable=g-import-not-at-top
  Image.open(buffer).convert("RGB").quantize(256).save(path, optimize=True)


def report(results: dict[str, Any], out: str) -> None:
  """Prints `train`'s table; writes curves.png, predictions.png and, without
  the predictions, results.json."""
  print_table(results["results"], results["config"]["image_size"])
  curves_path = os.path.join(out, "curves.png")
  plot_curves(results["results"], curves_path)
  grid_path = os.path.join(out, "predictions.png")
  predictions = results["predictions"]
  plot_predictions(predictions["test"], predictions["losses"], grid_path,
                   len(predictions["test"]["images"]))
  json_path = _cli.write_json(
      out, {k: v for k, v in results.items() if k != "predictions"})
  print(f"wrote {json_path}, {curves_path} and {grid_path} "
        f"({results['wall_seconds']:.0f} s in all)")
