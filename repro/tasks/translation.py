"""Machine translation (the paper's Table 4): token-batched Transformer training with label smoothing,
evaluated by decoding (greedy or beam search) and scoring with sacreBLEU.

Data come from `<root>/<split>.<lang>[.gz]` files (Multi30k, or WMT14 prepared locally) or, when
`root` is null, from `datasets` (wmt/wmt14 de-en). Metrics: `val/loss` (label-smoothed, as
train/loss), `val/nll`, `val/bleu`; `test/bleu` on the first test set and `test/<name>/bleu` for
each test set. BLEU is case-sensitive detokenized sacreBLEU (13a), the metric of the paper's
Table 4; its signature goes into the run's summary as `bleu_signature`. Throughput counts target
tokens.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Mapping, Optional

import sacrebleu
import torch
from torch import nn

from repro.data.translation import (
    PAD, CorpusError, EncodedPairs, check_translation_options, ParallelText, TokenBatches, Tokenizer, collate, eval_batches, filter_long,
    load_hf_wmt, read_parallel, train_tokenizer,
)
from repro.nn import NormFactory
from repro.util import ConfigError, check_options, option, register_schema
from repro.util.schema import Rule, as_dict, check_value

from .base import Task
from .decode import beam_search, greedy_search
from .sharding import gather_in_order, my_share, sum_over_ranks

log = logging.getLogger(__name__)


def label_smoothed_loss(logits: torch.Tensor, target: torch.Tensor, smoothing: float) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(smoothed loss summed over non-pad targets, nll summed likewise, number of targets). One
    log-softmax serves both: smoothed = (1 - eps) * nll + eps * mean_v(-log p_v), torch's definition."""
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    mask = target != PAD
    nll = -log_probs.gather(-1, target[..., None]).squeeze(-1)
    uniform = -log_probs.mean(-1)
    smoothed = (1 - smoothing) * nll + smoothing * uniform
    return smoothed[mask].sum(), nll[mask].sum(), int(mask.sum())


def bleu(hypotheses: list[str], references: list[str]):
    """sacreBLEU corpus BLEU of detokenized text (a BLEUScore: .score, str() = the score line) and
    sacreBLEU's signature."""
    metric = sacrebleu.metrics.BLEU()
    return metric.corpus_score(hypotheses, [references]), str(metric.get_signature())


LABEL_SMOOTHING = Rule(minimum=0, maximum=1, max_strict=True)  # task.label_smoothing, a loss option


@dataclass
class DecodeOptions:
    """The `decode` config group's schema (conf/decode/beam.yaml documents each option)."""
    beam: int = option(4, minimum=1)            # test sets; 1 = greedy
    val_beam: int = option(1, minimum=1)        # val/bleu during training
    length_penalty: float = option(0.6, minimum=0)  # GNMT alpha
    max_len_a: float = option(1.2, minimum=0)   # at most a * source length + b tokens
    max_len_b: int = option(10, minimum=0)
    bleu: bool = option(True)                   # false: evaluation scores losses only, no decoding



register_schema("decode", "decode_schema", DecodeOptions)
class Translation(Task):
    throughput_unit = "tokens"
    eval_splits = ("val", "test")
    monitor = ("val/bleu", "max")

    def __init__(
        self, name: str, model: Callable[..., nn.Module], *, tokenizer: str, vocab_size: int,
        root: Optional[str] = None, hf_dataset: str = "wmt/wmt14", hf_config: str = "de-en",
        src_lang: str = "en", tgt_lang: str = "de", train_split: str = "train", val_split: str = "val",
        test_sets: Optional[dict] = None, empty_lines: str = "error", max_tokens: int = 4096,
        batch_size: int = 1024, eval_max_tokens: int = 8192, max_len: Optional[int] = 256,
        label_smoothing: float = 0.1, decode: Optional[Mapping] = None, tokenizer_sentences: int = 2_000_000,
        seed: int = 0,
    ):
        test_sets = dict(test_sets) if test_sets is not None else {"test": "test"}
        check_translation_options(dict(
            vocab_size=vocab_size, test_sets=test_sets,
            empty_lines=empty_lines, max_tokens=max_tokens, batch_size=batch_size, eval_max_tokens=eval_max_tokens,
            max_len=max_len,
        ))
        check_value("task.label_smoothing", label_smoothing, float, LABEL_SMOOTHING)
        self.decode = check_options(decode or {}, DecodeOptions, "decode")
        self.name, self.make_model, self.seed = name, model, seed
        self.tokenizer_path, self.vocab_size, self.tokenizer_sentences = tokenizer, vocab_size, tokenizer_sentences
        self.root, self.hf = root, (hf_dataset, hf_config)
        self.langs = (src_lang, tgt_lang)
        self.split_names = {"train": train_split, "val": val_split}
        self.test_sets = test_sets
        self.empty_lines, self.max_len = empty_lines, max_len
        self.max_tokens, self.max_sentences, self.eval_max_tokens = max_tokens, batch_size, eval_max_tokens
        self.smoothing = label_smoothing
        self.model: Optional[nn.Module] = None

    @classmethod
    def check_options(cls, cfg, world_size: int = 1) -> None:
        super().check_options(cfg, world_size)
        try:  # the data rules live with the corpus code, which checks them again when it runs
            check_translation_options(as_dict(cfg["data"]))
        except CorpusError as error:
            raise ConfigError(str(error)) from None
        check_options(cfg.get("decode") or {}, DecodeOptions, "decode")
        check_value("task.label_smoothing", cfg["task"].get("label_smoothing", 0.1), float, LABEL_SMOOTHING)

    # ---------------------------------------------------------------------------- set-up
    def build_model(self, norm: NormFactory) -> nn.Module:
        self.model = self.make_model(norm=norm, vocab_size=self.vocab_size, pad_id=PAD)
        return self.model

    def read(self, split: str) -> ParallelText:
        """A split by its file stem (root set) or `datasets` split name; "dataset:config:split"
        reads a split of another `datasets` set (e.g. wmt/wmt17:de-en:test for newstest2017)."""
        src, tgt = self.langs
        if self.root is not None:
            return read_parallel(self.root, split, src, tgt, self.empty_lines)
        dataset, config, name = split.split(":") if split.count(":") == 2 else (*self.hf, split)
        return load_hf_wmt(dataset, config, name, src, tgt, self.empty_lines)

    def setup(self, device, rank: int = 0, world_size: int = 1) -> None:
        self.device = device
        train = self.read(self.split_names["train"])

        def tokenizer():
            return train_tokenizer([train.src, train.tgt], self.tokenizer_path, self.vocab_size,
                                   max_sentences=self.tokenizer_sentences)
        if world_size > 1:  # rank 0 trains (or checks) the cached model; the others then load it
            if rank == 0:
                tokenizer()
            torch.distributed.barrier()
        self.tokenizer = tokenizer()  # at most vocab_size pieces: the model's embedding fits it
        if self.model is not None:  # the checkpoint carries the tokenizer that defines its ids
            self.model.vocabulary = self.tokenizer.proto
        self.text = {"val": self.read(self.split_names["val"])}
        self.text.update({f"test:{name}": self.read(split) for name, split in self.test_sets.items()})
        self.encoded = {key: EncodedPairs.encode(self.tokenizer, text) for key, text in self.text.items()}
        train_pairs = filter_long(EncodedPairs.encode(self.tokenizer, train), self.max_len)
        self._train = TokenBatches(train_pairs, self.max_tokens, self.max_sentences, seed=self.seed, rank=rank,
                                   world_size=world_size, device=device)

    def attach(self, model: nn.Module, device) -> None:
        """Decode with `model` and the tokenizer its checkpoint carries, without reading any corpus
        (repro-translate)."""
        if model.vocabulary is None:
            raise CorpusError("the checkpoint carries no tokenizer (model.vocabulary is empty)")
        self.tokenizer, self.device = Tokenizer(model.vocabulary), device

    def train_batches(self) -> TokenBatches:
        return self._train

    # ------------------------------------------------------------------------ training
    def loss(self, model: nn.Module, batch):
        logits = model(batch.src, batch.tgt_in)
        smoothed, nll, n = label_smoothed_loss(logits, batch.tgt_out, self.smoothing)
        return smoothed / n, n, {"train/nll": nll.detach() / n}

    # ---------------------------------------------------------------------- evaluation
    def translate(self, model: nn.Module, pairs: EncodedPairs, beam: int) -> list[list[int]]:
        """Token ids of the translation of every source of `pairs`, in corpus order."""
        mine: dict[int, list[int]] = {}
        # Under DDP each rank decodes its share of the batches (the same batches as one process).
        for index in my_share(eval_batches(pairs, self.eval_max_tokens, self.max_sentences)):
            batch = collate(pairs, index).to(self.device)
            options = dict(max_len_a=self.decode.max_len_a, max_len_b=self.decode.max_len_b)
            hyps = (greedy_search(model, batch.src, **options) if beam == 1
                    else beam_search(model, batch.src, beam=beam, alpha=self.decode.length_penalty, **options))
            mine.update(zip(index.tolist(), hyps))
        return gather_in_order(mine, len(pairs))

    def translate_text(self, model: nn.Module, lines: list[str], beam: int) -> list[str]:
        """Detokenized translations of `lines`."""
        pairs = EncodedPairs.encode(self.tokenizer, ParallelText(list(lines), [""] * len(lines)))
        return self.tokenizer.decode(self.translate(model, pairs, beam))

    def _score(self, model, key: str, beam: int) -> dict[str, float]:
        pairs, text = self.encoded[key], self.text[key]
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)  # smoothed loss, nll, targets
        for index in my_share(eval_batches(pairs, self.eval_max_tokens, self.max_sentences)):
            batch = collate(pairs, index).to(self.device)
            s, l, k = label_smoothed_loss(model(batch.src, batch.tgt_in), batch.tgt_out, self.smoothing)
            sums += torch.stack([s.double(), l.double(), torch.tensor(float(k), dtype=torch.float64, device=self.device)])
        total, nll, n = sum_over_ranks(sums).tolist()
        if not self.decode.bleu:  # short runs compared by their losses skip the costly decoding
            return {"loss": total / n, "nll": nll / n}
        hyps = self.translate_text(model, text.src, beam)
        score, self.bleu_signature = bleu(hyps, text.tgt)
        log.info("%s (beam %d): %s | %s", key, beam, score, self.bleu_signature)
        return {"loss": total / n, "nll": nll / n, "bleu": score.score}

    def summary_extras(self) -> dict:
        signature = getattr(self, "bleu_signature", None)
        return {"bleu_signature": signature} if signature else {}

    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]:
        if split == "val":
            return {f"val/{k}": v for k, v in self._score(model, "val", self.decode.val_beam).items()}
        if split != "test":
            raise ValueError(f"split must be val or test, got {split!r}")
        metrics = {}
        for i, name in enumerate(self.test_sets):
            scores = self._score(model, f"test:{name}", self.decode.beam)
            metrics.update({f"test/{name}/{k}": v for k, v in scores.items()})
            if i == 0:  # the headline test set, under the docs/DESIGN.md names
                metrics.update({f"test/{k}": v for k, v in scores.items()})
        return metrics
