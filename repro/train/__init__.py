"""The shared trainer: one loop for every task, plus config validation, optimizers and checkpoints."""
from .config import ConfigError, norm_factory, validate_config
from .run import train
from .trainer import Trainer, TrainerSettings

__all__ = ["ConfigError", "Trainer", "TrainerSettings", "norm_factory", "train", "validate_config"]
