"""Multi-process training through Detectron2's launch, on the CPU (gloo): two processes (and two
"machines") train to the same weights as one process with the same total batch (plain,
synchronised BatchNorm, gradient accumulation), evaluate to the same AP, sum their skipped
images, refuse to resume from different checkpoints; a killed two-process train_net.py run
resumes to the end; BatchNorms that would crash at one image per process are refused at build
time, and each model family trains at one image per process with the settings of docs/distributed.md."""

import atexit
import os
import socket

import pytest
import torch
from torch import nn

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import default_argument_parser
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng

from dssd_d2.engine import SSDTrainer
from dssd_d2.checks import check_batch_norm_batches
from dssd_d2.engine import distributed
from dssd_d2.engine.distributed import create_ddp_model, launch, launch_from_args

from helpers import (
    assert_same_training,
    kill_and_resume,
    make_cfg,
    register_random_dataset,
    start_train_net,
    tiny_dsod_cfg,
    tiny_resnet_cfg,
    tiny_run_cfg,
    tiny_ssd300_cfg,
    train_and_track,
    without_random_augmentation,
)

pytestmark = pytest.mark.usefixtures("single_thread")

SEED = 3
DATASET, BAD_DATASET = "dssd_d2_test_ddp", "dssd_d2_test_ddp_bad"
BAD_IMAGES = (1, 4, 6)  # truncated files in BAD_DATASET


def _cfg(folder, output, dataset=DATASET, changes=None):
    """Tiny SSD300 without random augmentation: the batches of one process and of two processes
    then hold the same images, and the same images give the same gradients."""
    cfg = tiny_ssd300_cfg(num_classes=3)
    cfg.DATASETS.TRAIN = (dataset,)
    cfg.DATASETS.TEST = (DATASET,)
    without_random_augmentation(cfg)
    # Grouping by the original aspect ratio happens in each process, so one process and two
    # would batch different images (SSD resizes every image to the same square anyway).
    cfg.DATALOADER.ASPECT_RATIO_GROUPING = False
    cfg.MODEL.WEIGHTS = os.path.join(folder, "init.pth")
    cfg.MODEL.SSD.SCORE_THRESH_TEST = 0.0  # every image gets detections: AP above zero
    # Every negative in the loss: hard-negative mining ranks thousands of nearly equal losses,
    # and the last-bit differences between convolutions of 1 and 2 images swap which ones are
    # picked (a few percent of the first level's gradient), which is not what this tests.
    cfg.MODEL.SSD.NEG_POS_RATIO = 1e6
    cfg.SOLVER.IMS_PER_BATCH = 4
    cfg.SOLVER.BASE_LR = 0.0005
    cfg.SOLVER.WARMUP_ITERS = 0
    cfg.SOLVER.STEPS = ()
    cfg.SOLVER.MAX_ITER = 3
    cfg.SOLVER.CHECKPOINT_PERIOD = 1000
    cfg.TEST.EVAL_PERIOD = 0
    cfg.OUTPUT_DIR = os.path.join(folder, output)
    for key, value in (changes or {}).items():
        cfg.merge_from_list([key, value])
    return cfg


# name -> config changes; every variant trains 3 iterations.
VARIANTS = {
    "plain": {},  # no BatchNorm, 2 images per process
    # 2 images per process. (At 1, the 1x1 map's statistics come from 2 values whose variance
    # can be near 0, and 1 / sqrt(variance) blows float noise up: no use for comparing.)
    "sync_bn": {"MODEL.VGG.NORM": "naiveSyncBN", "MODEL.SSD_EXTRAS.NORM": "naiveSyncBN"},
    "accumulation": {"SOLVER.IMS_PER_BATCH": 2, "SOLVER.ACCUMULATION_STEPS": 2},  # 1 per process
}


def _variant_cfg(folder, variant, processes):
    return _cfg(folder, f"{variant}_{processes}", changes=VARIANTS[variant])


def _register(folder):
    register_random_dataset(DATASET, folder, num_images=8)
    register_random_dataset(BAD_DATASET, folder, num_images=8)


def _train(cfg):
    """Train from MODEL.WEIGHTS with the seeds that Detectron2's default_setup gives each rank;
    returns the trainer."""
    seed_all_rng(SEED + comm.get_rank())
    trainer = SSDTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    return trainer


def _two_process_worker(folder):
    """Run in each of two processes: train every variant (rank 0 writes model_final.pth) and
    evaluate it; train on BAD_DATASET and report the skipped images; resume from an OUTPUT_DIR
    that differs between the processes."""
    _register(folder)
    report = {}
    for variant in VARIANTS:  # trained, then evaluated (gathered on rank 0)
        report[variant] = _train(_variant_cfg(folder, variant, processes=2))._last_eval_results
    cfg = _cfg(folder, "skips_2", dataset=BAD_DATASET)
    cfg.DATASETS.TEST = ()
    trainer = _train(cfg)
    local = trainer._trainer.data_loader.skipped
    logged, _ = trainer.storage.latest()["data/skipped_images"]
    report["skipped"] = (comm.all_gather(local), logged)
    # --resume with an OUTPUT_DIR that is not shared: only rank 0 finds a checkpoint
    trainer = SSDTrainer(_cfg(folder, f"unshared_{comm.get_rank()}"))
    if comm.is_main_process():
        trainer.checkpointer.save("model_0000001")
    try:
        trainer.resume_or_load(resume=True)
        report["unshared"] = comm.all_gather(None)
    except RuntimeError as e:
        report["unshared"] = comm.all_gather(str(e))
    if comm.is_main_process():
        torch.save(report, os.path.join(folder, "report.pth"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Initial weights, datasets, and the two-process runs (one launch for all variants)."""
    folder = str(tmp_path_factory.mktemp("ddp"))
    _register(folder)
    for i in BAD_IMAGES:
        path = os.path.join(folder, f"{BAD_DATASET}_{i}.png")
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
    cfg = _cfg(folder, "init")
    torch.manual_seed(0)
    torch.save({"model": SSDTrainer.build_model(cfg).state_dict()}, cfg.MODEL.WEIGHTS)
    launch(_two_process_worker, 2, dist_url="auto", args=(folder,))
    return folder, torch.load(os.path.join(folder, "report.pth"), weights_only=False)


def _final_weights(cfg):
    return torch.load(os.path.join(cfg.OUTPUT_DIR, "model_final.pth"))["model"]


def _one_process(folder, variant):
    """The variant trained in this process (once), as the reference."""
    cfg = _variant_cfg(folder, variant, processes=1)
    if not os.path.exists(os.path.join(cfg.OUTPUT_DIR, "model_final.pth")):
        _train(cfg)
    return _final_weights(cfg)


def _assert_same_training(folder, got, want, **tolerance):
    init = torch.load(os.path.join(folder, "init.pth"))["model"]
    return assert_same_training(init, got, want, **tolerance)


@pytest.mark.slow
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_two_processes_train_the_weights_of_one(runs, variant):
    folder, _ = runs
    got = _final_weights(_variant_cfg(folder, variant, processes=2))
    # naiveSyncBN computes the variance in one pass (E[x^2] - E[x]^2, summed over processes),
    # BatchNorm in two: on the 1x1 map's 4 values that rounding reaches 1e-3 of a weight after
    # three steps (measured 3.5e-4 at most); the norm check below still bounds the whole.
    tolerance = dict(rtol=1e-3, atol=1e-3) if variant == "sync_bn" else {}
    compared = _assert_same_training(folder, got, _one_process(folder, variant), **tolerance)
    assert any(k.endswith("running_mean") for k in compared) == (variant == "sync_bn")


@pytest.mark.slow
def test_two_machines_train_the_weights_of_one_process(runs, tmp_path):
    """train_net.py's --num-machines, --machine-rank and --dist-url: two "machines" of one
    process each (two launchers on this host)."""
    folder, _ = runs
    cfg = _variant_cfg(folder, "plain", processes="machines")
    cfg.SEED = SEED  # default_setup seeds each process with SEED + rank, as _train does
    cfg_file = str(tmp_path / "plain.yaml")
    with open(cfg_file, "w") as f:
        f.write(cfg.dump())
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        url = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    logs = [tmp_path / f"machine{rank}.log" for rank in (0, 1)]
    machines = []
    for rank, log in enumerate(logs):
        with open(log, "wb") as f:
            args = ["--num-machines", "2", "--machine-rank", str(rank), "--dist-url", url]
            machines.append(
                start_train_net(
                    folder, f, "--config-file", cfg_file, *args, dataset=DATASET, num_images=8
                )
            )
    for machine, log in zip(machines, logs):
        assert machine.wait(timeout=900) == 0, log.read_text()
    assert "Rank of current process: 0. World size: 2" in logs[0].read_text()
    _assert_same_training(folder, _final_weights(cfg), _one_process(folder, "plain"))


@pytest.mark.slow
def test_two_process_evaluation_gives_the_ap_of_one(runs):
    folder, report = runs
    cfg = _variant_cfg(folder, "plain", processes=2)
    cfg.MODEL.WEIGHTS = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    model = SSDTrainer.build_model(cfg)
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    one = SSDTrainer.test(cfg, model)
    two = report["plain"]
    assert one["bbox"]["AP50"] > 0
    assert two["bbox"] == pytest.approx(one["bbox"], abs=1e-9, nan_ok=True)


@pytest.mark.slow
def test_skipped_images_are_summed_over_processes(runs):
    _, report = runs
    per_process, logged = report["skipped"]
    assert all(n > 0 for n in per_process), per_process  # both processes met bad images
    assert logged == sum(per_process)


@pytest.mark.slow
def test_resume_refuses_processes_that_see_different_checkpoints(runs):
    _, report = runs
    assert len(report["unshared"]) == 2  # both processes stopped, with the same message
    for message in report["unshared"]:
        assert "different last checkpoints" in message
        assert "['model_0000001.pth', '']" in message
        assert "needs OUTPUT_DIR on a file system that every machine shares" in message


def _gloo_threads():
    names = (
        open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task")
    )
    return sorted(name for name in names if "gloo" in name)


def _leave_gloo_work_behind(folder):
    """Run in each of two processes: what a training run leaves when it returns (a finished
    comm.all_gather, a DDP model in a reference cycle); writes gloo's threads now and at exit,
    after launch has freed the process groups."""
    comm.all_gather(comm.get_rank())
    model = create_ddp_model(nn.Linear(2, 2))
    model(torch.ones(1, 2)).sum().backward()
    model.module.owner = model  # as trainers and their hooks refer to each other
    path = os.path.join(folder, f"threads_{comm.get_rank()}.pth")
    running = _gloo_threads()
    atexit.register(lambda: torch.save({"running": running, "at exit": _gloo_threads()}, path))


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="lists threads from /proc")
def test_launch_joins_gloo_threads_before_the_interpreter_exits(tmp_path):
    """A gloo worker thread still running at exit can abort a finished process (SIGABRT,
    "terminate called without an active exception") if it releases a collective's tensors
    then: launch frees the process groups, which joins their threads, when main_func returns."""
    launch(_leave_gloo_work_behind, 2, dist_url="auto", args=(str(tmp_path),))
    for rank in (0, 1):
        threads = torch.load(tmp_path / f"threads_{rank}.pth")
        assert threads["running"]  # gloo's threads as named by this torch: the check sees them
        assert threads["at exit"] == [], threads


@pytest.mark.slow
def test_two_process_run_killed_with_sigkill_resumes_to_the_same_end(tmp_path):
    # The launcher is killed right after the checkpoint of iteration 7 (of 3, 7 and the final).
    cfg = tiny_run_cfg(tmp_path, max_iter=12, checkpoint_period=4)
    log = kill_and_resume(tmp_path, cfg, "--num-gpus", "2", "--dist-url", "auto", kill_after=7)
    assert "Rank of current process: 0. World size: 2" in log


def test_one_machine_jobs_take_a_free_port_unless_given_one(monkeypatch):
    """Detectron2's default --dist-url is one port per user: a second job of the same user on
    the machine would fail with EADDRINUSE."""
    urls = []
    monkeypatch.setattr(distributed, "d2_launch", lambda *args, **kw: urls.append(kw["dist_url"]))
    parser = default_argument_parser()
    given = "tcp://127.0.0.1:1234"
    for argv in (
        ["--num-gpus", "2"],
        ["--num-gpus", "2", "--dist-url", given],
        ["--num-machines", "2"],
    ):
        launch_from_args(print, parser.parse_args(argv))
    assert urls == ["auto", given, parser.get_default("dist_url")]


# ---------------------------------------------------------------- one image per process
def _bn_ssd300_cfg():
    """SSD300's geometry (its last map is 1x1) with narrow layers and BatchNorm everywhere, as
    in configs/BCCD/ssd300_vgg16_cpu.yaml; extras of 64 channels, so that GroupNorm's 32 groups
    see 2 values each on the 1x1 map (with one channel per group it fails like BatchNorm)."""
    cfg = tiny_ssd300_cfg(num_classes=3)
    cfg.MODEL.VGG.NORM = "BN"
    cfg.MODEL.SSD_EXTRAS.NORM = "BN"
    cfg.MODEL.SSD_EXTRAS.CONV_DIMS = [[64, 64]] * 4
    return cfg


def test_batch_norm_on_a_1x1_map_at_one_image_fails_at_build_time_naming_the_key():
    cfg = _bn_ssd300_cfg()
    cfg.SOLVER.IMS_PER_BATCH = 1
    cfg.DATASETS.TRAIN = ("no_such_dataset",)  # the check comes before any data is read
    with pytest.raises(ValueError) as error:
        SSDTrainer(cfg)
    message = str(error.value)
    assert "at 1 image(s) per process (SOLVER.IMS_PER_BATCH 1 over 1 process(es)" in message
    assert "backbone.extras.levels.3.2.norm: input 64x1x1, 1 value per channel" in message
    assert "built by MODEL.SSD_EXTRAS.NORM 'BN'. Fixes" in message  # and not MODEL.VGG.NORM
    for fix in ('NORM "GN"', 'NORM "FrozenBN"', 'NORM "naiveSyncBN"', "IMS_PER_BATCH >= 2"):
        assert fix in message


def test_batch_norm_check_names_layers_that_no_key_builds():
    cfg = _bn_ssd300_cfg()
    cfg.MODEL.SSD_EXTRAS.NORM = ""
    cfg.SOLVER.IMS_PER_BATCH = 1
    model = SSDTrainer.build_model(cfg)
    model.backbone.extras.levels[3][2].norm = nn.BatchNorm2d(64)  # a BatchNorm put in by code
    with pytest.raises(ValueError) as error:
        check_batch_norm_batches(model, SSDTrainer.training_setup(cfg))
    assert (
        "built by code with no *.NORM key (backbone.extras.levels.3.2.norm: BatchNorm whatever "
        "the config; MODEL.SSD.FREEZE can freeze them). Fixes"
    ) in str(error.value)


def _check_batch_norms(cfg):
    check_batch_norm_batches(SSDTrainer.build_model(cfg), SSDTrainer.training_setup(cfg))


def test_batch_norm_check_counts_images_and_processes(monkeypatch):
    cfg = _bn_ssd300_cfg()
    model = SSDTrainer.build_model(cfg)
    cfg.SOLVER.IMS_PER_BATCH = 2
    setup = SSDTrainer.training_setup(cfg)
    check_batch_norm_batches(model, setup)  # 2 values per channel on the 1x1 map
    monkeypatch.setattr(comm, "get_world_size", lambda: 2)  # 2 processes, one image each
    with pytest.raises(ValueError, match=r"1 image\(s\) per process .* over 2 process"):
        check_batch_norm_batches(model, setup)
    cfg.MODEL.SSD_EXTRAS.NORM = "naiveSyncBN"  # statistics over both processes: 2 values
    _check_batch_norms(cfg)
    cfg.MODEL.SSD_EXTRAS.NORM = "SyncBN"  # torch.nn.SyncBatchNorm: GPU only
    with pytest.raises(
        ValueError, match=r"levels.0.0.norm: torch.nn.SyncBatchNorm, which runs only"
    ):
        _check_batch_norms(cfg)


def _family_cfg(family):
    """A narrow model of each family with the settings of docs/distributed.md for one image per process."""
    if family == "SSD300":
        cfg = _bn_ssd300_cfg()
        cfg.MODEL.SSD_EXTRAS.NORM = "GN"
    elif family == "DSSD321 stage 1":
        cfg = tiny_resnet_cfg("PascalVOC-Detection/dssd321_R_101.yaml")
        cfg.MODEL.SSD_HEAD.PREDICTION_MODULE_DIMS = [64, 64]
        cfg.MODEL.SSD_HEAD.NORM = "GN"
    elif family == "DSOD300":  # at 300 pixels: the last map is 2x2
        cfg = make_cfg("PascalVOC-Detection/dsod300.yaml")
        for key, value in tiny_dsod_cfg().MODEL.DSOD.items():
            if key.endswith(("WIDTH", "RATE", "LAYERS", "CHANNELS")):
                cfg.MODEL.DSOD[key] = value
        cfg.MODEL.SSD.NUM_CLASSES = 3
        cfg.SOLVER.ACCUMULATION_STEPS = 1
    else:  # RetinaNet over the DSSD decoder
        cfg = tiny_resnet_cfg("Misc/retinanet_dssd_R_101.yaml")
        cfg.MODEL.SSD_EXTRAS.CONV_DIMS = [[64, 64]] * 4
        cfg.MODEL.SSD_EXTRAS.NORM = "GN"
    cfg.DATALOADER.NUM_WORKERS = 0
    return cfg


@pytest.mark.slow
@pytest.mark.parametrize(
    "family", ["SSD300", "DSSD321 stage 1", "DSOD300", "RetinaNet over the DSSD decoder"]
)
def test_each_family_trains_at_one_image_per_process(tmp_path, family):
    cfg = _family_cfg(family)
    cfg.DATASETS.TRAIN = (register_random_dataset(DATASET, tmp_path, num_images=8),)
    cfg.DATASETS.TEST = ()
    cfg.SOLVER.IMS_PER_BATCH = 1
    cfg.SOLVER.MAX_ITER = 1
    cfg.SOLVER.BASE_LR = 0.001
    cfg.SOLVER.WARMUP_ITERS = 0
    cfg.MODEL.WEIGHTS = ""
    torch.manual_seed(0)
    trainer, changed = train_and_track(cfg, tmp_path / "out")
    assert changed
    assert torch.isfinite(torch.tensor(trainer.storage.history("total_loss").latest()))
