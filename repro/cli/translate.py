"""`repro-translate`: translate a file with a trained checkpoint and optionally score it.

    repro-translate --checkpoint RUN/checkpoints/best.pt --src test.en [--ref test.de] [--beam 4] [--out FILE]

The checkpoint carries its config (model, norm, decoding options) and its tokenizer, so nothing
else is needed. Several --checkpoint files are averaged parameter-wise first (checkpoint
averaging). With --ref, prints sacreBLEU's score line with its signature.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

from repro.data.translation import CorpusError, read_lines
from repro.tasks import build_task_and_model
from repro.tasks.translation import bleu
from repro.train.checkpoint import load
from repro.util import StorageError


def average_checkpoints(paths: list[Path]) -> dict:
    """The element-wise mean of the checkpoints' model parameters (and the config and non-tensor
    state of the last one): averaging the last N checkpoints is the usual final step for
    Transformer translation models."""
    states = [load(path) for path in paths]
    model = dict(states[-1]["model"])
    for key, value in model.items():
        if torch.is_tensor(value) and value.is_floating_point():
            model[key] = sum(s["model"][key].double() for s in states).div(len(states)).to(value.dtype)
    return {**states[-1], "model": model}


def load_translator(paths: list[Path], device: torch.device):
    """(task, model) rebuilt from checkpoint(s): the task's decoding settings, the model's weights
    and the tokenizer saved with them."""
    state = average_checkpoints(paths)
    cfg = OmegaConf.create(state["config"])
    if "Translation" not in str(cfg.task.get("_target_", "")):
        raise CorpusError(f"{paths[-1]} is a {cfg.task.name} checkpoint, not a translation one")
    task, model = build_task_and_model(cfg)
    model.load_state_dict(state["model"])
    model.to(device).eval()
    task.attach(model, device)
    return task, model


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Translate a file with a repro translation checkpoint.")
    parser.add_argument("--checkpoint", nargs="+", required=True, type=Path,
                        help="checkpoint file(s); several are averaged")
    parser.add_argument("--src", required=True, type=Path, help="source sentences, one a line (.gz allowed)")
    parser.add_argument("--ref", type=Path, help="reference translations: print sacreBLEU's score line")
    parser.add_argument("--beam", type=int, default=None, help="beam size (default: the run's decode.beam; 1 = greedy)")
    parser.add_argument("--out", type=Path, help="write translations here (default: stdout)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    args = parser.parse_args(argv)

    for path in args.checkpoint:
        if not path.is_file():
            sys.exit(f"error: --checkpoint {path} does not exist")
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu")
    try:
        # The inputs first: a bad file costs nothing, and an empty one never reaches the model.
        if args.beam is not None and args.beam < 1:
            raise CorpusError(f"--beam {args.beam} is not allowed: must be >= 1")
        sources = read_lines(args.src)
        references = read_lines(args.ref) if args.ref else None
        if references is not None and len(references) != len(sources):
            raise CorpusError(f"{args.src} has {len(sources)} lines but {args.ref} has {len(references)}")
        task, model = load_translator(args.checkpoint, device)
        beam = task.decode.beam if args.beam is None else args.beam
        with torch.no_grad():
            hypotheses = task.translate_text(model, sources, beam)
    except (CorpusError, ValueError, StorageError) as error:
        sys.exit(f"error: {error}")
    text = "".join(h + "\n" for h in hypotheses)
    if args.out:
        args.out.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    if references is not None:
        score, signature = bleu(hypotheses, references)
        # On stderr when the translations go to stdout, so piping them stays clean.
        print(f"{score} | {signature}", file=sys.stderr if not args.out else sys.stdout)


if __name__ == "__main__":
    main()
