"""Config keys of the SSD family. Defaults are SSD300 (VGG16, Pascal VOC) from the SSD paper."""

import torch

from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

from .data.voc_folder import register_voc_folder


def get_ssd_cfg(config_file: str = "", opts=()) -> CN:
    """Detectron2's defaults plus :func:`add_ssd_config`, then ``config_file`` and ``KEY VALUE``
    ``opts``; MODEL.DEVICE falls back to the CPU when CUDA is absent (our configs say "cuda").
    Not frozen. What train_net.py and every tool start from."""
    cfg = get_cfg()
    add_ssd_config(cfg)
    if config_file:
        cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    if cfg.DATASETS.VOC_FOLDER:  # here, so that every process and tool of a run registers it
        register_voc_folder(cfg.DATASETS.VOC_FOLDER, "custom", cfg.DATASETS.VOC_CLASSES or None)
    return cfg


def add_ssd_config(cfg):
    """Add every key used by dssd_d2 to ``cfg`` (in place). Of Detectron2's own keys, only
    MODEL.ANCHOR_GENERATOR's NAME, OFFSET and ASPECT_RATIOS change: to SSD300's priors."""
    _C = cfg

    # ---------------------------------------------------------------- input and augmentation
    # SSD resizes every image, in training and at test time, to this fixed square (no aspect
    # ratio kept); predictions are mapped back to the original size by detector_postprocess.
    _C.INPUT.FIXED_SIZE = 300
    _C.INPUT.SSD_AUG = CN()
    # Random brightness, contrast, saturation, hue and channel order (SSD paper, Sec. 3.6).
    _C.INPUT.SSD_AUG.PHOTOMETRIC = True
    # Zoom out: paste the image on a canvas up to this many times larger, filled with the
    # pixel mean, with probability EXPAND_PROB. A ratio of 1.0 disables it.
    _C.INPUT.SSD_AUG.EXPAND_RATIO = 4.0
    _C.INPUT.SSD_AUG.EXPAND_PROB = 0.5
    # Min-IoU random crop: a patch whose IoU with the boxes is at least one of MIN_IOUS (or
    # the whole image); a box is kept only when its centre lies in the patch.
    _C.INPUT.SSD_AUG.MIN_IOU_CROP = True
    _C.INPUT.SSD_AUG.MIN_IOUS = [0.1, 0.3, 0.5, 0.7, 0.9]
    _C.INPUT.SSD_AUG.MIN_CROP_SIZE = 0.3
    # Horizontal flip uses Detectron2's INPUT.RANDOM_FLIP ("horizontal" or "none").
    # Mosaic (dssd_d2/data/mosaic.py): four training images, each resized to FIXED_SIZE on its
    # longer side, meet at a random centre of a FIXED_SIZE square, before the augmentations
    # above. Default False.
    _C.INPUT.MOSAIC = CN()
    _C.INPUT.MOSAIC.ENABLED = False
    # Chance that a training sample is a mosaic. Default 1.0.
    _C.INPUT.MOSAIC.PROB = 1.0
    # The last fraction of training (by iterations or SOLVER.MAX_TRAINING_MINUTES, whichever is
    # further along) runs without mosaic ("close mosaic"; Ultralytics: 10 of 100 epochs).
    # Default 0.0.
    _C.INPUT.MOSAIC.CLOSE_FRACTION = 0.0
    # The centre lies at a uniform random fraction of the side in this range, on each axis.
    # Default (0.25, 0.75).
    _C.INPUT.MOSAIC.CENTER_RANGE = (0.25, 0.75)
    # A box cut by its tile's edge is kept when at least this fraction of its area (and 2 pixels
    # of width and height) is left. Default 0.1 (Ultralytics').
    _C.INPUT.MOSAIC.MIN_AREA_FRACTION = 0.1

    # ---------------------------------------------------------------- bad images
    # What SSDDatasetMapper does with an image it cannot use (missing, empty, truncated or
    # corrupt file, 32-bit float pixels, or a size that disagrees with the dataset's
    # height/width): "skip" logs a warning naming the file, counts it in the training metrics
    # (data/skipped_images) and loads another image; "raise" stops with an error naming the
    # file. Training skips, so that one broken file does not cost a run of hours; evaluation
    # raises, so that a score is never computed silently on fewer images (with "skip" there, a
    # skipped image gets no detections and its objects count as missed).
    _C.DATALOADER.BAD_IMAGE_POLICY_TRAIN = "skip"
    _C.DATALOADER.BAD_IMAGE_POLICY_TEST = "raise"

    # ---------------------------------------------------------------- a user's VOC folder
    # A Pascal VOC 2007-layout folder (Annotations/, JPEGImages/, ImageSets/Main/<split>.txt)
    # that get_ssd_cfg registers as custom_<split>, one dataset per split file, evaluated with
    # the VOC 2007 metric (dssd_d2/data/voc_folder.py); then e.g. DATASETS.TRAIN
    # ("custom_trainval",). Default "": none.
    _C.DATASETS.VOC_FOLDER = ""
    # Its class names in the order of their ids; empty: the sorted unique <object><name> of its
    # annotations. Default ().
    _C.DATASETS.VOC_CLASSES = ()

    # ---------------------------------------------------------------- SSD meta-architecture
    _C.MODEL.SSD = CN()
    # Foreground classes; the softmax has NUM_CLASSES + 1 outputs, background last.
    _C.MODEL.SSD.NUM_CLASSES = 20
    # Backbone features the head predicts from, finest first.
    _C.MODEL.SSD.IN_FEATURES = ["conv4_3", "fc7", "conv6_2", "conv7_2", "conv8_2", "conv9_2"]
    # A prior is positive when its IoU with a ground truth is >= IOU_THRESHOLD; every ground
    # truth also gets a prior of its own (see MODEL.SSD.MATCHER).
    _C.MODEL.SSD.IOU_THRESHOLD = 0.5
    # Hard negative mining: at most this many negatives per positive, highest loss first.
    _C.MODEL.SSD.NEG_POS_RATIO = 3.0
    # Classification loss: "hard_negative_mining" (SSD: cross-entropy on the positives and the
    # NEG_POS_RATIO hardest negatives) or "focal" (softmax focal loss on every prior, weighted by
    # (1 - p_true) ** FOCAL_LOSS_GAMMA; no mining, so every prior gets a gradient; pair it with
    # MODEL.SSD_HEAD.PRIOR_PROB).
    _C.MODEL.SSD.CLS_LOSS = "hard_negative_mining"
    _C.MODEL.SSD.FOCAL_LOSS_GAMMA = 2.0
    # SSD's variances 0.1 / 0.2 expressed as Box2BoxTransform weights.
    _C.MODEL.SSD.BBOX_REG_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
    _C.MODEL.SSD.SMOOTH_L1_BETA = 1.0
    # Box loss, as MODEL.RETINANET.BBOX_REG_LOSS_TYPE: "smooth_l1" (SSD: on the encoded
    # offsets) or "giou", "diou", "ciou" (on the decoded boxes: an overlap loss, which weighs
    # a box's error by the box's size as AP at IoU 0.75 does).
    _C.MODEL.SSD.BBOX_REG_LOSS_TYPE = "smooth_l1"
    # The box loss's weight against the classification loss (an IoU loss per positive lies in
    # [0, 2] for GIoU, smooth L1 on SSD's encoded offsets is usually larger; mmdetection weighs
    # GIoU by 2 beside a focal loss). Default 1.0.
    _C.MODEL.SSD.BBOX_REG_LOSS_WEIGHT = 1.0
    # Inference: softmax scores above SCORE_THRESH_TEST, at most TOPK_CANDIDATES_TEST per
    # class before class-wise NMS at NMS_THRESH_TEST; TEST.DETECTIONS_PER_IMAGE are kept.
    _C.MODEL.SSD.SCORE_THRESH_TEST = 0.01
    _C.MODEL.SSD.TOPK_CANDIDATES_TEST = 400
    _C.MODEL.SSD.NMS_THRESH_TEST = 0.45
    # Box voting (Gidaris & Komodakis 2015): after NMS, each kept box becomes the score-weighted
    # mean of its class's candidates that overlap it by at least this IoU. Many priors regress
    # onto each object; their mean is tighter than the best-scored one (BCCD val, a Tiny-DSOD
    # trained on bccd_train: AP 36.9 -> 40.2 at 0.7, AP75 37.0 -> 41.7). 0 (SSD's) disables it.
    _C.MODEL.SSD.BOX_VOTING_IOU_TEST = 0.0
    # Clip decoded boxes to the image before NMS (Detectron2's habit); False runs NMS on the
    # unclipped boxes and clips the kept ones, as Caffe's DetectionOutput does (the
    # configs/Caffe models: boxes reaching past the image then overlap as Caffe computes it).
    # Default True.
    _C.MODEL.SSD.CLIP_BEFORE_NMS_TEST = True
    # Parameter-name prefixes to freeze (requires_grad False, BatchNorm frozen), e.g.
    # ["backbone.bottom_up"] for DSSD's first training stage. An unknown prefix is an error.
    _C.MODEL.SSD.FREEZE = []

    # ---------------------------------------------------------------- SSD head
    _C.MODEL.SSD_HEAD = CN()
    # Registered in dssd_d2.modeling.heads.SSD_HEAD_REGISTRY.
    _C.MODEL.SSD_HEAD.NAME = "SSDHead"
    # Module between each feature map and its class/box convs (DSSD paper, Fig. 2), one of
    # PREDICTION_MODULE_REGISTRY: "none" (a), "residual" (b, identity skip),
    # "residual_projection" (c, the DSSD choice), "two_residual_projection" (d).
    _C.MODEL.SSD_HEAD.PREDICTION_MODULE = "none"
    # Bottleneck and output channels of the residual prediction modules.
    _C.MODEL.SSD_HEAD.PREDICTION_MODULE_DIMS = [256, 1024]
    # One [bottleneck, out] pair per level instead (the official DSSD513 varies them, e.g.
    # 128, 512, 256, ...); empty: PREDICTION_MODULE_DIMS on every level.
    _C.MODEL.SSD_HEAD.PREDICTION_MODULE_DIMS_PER_LEVEL = []
    # Norm of the prediction modules and of the "conv_bn" / "separable" predictors.
    _C.MODEL.SSD_HEAD.NORM = "BN"
    # Kernel size of the class and box predictors.
    _C.MODEL.SSD_HEAD.KERNEL_SIZE = 3
    # One kernel size per level instead (official DSSD321: [5, 5, 3, 3, 3, 3]); empty:
    # KERNEL_SIZE on every level.
    _C.MODEL.SSD_HEAD.KERNEL_SIZES = []
    # Class and box predictors, one of PREDICTOR_REGISTRY: "conv" (SSD, a biased conv),
    # "conv_bn" (DSOD's released model: bias-free conv, BatchNorm with learned scale and shift)
    # or "separable" (SSDlite: depthwise conv + norm + ReLU6, then a 1x1 conv).
    _C.MODEL.SSD_HEAD.PREDICTOR = "conv"
    # Start every prior with this total foreground probability (RetinaNet's PRIOR_PROB, through
    # the background logit's bias), so that a focal loss over thousands of background priors does
    # not open with a huge loss; 0: every class equally likely (SSD).
    _C.MODEL.SSD_HEAD.PRIOR_PROB = 0.0
    # Channels of a 3x3 conv (with MODEL.SSD_HEAD.NORM and ReLU) before each class and each box
    # predictor, one per predictor; 0: none. The official DSSD513 has 512. Default 0.
    _C.MODEL.SSD_HEAD.PREDICTOR_INTER_CHANNELS = 0

    # ---------------------------------------------------------------- priors (default boxes)
    # Per level: min size, max size (the extra square is sqrt(min * max); 0: none), aspect
    # ratios in MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS (w / h as in SSD; FLIP adds 1 / r), and
    # the step between prior centres (empty: the backbone's feature strides).
    # MODEL.ANCHOR_GENERATOR.OFFSET 0.5 centres priors at (i + 0.5) * step.
    # Set MODEL.ANCHOR_GENERATOR.NAME to "SSDAnchorGenerator" to use them.
    _C.MODEL.ANCHOR_GENERATOR.MIN_SIZES = [30, 60, 111, 162, 213, 264]
    _C.MODEL.ANCHOR_GENERATOR.MAX_SIZES = [60, 111, 162, 213, 264, 315]
    _C.MODEL.ANCHOR_GENERATOR.STEPS = [8, 16, 32, 64, 100, 300]
    _C.MODEL.ANCHOR_GENERATOR.FLIP = True
    # Clip priors to the FIXED_SIZE square (the SSD reference does not).
    _C.MODEL.ANCHOR_GENERATOR.CLIP = False

    # ---------------------------------------------------------------- VGG16 (reduced) backbone
    _C.MODEL.VGG = CN()
    # Channels of the five conv stages (2, 2, 3, 3, 3 convs); fc6/fc7 channels.
    _C.MODEL.VGG.CONV_DIMS = [64, 128, 256, 512, 512]
    _C.MODEL.VGG.FC_DIM = 1024
    # fc6 is a 3x3 conv with this dilation (atrous, SSD "reduced" VGG).
    _C.MODEL.VGG.FC6_DILATION = 6
    # Learned L2Norm scale on conv4_3 (ParseNet), initialised to this value.
    _C.MODEL.VGG.L2NORM_SCALE = 20.0
    # Norm after every conv ("" as in the paper; "BN" helps training from scratch).
    _C.MODEL.VGG.NORM = ""

    # ---------------------------------------------------------------- extra SSD layers
    # Levels appended after the backbone, one entry each: [bottleneck, out] channels, stride,
    # padding and kernel of the second conv. Defaults: SSD300 (10, 5, 3, 1). SSD512 adds a
    # fifth level and ends with a 4x4 kernel (16, 8, 4, 2, 1).
    _C.MODEL.SSD_EXTRAS = CN()
    _C.MODEL.SSD_EXTRAS.CONV_DIMS = [[256, 512], [128, 256], [128, 256], [128, 256]]
    _C.MODEL.SSD_EXTRAS.STRIDES = [2, 2, 1, 1]
    _C.MODEL.SSD_EXTRAS.PADDINGS = [1, 1, 0, 0]
    _C.MODEL.SSD_EXTRAS.KERNEL_SIZES = [3, 3, 3, 3]
    _C.MODEL.SSD_EXTRAS.NORM = ""
    # ResNet-SSD only: per level, the kernel of the residual block's first conv and of its
    # projection, which then take the level's stride (no padding), the middle conv keeping
    # KERNEL_SIZES / PADDINGS at stride 1: the official SSD513/DSSD513 use 2 (2x2 stride 2).
    # Empty: 1x1 first conv and projection, stride in the middle conv. Default [].
    _C.MODEL.SSD_EXTRAS.FIRST_KERNEL_SIZES = []

    # ---------------------------------------------------------------- solver
    # Micro-batches accumulated into one optimizer step (one iteration); the effective batch
    # is SOLVER.IMS_PER_BATCH * ACCUMULATION_STEPS.
    _C.SOLVER.ACCUMULATION_STEPS = 1
    # A budget of training minutes (steps only: not evaluations or checkpoints); 0 = off. With
    # one, training ends when either the minutes or MAX_ITER iterations are spent, and the LR
    # schedule (warm-up included, as fractions of MAX_ITER) runs over whichever is spent faster,
    # so a recipe keeps its shape on a slower CPU (engine/time_budget.py).
    _C.SOLVER.MAX_TRAINING_MINUTES = 0.0
    # Detectron2's SOLVER.AMP.ENABLED also works on a CPU, as bfloat16 autocast (float16 with a
    # gradient scaler on CUDA, as in Detectron2). With MODEL.CHANNELS_LAST the model is kept in
    # channels-last memory layout. Both pay on CPUs with AVX512-BF16 or AMX (training steps
    # 2.5-3x faster together for the dense models, docs/speed.md, "Training in bfloat16");
    # Without them bfloat16 is emulated and several times slower, so AMP trains in float32 there
    # (with a warning) unless SOLVER.AMP.EMULATED_BF16 forces bfloat16.
    _C.MODEL.CHANNELS_LAST = False
    _C.SOLVER.AMP.EMULATED_BF16 = False

    # ---- EMA of the weights (dssd_d2/ema.py)
    # Keep an exponential moving average of the weights, as Ultralytics YOLO does: checkpoints
    # (their "model"), evaluations and the trained model hold the EMA; --resume continues it.
    # Default False.
    _C.MODEL.EMA = CN()
    _C.MODEL.EMA.ENABLED = False
    # The decay once warmed up (averages over about 1 / (1 - DECAY) steps); it warms up as
    # DECAY * (1 - exp(-updates / TAU)), 63% of DECAY at TAU steps (Ultralytics: 0.9999 and
    # 2000, sized for tens of thousands of steps). Defaults 0.998 and 200, for CPU runs of 1-5k
    # steps: the average spans about 100 steps at step 1000 and 500 from step 2000 on.
    _C.MODEL.EMA.DECAY = 0.998
    _C.MODEL.EMA.TAU = 200.0

    # ---- DSOD
    # DenseNet backbone and prediction layers (build_dsod_backbone), named like the paper's
    # DS/A-B-k-theta. Defaults: DSOD300 DS/64-192-48-1 with dense prediction, as released.
    _C.MODEL.DSOD = CN()
    # Stem: "stem_block" (DSOD's three 3x3 convs and a 2x2 pool) or "densenet" (DenseNet's 7x7
    # stride-2 conv and 3x3 pool; the paper's Table 3 ablation). Default "stem_block".
    _C.MODEL.DSOD.STEM = "stem_block"
    # A: channels of the first two stem convs (the third has 2A). Default 64.
    _C.MODEL.DSOD.STEM_WIDTH = 64
    # B: channels of each dense layer's 1x1 bottleneck. Default 192.
    _C.MODEL.DSOD.BOTTLENECK_WIDTH = 192
    # k: growth rate, channels each dense layer adds. Default 48.
    _C.MODEL.DSOD.GROWTH_RATE = 48
    # theta: a transition keeps floor(theta * C) of its C input channels. Default 1.0.
    _C.MODEL.DSOD.COMPRESSION = 1.0
    # Layers in each of the four dense blocks. Default [6, 8, 8, 8].
    _C.MODEL.DSOD.BLOCK_LAYERS = [6, 8, 8, 8]
    # Output channels of the four transitions (two with pooling, two without); 0 means
    # floor(COMPRESSION * input). Default [0, 0, 0, 256]: the released model ends in 256
    # channels; [0, 0, 0, 0] is the paper's Table 1 (1568).
    _C.MODEL.DSOD.TRANSITION_CHANNELS = [0, 0, 0, 256]
    # False merges dense blocks 3 and 4 into one (the Table 3 ablation "without transition w/o
    # pooling": three dense blocks). Default True.
    _C.MODEL.DSOD.TRANSITION_WITHOUT_POOLING = True
    # Prediction structure: "dense" (learn half, reuse half) or "plain" (SSD-like). Default "dense".
    _C.MODEL.DSOD.PREDICTION = "dense"
    # "dense": channels of each half at sources 2-6 (source 2's learned half is the last
    # transition). Default [256, 256, 128, 128, 128]: sources of 512, 512, 256, 256, 256.
    _C.MODEL.DSOD.DENSE_HALF_CHANNELS = [256, 256, 128, 128, 128]
    # "plain": [bottleneck, out] channels of sources 3-6. Default SSD300's
    # [[256, 512], [128, 256], [128, 256], [128, 256]].
    _C.MODEL.DSOD.PLAIN_CHANNELS = [[256, 512], [128, 256], [128, 256], [128, 256]]
    # Side of the last source at 300 input: 2 (released model, 8744 priors) or 1 (paper's
    # Fig. 1, 8732 priors). Default 2.
    _C.MODEL.DSOD.LAST_MAP_SIZE = 2
    # Normalisation in every DSOD conv: "BN" or "SyncBN" (any Detectron2 get_norm name).
    # Default "BN".
    _C.MODEL.DSOD.NORM = "BN"
    # Initial scale of the L2Norm on each of the six sources. Default 20.0.
    _C.MODEL.DSOD.L2NORM_SCALE = 20.0

    # ---- ResNet-SSD and DSSD
    # The ResNet part of build_resnet_ssd_backbone uses Detectron2's MODEL.RESNETS keys
    # (RES5_DILATION = 2 keeps res5 at stride 16) and one bottleneck block per
    # MODEL.SSD_EXTRAS level; the deconvolution decoder of build_dssd_backbone uses these.
    _C.MODEL.DSSD = CN()
    # Registered backbone the decoder wraps (its "bottom_up"). Default "build_resnet_ssd_backbone".
    _C.MODEL.DSSD.BOTTOM_UP = "build_resnet_ssd_backbone"
    # Bottom-up features the decoder reads, finest first; the last one starts the decoder and
    # is passed through unchanged. Outputs are named "dssd_<feature>". Default SSD321's
    # ["res3", "res5", "res6", "res7", "res8", "res9"].
    _C.MODEL.DSSD.IN_FEATURES = ["res3", "res5", "res6", "res7", "res8", "res9"]
    # Channels of every deconvolution module (DSSD paper, Fig. 3). Default 512.
    _C.MODEL.DSSD.OUT_CHANNELS = 512
    # How a deconvolution module combines the upsampled and the lateral map: "prod"
    # (element-wise product, the paper's best) or "sum". Default "prod".
    _C.MODEL.DSSD.COMBINE = "prod"
    # Norm after each conv of the deconvolution modules (any get_norm name). Default "BN".
    _C.MODEL.DSSD.NORM = "BN"
    # Give the deconvolution a bias even with a norm after it (the official DSSD's
    # Deconvolution layers have one; configs/Caffe/dssd513_R_101_coco.yaml). Default False.
    _C.MODEL.DSSD.DECONV_BIAS = False

    # ---- Matching and priors (torchvision equivalence)
    # How priors are matched to ground truth, by name in
    # dssd_d2.modeling.matcher.SSD_MATCHER_REGISTRY. "caffe" (default, the SSD reference):
    # greedy bipartite matching first, so that every ground truth gets a distinct prior of its
    # own, then every other prior with IoU >= MODEL.SSD.IOU_THRESHOLD. "torchvision": IoU >=
    # threshold, then each ground truth forced onto its best prior in order, a later one taking
    # a shared best prior from an earlier one (torchvision's SSDMatcher, for exact equivalence).
    _C.MODEL.SSD.MATCHER = "caffe"
    # Clamp every prior's width and height to INPUT.FIXED_SIZE, keeping its centre (torchvision's
    # DefaultBoxGenerator(clip=True); unlike MODEL.ANCHOR_GENERATOR.CLIP, the box may still
    # reach past the image). Default False.
    _C.MODEL.ANCHOR_GENERATOR.CLAMP_SIZES = False
    # SSD's priors are the defaults, so that a config that does not inherit Base-SSD.yaml gets
    # SSD300's priors rather than Detectron2's: SSDAnchorGenerator, centres at (i + 0.5) * step,
    # ratios {2} on the first and last two maps and {2, 3} elsewhere (flipped, see FLIP).
    _C.MODEL.ANCHOR_GENERATOR.NAME = "SSDAnchorGenerator"
    _C.MODEL.ANCHOR_GENERATOR.OFFSET = 0.5
    _C.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS = [[2], [2, 3], [2, 3], [2, 3], [2], [2]]
    # Refuse STEPS whose prior grid does not span INPUT.FIXED_SIZE (within 25%), the usual sign
    # of steps left over from another input size. False only to reproduce a released model
    # that has such a step: DSOD300's Caffe model keeps step 300 on its 2x2 last map
    # (configs/Caffe/dsod300_*.yaml). Default True.
    _C.MODEL.ANCHOR_GENERATOR.CHECK_STEPS = True
    # Per level, centres at (i + offset) * step instead of MODEL.ANCHOR_GENERATOR.OFFSET on
    # every level (any value >= 0): the official DSSD513/SSD513 start their prior grids where
    # each map's first cell is centred, 2.5 pixels in at step 8 (configs/Caffe). Default [].
    _C.MODEL.ANCHOR_GENERATOR.OFFSETS = []

    # ---- CPU models: Tiny-DSOD and SSDlite
    # Tiny-DSOD (Li et al., BMVC 2018; build_tiny_dsod_backbone): depthwise dense blocks and a
    # depthwise FPN. Defaults: the official model (0.95M parameters, 1.06 GFLOPs at 300 in
    # the paper). Its class/box predictors: MODEL.SSD_HEAD.PREDICTOR "pointwise_depthwise".
    _C.MODEL.TINY_DSOD = CN()
    # Channels of the stem's 3x3 stride-2 conv and of its two depthwise-separable convs.
    # Default [64, 64, 128].
    _C.MODEL.TINY_DSOD.STEM_CHANNELS = [64, 64, 128]
    # Layers of the four depthwise dense blocks. Default [4, 6, 6, 6].
    _C.MODEL.TINY_DSOD.BLOCK_LAYERS = [4, 6, 6, 6]
    # Growth rate (channels each layer adds) of each block. Default [32, 48, 64, 80].
    _C.MODEL.TINY_DSOD.GROWTH_RATES = [32, 48, 64, 80]
    # Output channels of the 1x1 transition after each block; the second is source 1.
    # Default [128, 128, 256, 64].
    _C.MODEL.TINY_DSOD.TRANSITION_CHANNELS = [128, 128, 256, 64]
    # Channels of the pooled half of source 2, then of each half of sources 3 to 6.
    # Default [64, 64, 64, 64, 64] (every source 2 to 6 has 128).
    _C.MODEL.TINY_DSOD.EXTRA_HALF_CHANNELS = [64, 64, 64, 64, 64]
    # How many of the finest sources are predicted from the D-FPN's fused maps; 0 turns the
    # D-FPN off. Default 3 (the official model).
    _C.MODEL.TINY_DSOD.FPN_SOURCES = 3
    # Norm of every normalised conv (get_norm name). Default "BN".
    _C.MODEL.TINY_DSOD.NORM = "BN"
    # Initial scale of the L2Norm on each source. Default 20.0.
    _C.MODEL.TINY_DSOD.L2NORM_SCALE = 20.0

    # SSDlite (build_mobilenet_v3_ssdlite_backbone): torchvision's MobileNetV3-Large and
    # SSDlite's depthwise-separable extra levels, as torchvision's ssdlite320_mobilenet_v3_large.
    _C.MODEL.MOBILENET_V3 = CN()
    # Width multiplier of the network and of the extra levels. Default 1.0.
    _C.MODEL.MOBILENET_V3.WIDTH_MULT = 1.0
    # Halve the channels after C4 (MobileNetV3 paper, Table 6), as torchvision does without
    # ImageNet weights. Default True; must be False with IMAGENET_WEIGHTS.
    _C.MODEL.MOBILENET_V3.REDUCED_TAIL = True
    # A torchvision mobilenet_v3_large ImageNet state dict file to start from (e.g.
    # mobilenet_v3_large-8738ca79.pth, fetched by the user); "" trains from scratch. Default "".
    _C.MODEL.MOBILENET_V3.IMAGENET_WEIGHTS = ""

    # ---- DSSD staged training: initial weights and frozen BatchNorm
    # Weight-name prefixes that keep their initialisation when training starts from
    # MODEL.WEIGHTS (a resumed run reads every weight of its own checkpoint). ["head"] starts
    # every DSSD predictor fresh over an SSD checkpoint, as the official DSSD code does; the
    # checkpointer logs every weight that was not loaded and why. Default [].
    _C.MODEL.WEIGHTS_EXCLUDE = []
    # Turn every BatchNorm of the model into FrozenBatchNorm2d (statistics, scale and shift
    # fixed; the convolutions still train). The official DSSD fine-tuning (stage 2) needs it.
    # Default False.
    _C.MODEL.SSD.FREEZE_ALL_BN = False
