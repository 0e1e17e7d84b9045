"""Pictures of results: predictions drawn with Detectron2's Visualizer, ground truth beside them,
and training curves read from Detectron2's ``metrics.json``."""

import json
import os
from collections import defaultdict
from typing import Dict, List

import numpy as np

from detectron2.structures import Instances
from detectron2.utils.visualizer import Visualizer

__all__ = [
    "display_scale",
    "draw_ground_truth",
    "draw_predictions",
    "plot_training_curves",
    "read_metrics",
    "side_by_side",
]


def display_scale(image: np.ndarray, min_side: int = 384) -> float:
    """Enlargement that makes small images (e.g. 128 px digits) readable under their labels."""
    return max(1.0, min_side / min(image.shape[:2]))


def draw_predictions(image_rgb: np.ndarray, instances: Instances, metadata, score_thresh=0.5):
    """RGB image with the predictions scoring at least ``score_thresh`` (boxes, class, score)."""
    instances = instances.to("cpu")
    instances = instances[instances.scores >= score_thresh]
    visualizer = Visualizer(image_rgb, metadata, scale=display_scale(image_rgb))
    return visualizer.draw_instance_predictions(instances).get_image()


def draw_ground_truth(image_rgb: np.ndarray, dataset_dict: Dict, metadata):
    """RGB image with a dataset dict's annotated boxes and class names."""
    visualizer = Visualizer(image_rgb, metadata, scale=display_scale(image_rgb))
    return visualizer.draw_dataset_dict(dataset_dict).get_image()


def side_by_side(left: np.ndarray, right: np.ndarray, gap: int = 8) -> np.ndarray:
    """Two images of the same height in one, separated by a white gap."""
    white = np.full((left.shape[0], gap, 3), 255, dtype=left.dtype)
    return np.concatenate([left, white, right], axis=1)


def read_metrics(metrics_json: str) -> List[Dict]:
    """The records of a Detectron2 ``metrics.json`` (one JSON object per line). A run that was
    killed mid-write leaves a partial last line, which is skipped."""
    records = []
    with open(metrics_json) as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def plot_training_curves(metrics_json: str, output_png: str) -> str:
    """Plot the losses, the learning rate and the evaluation's AP, AP50 and AP75 (COCO
    ``bbox/AP50`` or VOC ``bbox/AP50`` alike) against the iteration; returns ``output_png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = defaultdict(list)
    for record in read_metrics(metrics_json):
        for key, value in record.items():
            if key != "iteration" and isinstance(value, (int, float)):
                series[key].append((record["iteration"], value))
    losses = sorted(k for k in series if k.startswith("loss") or k == "total_loss")
    evals = sorted(k for k in series if k.split("/")[-1] in ("AP", "AP50", "AP75") and "/" in k)
    if not losses:
        raise ValueError(f"{metrics_json} has no loss records to plot")
    panels = [("loss", losses), ("learning rate", ["lr"] if "lr" in series else [])]
    if evals:
        panels.append(("validation", evals))
    panels = [(title, keys) for title, keys in panels if keys]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.8), squeeze=False)
    for ax, (title, keys) in zip(axes[0], panels):
        for key in keys:
            iterations, values = zip(*series[key])
            ax.plot(iterations, values, marker="o" if len(values) < 10 else None, label=key)
        ax.set_title(title)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(os.path.basename(os.path.dirname(os.path.abspath(metrics_json))))
    fig.tight_layout()
    fig.savefig(output_png, dpi=100)
    plt.close(fig)
    return output_png
