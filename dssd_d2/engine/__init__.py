from .accumulation import GradientAccumulationTrainer
from .assembly import AssembledTrainer, TrainingPlan
from .cpu_memory import keep_freed_memory
from .lazy import LazyConfigTrainer
from .trainer import SSDPredictor, SSDTrainer, build_evaluator

__all__ = [
    "AssembledTrainer",
    "LazyConfigTrainer",
    "SSDTrainer",
    "SSDPredictor",
    "GradientAccumulationTrainer",
    "TrainingPlan",
    "build_evaluator",
    "keep_freed_memory",
]
