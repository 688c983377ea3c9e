"""Translation: corpus reading and its errors, the sentencepiece tokenizer, token batching, the
Transformer (cached decoding, every norm), greedy/beam search, and real learning on a fixture corpus."""
from __future__ import annotations

import functools
import gzip
import itertools
import math

import numpy as np
import pytest
import sacrebleu
import torch
from torch import nn
from hypothesis import given, settings
from hypothesis import strategies as st

from repro.data.translation import (
    BOS, EOS, PAD, CorpusError, EncodedPairs, ParallelText, TokenBatches, check_pairs, collate, filter_long,
    read_parallel, token_batches, train_tokenizer,
)
from repro.data.translation_fixtures import fixture_pairs, write_parallel
from repro.models import Transformer
from repro.nn import NORM_NAMES, NormFactory, NormLayer
from repro.tasks.decode import beam_search, greedy_search
from repro.tasks.translation import Translation, label_smoothed_loss
from repro.util import ConfigError
from train_helpers import corpus, one_thread  # noqa: F401

TINY = dict(dim=32, ffn=64, heads=2, encoder_layers=1, decoder_layers=1, dropout=0.0, max_positions=64)


@pytest.fixture(scope="module")
def tokenizer(corpus, tmp_path_factory):
    text = read_parallel(corpus, "train", "en", "de")
    return train_tokenizer([text.src, text.tgt], tmp_path_factory.mktemp("tok") / "spm.model", 400)


def make_task(corpus, tmp_path, model=TINY, **options):
    options = {"tokenizer": str(tmp_path / "spm.model"), "vocab_size": 400, "root": str(corpus),
               "val_split": "val", "test_sets": {"test_2016_flickr": "test_2016_flickr"}, **options}
    return Translation("fixture", functools.partial(Transformer, **model), **options)


# ----------------------------------------------------------------------------------- corpus files
def test_reading_plain_and_gz_files(tmp_path):
    (tmp_path / "train.en").write_text("a b\nc d\n")
    with gzip.open(tmp_path / "train.de.gz", "wt") as f:
        f.write("x y\nz w\n")
    text = read_parallel(tmp_path, "train", "en", "de")
    assert (text.src, text.tgt) == (["a b", "c d"], ["x y", "z w"])


def test_missing_split_names_the_file(tmp_path):
    (tmp_path / "train.en").write_text("a\n")
    with pytest.raises(CorpusError, match=r"missing corpus file .*train\.de\[\.gz\]"):
        read_parallel(tmp_path, "train", "en", "de")


def test_mismatched_line_counts_name_both_files(tmp_path):
    write_parallel(tmp_path, "train", [("a", "b"), ("c", "d")])
    with gzip.open(tmp_path / "train.de.gz", "wt") as f:
        f.write("only one line\n")
    with pytest.raises(CorpusError, match=r"train\.en\.gz has 2 lines but .*train\.de\.gz has 1"):
        read_parallel(tmp_path, "train", "en", "de")


def test_empty_file_is_an_error(tmp_path):
    (tmp_path / "val.en").write_text("")
    (tmp_path / "val.de").write_text("")
    with pytest.raises(CorpusError, match=r"val\.en is empty"):
        read_parallel(tmp_path, "val", "en", "de")


def test_empty_line_policy():
    src, tgt = ["a", "  ", "c"], ["x", "y", "z"]
    with pytest.raises(CorpusError, match=r"src line 2 is empty .*data\.empty_lines=skip"):
        check_pairs(src, tgt, "src", "tgt")
    assert check_pairs(src, tgt, "src", "tgt", "skip").src == ["a", "c"]
    with pytest.raises(CorpusError, match=r"data\.empty_lines='drop' is not allowed: must be one of error, skip"):
        check_pairs(src, tgt, "src", "tgt", "drop")


def test_datasets_offline_is_one_clear_error(corpus, tmp_path, monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'wmt/wmt14' on the Hub (LocalEntryNotFoundError)")
    monkeypatch.setattr(datasets, "load_dataset", offline)
    task = make_task(corpus, tmp_path, root=None, val_split="validation", test_sets={"newstest2014": "test"})
    with pytest.raises(CorpusError, match=r"could not load wmt/wmt14 de-en split 'train'.*set data\.root"):
        task.setup(torch.device("cpu"))


def test_datasets_rows_are_read_per_split_and_dataset(corpus, tmp_path, monkeypatch):
    """The real `datasets` call with its arguments; other sets by dataset:config:split."""
    import datasets

    calls = []

    def fake(name, config, split):
        calls.append((name, config, split))
        return {"translation": [{"en": en, "de": de} for en, de in fixture_pairs(64)]}
    monkeypatch.setattr(datasets, "load_dataset", fake)
    task = make_task(corpus, tmp_path, root=None, val_split="validation",
                     test_sets={"newstest2014": "test", "newstest2017": "wmt/wmt17:de-en:test"})
    task.setup(torch.device("cpu"))
    assert calls == [("wmt/wmt14", "de-en", "train"), ("wmt/wmt14", "de-en", "validation"),
                     ("wmt/wmt14", "de-en", "test"), ("wmt/wmt17", "de-en", "test")]
    assert len(task.text["test:newstest2017"]) == 64


# ------------------------------------------------------------------------------------- tokenizer
def test_tokenizer_round_trip_and_special_ids(tokenizer):
    lines = [en for en, _ in fixture_pairs(64)] + [de for _, de in fixture_pairs(64)]
    lines += ["A girl sees a horse in the snow .", "Ein Mädchen zieht eine Katze am Strand ."]
    ids = tokenizer.encode(lines)
    assert tokenizer.decode(ids) == lines
    assert all(PAD not in x and BOS not in x and EOS not in x for x in ids)
    assert len(tokenizer) <= 400


def test_tokenizer_is_cached_and_retrained_when_the_data_change(tmp_path):
    pairs = fixture_pairs(64)
    path = tmp_path / "spm.model"
    train_tokenizer([[p[0] for p in pairs], [p[1] for p in pairs]], path, 350)
    stamp = path.stat().st_mtime_ns
    train_tokenizer([[p[0] for p in pairs], [p[1] for p in pairs]], path, 350)
    assert path.stat().st_mtime_ns == stamp  # reused
    train_tokenizer([[p[0] for p in pairs[:40]], [p[1] for p in pairs[:40]]], path, 350)
    assert path.stat().st_mtime_ns != stamp  # other data: retrained


def test_bad_vocab_size(tmp_path):
    with pytest.raises(CorpusError, match=r"data\.vocab_size=0 is not allowed"):
        train_tokenizer([["a"], ["b"]], tmp_path / "spm.model", 0)


# -------------------------------------------------------------------------------------- batching
@settings(max_examples=40, deadline=None)
@given(lengths=st.lists(st.integers(1, 40), min_size=2, max_size=300), max_tokens=st.integers(40, 400),
       max_sentences=st.integers(2, 50), world=st.integers(1, 2))
def test_token_batches_cover_every_sentence_once(lengths, max_tokens, max_sentences, world):
    lengths = np.array(lengths)
    batches = token_batches(lengths, max_tokens, max_sentences, min_sentences=world, seed=3)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(len(lengths)))
    assert all(len(batch) >= world for batch in batches)
    for batch in batches[:-1]:  # the last may have absorbed a tail of fewer than `world` pairs
        assert len(batch) <= max_sentences
        assert len(batch) * lengths[batch].max() <= max_tokens or len(batch) <= world
    assert len(batches[-1]) <= max_sentences + world - 1


def test_too_few_pairs_for_the_devices():
    with pytest.raises(CorpusError, match="1 pairs cannot fill a batch for each of 2 devices"):
        token_batches(np.array([3]), 100, 10, min_sentences=2)


def make_pairs(n, seed=0):
    rng = np.random.default_rng(seed)
    src = [rng.integers(4, 50, rng.integers(1, 12)).tolist() for _ in range(n)]
    tgt = [rng.integers(4, 50, rng.integers(1, 12)).tolist() for _ in range(n)]

    class Ids:  # a stand-in tokenizer: the lines are already ids
        def encode(self, lines):
            return lines
    return EncodedPairs.encode(Ids(), ParallelText(src, tgt)), src, tgt


def test_epochs_shuffle_batches_reproducibly_and_ranks_split_them():
    pairs, _, _ = make_pairs(200)
    stream = TokenBatches(pairs, 96, 64, seed=1)
    first = [b.index.tolist() for b in stream.iter_epoch(0)]
    assert [b.index.tolist() for b in stream.iter_epoch(0)] == first
    assert [b.index.tolist() for b in stream.iter_epoch(0, 3)] == first[3:]
    assert [b.index.tolist() for b in stream.iter_epoch(1)] != first
    assert sorted(i for b in first for i in b) == list(range(200))
    ranks = [list(TokenBatches(pairs, 96, 64, seed=1, rank=r, world_size=2).iter_epoch(0)) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == len(TokenBatches(pairs, 96, 64, seed=1, world_size=2))
    for a, b in zip(*ranks):
        assert len(a.index) and len(b.index) and not set(a.index.tolist()) & set(b.index.tolist())
    assert sorted(i for r in ranks for b in r for i in b.index.tolist()) == list(range(200))


def test_collate_places_bos_eos_and_padding():
    pairs, src, tgt = make_pairs(5)
    batch = collate(pairs, [0, 3])
    for row, i in enumerate([0, 3]):
        s, t = src[i], tgt[i]
        assert batch.src[row, :len(s) + 1].tolist() == s + [EOS]
        assert batch.tgt_in[row, :len(t) + 1].tolist() == [BOS] + t
        assert batch.tgt_out[row, :len(t) + 1].tolist() == t + [EOS]
        assert (batch.src[row, len(s) + 1:] == PAD).all() and (batch.tgt_out[row, len(t) + 1:] == PAD).all()
    assert batch.n_tokens == len(tgt[0]) + len(tgt[3]) + 2


def test_filter_long_drops_only_long_pairs():
    pairs, src, tgt = make_pairs(50)
    kept = filter_long(pairs, 8)
    expected = [i for i in range(50) if len(src[i]) + 1 <= 8 and len(tgt[i]) + 1 <= 8]
    assert len(kept) == len(expected)
    assert [kept.src(j).tolist() for j in range(len(kept))] == [src[i] for i in expected]


# ----------------------------------------------------------------------------------------- model
def test_label_smoothed_loss_matches_torch():
    logits = torch.randn(2, 5, 11)
    target = torch.randint(4, 11, (2, 5))
    target[1, 3:] = PAD
    smoothed, nll, n = label_smoothed_loss(logits, target, 0.1)
    mask = target != PAD
    expected = torch.nn.functional.cross_entropy(logits[mask], target[mask], label_smoothing=0.1, reduction="sum")
    assert n == 8
    torch.testing.assert_close(smoothed, expected)
    torch.testing.assert_close(nll, torch.nn.functional.cross_entropy(logits[mask], target[mask], reduction="sum"))


@pytest.mark.parametrize("pre_norm", [False, True])
def test_cached_decoding_matches_teacher_forcing(pre_norm):
    torch.manual_seed(0)
    model = Transformer(NormFactory("rmsnorm"), vocab_size=50, **{**TINY, "decoder_layers": 2}, pre_norm=pre_norm).eval()
    src = torch.randint(4, 50, (3, 7))
    src[1, 5:] = PAD
    tgt = torch.randint(4, 50, (3, 6))
    full = model(src, tgt)
    memory, mask = model.encode(src)
    cache = model.new_cache()
    steps = [model.decode(tgt[:, t:t + 1], memory, mask, cache, start=t) for t in range(6)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("norm", [n for n in NORM_NAMES if n not in ("batchnorm", "l2norm")])
def test_every_norm_builds_and_trains(norm):
    torch.manual_seed(0)
    factory = NormFactory(norm, partial=0.25 if norm == "prmsnorm" else None)
    model = Transformer(factory, vocab_size=50, **TINY)
    n_norms = sum(isinstance(m, NormLayer) for m in model.modules())
    assert n_norms == (0 if norm in ("none", "weightnorm") else 5)  # 2 encoder + 3 decoder sublayers
    src, tgt = torch.randint(4, 50, (8, 6)), torch.randint(4, 50, (8, 7))
    tgt_in = torch.cat([torch.full((8, 1), BOS), tgt[:, :-1]], 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        loss = label_smoothed_loss(model(src, tgt_in), tgt, 0.1)[0] / tgt.numel()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.isfinite(losses).all() and losses[-1] < losses[0] - 0.2


@pytest.mark.parametrize("norm", ["layernorm", "weightnorm"])
def test_linear_layers_start_xavier_uniform_with_zero_bias(norm):
    """The paper's initialization (A.1): Xavier-uniform weights, bound sqrt(6 / (fan_in + fan_out)),
    std bound / sqrt(3); fused k/v as two separate dim x dim layers. (PyTorch's default would give
    std 1 / sqrt(3 fan_in), 10-30 % off here.)"""
    torch.manual_seed(0)
    model = Transformer(NormFactory(norm), vocab_size=40, dim=64, ffn=256, heads=2, encoder_layers=1,
                        decoder_layers=1, max_positions=16)
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 5 + 8  # encoder: q, kv, out, 2 FFN; decoder: self- and cross-attention, 2 FFN
    for name, layer in linears:
        blocks = layer.weight.detach().chunk(2 if name.endswith(".kv") else 1, dim=0)
        for w in blocks:
            fan_out, fan_in = w.shape
            bound = math.sqrt(6 / (fan_in + fan_out))
            assert w.abs().max() <= bound + 1e-6, name
            assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.03), name
        assert torch.equal(layer.bias, torch.zeros_like(layer.bias)), name


def test_bad_model_shape():
    with pytest.raises(ValueError, match=r"model\.dim=30 must be even and divisible by model\.heads=4"):
        Transformer(NormFactory("layernorm"), vocab_size=50, dim=30, heads=4)


# -------------------------------------------------------------------------------------- decoding
@pytest.mark.parametrize("seed", [0, 1])
def test_beam_one_equals_greedy(seed):
    torch.manual_seed(seed)
    model = Transformer(NormFactory("layernorm"), vocab_size=40, **{**TINY, "decoder_layers": 2}).eval()
    src = torch.randint(4, 40, (6, 9))
    src[2, 4:] = PAD
    src[:, -1] = torch.where(src[:, -1] == PAD, PAD, EOS)
    greedy = greedy_search(model, src, max_len_a=1.0, max_len_b=5)
    assert greedy == beam_search(model, src, beam=1, max_len_a=1.0, max_len_b=5)
    assert all(0 < len(h) <= 14 for h in greedy)  # random weights run to the length limit
    wide = beam_search(model, src, beam=4, max_len_a=1.0, max_len_b=5)
    assert len(wide) == 6 and all(EOS not in h and BOS not in h and PAD not in h for h in wide)


def _exhaustive_best(model, src: torch.Tensor, limit: int, alpha: float) -> list[int]:
    """The hypothesis (without EOS) of highest length-normalized log-probability under the model
    itself, by scoring every token sequence that ends in EOS within `limit` tokens (teacher
    forcing, no masking except that PAD and BOS are never produced)."""
    vocab = model.embed.num_embeddings
    words = [t for t in range(vocab) if t not in (PAD, BOS, EOS)]
    memory, src_mask = model.encode(src[None])
    best, best_score = None, -math.inf
    for length in range(limit):
        for seq in itertools.product(words, repeat=length):
            tokens = torch.tensor([[BOS, *seq]])
            log_probs = torch.log_softmax(model.decode(tokens, memory, src_mask).float(), -1)[0]
            score = sum(log_probs[i, t].item() for i, t in enumerate([*seq, EOS]))
            score /= ((5 + length + 1) / 6) ** alpha
            if score > best_score:
                best, best_score = list(seq), score
    return best


@pytest.mark.parametrize("seed", range(6))
def test_beam_wider_than_the_hypothesis_space_finds_the_exhaustive_optimum(seed):
    """Vocab 6 = PAD, UNK, BOS, EOS + 2 words, so UNK and the 2 words continue a hypothesis;
    within 3 steps there are 1 + 3 + 9 = 13 hypotheses and a beam of 16 keeps them all. Beam search must then return the exact optimum, which fails when
    the forced EOS at the length limit is scored as log p = 0."""
    torch.manual_seed(seed)
    model = Transformer(NormFactory("layernorm"), vocab_size=6, **{**TINY, "decoder_layers": 2}).eval()
    src = torch.randint(4, 6, (5,))
    with torch.no_grad():
        for alpha in (0.0, 0.6):
            want = _exhaustive_best(model, src, limit=3, alpha=alpha)
            got = beam_search(model, src[None], beam=16, alpha=alpha, max_len_a=0.0, max_len_b=3)[0]
            assert got == want, (alpha, got, want)


def test_task_rejects_bad_settings(corpus, tmp_path):
    with pytest.raises(ConfigError, match=r"decode\.beam=0 is not allowed: must be an integer >= 1"):
        make_task(corpus, tmp_path, decode={"beam": 0})
    with pytest.raises(ConfigError, match=r"task\.label_smoothing=1.5 is not allowed"):
        make_task(corpus, tmp_path, label_smoothing=1.5)


# ---------------------------------------------------------------------------------- real learning
def test_tiny_transformer_overfits_the_fixture_corpus(corpus, tmp_path):
    """64 pairs, a 2+2-layer d64 model, 150 Adam steps: BLEU on the same pairs > 90 (greedy and
    beam); an untrained model scores ~0, so this checks data, model, loss and decoding together."""
    torch.manual_seed(0)
    task = make_task(corpus, tmp_path, model=dict(dim=64, ffn=128, heads=4, encoder_layers=2, decoder_layers=2,
                                                   dropout=0.0, max_positions=64), max_tokens=2048, decode={"beam": 4})
    model = task.build_model(NormFactory("rmsnorm"))
    task.setup(torch.device("cpu"))
    model.eval()
    with torch.no_grad():
        assert task.evaluate(model, "val")["val/bleu"] < 10
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3, betas=(0.9, 0.98))
    batches = task.train_batches()
    for step in range(150):
        for batch in batches.iter_epoch(step):
            loss, n, _ = task.loss(model, batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        val, test = task.evaluate(model, "val"), task.evaluate(model, "test")
    assert val["val/bleu"] > 90 and test["test/bleu"] > 90, (val, test)
    assert test["test/test_2016_flickr/bleu"] == test["test/bleu"]
