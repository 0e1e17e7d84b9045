#!/usr/bin/env python
"""Plot the training curves of a Detectron2 run from its metrics.json.

    python tools/plot_training_curves.py output/quickstart/ssd_digits/metrics.json [out.png]

Writes losses, learning rate and any evaluation AP against the iteration (default: next to
metrics.json as training_curves.png) and prints the path.
"""

import argparse
import os

from dssd_d2.visualization import plot_training_curves


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("metrics", help="metrics.json of a run (its OUTPUT_DIR)")
    parser.add_argument("output", nargs="?", help="PNG to write (default: beside metrics.json)")
    args = parser.parse_args()
    if not os.path.isfile(args.metrics):
        parser.error(f"{args.metrics}: no such file (give a run's OUTPUT_DIR/metrics.json)")
    default = os.path.join(os.path.dirname(os.path.abspath(args.metrics)), "training_curves.png")
    print(f"Wrote {plot_training_curves(args.metrics, args.output or default)}")


if __name__ == "__main__":
    main()
