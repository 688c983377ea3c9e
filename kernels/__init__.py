"""Norm ops (LayerNorm, RMSNorm, pRMSNorm) with fused kernels; knows nothing of models or training."""
from . import reference
from .ops import BACKENDS, EPS_MODES, layer_norm, rms_norm

__all__ = ["BACKENDS", "EPS_MODES", "layer_norm", "reference", "rms_norm"]
