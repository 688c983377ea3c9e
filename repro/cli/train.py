"""`repro-train`: the Hydra app over conf/ (see conf/config.yaml for the groups).

conf/ lives at the repository root (the install is editable); REPRO_CONF_DIR points elsewhere.
Group choices are checked against conf/ before Hydra starts, and config values by
repro.train.validate_config before any work (for a multirun: every job's, before the first job),
so mistakes are one-line errors.
"""
from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from repro.util.paths import CONF_DIR


def check_group_choices(args: list[str], conf_dir: Path) -> None:
    """Exit with one line when an override picks an option a config group of ours does not have
    (Hydra's own message spans many lines). Sweeps (`norm=a,b`) check every value."""
    for arg in args:
        key, sep, value = arg.lstrip("+~").partition("=")
        group = conf_dir / key
        if not sep or key.startswith("hydra") or not group.is_dir() or value in ("null", ""):
            continue
        options = sorted(p.stem for p in group.glob("*.yaml"))
        for choice in value.split(","):
            if choice not in options:
                sys.exit(f"error: {key}={choice!r} is not allowed: must be one of {', '.join(options)}")


def sweep_jobs(args: list[str], conf_dir: Path) -> list[list[str]]:
    """The override lists of every job a multirun launches, in the order Hydra launches them (its
    job numbers, and so the run dirs a rerun resumes). Hydra's BasicSweeper puts the experiment's
    `hydra.sweeper.params` first and the command line after; a key given in both keeps the params'
    position with the command line's values (so `seed=1,2 norm=a,b` against params `{norm: ...}`
    runs every seed of one norm before the next norm). Its own split_arguments does the crossing."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from repro.train import compose_config

    parser = OverridesParser.create()
    given = parser.parse_overrides(_overrides(args))
    base = compose_config([o.input_line for o in given if not o.is_sweep_override()], return_hydra_config=True,
                          conf_dir=conf_dir)
    params = [f"{key}={values}" for key, values in (base.hydra.sweeper.get("params") or {}).items()]
    (jobs,) = BasicSweeper.split_arguments(parser.parse_overrides(params + _overrides(args)), None)
    return [list(job) for job in jobs]


def launched_processes(launcher) -> int:
    """How many processes each job of a multirun runs as: nodes x tasks_per_node under the submitit
    launchers (one task per GPU), one under Hydra's basic launcher."""
    if launcher.get("tasks_per_node") is None:
        return 1
    return int(launcher.get("nodes") or 1) * int(launcher.tasks_per_node)


def check_sweep(args: list[str], conf_dir: Path) -> None:
    """Validate every job of a multirun before the first one starts."""
    from repro.train import ConfigError, compose_config, validate_config

    try:
        jobs = sweep_jobs(args, conf_dir)
    except ConfigError as error:
        sys.exit(f"error: {error}")
    # the launcher's shape decides how many processes each job runs as
    launcher = [a for a in args if a.startswith("hydra.launcher.")]
    for job in jobs:
        try:
            cfg = compose_config(job + launcher, return_hydra_config=True, conf_dir=conf_dir)
            validate_config(cfg, launched_processes(cfg.hydra.launcher))
        except ConfigError as error:
            sys.exit(f"error: {error} (in the sweep job {' '.join(job)})")


def check_composes(args: list[str], conf_dir: Path) -> None:
    """Compose a single run's config against the groups' schemas before Hydra starts, so a value
    a schema rejects is one line here rather than Hydra's multi-line error."""
    from repro.train import ConfigError, compose_config

    try:
        compose_config(_overrides(args), conf_dir=conf_dir)
    except ConfigError as error:
        sys.exit(f"error: {error}")


def _hydra_args(args: list[str]):
    """The command line as Hydra will read it: its own flags (`--cfg job`, `-p model`, `-cn NAME`,
    `-m`) apart from the overrides, by Hydra's own argument parser."""
    from hydra._internal.utils import get_args_parser

    return get_args_parser().parse_args(args)


def _overrides(args: list[str]) -> list[str]:
    """The config overrides on a command line, without Hydra's own flags and their values; the
    hydra.* overrides are left to Hydra."""
    return [a for a in _hydra_args(args).overrides if not a.startswith("hydra.")]


def checks_apply(args: list[str]) -> bool:
    """Whether our pre-checks (made against conf/config.yaml) describe what Hydra will do: not when
    the command line picks another config (--config-name/-dir/-path) or asks only for help."""
    parsed = _hydra_args(args)
    return not (parsed.config_name or parsed.config_dir or parsed.config_path or parsed.help or parsed.hydra_help
                or parsed.shell_completion)


def check_modes(args: list[str]) -> None:
    """Exit with one line when the command line asks Hydra for two things at once (`-m --cfg job`),
    which Hydra refuses with a traceback."""
    parsed = _hydra_args(args)
    modes = {"--run": parsed.run, "--multirun": parsed.multirun, "--cfg": parsed.cfg, "--info": parsed.info,
             "--shell-completion": parsed.shell_completion}
    given = [flag for flag, value in modes.items() if value]
    if len(given) > 1:
        sys.exit(f"error: {' and '.join(given)} cannot be given together: use one of {', '.join(modes)}")


def save_hydra_records(run_dir: Path, cfg: DictConfig, hydra_cfg: DictConfig) -> None:
    """The three files Hydra writes into a job's .hydra/ (the job's config, Hydra's own, the
    command-line overrides), written by us once the run starts: conf/config.yaml turns Hydra's
    writing off (hydra.output_subdir: null), because Hydra writes them before the run's code can
    tell that the directory holds a completed run to skip, and its hydra.yaml names this
    checkout's paths, so every rerun of a sweep from another checkout rewrote the committed runs'."""
    folder = Path(run_dir) / ".hydra"
    folder.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, folder / "config.yaml")
    OmegaConf.save(OmegaConf.create({"hydra": hydra_cfg}), folder / "hydra.yaml")
    OmegaConf.save(hydra_cfg.overrides.task, folder / "overrides.yaml")


def _run(cfg: DictConfig) -> None:
    from repro.train import ConfigError, train
    from repro.util import StorageError

    hydra_cfg = HydraConfig.get()
    sweep = Path(hydra_cfg.sweep.dir).name if hydra_cfg.mode.name == "MULTIRUN" else None
    try:
        train(cfg, hydra_cfg.runtime.output_dir, sweep_name=sweep,
              on_start=lambda run_dir: save_hydra_records(run_dir, cfg, hydra_cfg))
    # bad config, missing data, a damaged checkpoint or a full disk: the message says it all
    except (ConfigError, FileNotFoundError, StorageError) as error:
        sys.exit(f"error: {error}")


def main() -> None:
    if not (CONF_DIR / "config.yaml").is_file():
        sys.exit(f"error: no Hydra config at {CONF_DIR}/config.yaml; run from a repro checkout (pip install -e .) "
                 f"or set REPRO_CONF_DIR to its conf/ folder")
    import repro.train  # noqa: F401  registers the groups' schemas in Hydra's ConfigStore, which every compose needs

    check_modes(sys.argv[1:])
    if checks_apply(sys.argv[1:]):
        check_group_choices(_overrides(sys.argv[1:]), CONF_DIR)
        if _hydra_args(sys.argv[1:]).multirun:
            check_sweep(sys.argv[1:], CONF_DIR)
        else:
            check_composes(sys.argv[1:], CONF_DIR)
    hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")(_run)()


if __name__ == "__main__":
    main()
