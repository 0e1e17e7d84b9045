#!/usr/bin/env python
"""Where a CPU training step's time goes, and what makes it faster.

    python tools/profile_step.py [--config-file configs/BCCD/tiny_dsod256_cpu.yaml] \
        [--threads 1] [--steps 20] [--variants fp32 fp32-cl bf16 bf16-cl] \
        [--profile bf16-cl fp32] [KEY VALUE ...]

One batch of the config's training set (SSDDatasetMapper with its augmentations, batch
SOLVER.IMS_PER_BATCH) is fed again and again to the step trainer that train_net.py builds
(forward, loss, backward, clipped optimizer step), so the figures are the model's step without
data loading (a DataLoader worker does that in parallel). Variants, each a fresh model from the
same seed, measured interleaved (a step of each in turn, --steps rounds) so that a busy machine
slows all alike; ratios are against the first variant:

- fp32 / fp32-cl: float32, contiguous or channels-last (MODEL.CHANNELS_LAST);
- bf16 / bf16-cl: bfloat16 autocast (SOLVER.AMP.ENABLED on a CPU);
- *-compile: the backbone and head under torch.compile (inductor); the matching and losses
  stay eager (their shapes change with every batch's boxes). Not by default: its first step
  compiles for minutes;
- *-flushdenormal: torch.set_flush_denormal(True) while the variant runs.

--profile prints torch.profiler's top operators by self CPU time for the named variants.
"""

import argparse
import contextlib
import itertools
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile

from detectron2.data import DatasetCatalog
from detectron2.engine import DefaultTrainer
from detectron2.modeling import build_model
from detectron2.utils.env import seed_all_rng
from detectron2.utils.events import EventStorage

import dssd_d2
from dssd_d2.data import SSDDatasetMapper
from dssd_d2.engine.accumulation import build_step_trainer
from dssd_d2.run_record import cpu_description

VARIANTS = ("fp32", "fp32-cl", "bf16", "bf16-cl")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config-file", default="configs/BCCD/tiny_dsod256_cpu.yaml")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=20, help="timed rounds")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--profile", nargs="*", default=["bf16-cl", "fp32"])
    parser.add_argument("--profile-steps", type=int, default=5)
    parser.add_argument("--rows", type=int, default=15, help="operators shown per profile")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args()
    for name in args.variants + args.profile:
        base = name.replace("-compile", "").replace("-flushdenormal", "")
        if base not in ("fp32", "fp32-cl", "bf16", "bf16-cl"):
            parser.error(
                f"unknown variant {name!r}: {', '.join(VARIANTS)}, with -compile or -flushdenormal"
            )
    return args


def training_batch(cfg):
    """The first SOLVER.IMS_PER_BATCH images of the training set, mapped for training."""
    seed_all_rng(0)
    mapper = SSDDatasetMapper(cfg, is_train=True)
    dicts = DatasetCatalog.get(cfg.DATASETS.TRAIN[0])
    batch = [mapper(d) for d in dicts[: cfg.SOLVER.IMS_PER_BATCH]]
    if any(b is None for b in batch):
        raise RuntimeError(f"an image of {cfg.DATASETS.TRAIN[0]} could not be read")
    return batch


def build_step(cfg, variant, batch):
    """The step trainer of ``variant`` over ``batch`` repeated (train_net.py's parts)."""
    torch.manual_seed(0)
    model = build_model(cfg).train()
    if "-cl" in variant:
        model.to(memory_format=torch.channels_last)
    if "-compile" in variant:
        model.backbone = torch.compile(model.backbone)
        model.head = torch.compile(model.head)
    optimizer = DefaultTrainer.build_optimizer(cfg, model)  # with the config's clipping
    return build_step_trainer(
        model,
        itertools.repeat(batch),
        optimizer,
        amp=variant.startswith("bf16"),
        emulated_bf16=True,
    )


@contextlib.contextmanager
def variant_context(variant):
    if "-flushdenormal" not in variant:
        yield
        return
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def run_steps(step, variant, count, storage):
    times = []
    with variant_context(variant):
        for _ in range(count):
            storage.iter = step.iter = step.iter + 1
            start = time.perf_counter()
            step.run_step()
            times.append(time.perf_counter() - start)
    return times


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    cfg = dssd_d2.get_ssd_cfg(args.config_file, ["MODEL.WEIGHTS", "", *args.opts])
    cfg.MODEL.DEVICE = "cpu"
    print(f"CPU: {cpu_description()}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    batch = training_batch(cfg)
    boxes = sum(len(b["instances"]) for b in batch)
    print(
        f"{args.config_file}: batch of {len(batch)} images at {cfg.INPUT.FIXED_SIZE}, "
        f"{boxes} boxes"
    )

    names = list(dict.fromkeys(args.variants + args.profile))
    steps = {}
    with EventStorage() as storage:
        for name in names:
            start = time.perf_counter()
            steps[name] = build_step(cfg, name, batch)
            steps[name].iter = 0
            run_steps(steps[name], name, 1, storage)  # first step: compilation, if any
            print(f"{name}: first step {time.perf_counter() - start:.1f} s (build included)")
        times = {name: [] for name in args.variants}
        for i in range(args.warmup + args.steps):
            for name in args.variants:
                spent = run_steps(steps[name], name, 1, storage)
                if i >= args.warmup:
                    times[name] += spent
        base = statistics.median(times[args.variants[0]])
        print(f"\nMedian training step over {args.steps} interleaved rounds:")
        for name in args.variants:
            median = statistics.median(times[name])
            spread = (min(times[name]), max(times[name]))
            print(
                f"  {name:24s} {median * 1000:8.1f} ms  ({spread[0] * 1000:.0f}-"
                f"{spread[1] * 1000:.0f})  {base / median:5.2f}x {args.variants[0]}'s speed"
            )
        for name in args.profile:
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                run_steps(steps[name], name, args.profile_steps, storage)
            table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows)
            print(f"\n{name}: top operators by self CPU time over {args.profile_steps} steps")
            print(table)


if __name__ == "__main__":
    main()
