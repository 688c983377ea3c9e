"""Norm layers for models: LayerNorm, RMSNorm / pRMSNorm, the paper's baselines, and the factory.

Models ask this package for "a norm" (a NormFactory) and never import kernels or name norms.
What distinguishes one norm from another is its entry in `registry.NORMS`.
"""
from .init import WEIGHT_INITS, FixedScale, add_fixed_scales, data_dependent_init, init_weights
from .factory import NormConfig, NormFactory, build_norm, norm_factory
from .norms import (
    CONV_MODES, BatchNorm, BatchNorm2d, ConvNorm, L2Norm, LayerNorm, NormLayer, PartialRMSNorm,
    RMSNorm, SyncBatchNorm, SyncBatchNorm2d, l2_norm, sync_batch_norm,
)
from .registry import NORM_NAMES, NORMS, NormSpec, norm_spec, spec_of_layer

__all__ = [  # constants, classes, functions
    "CONV_MODES", "NORMS", "NORM_NAMES", "WEIGHT_INITS", "BatchNorm", "BatchNorm2d", "ConvNorm", "FixedScale",
    "L2Norm", "LayerNorm", "NormConfig", "NormFactory", "NormLayer", "NormSpec", "PartialRMSNorm", "RMSNorm",
    "SyncBatchNorm", "SyncBatchNorm2d", "add_fixed_scales", "build_norm", "data_dependent_init",
    "init_weights", "l2_norm", "norm_factory", "norm_spec", "spec_of_layer", "sync_batch_norm",
]
