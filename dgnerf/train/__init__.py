"""Training on many people: TrainConfig, Trainer (resume, DDP)."""
from dgnerf.train.trainer import TrainConfig, Trainer, train

__all__ = ["TrainConfig", "Trainer", "train"]
