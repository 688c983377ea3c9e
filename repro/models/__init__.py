"""Models. Each takes a `repro.nn.NormFactory` ("a norm"), never a norm name."""
from .convpool_cnn import ConvPoolCNNC
from .transformer import Transformer
from .vit import ViT

__all__ = ["ConvPoolCNNC", "Transformer", "ViT"]
