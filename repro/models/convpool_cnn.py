"""ConvPool-CNN-C (Springenberg et al. 2015) as in the weight-norm and RMSNorm papers' CIFAR-10 runs.

3x[3x3 conv 96] -> max-pool -> dropout -> 3x[3x3 conv 192] -> max-pool -> dropout
-> 3x3 conv 192 (valid) -> 2x 1x1 conv 192 -> 1x1 conv 10 -> global average pool.
Every hidden conv is followed by the norm, then leaky ReLU (0.1): the norm sits before each
nonlinearity. The classifier conv has no norm: its outputs are the logits.
"""
from __future__ import annotations

from torch import Tensor, nn

from repro.nn import NormFactory


class ConvPoolCNNC(nn.Module):
    def __init__(
        self, norm: NormFactory, *, width: int = 96, dropout: float = 0.5, num_classes: int = 10,
        in_channels: int = 3,
    ):
        super().__init__()
        wide = 2 * width  # the paper's 192 next to 96

        def unit(c_in: int, c_out: int, kernel: int, padding: int) -> list[nn.Module]:
            conv = norm.wrap(nn.Conv2d(c_in, c_out, kernel, padding=padding))
            return [conv, norm(c_out, conv=True), nn.LeakyReLU(0.1)]

        self.features = nn.Sequential(
            *unit(in_channels, width, 3, 1), *unit(width, width, 3, 1), *unit(width, width, 3, 1),
            nn.MaxPool2d(2), nn.Dropout(dropout),
            *unit(width, wide, 3, 1), *unit(wide, wide, 3, 1), *unit(wide, wide, 3, 1),
            nn.MaxPool2d(2), nn.Dropout(dropout),
            *unit(wide, wide, 3, 0), *unit(wide, wide, 1, 0), *unit(wide, wide, 1, 0),
        )
        self.classifier = norm.wrap(nn.Conv2d(wide, num_classes, 1))

    def forward(self, images: Tensor) -> Tensor:
        """Images (N, C, 32, 32) -> logits (N, num_classes)."""
        return self.classifier(self.features(images)).mean(dim=(2, 3))
