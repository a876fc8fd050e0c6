"""Training on many people: TrainConfig, Trainer (resume, DDP), and the demo."""
from dgnerf.train.trainer import TrainConfig, Trainer, train
