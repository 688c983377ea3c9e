"""The Triton kernel backend: the four functions kernels/ops.py dispatches to."""
from .layernorm import layer_norm_backward, layer_norm_forward
from .rmsnorm import rms_norm_backward, rms_norm_forward

__all__ = ["layer_norm_backward", "layer_norm_forward", "rms_norm_backward", "rms_norm_forward"]
