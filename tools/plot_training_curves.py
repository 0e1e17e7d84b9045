#!/usr/bin/env python
"""Plot the training curves of a Detectron2 run from its metrics.json.

    python tools/plot_training_curves.py output/quickstart/ssd_digits/metrics.json [out.png]

Writes losses, learning rate and any evaluation AP against the iteration (default: next to
metrics.json as training_curves.png) and prints the path.
"""

import os
import sys

from dssd_d2.visualization import plot_training_curves


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    metrics = sys.argv[1]
    default = os.path.join(os.path.dirname(os.path.abspath(metrics)), "training_curves.png")
    output = sys.argv[2] if len(sys.argv) == 3 else default
    print(f"Wrote {plot_training_curves(metrics, output)}")


if __name__ == "__main__":
    main()
