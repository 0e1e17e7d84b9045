"""DSSD321 ResNet-101 stage 1, Pascal VOC 07+12 (LazyConfig twin of dssd321_R_101.yaml):
the decoder and heads train over a frozen, trained SSD321.

    python tools/lazyconfig_train_net.py --config-file configs/PascalVOC-Detection/dssd321_R_101.py
"""

from ..common.data.voc_ssd import dataloader
from ..common.models.dssd_R_101 import model
from ..common.schedule import multistep
from ..common.train import optimizer, train

dataloader.train.mapper.augmentations.image_size = 321
dataloader.train.total_batch_size = 32
# Paper, VOC stage 1: lr 1e-3 for 20k iterations, then 1e-4 for 10k.
lr_multiplier = multistep(steps=[20000], max_iter=30000, warmup_iters=500)
train.max_iter = 30000
train.checkpointer.period = 5000
# The trained SSD321 (ssd321_R_101.yaml): backbone.* is read as backbone.bottom_up.*.
train.init_checkpoint = "output/voc/ssd321_R_101/model_final.pth"
train.output_dir = "output/voc/dssd321_R_101_lazy"
