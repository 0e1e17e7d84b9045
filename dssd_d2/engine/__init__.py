from .trainer import SSDPredictor, SSDTrainer, build_evaluator

__all__ = ["SSDTrainer", "SSDPredictor", "build_evaluator"]
