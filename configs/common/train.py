"""Optimizer and training loop settings shared by the LazyConfigs (tools/lazyconfig_train_net.py).

Detectron2's own ``common/train.py`` and ``common/optim.py`` (SGD, no weight decay on norms),
with SSD's momentum and weight decay, evaluation at the end only (TEST.EVAL_PERIOD 0, as the
YAML configs), and three dssd_d2 keys: ``train.accumulation_steps`` (SOLVER.ACCUMULATION_STEPS,
default 1), micro-batches per optimizer step; ``train.max_training_minutes``
(SOLVER.MAX_TRAINING_MINUTES, default 0: off), a budget of training time that ends the run
before ``train.max_iter`` when spent first, with the LR schedule run over it (by the main
process's clock in every process); and ``train.amp.emulated_bf16`` (SOLVER.AMP.EMULATED_BF16,
default False), bfloat16 autocast with ``train.amp.enabled`` also on a CPU that only emulates
it. tools/lazyconfig_train_net.py reads them through dssd_d2.engine.lazy.LazyConfigTrainer.
"""

from detectron2.model_zoo import get_config

optimizer = get_config("common/optim.py").SGD
optimizer.lr = 0.001
optimizer.momentum = 0.9
optimizer.weight_decay = 0.0005

train = get_config("common/train.py").train
train.eval_period = 0
train.accumulation_steps = 1
train.max_training_minutes = 0.0
train.amp.emulated_bf16 = False
