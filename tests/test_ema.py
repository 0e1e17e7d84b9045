"""MODEL.EMA: an exponential moving average of the weights (dssd_d2/ema.py), checked against a
hand computation; checkpoints and evaluations hold the EMA, and --resume continues it exactly."""

import math
import os

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from detectron2.engine import HookBase, SimpleTrainer, hooks

from dssd_d2.ema import EMAHook, ModelEMA, ema_hooks
from dssd_d2.engine import SSDTrainer
from dssd_d2.engine.checkpoint import AtomicCheckpointer

from helpers import register_cells_dataset, tiny_dsod_cfg

pytestmark = pytest.mark.usefixtures("single_thread")


def _float_state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}


def _assert_states_equal(actual, expected):
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(actual[key], value, rtol=0, atol=0, msg=key)


def test_ema_math_matches_a_hand_computation():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    ema = ModelEMA(model, decay=0.9, tau=2.0)
    expected = _float_state(model)
    assert set(ema.weights) == set(expected)  # not BatchNorm's integer batch counter
    for n in range(1, 5):
        with torch.no_grad():
            for v in model.state_dict().values():
                if v.is_floating_point():
                    v.copy_(torch.randn_like(v))
        d = 0.9 * (1 - math.exp(-n / 2.0))
        assert ema.update() == pytest.approx(d)
        expected = {k: d * e + (1 - d) * model.state_dict()[k] for k, e in expected.items()}
        for key, value in expected.items():
            torch.testing.assert_close(ema.weights[key], value, msg=key)
    assert ema.updates == 4
    # tau 0: the full decay from the first update.
    assert ModelEMA(model, decay=0.9, tau=0.0).decay_at(1) == 0.9


@pytest.mark.parametrize("key, decay, tau", [("DECAY", 1.0, 1.0), ("TAU", 0.9, -1.0)])
def test_bad_settings_name_their_key(key, decay, tau):
    with pytest.raises(ValueError, match=f"MODEL.EMA.{key}"):
        ModelEMA(nn.Linear(1, 1), decay, tau)


def test_swap_exchanges_weights_in_place_in_the_model_layout():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).to(
        memory_format=torch.channels_last
    )
    ema = ModelEMA(model, decay=0.5, tau=0.0)
    raw = _float_state(model)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    ema.update()
    averaged = {k: v.clone() for k, v in ema.weights.items()}
    parameters = list(model.parameters())
    trained = _float_state(model)

    ema.swap()
    _assert_states_equal(_float_state(model), averaged)
    _assert_states_equal(ema.weights, trained)
    assert list(model.parameters()) == parameters  # the same Parameter objects
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(averaged["0.weight"], raw["0.weight"] + 0.5)
    ema.swap()
    _assert_states_equal(_float_state(model), trained)


def test_a_bfloat16_model_keeps_its_dtype_and_the_ema_stays_float32():
    model = nn.Linear(4, 4).to(torch.bfloat16)
    ema = ModelEMA(model, decay=0.5, tau=0.0)
    assert all(v.dtype == torch.float32 for v in ema.weights.values())
    ema.update()
    ema.swap()
    assert model.weight.dtype == torch.bfloat16
    assert all(v.dtype == torch.float32 for v in ema.weights.values())


# ---------------------------------------------------------------- the hook in a training loop
class _Regression(nn.Module):
    """A BatchNorm (buffers to average) and a linear layer, trained by SimpleTrainer."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.norm = nn.BatchNorm1d(3)
        self.linear = nn.Linear(3, 1)

    def forward(self, batch):
        x, y = batch
        return {"loss": ((self.linear(self.norm(x)) - y) ** 2).mean()}


def _batches(n):
    generator = torch.Generator().manual_seed(0)
    return [(torch.randn(8, 3, generator=generator), torch.randn(8, 1, generator=generator))
            for _ in range(n)]  # fmt: skip


class _HandEMA(HookBase):
    """Registered before EMAHook, so it sees the training weights after each step: the EMA by
    hand, and the training weights, for the evaluation to compare against."""

    def __init__(self, decay, tau):
        self.decay, self.tau, self.ema, self.raw, self.updates = decay, tau, None, None, 0

    def before_train(self):
        self.ema = _float_state(self.trainer.model)

    def after_step(self):
        self.updates += 1
        d = self.decay * (1 - math.exp(-self.updates / self.tau))
        self.raw = _float_state(self.trainer.model)
        self.ema = {k: d * e + (1 - d) * self.raw[k] for k, e in self.ema.items()}


def _trainer(output_dir, data, evaluations=None):
    """SimpleTrainer with EMA, a checkpoint every 4 steps and an evaluation every 3 that records
    the model's weights and the hand EMA."""
    os.makedirs(output_dir, exist_ok=True)
    model = _Regression()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    trainer = SimpleTrainer(model, data, optimizer)
    checkpointer = AtomicCheckpointer(model, str(output_dir), trainer=trainer)
    hand = _HandEMA(decay=0.8, tau=2.0)

    def evaluate():
        evaluations.append((_float_state(model), dict(hand.ema), dict(hand.raw)))
        return {}

    trainer.register_hooks(
        [
            hand,
            EMAHook(model, decay=0.8, tau=2.0),
            hooks.PeriodicCheckpointer(checkpointer, period=4),
            hooks.EvalHook(3, evaluate) if evaluations is not None else None,
        ]
    )
    return trainer, checkpointer, hand


@pytest.mark.slow
def test_evaluations_and_checkpoints_hold_the_ema_and_resume_continues_it(tmp_path):
    data = _batches(10)
    evaluations = []
    trainer, _, hand = _trainer(tmp_path / "full", data, evaluations)
    trainer.train(0, 10)
    # Evaluated at steps 3, 6, 9 and after training: each time the model held the EMA.
    assert len(evaluations) == 4
    for model_state, ema, raw in evaluations:
        for key, value in ema.items():
            torch.testing.assert_close(model_state[key], value, msg=key)
        assert not torch.equal(model_state["linear.weight"], raw["linear.weight"])
    # The checkpoints' "model" is the EMA; the training weights ride in the trainer's state.
    final = torch.load(tmp_path / "full" / "model_final.pth")
    ema_state = final["trainer"]["hooks"]["EMAHook"]
    assert ema_state["updates"] == 10 and ema_state["model_holds_ema"]
    for key, value in hand.ema.items():
        torch.testing.assert_close(final["model"][key], value, msg=key)
        torch.testing.assert_close(ema_state["weights"][key], hand.raw[key], msg=key)
    full_model, full_raw = _float_state(trainer.model), dict(hand.raw)

    # Resumed from step 8's checkpoint, the last two steps give the same EMA and weights.
    resumed, checkpointer, _ = _trainer(tmp_path / "resumed", data[8:])
    checkpointer.load(str(tmp_path / "full" / "model_0000007.pth"))
    resume_hook = resumed._hooks[1]
    assert resume_hook.ema.updates == 8 and not resume_hook.ema.swapped
    resumed.train(resumed.iter + 1, 10)
    _assert_close_states(_float_state(resumed.model), full_model)
    _assert_close_states(resume_hook.ema.weights, full_raw)


def _assert_close_states(actual, expected):
    for key, value in expected.items():
        torch.testing.assert_close(actual[key], value, rtol=1e-6, atol=1e-7, msg=key)


@pytest.mark.slow
def test_ddp_trains_the_same_with_the_ema_of_the_module_inside(tmp_path):
    """The EMA is of the module inside DDP (names without "module."), and DDP's gradient
    hooks keep working over the weights the hook swaps in and out."""
    if dist.is_initialized():
        pytest.skip("a process group is already set up in this process")
    results = []
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        for wrap in (False, True):
            model = _Regression()
            trained = DistributedDataParallel(model) if wrap else model
            trainer = SimpleTrainer(
                trained, _batches(5), torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
            )
            ema_hook = EMAHook(trained, decay=0.8, tau=2.0)
            trainer.register_hooks([ema_hook])
            trainer.train(0, 5)
            assert ema_hook.ema.model is model
            results.append((_float_state(model), dict(ema_hook.ema.weights)))
    finally:
        dist.destroy_process_group()
    for plain, wrapped in zip(*results):
        _assert_close_states(wrapped, plain)


def test_no_hooks_when_disabled():
    cfg = tiny_dsod_cfg()
    assert not cfg.MODEL.EMA.ENABLED
    assert ema_hooks(cfg, nn.Linear(1, 1)) == []
    cfg.MODEL.EMA.ENABLED = True
    assert [type(h) for h in ema_hooks(cfg, nn.Linear(1, 1))] == [EMAHook]


@pytest.mark.slow
def test_tiny_training_run_with_ema(tmp_path):
    name = "dssd_d2_test_ema_cells"
    register_cells_dataset(name, str(tmp_path), num_images=2)
    cfg = tiny_dsod_cfg()
    cfg.DATASETS.TRAIN = (name,)
    cfg.DATASETS.TEST = (name,)
    cfg.MODEL.EMA.ENABLED = True
    cfg.SOLVER.MAX_ITER = 6
    cfg.SOLVER.CHECKPOINT_PERIOD = 100
    cfg.OUTPUT_DIR = str(tmp_path / "out")
    trainer = SSDTrainer(cfg)
    ema_hook = trainer._hooks[0]
    assert isinstance(ema_hook, EMAHook)  # first, before the training clock and the evaluation
    initial = _float_state(trainer.model)
    trainer.train()
    assert ema_hook.ema.updates == 6 and ema_hook.ema.swapped
    assert "bbox" in trainer._last_eval_results  # the final evaluation, of the EMA
    model = _float_state(trainer.model)
    final = torch.load(os.path.join(cfg.OUTPUT_DIR, "model_final.pth"))
    for key, value in model.items():
        torch.testing.assert_close(final["model"][key], value, rtol=0, atol=0, msg=key)
    training = final["trainer"]["hooks"]["EMAHook"]["weights"]
    # The EMA differs from the training weights exactly where training moved them.
    trained = {k for k in training if not torch.equal(training[k], initial[k])}
    assert len(trained) > len(training) // 2
    assert {k for k in training if not torch.equal(training[k], model[k])} == trained
