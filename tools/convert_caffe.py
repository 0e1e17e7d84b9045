#!/usr/bin/env python
"""Convert an official Caffe SSD / DSSD / DSOD model into Detectron2 weights for our config.

    python tools/convert_caffe.py deploy.prototxt model.caffemodel OUT.pkl \\
        --config-file configs/Caffe/ssd300_vgg16_voc0712.yaml

Reads the binary .caffemodel without Caffe, maps every blob onto the model the config builds
(dssd_d2.caffe.convert) and checks the prototxt's priors against the config; any unmatched
layer, leftover blob, shape or prior mismatch is an error naming it. Evaluate with
``train_net.py --config-file C --eval-only MODEL.WEIGHTS OUT.pkl``
(docs/pretrained_weights_caffe.md).
"""

import argparse

from dssd_d2.caffe.convert import convert_caffe_files
from dssd_d2.config import get_ssd_cfg
from dssd_d2.engine.checkpoint import save_converted_weights


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prototxt", help="the model's deploy.prototxt")
    parser.add_argument("caffemodel", help="the model's .caffemodel")
    parser.add_argument("output", help="output .pkl for MODEL.WEIGHTS")
    parser.add_argument("--config-file", required=True, help="e.g. configs/Caffe/*.yaml")
    parser.add_argument("opts", nargs="*", help="KEY VALUE config overrides")
    args = parser.parse_args(argv)
    cfg = get_ssd_cfg(args.config_file, args.opts)
    state = convert_caffe_files(cfg, args.prototxt, args.caffemodel)
    save_converted_weights(state, args.output, f"Caffe {args.caffemodel} (dssd_d2)")
    print(f"wrote {len(state)} tensors to {args.output}")


if __name__ == "__main__":
    main()
