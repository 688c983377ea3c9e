"""The encoder-decoder Transformer (Vaswani et al. 2017) of the paper's translation experiments.

Post-norm residual blocks as in the paper's Transformer (x = norm(x + sublayer(x))), pre-norm as an
option (x = x + sublayer(norm(x)), plus a final norm on each stack). Every norm comes from the
norm factory and every Linear goes through `norm.wrap`, so norm=layernorm|rmsnorm|prmsnorm|none
(and weight norm) swap all of them. One embedding matrix is shared by source, target and the
output projection (a joint BPE vocabulary). Decoding keeps per-layer key/value caches, so beam
search and greedy search (repro.tasks.decode) cost one token per step.

Token ids: PAD pads; sources end in EOS; decoder inputs start with BOS (repro.data.translation).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from repro.nn import NormFactory


def xavier_linear(fan_in: int, fan_out: int, blocks: int = 1) -> nn.Linear:
    """A Linear layer with Xavier-uniform weights and zero bias, the paper's initialization (A.1;
    tensor2tensor/zero). `blocks` > 1: the output rows are that many fused layers (k and v),
    each initialized as if it stood alone. Made before weight norm wraps it, so g starts at ||v||."""
    layer = nn.Linear(fan_in, fan_out)
    with torch.no_grad():
        for block in layer.weight.chunk(blocks, dim=0):
            nn.init.xavier_uniform_(block)
        nn.init.zeros_(layer.bias)
    return layer


class Attention(nn.Module):
    def __init__(self, norm: NormFactory, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.q = norm.wrap(xavier_linear(dim, dim))
        self.kv = norm.wrap(xavier_linear(dim, 2 * dim, blocks=2))  # k and v fused: each its own Xavier
        self.out = norm.wrap(xavier_linear(dim, dim))

    def _split(self, x: Tensor) -> Tensor:  # (B, T, D) -> (B, heads, T, D / heads)
        return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)

    def forward(self, x: Tensor, memory: Optional[Tensor] = None, mask: Optional[Tensor] = None,
                causal: bool = False, cache: Optional[dict] = None, static: bool = False) -> Tensor:
        """Queries from x attend to memory (None: to x itself, so a pre-norm block's keys and values
        are normalized too). `cache` (decoding): self-attention appends this step's keys/values to
        it; cross-attention (`static`) computes the encoder's once and reuses them."""
        memory = x if memory is None else memory
        q = self._split(self.q(x))
        if cache is not None and static and "k" in cache:
            k, v = cache["k"], cache["v"]
        else:
            k, v = (self._split(t) for t in self.kv(memory).chunk(2, dim=-1))
            if cache is not None:
                if "k" in cache:
                    k, v = torch.cat([cache["k"], k], 2), torch.cat([cache["v"], v], 2)
                cache["k"], cache["v"] = k, v
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).flatten(2))


class FeedForward(nn.Sequential):
    def __init__(self, norm: NormFactory, dim: int, hidden: int, dropout: float):
        super().__init__(norm.wrap(xavier_linear(dim, hidden)), nn.ReLU(), nn.Dropout(dropout),
                         norm.wrap(xavier_linear(hidden, dim)))


class Residual(nn.Module):
    """One sublayer with its residual connection and norm, post- or pre-norm."""

    def __init__(self, norm: NormFactory, dim: int, sublayer: nn.Module, dropout: float, pre_norm: bool):
        super().__init__()
        self.sublayer, self.norm, self.dropout, self.pre_norm = sublayer, norm(dim), nn.Dropout(dropout), pre_norm

    def forward(self, x: Tensor, *args, **kwargs) -> Tensor:
        if self.pre_norm:
            return x + self.dropout(self.sublayer(self.norm(x), *args, **kwargs))
        return self.norm(x + self.dropout(self.sublayer(x, *args, **kwargs)))


class EncoderLayer(nn.Module):
    def __init__(self, norm, dim, heads, ffn, dropout, inner_dropout, pre_norm):
        super().__init__()
        self.attn = Residual(norm, dim, Attention(norm, dim, heads, inner_dropout), dropout, pre_norm)
        self.ffn = Residual(norm, dim, FeedForward(norm, dim, ffn, inner_dropout), dropout, pre_norm)

    def forward(self, x: Tensor, src_mask: Tensor) -> Tensor:
        return self.ffn(self.attn(x, None, src_mask))


class DecoderLayer(nn.Module):
    def __init__(self, norm, dim, heads, ffn, dropout, inner_dropout, pre_norm):
        super().__init__()
        self.self_attn = Residual(norm, dim, Attention(norm, dim, heads, inner_dropout), dropout, pre_norm)
        self.cross_attn = Residual(norm, dim, Attention(norm, dim, heads, inner_dropout), dropout, pre_norm)
        self.ffn = Residual(norm, dim, FeedForward(norm, dim, ffn, inner_dropout), dropout, pre_norm)

    def forward(self, x: Tensor, memory: Tensor, src_mask: Tensor, cache: Optional[dict] = None) -> Tensor:
        # Teacher forcing attends causally; a cached decoding step has one query that may see all.
        x = self.self_attn(x, None, causal=cache is None, cache=None if cache is None else cache["self"])
        x = self.cross_attn(x, memory, src_mask, cache=None if cache is None else cache["cross"], static=True)
        return self.ffn(x)


def sinusoids(length: int, dim: int) -> Tensor:
    position = torch.arange(length, dtype=torch.float32)[:, None]
    frequency = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2], table[:, 1::2] = torch.sin(position * frequency), torch.cos(position * frequency)
    return table


class Transformer(nn.Module):
    def __init__(
        self, norm: NormFactory, *, vocab_size: int, dim: int = 512, ffn: int = 2048, heads: int = 8,
        encoder_layers: int = 6, decoder_layers: int = 6, dropout: float = 0.1, inner_dropout: float = 0.0,
        pre_norm: bool = False, max_positions: int = 1024, pad_id: int = 0,
    ):
        super().__init__()
        if dim % heads or dim % 2:
            raise ValueError(f"model.dim={dim} must be even and divisible by model.heads={heads}")
        self.dim, self.pad_id, self.pre_norm = dim, pad_id, pre_norm
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=pad_id)
        nn.init.normal_(self.embed.weight, 0.0, dim ** -0.5)  # x sqrt(dim) below: unit-scale inputs
        nn.init.zeros_(self.embed.weight[pad_id])
        self.register_buffer("positions", sinusoids(max_positions, dim), persistent=False)
        self.dropout = nn.Dropout(dropout)
        layer_args = (norm, dim, heads, ffn, dropout, inner_dropout, pre_norm)
        self.encoder = nn.ModuleList(EncoderLayer(*layer_args) for _ in range(encoder_layers))
        self.decoder = nn.ModuleList(DecoderLayer(*layer_args) for _ in range(decoder_layers))
        # Post-norm outputs are already normalized; pre-norm stacks need one norm at their end.
        self.encoder_norm = norm(dim) if pre_norm else nn.Identity()
        self.decoder_norm = norm(dim) if pre_norm else nn.Identity()
        # The serialized tokenizer that defines the token ids (set by the task), saved with the
        # weights so a checkpoint translates on its own.
        self.vocabulary: Optional[bytes] = None

    def get_extra_state(self) -> dict:
        return {"vocabulary": self.vocabulary}

    def set_extra_state(self, state: dict) -> None:
        self.vocabulary = state["vocabulary"]

    def _embed(self, tokens: Tensor, start: int = 0) -> Tensor:
        if start + tokens.size(1) > len(self.positions):
            raise ValueError(f"sequence of {start + tokens.size(1)} tokens exceeds model.max_positions={len(self.positions)}")
        x = self.embed(tokens) * math.sqrt(self.dim) + self.positions[start:start + tokens.size(1)]
        return self.dropout(x)

    def encode(self, src: Tensor) -> tuple[Tensor, Tensor]:
        """Source ids (B, S) -> (memory (B, S, D), key mask (B, 1, 1, S), True where attended)."""
        src_mask = (src != self.pad_id)[:, None, None, :]
        x = self._embed(src)
        for layer in self.encoder:
            x = layer(x, src_mask)
        return self.encoder_norm(x), src_mask

    def decode(self, tgt_in: Tensor, memory: Tensor, src_mask: Tensor, cache: Optional[list] = None,
               start: int = 0) -> Tensor:
        """Decoder inputs (B, T) -> logits (B, T, vocab). With `cache` (from new_cache), tgt_in
        holds the tokens at positions start.. only and the earlier ones come from the cache."""
        x = self._embed(tgt_in, start)
        for i, layer in enumerate(self.decoder):
            x = layer(x, memory, src_mask, None if cache is None else cache[i])
        return F.linear(self.decoder_norm(x), self.embed.weight)

    def new_cache(self) -> list:
        return [{"self": {}, "cross": {}} for _ in self.decoder]

    @staticmethod
    def reorder_cache(cache: list, order: Tensor) -> None:
        """Keep the cached rows `order` (beam search dropping and copying hypotheses)."""
        for layer in cache:
            for kind in layer.values():
                for key in kind:
                    kind[key] = kind[key].index_select(0, order)

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        memory, src_mask = self.encode(src)
        return self.decode(tgt_in, memory, src_mask)
