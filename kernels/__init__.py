"""Norm ops (LayerNorm, RMSNorm, pRMSNorm) with fused kernels; knows nothing of models or training."""
from . import reference
from .ops import AUTOCAST_FP32_DEVICES, BACKENDS, EPS_MODES, autocast_inputs, layer_norm, rms_norm

__all__ = ["AUTOCAST_FP32_DEVICES", "BACKENDS", "EPS_MODES", "autocast_inputs", "layer_norm", "reference", "rms_norm"]
