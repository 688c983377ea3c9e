"""Data-dependent initialization (Salimans & Kingma 2016, section 2.2), for weight norm and no norm.

Their code (openai/weightnorm, lasagne/nn.py: WeightNormLayer / InitLayer with `init=True`) runs
one forward pass over a batch of training images (500) before training. Each layer, in forward
order, measures the mean m and std s of its pre-activations per output unit (over the batch and
the spatial positions), then sets its scale so they have unit variance (weight norm: g <- g / s;
no norm: the weights of the unit times 1 / s) and its bias so they have zero mean
(b <- (b - m) / s); the layer passes on the normalized pre-activations, so the next layer is
initialized on what it will see. Their pass runs in training mode (input noise and dropout on).

Their no-norm layer (`InitLayer`) does not rescale the weights themselves: it keeps a fixed,
non-trainable scale g per output unit beside them, weight = g * v, trains v and the bias, and
the init sets g <- g / s. Under Adam, whose steps on v do not depend on the gradient's size, a
unit then moves g times as fast as one whose weights were rescaled directly: the init sets each
layer's effective learning rate too. `add_fixed_scales` gives a model that parametrization
(`FixedScale`); `init_weights` gives it their weight init (lasagne's default, Glorot-uniform
weights and zero biases), on which the size of g depends.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

# The layers whose outputs are pre-activations with one unit per output channel.
INIT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
# model.weight_init's choices: "torch" keeps each layer's own default init.
WEIGHT_INITS = ("torch", "glorot_uniform", "normal_0.05")
NORMAL_INIT_STD = 0.05  # lasagne.init.Normal(0.05): Salimans & Kingma's conv/dense init under BatchNorm and weight norm


class FixedScale(nn.Module):
    """weight = scale * v with one non-trainable scale per output unit (a buffer, saved with the
    model): Salimans & Kingma's no-norm parametrization. The scale starts at 1, so the layer's
    function is unchanged until data-dependent init sets it."""

    def __init__(self, units: int):
        super().__init__()
        self.register_buffer("scale", torch.ones(units))

    def forward(self, v: Tensor) -> Tensor:
        return v * self.scale.view(-1, *[1] * (v.dim() - 1)).to(v.dtype)


def add_fixed_scales(model: nn.Module) -> int:
    """Put a FixedScale on the weight of every Linear/Conv layer of `model`; returns how many.
    A layer whose weight already has a parametrization (weight norm) is refused."""
    layers = [m for m in model.modules() if isinstance(m, INIT_LAYERS)]
    for layer in layers:
        if parametrize.is_parametrized(layer, "weight"):
            raise ValueError(f"a fixed scale on a {type(layer).__name__} whose weight already has a parametrization "
                             "(weight norm has its own g): use it with norm none only")
    for layer in layers:
        parametrize.register_parametrization(layer, "weight", FixedScale(layer.weight.shape[0]))
    return len(layers)


@torch.no_grad()
def init_weights(model: nn.Module, scheme: str) -> None:
    """Re-initialize every Linear/Conv layer of `model` by `scheme` (one of WEIGHT_INITS):
    "glorot_uniform" draws the weights from U(-a, a), a = sqrt(6 / (fan_in + fan_out)) with the
    kernel's size in both fans (lasagne's GlorotUniform), "normal_0.05" from N(0, 0.05²)
    (lasagne's Normal(0.05)), and both zero the biases; "torch" leaves the layers as they were
    built. Under weight norm the direction v gets the draw (its g is what data-dependent init
    sets); under a FixedScale, the weights v beside the scale."""
    if scheme not in WEIGHT_INITS:
        raise ValueError(f"model.weight_init={scheme!r} is not allowed: must be one of {', '.join(WEIGHT_INITS)}")
    if scheme == "torch":
        return
    for layer in (m for m in model.modules() if isinstance(m, INIT_LAYERS)):
        weight = _trained_weight(layer)
        if scheme == "glorot_uniform":
            nn.init.xavier_uniform_(weight)
        else:
            nn.init.normal_(weight, std=NORMAL_INIT_STD)
        if layer.bias is not None:
            layer.bias.zero_()


def _trained_weight(layer: nn.Module) -> Tensor:
    """The tensor an init draws: the weight itself, a FixedScale's v or weight norm's v (torch's
    parametrization: original0 = g, original1 = v)."""
    if not parametrize.is_parametrized(layer, "weight"):
        return layer.weight
    plist = layer.parametrizations.weight
    if all(isinstance(p, FixedScale) for p in plist):
        return plist.original
    if any(type(p).__name__ == "_WeightNorm" for p in plist):
        return plist.original1
    raise ValueError(f"weight init: {type(layer).__name__}.weight has a parametrization that is neither weight norm "
                     "nor a fixed scale")


def _scale_of(layer: nn.Module):
    """The per-unit factor data-dependent init divides by the pre-activations' std: weight
    norm's g (torch's parametrization: original0 = g, original1 = v), a FixedScale's scale, or
    None (the weight itself)."""
    if not parametrize.is_parametrized(layer, "weight"):
        return None
    plist = layer.parametrizations.weight
    if any(type(p).__name__ == "_WeightNorm" for p in plist):
        return plist.original0
    fixed = [p for p in plist if isinstance(p, FixedScale)]
    if fixed:
        return fixed[0].scale
    raise ValueError(f"data-dependent init: {type(layer).__name__}.weight has a parametrization that is neither "
                     "weight norm nor a fixed scale")


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
        scale = _scale_of(layer)
        scaled = scale if scale is not None else layer.weight
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
