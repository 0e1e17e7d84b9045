from .accumulation import GradientAccumulationTrainer
from .cpu_memory import keep_freed_memory
from .trainer import SSDPredictor, SSDTrainer, build_evaluator

__all__ = [
    "SSDTrainer",
    "SSDPredictor",
    "GradientAccumulationTrainer",
    "build_evaluator",
    "keep_freed_memory",
]
