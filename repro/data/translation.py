"""Parallel text for translation: reading and checking corpora, the sentencepiece tokenizer, and
token batching.

On disk a corpus is a folder with `<split>.<lang>[.gz]` files, one sentence a line, line i of the
source being the translation of line i of the target (Multi30k's layout; WMT14 from `datasets`
is read into the same in-memory form). A joint BPE sentencepiece model is trained once on the
training pairs and cached with a fingerprint of what it was trained on, so a changed corpus or
vocabulary size retrains it rather than silently reusing a stale one.
"""
from __future__ import annotations

import gzip
import hashlib
import itertools
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
import torch

from repro.util import atomic_write

# Token ids fixed by the tokenizer training below; the model and the decoder rely on them.
PAD, UNK, BOS, EOS = 0, 1, 2, 3
EMPTY_LINE_POLICIES = ("error", "skip")
ENCODE_CHUNK = 100_000  # lines per sentencepiece call
MIN_VOCAB = 300  # 4 special ids + 256 byte pieces (byte fallback) + the corpus's characters


class CorpusError(ValueError):
    """A bad corpus file or setting; str(error) is a one-line message naming the file or key."""


def check_translation_options(options: dict) -> None:
    """Raise CorpusError naming the first bad `data.*` option of a translation task (the task and
    repro.train.validate_config both call this, so the rules live in one place)."""
    def fail(key, rule):
        raise CorpusError(f"data.{key}={options[key]!r} is not allowed: must be {rule}")

    def is_int(value):
        return isinstance(value, int) and not isinstance(value, bool)

    for key in ("max_tokens", "eval_max_tokens", "batch_size"):
        if key in options and (not is_int(options[key]) or options[key] < 1):
            fail(key, "an integer >= 1")
    if "vocab_size" in options and (not is_int(options["vocab_size"]) or options["vocab_size"] < MIN_VOCAB):
        fail("vocab_size", f"an integer >= {MIN_VOCAB}")
    if options.get("max_len") is not None and (not is_int(options["max_len"]) or options["max_len"] < 1):
        fail("max_len", "an integer >= 1 or null")
    if "empty_lines" in options and options["empty_lines"] not in EMPTY_LINE_POLICIES:
        fail("empty_lines", f"one of {', '.join(EMPTY_LINE_POLICIES)}")
    if "test_sets" in options and not (isinstance(options["test_sets"], dict) and options["test_sets"]):
        fail("test_sets", "a non-empty mapping of test set name to split")


@dataclass
class ParallelText:
    src: list[str]
    tgt: list[str]

    def __len__(self) -> int:
        return len(self.src)


# --------------------------------------------------------------------------------------- reading
def corpus_file(root, split: str, lang: str) -> Path:
    """`root/<split>.<lang>` or its `.gz`; a missing one is a CorpusError naming both candidates."""
    plain = Path(os.path.expanduser(str(root))) / f"{split}.{lang}"
    for path in (plain, plain.with_name(plain.name + ".gz")):
        if path.is_file():
            return path
    raise CorpusError(f"missing corpus file {plain}[.gz] (split {split!r}, language {lang!r})")


def read_lines(path: Path) -> list[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            lines = [line.rstrip("\r\n") for line in f]
    except (OSError, UnicodeDecodeError, EOFError) as error:
        raise CorpusError(f"cannot read {path}: {error}") from None
    if not lines:
        raise CorpusError(f"{path} is empty")
    return lines


def check_pairs(src: Sequence[str], tgt: Sequence[str], src_name: str, tgt_name: str,
                empty_lines: str = "error") -> ParallelText:
    """Pairs of aligned sentences. A length mismatch is always an error (the files are not
    aligned); an empty side is an error or, with empty_lines='skip', drops the pair."""
    if empty_lines not in EMPTY_LINE_POLICIES:
        raise CorpusError(f"data.empty_lines={empty_lines!r} is not allowed: must be one of {', '.join(EMPTY_LINE_POLICIES)}")
    if len(src) != len(tgt):
        raise CorpusError(f"{src_name} has {len(src)} lines but {tgt_name} has {len(tgt)}: the files are not aligned")
    keep = [i for i, (s, t) in enumerate(zip(src, tgt)) if s.strip() and t.strip()]
    if len(keep) < len(src):
        if empty_lines == "error":
            bad = next(i for i in range(len(src)) if not (src[i].strip() and tgt[i].strip()))
            name = src_name if not src[bad].strip() else tgt_name
            raise CorpusError(f"{name} line {bad + 1} is empty (set data.empty_lines=skip to drop such pairs)")
        if not keep:
            raise CorpusError(f"{src_name} / {tgt_name} hold no pair with text on both sides")
    return ParallelText([src[i].strip() for i in keep], [tgt[i].strip() for i in keep])


def read_parallel(root, split: str, src_lang: str, tgt_lang: str, empty_lines: str = "error") -> ParallelText:
    src_path, tgt_path = corpus_file(root, split, src_lang), corpus_file(root, split, tgt_lang)
    return check_pairs(read_lines(src_path), read_lines(tgt_path), str(src_path), str(tgt_path), empty_lines)


def load_hf_wmt(dataset: str, config: str, split: str, src_lang: str, tgt_lang: str,
                empty_lines: str = "error") -> ParallelText:
    """A split of a `datasets` translation set (e.g. wmt/wmt14 de-en: train, validation, test);
    without a network or cache this is one clear error pointing at the local-files alternative."""
    import datasets

    try:
        rows = datasets.load_dataset(dataset, config, split=split)["translation"]
    except Exception as error:  # noqa: BLE001 - offline shows as several exception types
        raise CorpusError(
            f"could not load {dataset} {config} split {split!r} through `datasets` ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}); without a network, set data.root to a folder "
            f"of <split>.{src_lang}[.gz] / <split>.{tgt_lang}[.gz] files instead"
        ) from None
    name = f"{dataset}:{config}:{split}"
    return check_pairs([r[src_lang] for r in rows], [r[tgt_lang] for r in rows], f"{name}.{src_lang}",
                       f"{name}.{tgt_lang}", empty_lines)


# ------------------------------------------------------------------------------------- tokenizer
class Tokenizer:
    """A sentencepiece model with the fixed special ids above."""

    def __init__(self, model_proto: bytes):
        import sentencepiece as spm

        self.proto = model_proto
        self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
        if (self.sp.pad_id(), self.sp.unk_id(), self.sp.bos_id(), self.sp.eos_id()) != (PAD, UNK, BOS, EOS):
            raise CorpusError("tokenizer has other special ids than pad/unk/bos/eos = 0/1/2/3; retrain it here")

    @classmethod
    def load(cls, path) -> "Tokenizer":
        return cls(Path(path).read_bytes())

    def __len__(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, lines: Sequence[str]) -> list[list[int]]:
        return self.sp.encode(list(lines))

    def decode(self, ids: Sequence[Sequence[int]]) -> list[str]:
        return self.sp.decode([list(x) for x in ids])


def _fingerprint(texts: Sequence[Sequence[str]], options: dict) -> str:
    digest = hashlib.sha256(json.dumps(options, sort_keys=True).encode())
    for lines in texts:
        digest.update(len(lines).to_bytes(8, "little"))
        for line in lines:
            digest.update(line.encode())
            digest.update(b"\n")
    return digest.hexdigest()[:16]


def train_tokenizer(texts: Sequence[Sequence[str]], path, vocab_size: int, *, max_sentences: int = 2_000_000,
                    seed: int = 0) -> Tokenizer:
    """The joint BPE model of `texts` (source and target lines) at `path`: reused when its
    fingerprint (the training text and options) matches, else trained and written atomically.
    The vocabulary may come out smaller than `vocab_size` on a tiny corpus (hard limit off), so
    the model's embedding size from config is an upper bound, never too small."""
    import sentencepiece as spm

    check_translation_options({"vocab_size": vocab_size})
    path = Path(os.path.expanduser(str(path)))
    options = {"vocab_size": vocab_size, "model_type": "bpe", "byte_fallback": True, "max_sentences": max_sentences, "seed": seed}
    fingerprint = _fingerprint(texts, options)
    meta = path.with_name(path.name + ".json")
    if path.is_file() and meta.is_file() and json.loads(meta.read_text()).get("fingerprint") == fingerprint:
        return Tokenizer.load(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lines = [line for part in texts for line in part]
    if len(lines) > max_sentences:  # sentencepiece's own sampling needs all lines in memory first
        lines = [lines[i] for i in rng.choice(len(lines), max_sentences, replace=False)]
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        text_file = Path(tmp) / "train.txt"
        text_file.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        spm.SentencePieceTrainer.train(
            input=str(text_file), model_prefix=str(Path(tmp) / "spm"), vocab_size=vocab_size, model_type="bpe",
            # byte fallback: unseen characters become byte pieces, so decode(encode(x)) == x always.
            character_coverage=1.0, byte_fallback=True, pad_id=PAD, unk_id=UNK, bos_id=BOS, eos_id=EOS, hard_vocab_limit=False,
            num_threads=os.cpu_count() or 1, minloglevel=2,
        )
        with atomic_write(path, "wb") as f:
            f.write((Path(tmp) / "spm.model").read_bytes())
    with atomic_write(meta) as f:
        f.write(json.dumps({"fingerprint": fingerprint, **options}) + "\n")
    return Tokenizer.load(path)


# ------------------------------------------------------------------------------------- encoding
@dataclass
class EncodedPairs:
    """Token ids of aligned pairs, stored flat (a few arrays instead of millions of lists)."""
    src_ids: np.ndarray
    src_offsets: np.ndarray  # pair i's source is src_ids[src_offsets[i]:src_offsets[i + 1]]
    tgt_ids: np.ndarray
    tgt_offsets: np.ndarray

    @classmethod
    def encode(cls, tokenizer: Tokenizer, pairs: ParallelText) -> "EncodedPairs":
        def flat(lines):
            # In chunks: WMT14's 4.5M lines as Python lists of ints would take many GB at once.
            parts, lengths = [], []
            for start in range(0, len(lines), ENCODE_CHUNK):
                ids = tokenizer.encode(lines[start:start + ENCODE_CHUNK])
                lengths += map(len, ids)
                parts.append(np.fromiter(itertools.chain.from_iterable(ids), np.int32))
            offsets = np.zeros(len(lines) + 1, np.int64)
            np.cumsum(lengths, out=offsets[1:])
            return (np.concatenate(parts) if parts else np.zeros(0, np.int32)), offsets
        return cls(*flat(pairs.src), *flat(pairs.tgt))

    def __len__(self) -> int:
        return len(self.src_offsets) - 1

    def src(self, i: int) -> np.ndarray:
        return self.src_ids[self.src_offsets[i]:self.src_offsets[i + 1]]

    def tgt(self, i: int) -> np.ndarray:
        return self.tgt_ids[self.tgt_offsets[i]:self.tgt_offsets[i + 1]]

    @property
    def src_lengths(self) -> np.ndarray:
        return np.diff(self.src_offsets) + 1  # + EOS

    @property
    def tgt_lengths(self) -> np.ndarray:
        return np.diff(self.tgt_offsets) + 1  # + BOS on the input side / EOS on the output side


@dataclass
class TranslationBatch:
    """Padded id tensors (PAD = 0): `src` ends in EOS; `tgt_in` = BOS + target, `tgt_out` =
    target + EOS. `index` holds the pairs' positions in the corpus (to restore order after
    decoding)."""
    src: torch.Tensor
    tgt_in: torch.Tensor
    tgt_out: torch.Tensor
    index: torch.Tensor

    def to(self, device) -> "TranslationBatch":
        return TranslationBatch(*(t.to(device, non_blocking=True) for t in (self.src, self.tgt_in, self.tgt_out)),
                                self.index)

    @property
    def n_tokens(self) -> int:
        return int((self.tgt_out != PAD).sum())


def collate(pairs: EncodedPairs, index: Sequence[int]) -> TranslationBatch:
    n = len(index)
    src_len = max(len(pairs.src(i)) for i in index) + 1
    tgt_len = max(len(pairs.tgt(i)) for i in index) + 1
    src = np.full((n, src_len), PAD, np.int64)
    tgt_in = np.full((n, tgt_len), PAD, np.int64)
    tgt_out = np.full((n, tgt_len), PAD, np.int64)
    for row, i in enumerate(index):
        s, t = pairs.src(i), pairs.tgt(i)
        src[row, :len(s)], src[row, len(s)] = s, EOS
        tgt_in[row, 0], tgt_in[row, 1:len(t) + 1] = BOS, t
        tgt_out[row, :len(t)], tgt_out[row, len(t)] = t, EOS
    return TranslationBatch(torch.from_numpy(src), torch.from_numpy(tgt_in), torch.from_numpy(tgt_out),
                            torch.as_tensor(np.asarray(index, np.int64)))


# -------------------------------------------------------------------------------------- batching
def token_batches(lengths: np.ndarray, max_tokens: int, max_sentences: int, *, min_sentences: int = 1,
                  seed: int = 0) -> list[np.ndarray]:
    """Split pair indices into batches of similar length whose padded size (sentences x longest)
    stays within `max_tokens`, at most `max_sentences` pairs each; every index lands in exactly
    one batch. Pairs are sorted by length with a seeded random tie-break, so equal-length pairs
    mix across epochs of different seeds. A batch keeps at least `min_sentences` pairs (one per
    DDP rank) even if that exceeds max_tokens."""
    if max_tokens < 1 or max_sentences < min_sentences:
        raise CorpusError(f"data.max_tokens={max_tokens} / data.batch_size={max_sentences} leave no room for a batch")
    tiebreak = np.random.default_rng(seed).permutation(len(lengths))
    order = np.lexsort((tiebreak, lengths))
    batches, start = [], 0
    while start < len(order):
        end, longest = start, 0
        while end < len(order):
            longest_next = max(longest, lengths[order[end]])
            size = end - start + 1
            if size > min_sentences and (size * longest_next > max_tokens or size > max_sentences):
                break
            longest, end = longest_next, end + 1
        batches.append(order[start:end])
        start = end
    if len(batches[-1]) < min_sentences:  # the leftover tail: too few pairs to give every rank one
        if len(batches) == 1:
            raise CorpusError(f"{len(lengths)} pairs cannot fill a batch for each of {min_sentences} devices")
        batches[-2:] = [np.concatenate(batches[-2:])]
    return batches


class TokenBatches:
    """The training stream: fixed length-bucketed batches, their order shuffled per epoch
    (seed, epoch), so `len()` is the same every epoch and resuming at (epoch, index) repeats the
    exact order. With DDP every global batch is dealt out round-robin over its length-sorted pairs,
    so each rank's share has similar lengths and size."""

    def __init__(self, pairs: EncodedPairs, max_tokens: int, max_sentences: int, *, seed: int = 0,
                 rank: int = 0, world_size: int = 1, device=None):
        self.pairs, self.seed, self.rank, self.world_size = pairs, seed, rank, world_size
        self.device = device
        lengths = np.maximum(pairs.src_lengths, pairs.tgt_lengths)
        self.batches = token_batches(lengths, max_tokens, max_sentences, min_sentences=world_size, seed=seed)

    def __len__(self) -> int:
        return len(self.batches)

    def epoch_order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.batches))

    def iter_epoch(self, epoch: int, start: int = 0) -> Iterator[TranslationBatch]:
        for b in self.epoch_order(epoch)[start:]:
            batch = collate(self.pairs, self.batches[b][self.rank::self.world_size])
            yield batch.to(self.device) if self.device is not None else batch


def eval_batches(pairs: EncodedPairs, max_tokens: int, max_sentences: int) -> list[np.ndarray]:
    """Length-sorted batches over every pair (evaluation: fixed order, no sharding)."""
    return token_batches(np.maximum(pairs.src_lengths, pairs.tgt_lengths), max_tokens, max_sentences)


def filter_long(pairs: EncodedPairs, max_len: Optional[int]) -> EncodedPairs:
    """Drop training pairs with a side longer than max_len tokens (with EOS)."""
    if max_len is None:
        return pairs
    keep = np.flatnonzero((pairs.src_lengths <= max_len) & (pairs.tgt_lengths <= max_len))
    if len(keep) == len(pairs):
        return pairs
    if len(keep) == 0:
        raise CorpusError(f"data.max_len={max_len} drops every training pair")

    def gather(ids, offsets):
        lengths = np.diff(offsets)[keep]
        new_offsets = np.zeros(len(keep) + 1, np.int64)
        np.cumsum(lengths, out=new_offsets[1:])
        parts = [ids[offsets[i]:offsets[i + 1]] for i in keep]
        return (np.concatenate(parts) if parts else ids[:0]), new_offsets
    return EncodedPairs(*gather(pairs.src_ids, pairs.src_offsets), *gather(pairs.tgt_ids, pairs.tgt_offsets))
