"""SSD300 VGG16, Pascal VOC 07+12 (LazyConfig twin of ssd300_vgg16.yaml).

python tools/lazyconfig_train_net.py --config-file configs/PascalVOC-Detection/ssd300_vgg16.py
"""

from ..common.data.voc_ssd import dataloader
from ..common.models.ssd_vgg16 import model
from ..common.schedule import multistep
from ..common.train import optimizer, train

# SSD paper, VOC: batch 32, lr 1e-3 for 40k iterations, then 10k at 1e-4 and 10k at 1e-5.
dataloader.train.total_batch_size = 32
lr_multiplier = multistep(steps=[40000, 50000], max_iter=60000, warmup_iters=500)
train.max_iter = 60000
train.checkpointer.period = 5000
# ImageNet VGG16 from tools/convert_vgg16_weights.py; "" trains from scratch.
train.init_checkpoint = "pretrained/vgg16_reducedfc.pkl"
train.output_dir = "output/voc/ssd300_vgg16_lazy"
