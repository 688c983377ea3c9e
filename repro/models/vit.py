"""A small Vision Transformer for 32x32 images (about 7 layers, dim 384, 12 heads, patch 4).

Pre-norm blocks; every norm (two per block and the final one) comes from the norm factory and
every Linear goes through `norm.wrap`, so each paper norm, weight norm included, runs unchanged.
Classification reads the mean of the final token states (no class token).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from repro.nn import NormFactory


class Block(nn.Module):
    def __init__(self, norm: NormFactory, dim: int, heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.norm1, self.norm2 = norm(dim), norm(dim)
        self.qkv, self.proj = norm.wrap(nn.Linear(dim, 3 * dim)), norm.wrap(nn.Linear(dim, dim))
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(
            norm.wrap(nn.Linear(dim, hidden)), nn.GELU(), norm.wrap(nn.Linear(hidden, dim)), nn.Dropout(dropout)
        )

    def forward(self, x: Tensor) -> Tensor:
        n, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        drop = self.dropout if self.training else 0.0
        attn = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)
        x = x + F.dropout(self.proj(attn.transpose(1, 2).reshape(n, t, d)), drop, self.training)
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    def __init__(
        self, norm: NormFactory, *, dim: int = 384, depth: int = 7, heads: int = 12, patch: int = 4,
        mlp_ratio: float = 2.0, dropout: float = 0.0, image_size: int = 32, in_channels: int = 3,
        num_classes: int = 10,
    ):
        super().__init__()
        if dim % heads or image_size % patch:
            raise ValueError(f"dim={dim} must divide by heads={heads} and image_size={image_size} by patch={patch}")
        self.patchify = norm.wrap(nn.Conv2d(in_channels, dim, patch, stride=patch))
        self.pos = nn.Parameter(torch.randn(1, (image_size // patch) ** 2, dim) * 0.02)
        self.blocks = nn.Sequential(*(Block(norm, dim, heads, mlp_ratio, dropout) for _ in range(depth)))
        self.norm = norm(dim)
        self.head = norm.wrap(nn.Linear(dim, num_classes))

    def no_weight_decay(self) -> set[str]:
        return {"pos"}  # the position table: weight decay would pull it towards "no position"

    def forward(self, images: Tensor) -> Tensor:
        """Images (N, C, H, W) -> logits (N, num_classes)."""
        x = self.patchify(images).flatten(2).transpose(1, 2) + self.pos
        return self.head(self.norm(self.blocks(x)).mean(dim=1))
