"""The shared trainer: one loop for every task, plus config validation, optimizers and checkpoints."""
from repro.util import ConfigError

from .config import compose_config, validate_config
from .run import train
from .trainer import Trainer, TrainerSettings

__all__ = ["ConfigError", "Trainer", "TrainerSettings", "compose_config", "train", "validate_config"]
