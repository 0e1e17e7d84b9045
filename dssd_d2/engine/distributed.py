"""Multi-process training through Detectron2's ``launch``, on GPU machines (NCCL) and on CPU-only
machines (gloo): DDP with device ids only on a GPU, workers that never outlive their launcher, and
a failure (a collective that timed out included) that names its process and iteration.

Two jobs on one machine: Detectron2's ``--dist-url`` defaults to a port fixed per user
(``tcp://127.0.0.1:<49152 + hash(uid) % 16384>``), so a second job of the same user would fail
with EADDRINUSE. :func:`launch_from_args` gives a one-machine job a free port instead (Detectron2's
``--dist-url auto``) unless ``--dist-url`` is given; give each multi-machine job its own
``--dist-url tcp://<host of machine 0>:<port>``.

A process blocked in a collective (a peer that died or took another path) waits at most the
``timeout`` of :func:`launch` (Detectron2's 30 minutes by default), then fails with an error that
names its rank and iteration, and the launcher ends the others. A launcher that dies (SIGKILL
included) takes its workers with it within a second, even those blocked in a collective.
"""

import gc
import logging
import os
import signal
import sys
import threading
import time
from typing import Optional

import torch.distributed as dist
from torch import nn

from detectron2.engine import create_ddp_model as d2_create_ddp_model
from detectron2.engine import default_argument_parser
from detectron2.engine import launch as d2_launch
from detectron2.utils import comm

__all__ = ["cpu_group", "create_ddp_model", "launch", "launch_from_args", "note_iteration"]

# How often a worker checks that its launcher is alive (seconds).
_WATCH_PERIOD = 0.5
# The training iteration this process is at, for the messages of a failure or an orphan.
_iteration: Optional[int] = None

logger = logging.getLogger(__name__)


def launch(main_func, num_processes_per_machine: int, *, args=(), **kwargs):
    """Detectron2's ``launch`` (same arguments, ``timeout`` included: how long a collective may
    wait), in which each worker watches its launcher and ends itself when the launcher is gone
    (:func:`_watch_launcher`), names its rank and iteration in any error, and frees its process
    groups once ``main_func`` has returned (:func:`_free_process_groups`).

    torch ends a dead launcher's workers with a SIGINT (PR_SET_PDEATHSIG), which a worker blocked
    in a collective does not see until the collective returns; the watchdog covers that. A
    launcher started in the background by a shell (``&``, nohup) ignores SIGINT and its workers
    would inherit that, so the launcher takes Python's default SIGINT handler back first."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    d2_launch(_worker, num_processes_per_machine, args=(main_func, *args), **kwargs)


def launch_from_args(main_func, args):
    """:func:`launch` of ``main_func(args)`` with the command line's process, machine and
    address arguments (Detectron2's ``default_argument_parser``); a one-machine job left on
    Detectron2's default address takes a free port, so that two jobs can share a machine."""
    dist_url = args.dist_url
    if args.num_machines == 1 and dist_url == default_argument_parser().get_default("dist_url"):
        dist_url = "auto"
    launch(
        main_func,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=dist_url,
        args=(args,),
    )


def note_iteration(iteration: Optional[int]):
    """Record the training iteration this process is at (the training loop calls it each
    step), for the messages of a failure or of a launcher that is gone."""
    global _iteration
    _iteration = iteration


def _where() -> str:
    at = f" at iteration {_iteration}" if _iteration is not None else " outside the training loop"
    return f"process {comm.get_rank()} of {comm.get_world_size()} (pid {os.getpid()}){at}"


def _worker(main_func, *args):
    """A worker's ``main_func(*args)``, watched (:func:`_watch_launcher`); an error gets a note
    naming this process and its iteration, which the launcher's error shows."""
    if comm.get_world_size() > 1:
        launcher = os.getppid()
        threading.Thread(target=_watch_launcher, args=(launcher,), daemon=True).start()
    try:
        main_func(*args)  # Detectron2's launch drops the result too
    except Exception as e:
        note = f"raised in {_where()}"
        logger.error(f"{type(e).__name__} {note}")
        e.add_note(note)
        raise
    if dist.is_available() and dist.is_initialized():
        _free_process_groups()


def _watch_launcher(launcher: int):
    """End this worker, with a message, once its parent (the launcher) is no longer ``launcher``:
    a thread, so it runs while the main thread is blocked in a collective."""
    while os.getppid() == launcher:
        time.sleep(_WATCH_PERIOD)
    sys.stderr.write(f"dssd_d2: {_where()} ends: its launcher (pid {launcher}) is gone\n")
    sys.stderr.flush()
    os._exit(1)


def _free_process_groups():
    """Destroy the process groups and drop every reference to them, so that gloo joins its
    worker threads now. Left running into the interpreter's exit, a worker thread that is
    still releasing a finished collective's tensors cannot take the GIL and aborts the
    process (SIGABRT, "terminate called without an active exception": 3 of 34 launches of
    tests/test_distributed.py's two-process runs, none of 30 once the groups were freed)."""
    dist.destroy_process_group()
    # Detectron2 keeps two references: the per-machine group of its launch, and the group of
    # comm.all_gather in a cache.
    comm._LOCAL_PROCESS_GROUP = None
    comm._get_global_gloo_group.cache_clear()
    gc.collect()  # DDP models left in reference cycles hold the default group


def cpu_group():
    """The process group for collectives on CPU tensors: the default one under gloo, else
    Detectron2's global gloo group (NCCL takes only GPU tensors)."""
    return None if dist.get_backend() == "gloo" else comm._get_global_gloo_group()


def create_ddp_model(model: nn.Module, **kwargs) -> nn.Module:
    """Detectron2's ``create_ddp_model`` (the model itself in a single process), with device
    ids only for a model on a GPU: Detectron2 always passes ``[local_rank]``, which DDP refuses
    for a CPU model, so ``--num-gpus N`` crashed on a machine without a GPU (gloo)."""
    if comm.get_world_size() > 1 and "device_ids" not in kwargs:
        on_gpu = next(model.parameters()).device.type == "cuda"
        kwargs["device_ids"] = [comm.get_local_rank()] if on_gpu else None
    return d2_create_ddp_model(model, **kwargs)
