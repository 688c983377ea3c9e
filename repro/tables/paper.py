"""The published numbers the regenerated tables are compared with, with their source and hardware.

Zhang & Sennrich, "Root Mean Square Layer Normalization", NeurIPS 2019 (arXiv:1910.07467).
Only what the paper prints is kept here; a cell it does not report is None, never filled in.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

SOURCE = 'Zhang & Sennrich, "Root Mean Square Layer Normalization", NeurIPS 2019, arXiv:1910.07467'


@dataclass(frozen=True)
class PaperRow:
    norm: str                      # the repro norm name (conf/norm/*.yaml)
    partial: Optional[float]       # pRMSNorm's p, None for every other norm
    values: dict = field(default_factory=dict)  # column -> number, or why the paper has none


@dataclass(frozen=True)
class Budget:
    """What the paper trained each model on, so a run can say whether it is comparable."""
    task: str                              # our task that is the paper's data and model
    model: dict                            # model options that must match (e.g. width 96)
    steps: Optional[int] = None            # optimizer steps
    tokens_per_step: Optional[int] = None  # source + target tokens per step (approximate)
    epochs: Optional[int] = None
    precision: Optional[str] = None        # "fp32" where the paper's runs are known to be fp32

    def describe(self) -> str:
        parts = [self.task] + [f"model.{k}={v}" for k, v in self.model.items()]
        if self.steps:
            parts.append(f"{self.steps} steps")
        if self.tokens_per_step:
            parts.append(f"~{self.tokens_per_step} tokens per step")
        if self.epochs:
            parts.append(f"{self.epochs} epochs")
        if self.precision:
            parts.append(self.precision)
        return ", ".join(parts)


@dataclass(frozen=True)
class PaperTable:
    name: str
    source: str
    setup: str       # model, data
    hardware: str    # what the timings were measured on
    columns: dict    # column -> description with its unit
    rows: tuple
    budget: Budget

    def row(self, norm: str) -> Optional[PaperRow]:
        return next((r for r in self.rows if r.norm == norm), None)


# Table 4: Transformer base on WMT14 En-De, case-sensitive detokenized sacreBLEU (13a, the
# caption's "SacreBLEU score") on newstest2014 and newstest2017; time in seconds per 1k training
# steps on a V100. The Transformer without a norm failed to train, so it has no BLEU. Budget
# (6.1, A.1): 300K steps of ~25K source + target tokens.
TABLE4 = PaperTable(
    name="Table 4",
    source=SOURCE + ", Table 4",
    setup="Transformer (base), WMT14 En-De",
    hardware="Tesla V100",
    columns={
        "test14": "sacreBLEU on newstest2014 (case-sensitive, detokenized)",
        "test17": "sacreBLEU on newstest2017 (case-sensitive, detokenized)",
        "time": "seconds per 1k training steps",
    },
    rows=(
        PaperRow("none", None, {"test14": "failed", "test17": "failed", "time": 210.0}),
        PaperRow("layernorm", None, {"test14": 26.6, "test17": 27.7, "time": 248.0}),
        PaperRow("rmsnorm", None, {"test14": 26.8, "test17": 27.7, "time": 231.0}),
        PaperRow("prmsnorm", 0.0625, {"test14": 26.5, "test17": 27.8, "time": 225.0}),
    ),
    budget=Budget(task="wmt14_transformer", model={"dim": 512, "encoder_layers": 6, "decoder_layers": 6},
                  steps=300_000, tokens_per_step=25_000),
)

# Table 10: ConvPool-CNN-C on CIFAR-10, test error in percent and seconds per epoch on a
# GeForce RTX 2080 Ti; pRMSNorm with p = 12.5 %. Budget: Salimans & Kingma's protocol, 200 epochs
# of the width-96 model, in fp32: their Theano code computes in float32, and the 2080 Ti (Turing)
# has no bf16.
TABLE10 = PaperTable(
    name="Table 10",
    source=SOURCE + ", Table 10",
    setup="ConvPool-CNN-C, CIFAR-10",
    hardware="GeForce RTX 2080 Ti",
    columns={"error": "test error (%)", "time": "seconds per epoch"},
    rows=(
        PaperRow("none", None, {"error": 8.96, "time": 21.0}),
        PaperRow("batchnorm", None, {"error": 8.25, "time": 38.0}),
        PaperRow("weightnorm", None, {"error": 8.28, "time": 23.0}),
        PaperRow("layernorm", None, {"error": 10.49, "time": 39.0}),
        PaperRow("rmsnorm", None, {"error": 8.83, "time": 31.0}),
        PaperRow("prmsnorm", 0.125, {"error": 10.37, "time": 30.0}),
    ),
    budget=Budget(task="cifar10_cnn", model={"width": 96}, epochs=200, precision="fp32"),
)
