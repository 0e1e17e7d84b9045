"""The LazyConfig flow's trainer (tools/lazyconfig_train_net.py): Detectron2's LazyConfig recipe
(``model``, ``optimizer``, ``dataloader``, ``lr_multiplier`` and ``train`` instantiated) in the
one training assembly that the YAML flow uses (:mod:`dssd_d2.engine.assembly`).

dssd_d2's keys besides Detectron2's ``train.*`` (configs/common/train.py):
``train.accumulation_steps`` (SOLVER.ACCUMULATION_STEPS), ``train.max_training_minutes``
(SOLVER.MAX_TRAINING_MINUTES) and ``train.amp.emulated_bf16`` (SOLVER.AMP.EMULATED_BF16).
"""

from omegaconf import OmegaConf

from detectron2.config import instantiate
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.solver import LRMultiplier

from ..checks import LAZY_KEYS, TrainingSetup, check_dataset_classes
from .assembly import AssembledTrainer, TrainingPlan

__all__ = ["LazyConfigTrainer"]

LAZY_STEP_KEYS = ("train.amp.enabled", "train.accumulation_steps", "train.amp.emulated_bf16")


def _names(value) -> list:
    """Dataset names of a LazyConfig ``names`` argument (one name or several)."""
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


class LazyConfigTrainer(AssembledTrainer):
    """:class:`AssembledTrainer` over a LazyConfig: the parts are the config's instantiated
    objects, the settings its ``train.*`` keys."""

    @classmethod
    def training_plan(cls, cfg) -> TrainingPlan:
        train = cfg.train
        return TrainingPlan(
            output_dir=train.output_dir,
            device=train.device,
            max_iter=train.max_iter,
            checkpoint_period=train.checkpointer.period,
            max_to_keep=train.checkpointer.get("max_to_keep"),
            eval_period=train.eval_period,
            log_period=train.log_period,
            init_weights=train.init_checkpoint,
            amp=train.amp.enabled,
            emulated_bf16=train.amp.get("emulated_bf16", False),
            accumulation_steps=train.get("accumulation_steps", 1),
            max_training_minutes=train.get("max_training_minutes", 0.0),
            ddp=OmegaConf.to_container(train.ddp) if "ddp" in train else {},
            step_keys=LAZY_STEP_KEYS,
            minutes_key="train.max_training_minutes",
            output_key="train.output_dir",
            lr_key="optimizer.lr",
            warmup_key="lr_multiplier.warmup_length",
        )

    @classmethod
    def training_setup(cls, cfg) -> TrainingSetup:
        return TrainingSetup(
            input_size=OmegaConf.select(cfg, LAZY_KEYS["input_size"]),
            total_batch=cfg.dataloader.train.total_batch_size,
            num_classes=OmegaConf.select(cfg, "model.num_classes"),
            num_classes_key="model.num_classes",
            datasets=cls._datasets("train", cfg),  # the test set: in test()
            keys=LAZY_KEYS,
        )

    @staticmethod
    def _datasets(split: str, cfg) -> list:
        return _names(OmegaConf.select(cfg, f"dataloader.{split}.dataset.names"))

    def describe_run(self) -> dict:
        cfg = self.cfg
        backbone = OmegaConf.select(cfg, "model.backbone._target_")
        return {
            "model": getattr(backbone, "__name__", str(backbone)),
            "datasets": {
                "train": self._datasets("train", cfg),
                "test": self._datasets("test", cfg),
            },
            "batch_size": cfg.dataloader.train.total_batch_size,
            "settings": {
                "input_size": OmegaConf.select(cfg, LAZY_KEYS["input_size"]),
                "base_lr": cfg.optimizer.lr,
            },
        }

    def run_record_hook(self, config_file: str, overrides, tool: str = "lazyconfig_train_net.py"):
        return super().run_record_hook(config_file, overrides, tool)

    @classmethod
    def build_model(cls, cfg):
        return instantiate(cfg.model).to(cfg.train.device)

    @classmethod
    def build_optimizer(cls, cfg, model):
        cfg.optimizer.params.model = model
        return instantiate(cfg.optimizer)

    @classmethod
    def build_train_loader(cls, cfg):
        return instantiate(cfg.dataloader.train)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        """``lr_multiplier`` (a ParamScheduler over [0, 1]) run over ``train.max_iter``."""
        return LRMultiplier(optimizer, instantiate(cfg.lr_multiplier), cfg.train.max_iter)

    @classmethod
    def test(cls, cfg, model):
        """Evaluate ``model`` on ``dataloader.test`` with ``dataloader.evaluator`` (none: {})."""
        if "evaluator" not in cfg.dataloader:
            return {}
        num_classes = OmegaConf.select(cfg, "model.num_classes")
        for name in cls._datasets("test", cfg) if num_classes is not None else ():
            check_dataset_classes(name, num_classes, "model.num_classes")
        results = inference_on_dataset(
            model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator)
        )
        print_csv_format(results)
        return results
