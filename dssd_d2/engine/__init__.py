from .accumulation import GradientAccumulationTrainer
from .trainer import SSDPredictor, SSDTrainer, build_evaluator

__all__ = ["SSDTrainer", "SSDPredictor", "GradientAccumulationTrainer", "build_evaluator"]
