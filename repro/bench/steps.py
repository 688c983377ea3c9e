"""`repro-bench steps`: training-step time of each norm, paired and interleaved, in one process.

    repro-bench steps task=cifar10_cnn model.width=16 data.root=DIR --norms layernorm,rmsnorm,prmsnorm \
        --steps 40 --out results/steps/cifar10_cnn

Whole training runs timed one after another compare machines more than norms: on a shared host
another job starting halfway moves one run's time by tens of percent. Here one model per norm is
built from the same config (same seed, same batch, same device, same optimizer), and after warm-up
their training steps take turns, ABCABC... (repro.bench.paired), so load that comes and goes hits
every norm alike and the median per-round ratio to LayerNorm holds. Then a second set of rounds
times the norm layers' own forward and backward (repro.track.NormTimer hooks; kept out of the
step-time rounds, whose times the hooks would inflate).

Timers: wall clock on a CPU; CUDA events around each step on a GPU (whole training steps are not
captured as CUDA graphs: the optimizer step and the task's loss are not capture-safe in general).

Output in --out DIR: `steps.json`, `steps.png` and the table printed on the terminal. steps.json
(format 1):

    {"kind": "repro-bench steps", "format": 1, "created": ISO time, "task": "cifar10_cnn",
     "overrides": [...], "command": [...], "device": "...", "timer": "wall clock" | "cuda events",
     "baseline": "layernorm", "warmup": W, "rounds": R, "norm_rounds": R2,
     "host": repro.track.host.host_info() at the start, with loadavg_end,
     "norms": {NAME: {"median_step_ms", "step_ms_p20", "step_ms_p80",
                      "ratio_vs_layernorm", "ratio_ci95": [low, high],      # step time
                      "norm_fwd_ms", "norm_bwd_ms",                        # medians, all norm layers of a step
                      "norm_ratio_vs_layernorm", "norm_ratio_ci95": [low, high],
                      "parameters", "setting": {"model": {...}, "precision", "batch", "partial"}}},
     "step_ms": {NAME: [per-round step times]}, "norm_ms": {NAME: [per-round fwd+bwd norm times]}}

`repro.track.step_timings.load_step_timings(path)` reads it back for the tables.
"""
from __future__ import annotations

import datetime
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from repro.track.host import CONTENTION_TOLERANCE, finish_host_info, host_info, host_label
from repro.track.step_timings import KIND, RESULT_FILE

from .paired import interleave, paired_ratio

BASELINE = "layernorm"
FORMAT = 1


class StepsError(ValueError):
    """A bad argument or config; str(error) is the one-line message for the user."""


@dataclass
class StepsConfig:
    overrides: list[str]
    norms: list[str]            # the baseline (layernorm) first
    steps: int                  # timed step rounds
    warmup: int = 3             # untimed rounds first (optimizer state, allocator, caches)
    norm_steps: int = 10        # rounds timing the norm layers (0: skip)
    budget_s: Optional[float] = None  # per phase (step times, norm times): no new round after this long (>= 3 are made)
    device: str = "auto"
    command: Optional[list[str]] = None


def normalize_norms(norms: list[str]) -> list[str]:
    """The norms to time, validated, with LayerNorm (every ratio's baseline) first."""
    from repro.nn import NORM_NAMES

    bad = [n for n in norms if n not in NORM_NAMES]
    if bad:
        raise StepsError(f"--norms: {bad[0]!r} is not a norm; allowed: {', '.join(NORM_NAMES)}")
    return [BASELINE] + [n for n in dict.fromkeys(norms) if n != BASELINE]


def compose_configs(overrides: list[str], norms: list[str]) -> dict:
    """One validated config per norm: repro-train's config with `overrides` and norm=<name>."""
    from hydra import compose, initialize_config_dir

    from repro.train import validate_config
    from repro.util import ConfigError
    from repro.util.paths import CONF_DIR

    if any(o.split("=", 1)[0].lstrip("+~") == "norm" for o in overrides):
        raise StepsError("give the norms with --norms, not a norm= override (norm.<option>=... is fine)")
    configs = {}
    with initialize_config_dir(str(CONF_DIR.resolve()), version_base="1.3"):
        for norm in norms:
            try:
                cfg = compose("config", [*overrides, f"norm={norm}"])
                validate_config(cfg)
            except ConfigError as error:
                raise StepsError(f"{error} (norm={norm})") from None
            except Exception as error:  # Hydra's own errors: an unknown key or group option
                raise StepsError(f"bad override: {str(error).splitlines()[0]}") from None
            configs[norm] = cfg
    return configs


class _Candidate:
    """One norm's model, optimizer and training step on the shared batch."""

    def __init__(self, task, cfg, device: torch.device, total_steps: int):
        from repro.nn import norm_factory
        from repro.track import NormTimer
        from repro.train.checkpoint import seed_everything
        from repro.train.optim import build_optimization, build_scheduler, parameter_count
        from repro.train.trainer import resolve_precision

        seed_everything(cfg.seed)  # every model starts from the same draw
        try:
            self.model = task.build_model(norm_factory(cfg.norm)).to(device)
        except ValueError as error:
            raise StepsError(f"norm={cfg.norm.name}: {error}") from None
        self.model.train()
        self.optimizer, schedule = build_optimization(self.model, cfg.optim)  # as the trainer builds them
        # The measured steps count as one epoch: the schedule's values do not change a step's cost.
        self.scheduler = build_scheduler(self.optimizer, total_steps=total_steps, steps_per_epoch=total_steps, **schedule)
        self.parameters = parameter_count(self.model)
        self.norm_timer = NormTimer(self.model, 1, device)
        self.task, self.device = task, device
        self.batch = None  # set once the task's data is loaded
        precision = resolve_precision(cfg.trainer.precision, device)  # as a training run resolves it
        self.autocast = precision == "bf16"
        self.setting = measured_setting(cfg, precision)

    def step(self) -> None:
        """One training step as the trainer takes it (one micro-batch, no clipping)."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            loss, _, _ = self.task.loss(self.model, self.batch)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()

    def timed_norms(self) -> tuple[float, float]:
        """(forward, backward) ms of all norm layers in one step."""
        with self.norm_timer.measure():
            self.step()
        _sync(self.device)
        result = self.norm_timer.result()
        return result["time/norm_fwd_ms"], result["time/norm_bwd_ms"]


def measured_setting(cfg, precision: str) -> dict:
    """What a norm's steps were measured on, beyond the norm: the model's options, the precision,
    the batch (images, or tokens) and pRMSNorm's ratio. The tables use a measurement only for runs
    that trained on the same (repro.tables.render.find_step_timings)."""
    from omegaconf import OmegaConf

    from repro.nn import NORMS

    model = OmegaConf.to_container(cfg.model, resolve=True)
    data = cfg.data
    return {"model": {k: v for k, v in model.items() if not k.startswith("_")}, "precision": precision,
            "batch": data.get("max_tokens") or data.get("batch_size"),
            "partial": cfg.norm.partial if NORMS[cfg.norm.name].takes_partial else None}


def busy_host_warning(host: dict, threads: int) -> Optional[str]:
    """A warning when other processes already load the cores this CPU measurement's threads need,
    else None. With more threads than free cores every parallel region waits for the thread whose
    core is shared, so the per-step noise swamps the norms' difference: on 2 cores with a busy
    neighbour the CNN's RMSNorm/LayerNorm ratio moved from 1.00 to 0.90 with 2 threads, and did not
    move with 1 (results/steps/README.md)."""
    load, cores = (host.get("loadavg_start") or [None])[0], host.get("cpu_count")
    if load is None or not cores:
        return None
    free = max(1, int(cores - load + CONTENTION_TOLERANCE))
    if threads <= free:
        return None
    return (f"repro-bench steps: warning: the host is busy (1-min load {load:.2f} on {cores} cores, about {free} "
            f"free) and the steps run {threads} threads: paired ratios can move beyond their intervals when "
            f"threads share cores; --threads {free} keeps them")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_timer(device: torch.device):
    """Seconds one call takes on the device: CUDA events on a GPU, the wall clock elsewhere."""
    if device.type != "cuda":
        from .paired import wall_clock
        return wall_clock, "wall clock"

    def cuda_events(fn) -> float:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) * 1e-3
    return cuda_events, "cuda events"


def run_steps(config: StepsConfig) -> dict:
    """Build, warm up and time every norm; return the result document (see the module doc)."""
    from repro.tasks import build_task
    from repro.train import distributed as dist
    from repro.train.bf16_emulation import bf16_route, emulate_bf16_autocast
    from repro.train.run import resolve_device

    norms = normalize_norms(config.norms)
    if config.steps < 3:
        raise StepsError(f"--steps must be >= 3 (a bootstrap interval needs rounds), got {config.steps}")
    if config.device == "cuda" and not torch.cuda.is_available():
        raise StepsError("--device cuda: no CUDA device is available here; use --device cpu or auto")
    configs = compose_configs(config.overrides, norms)
    first = configs[BASELINE]
    host = host_info()
    device = resolve_device(config.device if config.device != "auto" else first.trainer.device,
                            dist.world_from_env())
    warning = busy_host_warning(host, torch.get_num_threads()) if device.type == "cpu" else None
    if warning:
        print(warning, file=sys.stderr)
    task = build_task(first)
    total = config.warmup + config.steps + config.norm_steps
    # Models first (a bad norm/model combination fails before any data is read), then the data,
    # then the one batch every model trains on.
    candidates = {norm: _Candidate(task, configs[norm], device, total) for norm in norms}
    try:
        task.setup(device)
    except ValueError as error:  # data that do not fit the options (FileNotFoundError passes through)
        raise StepsError(f"data: {error}") from None
    batch = next(iter(task.train_batches().iter_epoch(0)))
    for candidate in candidates.values():
        candidate.batch = batch

    timer, timer_name = step_timer(device)
    step_fns = {norm: c.step for norm, c in candidates.items()}
    norm_times: dict[str, list[tuple[float, float]]] = {norm: [] for norm in norms}
    # as a training run takes its steps (repro.train.Trainer.fit)
    emulated = any(c.autocast for c in candidates.values()) and bf16_route(device) == "emulated"
    with emulate_bf16_autocast(emulated):
        seconds = interleave(step_fns, config.steps, warmup=config.warmup, timer=timer, budget_s=config.budget_s)
        if config.norm_steps:
            def norm_fn(norm):
                return lambda: norm_times[norm].append(candidates[norm].timed_norms())
            interleave({norm: norm_fn(norm) for norm in norms}, config.norm_steps, warmup=0,
                       timer=lambda fn: fn() or 0.0, budget_s=config.budget_s)
    return build_result(config, norms, first.task.name, host, timer_name, seconds, norm_times,
                        {n: c.parameters for n, c in candidates.items()},
                        {n: c.setting for n, c in candidates.items()})


def build_result(config: StepsConfig, norms: list[str], task: str, host: dict, timer_name: str,
                 seconds: dict[str, list[float]], norm_times: dict[str, list[tuple[float, float]]],
                 parameters: dict[str, int], settings: Optional[dict[str, dict]] = None) -> dict:
    """The steps.json document from raw per-round times (seconds per step; (fwd, bwd) ms per
    norm-timing round)."""
    step_ms = {n: [s * 1e3 for s in seconds[n]] for n in norms}
    norm_ms = {n: [f + b for f, b in norm_times.get(n, [])] for n in norms}
    entries = {}
    for n in norms:
        ms = step_ms[n]
        p20, _, _, p80 = statistics.quantiles(ms, n=5, method="inclusive") if len(ms) > 1 else (ms[0],) * 4
        step_ratio = paired_ratio(ms, step_ms[BASELINE])
        entry = {"median_step_ms": statistics.median(ms), "step_ms_p20": p20, "step_ms_p80": p80,
                 "ratio_vs_layernorm": step_ratio.median, "ratio_ci95": list(step_ratio.ci95),
                 "norm_fwd_ms": None, "norm_bwd_ms": None, "norm_ratio_vs_layernorm": None,
                 "norm_ratio_ci95": None, "parameters": parameters.get(n), "setting": (settings or {}).get(n)}
        if norm_times.get(n):
            entry["norm_fwd_ms"] = statistics.median(f for f, _ in norm_times[n])
            entry["norm_bwd_ms"] = statistics.median(b for _, b in norm_times[n])
            if all(v > 0 for v in norm_ms[BASELINE]):
                norm_ratio = paired_ratio(norm_ms[n], norm_ms[BASELINE])
                entry["norm_ratio_vs_layernorm"] = norm_ratio.median
                entry["norm_ratio_ci95"] = list(norm_ratio.ci95)
        entries[n] = entry
    return {
        "kind": KIND, "format": FORMAT,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "task": task, "overrides": list(config.overrides), "command": config.command,
        "device": host["device"], "timer": timer_name, "baseline": BASELINE, "warmup": config.warmup,
        "rounds": len(step_ms[BASELINE]), "norm_rounds": len(norm_ms[BASELINE]),
        "host": finish_host_info(host), "norms": entries, "step_ms": step_ms, "norm_ms": norm_ms,
    }


# ------------------------------------------------------------------------------ output
def _fmt_ratio(value, ci) -> str:
    if value is None:
        return "-"
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def render_steps_table(result: dict) -> str:
    host = result["host"]
    precisions = sorted({str((e.get("setting") or {}).get("precision")) for e in result["norms"].values()} - {"None"})
    head = (f"repro-bench steps: {result['task']} on {host_label(host)} ({host.get('cpu_threads')} threads, "
            f"{result['timer']}{''.join(f', {p}' for p in precisions)}), {result['rounds']} interleaved rounds after {result['warmup']} warm-up; "
            f"load average {host.get('loadavg_start')} -> {host.get('loadavg_end')}")
    cols = ("norm", "step ms", "p20-p80", "norm fwd ms", "norm bwd ms", "step / LN [95% CI]",
            "norm time / LN [95% CI]")
    rows = []
    for name, e in result["norms"].items():
        rows.append((
            name, f"{e['median_step_ms']:.2f}", f"{e['step_ms_p20']:.1f}-{e['step_ms_p80']:.1f}",
            "-" if e["norm_fwd_ms"] is None else f"{e['norm_fwd_ms']:.2f}",
            "-" if e["norm_bwd_ms"] is None else f"{e['norm_bwd_ms']:.2f}",
            _fmt_ratio(e["ratio_vs_layernorm"], e["ratio_ci95"]),
            _fmt_ratio(e["norm_ratio_vs_layernorm"], e["norm_ratio_ci95"]),
        ))
    widths = [max(len(str(r[i])) for r in [cols, *rows]) for i in range(len(cols))]
    line = lambda r: "  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([head, "", line(cols), line(["-" * w for w in widths]), *map(line, rows)])


def plot_steps(result: dict, path: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["norms"])
    fig, (ax_ratio, ax_ms) = plt.subplots(1, 2, figsize=(10, 3.8))
    for offset, (key, ci_key, label) in enumerate((("ratio_vs_layernorm", "ratio_ci95", "training step"),
                                                   ("norm_ratio_vs_layernorm", "norm_ratio_ci95", "norm layers"))):
        xs, ys, errs = [], [], [[], []]
        for i, n in enumerate(names):
            e = result["norms"][n]
            if e[key] is None:
                continue
            xs.append(i + (offset - 0.5) * 0.38)
            ys.append(e[key])
            errs[0].append(e[key] - e[ci_key][0])
            errs[1].append(e[ci_key][1] - e[key])
        if xs:
            ax_ratio.bar(xs, ys, width=0.36, yerr=errs, capsize=3, label=label)
    ax_ratio.axhline(1.0, color="k", lw=0.8)
    ax_ratio.set_xticks(range(len(names)), names, rotation=20)
    ax_ratio.set_ylabel("time / LayerNorm's (median, 95% CI)")
    ax_ratio.legend(fontsize=8)
    ax_ms.boxplot([result["step_ms"][n] for n in names], showfliers=False)
    ax_ms.set_xticks(range(1, len(names) + 1), names, rotation=20)
    ax_ms.set_ylabel("step time (ms), per round")
    fig.suptitle(f"{result['task']} on {host_label(result['host'])}, {result['rounds']} interleaved rounds", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_steps(result: dict, out_dir) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    from repro.track import write_json_atomic

    json_path = out / RESULT_FILE
    write_json_atomic(json_path, result)
    return [json_path, plot_steps(result, out / "steps.png")]
