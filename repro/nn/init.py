"""Data-dependent initialization (Salimans & Kingma 2016, section 2.2), for weight norm and no norm.

Their code (openai/weightnorm, lasagne/nn.py: WeightNormLayer / InitLayer with `init=True`) runs
one forward pass over a batch of training images (500) before training. Each layer, in forward
order, measures the mean m and std s of its pre-activations per output unit (over the batch and
the spatial positions), then sets its scale so they have unit variance (weight norm: g <- g / s;
no norm: the weights of the unit times 1 / s) and its bias so they have zero mean
(b <- (b - m) / s); the layer passes on the normalized pre-activations, so the next layer is
initialized on what it will see. Their pass runs in training mode (input noise and dropout on).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

# The layers whose outputs are pre-activations with one unit per output channel.
INIT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _weight_norm_gain(layer: nn.Module):
    """Weight norm's g (torch's parametrization: original0 = g, original1 = v), or None."""
    if not parametrize.is_parametrized(layer, "weight"):
        return None
    plist = layer.parametrizations.weight
    if any(type(p).__name__ == "_WeightNorm" for p in plist):
        return plist.original0
    raise ValueError(f"data-dependent init: {type(layer).__name__}.weight has a parametrization that is not weight norm")


@torch.no_grad()
def data_dependent_init(model: nn.Module, inputs, *, train_mode: bool = True) -> int:
    """Initialize every Linear/Conv layer of `model` from one forward pass over `inputs`, layer by
    layer (see the module docstring); returns how many layers were initialized. Every such layer
    needs its own bias (models with an activation norm after their layers have none: use this
    with no norm or weight norm only)."""
    layers = [m for m in model.modules() if isinstance(m, INIT_LAYERS)]
    for layer in layers:
        if layer.bias is None:
            raise ValueError(
                f"data-dependent init needs every layer's bias, and a {type(layer).__name__} has none "
                "(its norm brings the offset): use it with norm none or weightnorm"
            )

    def initialize(layer: nn.Module, _args, out: Tensor) -> Tensor:
        channel = out.dim() - 1 if isinstance(layer, nn.Linear) else 1
        dims = [d for d in range(out.dim()) if d != channel]
        shape = [-1 if d == channel else 1 for d in range(out.dim())]
        mean = out.mean(dims)
        inv_std = ((out - mean.view(shape)).square().mean(dims)).clamp_min(1e-20).rsqrt()
        gain = _weight_norm_gain(layer)
        scaled = gain if gain is not None else layer.weight
        scaled.mul_(inv_std.view(-1, *[1] * (scaled.dim() - 1)).to(scaled.dtype))
        layer.bias.copy_((layer.bias - mean) * inv_std)
        return (out - mean.view(shape)) * inv_std.view(shape)

    was_training = model.training
    model.train(train_mode)
    handles = [layer.register_forward_hook(initialize) for layer in layers]
    try:
        model(inputs)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return len(layers)
