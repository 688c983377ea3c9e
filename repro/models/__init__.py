"""Models. Each takes a `repro.nn.NormFactory` ("a norm"), never a norm name."""
from .convpool_cnn import ConvPoolCNNC
from .vit import ViT

__all__ = ["ConvPoolCNNC", "ViT"]
