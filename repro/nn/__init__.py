"""Norm layers for models: LayerNorm, RMSNorm / pRMSNorm, the paper's baselines, and the factory.

Models ask this package for "a norm" (a NormFactory) and never import kernels or name norms.
"""
from .factory import NORM_NAMES, NormFactory, build_norm
from .norms import (
    CONV_MODES, BatchNorm, BatchNorm2d, ConvNorm, L2Norm, LayerNorm, NormLayer, PartialRMSNorm,
    RMSNorm, l2_norm,
)

__all__ = [
    "CONV_MODES", "NORM_NAMES", "BatchNorm", "BatchNorm2d", "ConvNorm", "L2Norm", "LayerNorm",
    "NormFactory", "NormLayer", "PartialRMSNorm", "RMSNorm", "build_norm", "l2_norm",
]
