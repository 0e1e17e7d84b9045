#!/usr/bin/env python
"""Inference and training speed of SSD-family models, with BN folding and CPU fast paths.

    python tools/benchmark.py --configs configs/PascalVOC-Detection/{ssd300_vgg16,dssd321_R_101,dsod300}.yaml \
        [--threads 2] [--iters 5] [--batch 4] [--output benchmark.json] [KEY VALUE ...]

Per config: parameters, GFLOPs and default boxes (dssd_d2.analysis, as tools/model_stats.py), then for each mode the
median latency of one image split into preprocessing, network and post-processing, images/s at
--batch, and the peak memory allocated during one inference; then training images/s (forward,
backward and SGD step of the step trainer train_net.py uses) in float32, float32 channels-last
(MODEL.CHANNELS_LAST) and bfloat16 autocast channels-last (SOLVER.AMP.ENABLED on a CPU). Modes, measured interleaved (mode after mode, repeatedly) so
that a busy machine slows all of them alike:

- eager: the model as built, fp32;
- folded: BatchNorm folded into the convolutions (skipped when the model has none);
- fast: folded + channels-last + frozen oneDNN graph (dssd_d2.deploy.optimize_for_inference);
- fast-bf16: folded + channels-last with bf16 autocast for the network (on CPU);
- int8: backbone and head quantized to int8 (dssd_d2.deploy.quantize: OpenVINO + NNCF, calibrated
  on --int8-calib random images) and run by OpenVINO; softmax, decoding and NMS in float32
  PyTorch (on CPU; needs the int8 extra). Its peak memory is not measured: the profiler sees
  PyTorch's allocations only, not OpenVINO's;
- torchvision: torchvision's ssd300_vgg16 (same architecture, random weights), for 300-input
  VGG16 configs only.

Random weights unless MODEL.WEIGHTS is given; BatchNorm statistics then come from one batch of
random images (dssd_d2.analysis.calibrate_batch_norms). Random weights make every class score
pass the 0.01 threshold, so post-processing sees its worst case (400 candidates per class).
The first line names the CPU's int8/bf16 instruction sets (AVX2, AVX512-VNNI, AMX), on which the
int8 and bf16 gains depend.
"""

import argparse
import copy
import itertools
import json
import statistics
import time

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

import dssd_d2
from dssd_d2.analysis import calibrate_batch_norms, count_gflops, model_stats
from dssd_d2.deploy import bf16_autocast, count_batch_norms, fold_batch_norm, optimize_for_inference
from dssd_d2 import cpu
from dssd_d2.engine.accumulation import build_step_trainer

MODES = ("eager", "folded", "fast", "fast-bf16", "int8", "torchvision")
# /proc/cpuinfo flags that int8 and bf16 inference use, in the names printed.
CPU_FEATURES = {
    "avx2": "AVX2",
    "avx512f": "AVX512F",
    "avx_vnni": "AVX-VNNI",
    "avx512_vnni": "AVX512-VNNI",
    "avx512_bf16": "AVX512-BF16",
    "amx_int8": "AMX-INT8",
    "amx_bf16": "AMX-BF16",
}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="+", required=True, help="config files")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--iters", type=int, default=5, help="timed repetitions of batch 1")
    parser.add_argument("--batch", type=int, default=4, help="batch size for throughput")
    parser.add_argument("--batch-iters", type=int, default=2, help="timed repetitions of --batch")
    parser.add_argument("--train-batch", type=int, default=4)
    parser.add_argument("--train-iters", type=int, default=2, help="0 skips training")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's default)")
    parser.add_argument(
        "--int8-calib", type=int, default=8, help="random calibration images of the int8 mode"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-flops", action="store_true", help="skip the FLOP count")
    parser.add_argument("--output", help="write every figure to this JSON file")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return parser.parse_args()


def load_cfg(config_file, args):
    # Random weights unless MODEL.WEIGHTS is among the overrides, which come after.
    cfg = dssd_d2.get_ssd_cfg(config_file, ["MODEL.WEIGHTS", "", *args.opts])
    cfg.MODEL.DEVICE = args.device
    return cfg


def random_images(cfg, count, seed=0):
    """``count`` random (C, H, W) images of the config's fixed size, pixel values 0-255."""
    size, channels = cfg.INPUT.FIXED_SIZE, len(cfg.MODEL.PIXEL_MEAN)
    rng = np.random.RandomState(seed)
    return [
        torch.from_numpy(rng.randint(0, 256, (channels, size, size)).astype("float32"))
        for _ in range(count)
    ]


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


class Timer:
    """Wall-clock stage times, with device synchronisation between stages."""

    def __init__(self, device):
        self.device = device
        self.marks = []

    def mark(self):
        synchronize(self.device)
        self.marks.append(time.perf_counter())

    def stages(self):
        return np.diff(self.marks).tolist()


def run_ours(model, images, bf16=False):
    """DenseDetector.forward in inference, stage by stage: (pre, network, post) seconds."""
    timer = Timer(model.device)
    timer.mark()
    batched = model.preprocess_image([{"image": image} for image in images])
    timer.mark()
    with bf16_autocast(bf16):
        features = model.backbone(batched.tensor)
        features = [features[f] for f in model.head_in_features]
        predictions = model.head(features)
    timer.mark()
    results = model.forward_inference(batched, features, predictions)
    [detector_postprocess(r, *size) for r, size in zip(results, batched.image_sizes)]
    timer.mark()
    return timer.stages()


def run_torchvision(model, images):
    """torchvision's SSD.forward in inference, stage by stage: (pre, network, post) seconds."""
    timer = Timer(images[0].device)
    timer.mark()
    original_sizes = [tuple(image.shape[-2:]) for image in images]
    batched, _ = model.transform(images)
    timer.mark()
    features = list(model.backbone(batched.tensors).values())
    head_outputs = model.head(features)
    timer.mark()
    anchors = model.anchor_generator(batched, features)
    detections = model.postprocess_detections(head_outputs, anchors, batched.image_sizes)
    model.transform.postprocess(detections, batched.image_sizes, original_sizes)
    timer.mark()
    return timer.stages()


def build_modes(cfg, model, args):
    """{mode: (callable(images) -> stage seconds, images transform)} for the requested modes."""
    device = model.device
    size = cfg.INPUT.FIXED_SIZE
    runners = {"eager": lambda images: run_ours(model, images)}
    if count_batch_norms(model):
        folded = fold_batch_norm(copy.deepcopy(model))
        runners["folded"] = lambda images: run_ours(folded, images)
    if device.type == "cpu":
        fast = optimize_for_inference(copy.deepcopy(model), size)
        runners["fast"] = lambda images: run_ours(fast, images)
        fast_bf16 = optimize_for_inference(copy.deepcopy(model), size, onednn_graph=False)
        runners["fast-bf16"] = lambda images: run_ours(fast_bf16, images, bf16=True)
        if "int8" in args.modes:
            runners["int8"] = int8_runner(cfg, model, args)
    vgg300 = cfg.MODEL.BACKBONE.NAME == "build_vgg_ssd_backbone" and size == 300
    if vgg300 and "torchvision" in args.modes:
        from torchvision.models.detection import ssd300_vgg16

        reference = ssd300_vgg16(
            weights=None, weights_backbone=None, num_classes=cfg.MODEL.SSD.NUM_CLASSES + 1
        )
        reference.to(device).eval()
        # torchvision takes RGB images scaled to [0, 1]; ours take 0-255 in INPUT.FORMAT.
        runners["torchvision"] = lambda images: run_torchvision(
            reference, [image / 255.0 for image in images]
        )
    return {mode: run for mode, run in runners.items() if mode in args.modes}


def int8_runner(cfg, model, args):
    """The int8 model of ``model`` (quantized on random images: speed does not depend on the
    calibration data) and its runner; prints how long quantization took."""
    from dssd_d2.deploy.quantize import quantize_network, use_int8_network

    size = cfg.INPUT.FIXED_SIZE
    calibration = random_images(cfg, args.int8_calib, seed=3)
    graph, report = quantize_network(model, calibration, size)
    int8 = use_int8_network(copy.deepcopy(model), graph, size)
    print(
        f"int8: quantized in {report['seconds']} s on {len(calibration)} random images "
        f"({report['fake_quantize_nodes']} quantizers, {report['convolutions']} convolutions)",
        flush=True,
    )
    return lambda images: run_ours(int8, images)


def cpu_features():
    """The CPU's int8/bf16-relevant instruction sets, from /proc/cpuinfo (Linux)."""
    flags = cpu.flags() or set()
    return [name for flag, name in CPU_FEATURES.items() if flag in flags]


def interleaved(runners, images, iters, warmup):
    """Median stage times per mode, repetitions interleaved across modes."""
    times = {mode: [] for mode in runners}
    for i in range(warmup + iters):
        for mode, run in runners.items():
            stages = run(images)
            if i >= warmup:
                times[mode].append(stages)
    return {
        mode: {
            "total": statistics.median(sum(s) for s in samples),
            "pre": statistics.median(s[0] for s in samples),
            "network": statistics.median(s[1] for s in samples),
            "post": statistics.median(s[2] for s in samples),
            "samples": [sum(s) for s in samples],
        }
        for mode, samples in times.items()
    }


def peak_memory_mb(run, images, device):
    """Peak memory allocated by tensors during one call (weights excluded), in MiB."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        run(images)
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run(images)
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    current = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        current += event.nbytes()
        peak = max(peak, current)
    return peak / 2**20


# Training modes: (SOLVER.AMP.ENABLED, MODEL.CHANNELS_LAST).
TRAIN_MODES = {"fp32": (False, False), "fp32-cl": (False, True), "bf16-cl": (True, True)}


def training_images_per_second(cfg, args):
    """Training steps (forward, backward, SGD step) of the step trainer that SSDTrainer builds,
    on random images with two boxes, per TRAIN_MODES entry, interleaved."""
    size = cfg.INPUT.FIXED_SIZE
    inputs = []
    for image in random_images(cfg, args.train_batch, seed=1):
        instances = Instances((size, size))
        boxes = [[0.1, 0.2, 0.5, 0.6], [0.4, 0.3, 0.9, 0.8]]
        instances.gt_boxes = Boxes(torch.tensor(boxes) * size)
        instances.gt_classes = torch.tensor([0, 1])
        inputs.append({"image": image, "instances": instances})
    steps = {}
    for mode, (amp, channels_last) in TRAIN_MODES.items():
        torch.manual_seed(0)
        model = build_model(cfg).train()
        if channels_last:
            model.to(memory_format=torch.channels_last)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=1e-4, momentum=0.9)
        steps[mode] = build_step_trainer(
            model, itertools.repeat(inputs), optimizer, amp=amp, emulated_bf16=True
        )
    times = {mode: [] for mode in steps}
    with EventStorage() as storage:
        for i in range(1 + args.train_iters):
            for mode, step in steps.items():
                storage.iter = step.iter = i
                synchronize(step.model.device)
                start = time.perf_counter()
                step.run_step()
                synchronize(step.model.device)
                if i > 0:
                    times[mode].append(time.perf_counter() - start)
    return {mode: args.train_batch / statistics.median(t) for mode, t in times.items()}


def benchmark_config(config_file, args):
    cfg = load_cfg(config_file, args)
    stats = model_stats(cfg, flops=False)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    if cfg.MODEL.WEIGHTS:
        DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    elif count_batch_norms(model):
        calibration = torch.stack(random_images(cfg, 4, seed=2)).to(model.device)
        with torch.no_grad():
            calibrate_batch_norms(model, calibration)
    if not args.no_flops:  # on the calibrated model: random DSSD weights overflow otherwise
        stats["gflops"] = count_gflops(model, cfg.INPUT.FIXED_SIZE)
    device = model.device
    images = [x.to(device) for x in random_images(cfg, args.batch)]
    result = {"config": config_file, **stats, "batch_norms": count_batch_norms(model)}
    with torch.inference_mode():
        runners = build_modes(cfg, model, args)
        result["latency"] = interleaved(runners, images[:1], args.iters, warmup=2)
        result["throughput"] = interleaved(runners, images, args.batch_iters, warmup=1)
        result["peak_memory_mb"] = {
            mode: None if mode == "int8" else peak_memory_mb(run, images[:1], device)
            for mode, run in runners.items()
        }
    if args.train_iters:
        result["train_images_per_s"] = training_images_per_second(cfg, args)
    return result


def format_mb(value):
    return "n/a" if value is None else f"{value:.0f}"


def print_result(result, args):
    gflops = "-" if result["gflops"] is None else f"{result['gflops']:.2f}"
    train = result.get("train_images_per_s")
    if train:
        train = ", ".join(
            f"{mode} {speed:.2f} ({speed / train['fp32']:.2f}x)" for mode, speed in train.items()
        )
    print(
        f"\n### {result['config']}\n\n{result['params'] / 1e6:.3f}M parameters, {gflops} "
        f"GFLOPs, {result['default_boxes']} default boxes, {result['batch_norms']} BatchNorm "
        "layers"
        + (f"; training images/s at batch {args.train_batch}: {train}" if train else "")
        + "\n"
    )
    print(
        f"| mode | batch 1 (ms) | pre | network | post | batch {args.batch} (images/s) "
        "| peak memory (MiB) |"
    )
    print("|---|---|---|---|---|---|---|")
    for mode, latency in result["latency"].items():
        throughput = args.batch / result["throughput"][mode]["total"]
        print(
            f"| {mode} | {latency['total'] * 1e3:.1f} | {latency['pre'] * 1e3:.1f} | "
            f"{latency['network'] * 1e3:.1f} | {latency['post'] * 1e3:.1f} | "
            f"{throughput:.2f} | {format_mb(result['peak_memory_mb'][mode])} |"
        )
    latency = {mode: value["total"] for mode, value in result["latency"].items()}
    comparisons = [("folded", "eager"), ("fast", "eager"), ("fast-bf16", "eager")]
    comparisons += [("int8", "eager"), ("int8", "fast"), ("int8", "fast-bf16")]
    comparisons += [("fast", "torchvision"), ("fast-bf16", "torchvision"), ("eager", "torchvision")]
    comparisons += [("int8", "torchvision")]
    lines = [
        f"{ours} vs {reference}: {latency[reference] / latency[ours]:.2f}x"
        for ours, reference in comparisons
        if ours in latency and reference in latency
    ]
    print("\nSpeed-up at batch 1 (median latency ratio): " + "; ".join(lines), flush=True)


def main():
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    features = cpu_features()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, "
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}, instruction sets "
        f"{', '.join(features) or 'unknown'}; medians of {args.iters} "
        f"(batch 1) and {args.batch_iters} (batch {args.batch}) interleaved repetitions"
    )
    results = []
    for config_file in args.configs:
        results.append(benchmark_config(config_file, args))
        print_result(results[-1], args)
    if args.output:
        with open(args.output, "w") as f:
            json.dump(
                {"args": vars(args), "cpu_features": features, "results": results}, f, indent=1
            )
        print(f"\nWrote {args.output}")


if __name__ == "__main__":
    main()
