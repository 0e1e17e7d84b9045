"""Import the papers' own Caffe models (SSD, DSSD, DSOD) and export ours as Caffe models.

``proto``: the binary ``.caffemodel`` format; ``prototxt``: deploy.prototxt text, written for our
architectures with the official generator scripts' layer names and read back; ``convert``: the
mapping of Caffe blobs onto our state dicts and back.
"""

from .convert import caffe_to_state_dict, state_dict_to_caffe
from .prototxt import deploy_net, format_net, parse_prototxt
from .proto import CaffeLayer, read_caffemodel, write_caffemodel

__all__ = [
    "CaffeLayer",
    "caffe_to_state_dict",
    "deploy_net",
    "format_net",
    "parse_prototxt",
    "read_caffemodel",
    "state_dict_to_caffe",
    "write_caffemodel",
]
