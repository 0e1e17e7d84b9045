"""Run records: what a training run was and what it measured, as one JSON file.

Every training tool (train_net.py, tools/lazyconfig_train_net.py, the peer tools) writes
``run_record.json`` into its output folder when it ends. A record that backs a number in the
docs is copied into ``results/<study>/<name>.json`` (``tools/add_result.py``), and
``tools/make_tables.py`` renders the docs' tables from those files, so that no documented number
is typed by hand. A record carries enough to re-run and to judge the run: the command, config and
overrides, the commit, the date, the CPU and its instruction sets (speed depends on them), the
threads, the training minutes and iterations, and every metric the evaluators returned.
"""

import datetime
import json
import logging
import os
import platform
import subprocess
import sys
import time

import torch

from detectron2.engine import HookBase
from detectron2.evaluation.testing import flatten_results_dict

from .cpu import flags

__all__ = [
    "RunRecordHook",
    "cpu_description",
    "describe_machine",
    "make_run_record",
    "write_run_record",
]

RECORD_FILE = "run_record.json"
# The instruction sets that decide which number formats train fast here (dssd_d2/cpu.py).
_SPEED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8")


def cpu_description() -> dict:
    """The processor's model name and the instruction sets that matter for speed."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(
                (line.split(":", 1)[1].strip() for line in f if line.startswith("model name")),
                model,
            )
    except OSError:
        pass
    found = flags() or set()
    return {"model": model, "flags": [f for f in _SPEED_FLAGS if f in found], "cores": os.cpu_count()}


def _commit() -> str:
    """The project's commit, with ``+dirty`` when its tracked files differ from it."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def git(*args):
        return subprocess.run(
            ["git", "-C", root, *args], capture_output=True, text=True, timeout=30
        ).stdout.strip()

    try:
        head = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head + ("+dirty" if dirty else "")) if head else "unknown"


def describe_machine() -> dict:
    """Where and when a measurement ran: commit, date, CPU, threads, torch."""
    return {
        "commit": _commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "cpu": cpu_description(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def make_run_record(
    *,
    tool: str,
    config_file: str,
    overrides,
    model: str,
    datasets: dict,
    results: dict,
    iterations: int,
    batch_size: int,
    training_minutes: float | None,
    wall_minutes: float,
    settings: dict | None = None,
) -> dict:
    """A run's record. ``results`` is what the evaluators returned ({dataset: {task: {metric:
    value}}} or {task: {...}} for one dataset); it is stored flat per dataset, per-class AP
    included. ``settings`` holds what else decides the result (precision, learning rate, ...)."""
    if results and not all(isinstance(v, dict) and v and isinstance(next(iter(v.values())), dict)
                           for v in results.values()):
        results = {datasets["test"][0] if datasets.get("test") else "test": results}
    return {
        "tool": tool,
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "config_file": config_file,
        "overrides": list(overrides),
        "model": model,
        **describe_machine(),
        "datasets": datasets,
        "iterations": int(iterations),
        "batch_size": int(batch_size),
        "training_minutes": None if training_minutes is None else round(training_minutes, 3),
        "wall_minutes": round(wall_minutes, 3),
        "settings": settings or {},
        "metrics": {
            name: {k: float(v) for k, v in flatten_results_dict(result).items()}
            for name, result in results.items()
        },
    }


def write_run_record(record: dict, output_dir: str) -> str:
    """Writes ``record`` as OUTPUT_DIR/run_record.json; returns the path."""
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, RECORD_FILE)
    with open(path, "w") as f:
        json.dump(record, f, indent=2, sort_keys=False)
        f.write("\n")
    return path


class RunRecordHook(HookBase):
    """Writes the trainer's run record when its training ends (not when it fails). Register it
    after the EvalHook, whose final results it records, on the main process only. ``describe``
    holds the record's run-specific fields (tool, config_file, overrides, model, datasets,
    batch_size, settings); ``results(trainer)`` returns the final evaluation."""

    def __init__(self, output_dir: str, describe: dict, results, clock=None):
        self._output_dir = output_dir
        self._describe = describe
        self._results = results
        self._clock = clock
        self._start = time.perf_counter()

    def before_train(self):
        self._start = time.perf_counter()

    def after_train(self):
        trainer = self.trainer
        if trainer.iter < trainer.max_iter:  # the loop was left by an exception
            return
        if self._clock:
            minutes = self._clock.elapsed / 60.0
        else:  # IterationTimer's step times (none in a run shorter than its 3 warm-up steps)
            times = trainer.storage.histories().get("time")
            minutes = sum(t for t, _ in times.values()) / 60.0 if times else None
        record = make_run_record(
            **self._describe,
            results=self._results(trainer) or {},
            iterations=trainer.iter,
            training_minutes=minutes,
            wall_minutes=(time.perf_counter() - self._start) / 60.0,
        )
        logging.getLogger(__name__).info(f"Run record: {write_run_record(record, self._output_dir)}")
