"""Tasks: one per problem, each building its data, model, loss and evaluation for the shared trainer."""
from .base import Batches, Task
from .cifar import CifarClassification
from .translation import Translation

__all__ = ["Batches", "CifarClassification", "Task", "Translation"]
