"""Greedy and batched beam search for the encoder-decoder Transformer (repro.models.transformer).

Both decode a whole batch at once with the model's key/value caches and stop at EOS or at
`max_len` generated tokens (EOS forced at the last step, so both limits mean the same thing; the
forced EOS keeps its real log-probability).
Beam search follows fairseq/GNMT: 2·beam candidates per sentence and step, EOS candidates among
the top `beam` finish a hypothesis scored log p / lp, lp = ((5 + length) / 6) ** alpha, and a
sentence is done when `beam` hypotheses have finished. With beam=1 it picks the same tokens as
greedy search.
"""
from __future__ import annotations

import torch
from torch import Tensor

from repro.data.translation import BOS, EOS, PAD


def _max_len(src: Tensor, max_len_a: float, max_len_b: int, model) -> int:
    longest = int((src != PAD).sum(1).max())
    return max(1, min(int(max_len_a * longest + max_len_b), len(model.positions)))


def _log_probs(model, tokens: Tensor, memory, src_mask, cache, step: int, last: bool) -> Tensor:
    """The model's own log-probabilities of the next token, with the tokens it may not produce
    set to -inf *after* the softmax (as fairseq does): masking logits first would renormalize
    over what is left, and at the length limit give the forced EOS log p = 0, a free bonus for
    every truncated hypothesis."""
    log_probs = torch.log_softmax(model.decode(tokens, memory, src_mask, cache, start=step)[:, -1].float(), dim=-1)
    log_probs[:, PAD] = float("-inf")
    log_probs[:, BOS] = float("-inf")
    if last:  # the length limit: only EOS remains, scored with its real probability
        log_probs[:, :EOS] = log_probs[:, EOS + 1:] = float("-inf")
    return log_probs


def _strip(rows: Tensor) -> list[list[int]]:
    """Token lists up to (without) the first EOS."""
    out = []
    for row in rows.tolist():
        out.append(row[:row.index(EOS)] if EOS in row else row)
    return out


@torch.no_grad()
def greedy_search(model, src: Tensor, *, max_len_a: float = 1.0, max_len_b: int = 50) -> list[list[int]]:
    """Source ids (B, S) -> the argmax translation of each row, as token lists without BOS/EOS."""
    memory, src_mask = model.encode(src)
    cache, limit = model.new_cache(), _max_len(src, max_len_a, max_len_b, model)
    tokens = torch.full((src.size(0), 1), BOS, dtype=torch.long, device=src.device)
    out, done = [], torch.zeros(src.size(0), dtype=torch.bool, device=src.device)
    for step in range(limit):
        next_token = _log_probs(model, tokens, memory, src_mask, cache, step, step == limit - 1).argmax(-1)
        next_token = next_token.masked_fill(done, PAD)
        out.append(next_token)
        done |= next_token == EOS
        tokens = next_token[:, None]
        if done.all():
            break
    return _strip(torch.stack(out, 1))


@torch.no_grad()
def beam_search(model, src: Tensor, *, beam: int = 4, alpha: float = 0.6, max_len_a: float = 1.0,
                max_len_b: int = 50) -> list[list[int]]:
    """Source ids (B, S) -> the best finished hypothesis of each row (token lists without
    BOS/EOS), by length-normalized log-probability."""
    if beam < 1:
        raise ValueError(f"beam={beam} is not allowed: must be >= 1")
    n, device = src.size(0), src.device
    memory, src_mask = model.encode(src)
    flat = torch.arange(n, device=device).repeat_interleave(beam)  # hypothesis row -> sentence
    memory, src_mask = memory.index_select(0, flat), src_mask.index_select(0, flat)
    cache, limit = model.new_cache(), _max_len(src, max_len_a, max_len_b, model)

    scores = torch.zeros(n, beam, device=device)
    scores[:, 1:] = float("-inf")  # all beams start identical: expand only the first
    prefixes = torch.empty(n * beam, 0, dtype=torch.long, device=device)
    tokens = torch.full((n * beam, 1), BOS, dtype=torch.long, device=device)
    best_score = torch.full((n,), float("-inf"), device=device)
    best = [[] for _ in range(n)]
    finished = torch.zeros(n, dtype=torch.long, device=device)
    rank = torch.arange(2 * beam, device=device)
    for step in range(limit):
        log_probs = _log_probs(model, tokens, memory, src_mask, cache, step, step == limit - 1)
        vocab = log_probs.size(-1)
        candidates = (scores[:, :, None] + log_probs.view(n, beam, vocab)).view(n, -1)
        cand_scores, cand_index = candidates.topk(2 * beam, dim=1)
        cand_beam, cand_token = cand_index // vocab, cand_index % vocab
        active = finished < beam
        # Hypotheses that end here: EOS among the top `beam` candidates of a sentence still going.
        ends = (cand_token == EOS) & (rank < beam) & active[:, None] & torch.isfinite(cand_scores)
        normalized = torch.where(ends, cand_scores / ((5 + step + 1) / 6) ** alpha, float("-inf"))
        top_value, top_pos = normalized.max(1)
        better = top_value > best_score
        for i in better.nonzero().flatten().tolist():
            row = i * beam + int(cand_beam[i, top_pos[i]])
            best[i] = prefixes[row].tolist()
        best_score = torch.where(better, top_value, best_score)
        finished += ends.sum(1)
        if bool((finished >= beam).all()):
            break
        # Continue with the best `beam` candidates that do not end (at most `beam` of 2·beam do).
        keep = (rank + (cand_token == EOS) * 2 * beam).argsort(1)[:, :beam]
        scores = cand_scores.gather(1, keep)
        rows = (torch.arange(n, device=device)[:, None] * beam + cand_beam.gather(1, keep)).flatten()
        tokens = cand_token.gather(1, keep).view(-1, 1)
        prefixes = torch.cat([prefixes.index_select(0, rows), tokens], 1)
        model.reorder_cache(cache, rows)
    return best
