"""ConvPool-CNN-C (Springenberg et al. 2015) as in the weight-norm and RMSNorm papers' CIFAR-10 runs.

[input noise] -> 3x[3x3 conv 96] -> 2x2 max-pool -> dropout -> 3x[3x3 conv 192] -> 2x2 max-pool
-> dropout -> 3x3 conv 192 (valid) -> 2x 1x1 conv 192 -> global average pool -> 10-way dense
layer (a 1x1 conv on the pooled 1x1 map) [-> norm].

Salimans & Kingma's code (openai/weightnorm, lasagne/train.py; the RMSNorm authors ran it with an
added RMSNormLayer, bzhangGo/rmsnorm README) is followed layer by layer:
- Every hidden conv is followed by the norm, then leaky ReLU (0.1): the norm sits before each
  nonlinearity. Conv features are normalized as the factory's `conv_mode` says; in "spatial"
  mode (the authors') LayerNorm, RMSNorm and pRMSNorm normalize each (sample, channel) over its
  H x W positions, with a gain and offset per channel. pRMSNorm's prefix on a conv map is then
  the first floor(p*H*W) positions of the row-major (H, W) map: the top rows of each channel's
  map (p = 12.5 % of 32x32 = the top 4 rows; of 6x6 = the first 4 positions of the top row).
- `final_norm=True` puts the norm on the 10-way layer too, as their code does: global average
  pool, then the dense layer, then the norm over its 10 outputs per sample (features-last; for
  BatchNorm per unit over the batch; pRMSNorm's prefix is then the first floor(p*10) logits).
  False: the logits are the dense layer's outputs (no norm), as in most CNNs.
- `final_partial`: pRMSNorm's p on that 10-way layer (None: the p of every other layer). With
  p = 12.5 % the statistic there is floor(1.25) = 1 logit, y_j = g_j x_j / |x_0|, and training
  stalls at chance (measured: width 16, 300 steps, train loss 2.31 with it vs 2.14 without the
  final norm; width 32, 800 steps at loss 2.30), so the Table 10 experiments set 1.0 there: the
  full RMS of the 10 logits, i.e. RMSNorm on the last layer only.
- A conv or dense layer has no bias where the norm after it brings its own offset (BatchNorm,
  LayerNorm and the conv-map norms); where the norm has none (features-last RMSNorm on the final
  layer) a per-unit offset follows the norm, as the authors' RMSNormLayer adds one; with no
  activation norm (none, weightnorm) the layer keeps its own bias.
- `input_noise`: Gaussian noise of this std added to the input images in training mode only
  (their GaussianNoiseLayer, sigma 0.15).
- `weight_init`: "torch" (each layer's default), "glorot_uniform" (lasagne's default, which
  their code keeps for every norm but BatchNorm and weight norm) or "normal_0.05" (their init
  under BatchNorm and weight norm): repro.nn.init_weights.
- `fixed_scale`: their no-norm layer (InitLayer): every conv and dense weight times a fixed,
  non-trainable scale per output unit, which data-dependent init sets (repro.nn.FixedScale);
  norm none only.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from repro.nn import NormFactory, add_fixed_scales, init_weights


class Offset(nn.Module):
    """A learned offset per feature (features-last input) or per channel (conv features), after a
    norm that has a gain but no offset of its own."""

    def __init__(self, dim: int, *, conv: bool = False):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(dim))
        self.conv = conv

    def forward(self, x: Tensor) -> Tensor:
        return x + (self.bias.view(-1, 1, 1) if self.conv else self.bias)


class GaussianNoise(nn.Module):
    """x + N(0, std^2) noise in training mode; the identity in eval mode or with std 0."""

    def __init__(self, std: float):
        super().__init__()
        if std < 0:
            raise ValueError(f"input_noise must be >= 0, got {std!r}")
        self.std = float(std)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.std == 0:
            return x
        return x + self.std * torch.randn_like(x)

    def extra_repr(self) -> str:
        return f"std={self.std:g}"


def _param(layer: nn.Module, name: str) -> bool:
    return isinstance(getattr(layer, name, None), nn.Parameter)


class ConvPoolCNNC(nn.Module):
    def __init__(
        self, norm: NormFactory, *, width: int = 96, dropout: float = 0.5, num_classes: int = 10,
        in_channels: int = 3, input_noise: float = 0.0, final_norm: bool = False,
        final_partial: Optional[float] = None, weight_init: str = "torch", fixed_scale: bool = False,
    ):
        super().__init__()
        wide = 2 * width  # the paper's 192 next to 96

        def normalized(c_in: int, c_out: int, kernel: int, padding: int, *, conv: bool,
                       norm: NormFactory = norm) -> list[nn.Module]:
            after = norm(c_out, conv=conv)
            if isinstance(after, nn.Identity):  # none, weightnorm: the layer keeps its bias
                return [norm.wrap(nn.Conv2d(c_in, c_out, kernel, padding=padding))]
            # The norm's offset replaces the layer's bias; a norm with a gain but no offset
            # (features-last RMSNorm) gets one after it; one with neither leaves the bias alone.
            has_offset, has_gain = _param(after, "bias"), _param(after, "weight")
            layer = norm.wrap(nn.Conv2d(c_in, c_out, kernel, padding=padding, bias=not (has_offset or has_gain)))
            if has_gain and not has_offset:
                return [layer, after, Offset(c_out, conv=conv)]
            return [layer, after]

        def unit(c_in: int, c_out: int, kernel: int, padding: int) -> list[nn.Module]:
            return [*normalized(c_in, c_out, kernel, padding, conv=True), nn.LeakyReLU(0.1)]

        self.input_noise = GaussianNoise(input_noise)
        self.features = nn.Sequential(
            *unit(in_channels, width, 3, 1), *unit(width, width, 3, 1), *unit(width, width, 3, 1),
            nn.MaxPool2d(2), nn.Dropout(dropout),
            *unit(width, wide, 3, 1), *unit(wide, wide, 3, 1), *unit(wide, wide, 3, 1),
            nn.MaxPool2d(2), nn.Dropout(dropout),
            *unit(wide, wide, 3, 0), *unit(wide, wide, 1, 0), *unit(wide, wide, 1, 0),
        )
        if final_norm:
            classifier, *head = normalized(wide, num_classes, 1, 0, conv=False, norm=norm.with_partial(final_partial))
        else:
            classifier, head = norm.wrap(nn.Conv2d(wide, num_classes, 1)), []
        # The dense layer is a 1x1 conv on the pooled (N, C, 1, 1) map: the same function as a
        # Linear, and the same kind of layer for weight norm and data-dependent init.
        self.classifier = classifier
        self.head = nn.Sequential(*head)
        init_weights(self, weight_init)
        if fixed_scale:
            if not norm.spec.is_identity or norm.spec.reparameterizes_weights:
                raise ValueError(f"model.fixed_scale=true is not allowed with norm={norm.name}: only with norm none "
                                 "(Salimans & Kingma's no-norm layer)")
            add_fixed_scales(self)

    def forward(self, images: Tensor) -> Tensor:
        """Images (N, C, 32, 32) -> logits (N, num_classes)."""
        pooled = self.features(self.input_noise(images)).mean(dim=(2, 3), keepdim=True)
        return self.head(self.classifier(pooled).flatten(1))

