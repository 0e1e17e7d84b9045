"""DSOD300, Pascal VOC 07+12, from scratch (LazyConfig twin of dsod300.yaml).

python tools/lazyconfig_train_net.py --config-file configs/PascalVOC-Detection/dsod300.py
"""

from ..common.data.voc_ssd import dataloader
from ..common.models.dsod import model
from ..common.schedule import multistep
from ..common.train import optimizer, train

# DSOD paper, VOC 07+12: batch 128 (32 x 4 accumulated), lr 0.1 divided by 10 every 20k
# iterations, 100k in all.
dataloader.train.total_batch_size = 32
train.accumulation_steps = 4
optimizer.lr = 0.1
lr_multiplier = multistep(steps=[20000, 40000, 60000, 80000], max_iter=100000, warmup_iters=500)
train.max_iter = 100000
train.checkpointer.period = 5000
train.init_checkpoint = ""
train.output_dir = "output/voc/dsod300_lazy"
