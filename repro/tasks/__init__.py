"""Tasks: one per problem, each building its data, model, loss and evaluation for the shared trainer."""
from .base import Batches, Task
from .build import build_task, build_task_and_model, task_class
from .cifar import CifarClassification
from .translation import Translation

__all__ = ["Batches", "CifarClassification", "Task", "Translation", "build_task", "build_task_and_model",
           "task_class"]
