"""Data sets: CIFAR-10 (torchvision's release or the JPEG tarballs) held as tensors in memory."""
from .cifar10 import CIFAR10_CLASSES, CifarSplits, ImageBatches, load_cifar10, prepare_cifar10

__all__ = ["CIFAR10_CLASSES", "CifarSplits", "ImageBatches", "load_cifar10", "prepare_cifar10"]
