"""Tasks: one per problem, each building its data, model, loss and evaluation for the shared trainer."""
from .base import Batches, Task
from .cifar import CifarClassification

__all__ = ["Batches", "CifarClassification", "Task"]
