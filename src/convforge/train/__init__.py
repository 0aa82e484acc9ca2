"""The training engine, its configuration and evaluation."""

from convforge.train.config import TrainConfig
from convforge.train.engine import TrainResult, resume, train
from convforge.train.evaluate import EvalResult, evaluate
from convforge.train.progress import TrainProgress
from convforge.train.seeds import train_seeds

__all__ = [
    "EvalResult",
    "TrainConfig",
    "TrainProgress",
    "TrainResult",
    "evaluate",
    "resume",
    "train",
    "train_seeds",
]
