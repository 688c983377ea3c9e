"""Config composition for every task x norm, the experiments, and one-line errors for bad values."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from repro.cli.train import (_overrides, check_composes, check_group_choices, check_modes, check_sweep, checks_apply,
                             sweep_jobs)
from repro.nn import NORM_NAMES, NormLayer
from repro.nn import norm_factory
from repro.train import ConfigError, TrainerSettings, validate_config
from train_helpers import CONF_DIR, cifar_jpeg, compose_config, one_thread  # noqa: F401

TASKS = {"cifar10_cnn": "ConvPoolCNNC", "cifar10_vit": "ViT"}


@pytest.mark.parametrize("task", sorted(TASKS))
@pytest.mark.parametrize("norm", NORM_NAMES)
def test_every_task_and_norm_composes_validates_and_builds(task, norm):
    cfg = compose_config(f"task={task}", f"norm={norm}")
    validate_config(cfg)
    assert cfg.task.name == task and cfg.norm.name == norm
    with torch.device("meta"):  # the full-size model, without allocating it
        model = instantiate(cfg.model)(norm=norm_factory(cfg.norm))
    assert type(model).__name__ == TASKS[task]
    n_norms = sum(isinstance(m, NormLayer) for m in model.modules())
    assert n_norms == (0 if norm in ("none", "weightnorm") else {"cifar10_cnn": 9, "cifar10_vit": 15}[task])


def test_task_selects_its_model_and_optimizer():
    vit = compose_config("task=cifar10_vit")
    assert vit.model._target_ == "repro.models.ViT" and vit.optim.name == "adamw"
    assert vit.optim.schedule.name == "cosine"
    cnn = compose_config("task=cifar10_cnn", "norm=prmsnorm", "norm.partial=0.125")
    assert cnn.model._target_ == "repro.models.ConvPoolCNNC" and cnn.optim.name == "adam"
    assert norm_factory(cnn.norm).partial == 0.125


def test_table10_experiment_is_the_papers_setup():
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", ["experiment=cifar10_table10"], return_hydra_config=True)
    validate_config(cfg)
    assert (cfg.task.name, cfg.optim.name, cfg.optim.lr, cfg.data.batch_size) == ("cifar10_cnn", "adam", 0.003, 100)
    assert (cfg.trainer.max_epochs, cfg.optim.schedule.name, cfg.optim.schedule.decay_start) == (200, "paper", 0.5)
    assert cfg.norm.partial == 0.125 and cfg.data.val_size == 0
    swept = cfg.hydra.sweeper.params.norm.split(",")
    assert swept == ["none", "batchnorm", "weightnorm", "layernorm", "rmsnorm", "prmsnorm"]


@pytest.mark.parametrize("launcher", ["basic", "submitit_local", "submitit_slurm"])
def test_launchers_compose(launcher):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", [f"hydra/launcher={launcher}"], return_hydra_config=True)
    assert launcher.split("_")[-1] in cfg.hydra.launcher._target_.lower()


BAD_VALUES = [
    ("norm.eps=-1", "norm.eps"),
    ("norm.partial=0", "norm.partial"),
    ("norm.partial=1.5", "norm.partial"),
    ("norm.eps_mode=middle", "norm.eps_mode"),
    ("norm.conv_mode=diagonal", "norm.conv_mode"),
    ("norm.backend=gpu", "norm.backend"),
    ("optim.lr=0", "optim.lr"),
    ("optim.weight_decay=-0.1", "optim.weight_decay"),
    ("optim.schedule.name=step", "optim.schedule.name"),
    ("optim.schedule.decay_start=1.0", "optim.schedule.decay_start"),
    ("trainer.precision=fp8", "trainer.precision"),
    ("trainer.device=tpu", "trainer.device"),
    ("trainer.max_steps=0", "trainer.max_steps"),
    ("trainer.eval_every=0", "trainer.eval_every"),
    ("trainer.accumulate=0", "trainer.accumulate"),
    ("trainer.grad_clip=-1", "trainer.grad_clip"),
    ("trainer.devices=2", "trainer.devices"),
    ("trainer.deterministic=maybe", "trainer.deterministic"),
    ("trainer.resume=/no/such/checkpoint.pt", "trainer.resume"),
    ("data.batch_size=0", "data.batch_size"),
    ("data.preprocess=pca", "data.preprocess"),
    ("data.val_size=-1", "data.val_size"),
    ("logger.mode=sometimes", "logger.mode"),
    ("seed=-1", "seed"),
]


@pytest.mark.parametrize("override,key", BAD_VALUES)
def test_bad_value_is_one_line_error_naming_the_key(override, key):
    # a value of the wrong type stops composition (the groups' schemas are in Hydra's ConfigStore),
    # one outside its rule stops validation: either way one line naming the key
    with pytest.raises(ConfigError) as error:
        validate_config(compose_config("norm=layernorm" if "eps_mode" not in override else "norm=rmsnorm", override))
    message = str(error.value)
    assert "\n" not in message and message.startswith(key), message


def test_every_group_is_typed_by_its_owners_schema_in_hydras_config_store():
    from hydra.core.config_store import ConfigStore

    from repro.nn import NormConfig
    from repro.tasks.cifar import CifarOptions
    from repro.tasks.translation import DecodeOptions
    from repro.track import LoggerConfig
    from repro.train.optim import OptimConfig

    schemas = {"norm": NormConfig, "trainer": TrainerSettings, "optim": OptimConfig, "logger": LoggerConfig,
               "data": CifarOptions, "decode": DecodeOptions}
    repository = ConfigStore.instance().repo
    for group, schema in schemas.items():
        assert any(entry.node._metadata.object_type is schema for entry in repository[group].values()), group
    cnn = compose_config()
    translation = compose_config("task=multi30k_transformer")
    for group, schema in schemas.items():
        cfg = translation if group == "decode" else cnn
        assert OmegaConf.get_type(cfg[group]) is schema, group
    for name in ("adam", "adamw", "sgd"):
        assert OmegaConf.get_type(compose_config(f"optim={name}").optim) is OptimConfig


@pytest.mark.parametrize("override,message", [
    ("trainer.max_step=3", "trainer.max_step is not an option here: must be one of max_steps,"),
    ("norm.epsilon=1e-6", "norm.epsilon is not an option here: must be one of name, eps,"),
    ("trainer.eval_every=1e3", "trainer.eval_every=1000.0 is not allowed: must be an integer >= 1"),
    ("trainer.max_steps=many", "trainer.max_steps='many' is not allowed: must be an integer >= 1 or null"),
    ("data.flip=sometimes", "data.flip='sometimes' is not allowed: must be true or false"),
])
def test_hydra_schema_errors_are_one_line(override, message):
    with pytest.raises(ConfigError) as error:
        compose_config(override)
    assert "\n" not in str(error.value) and str(error.value).startswith(message), str(error.value)


def test_eps_mode_outside_is_rejected_for_layernorm():
    with pytest.raises(ConfigError, match=r"^norm\.eps_mode"):
        validate_config(compose_config("norm=layernorm", "norm.eps_mode=outside"))


@pytest.mark.parametrize("args", [["norm=foo"], ["-m", "norm=rmsnorm,foo"], ["task=cifar10_mlp"]])
def test_unknown_group_option_exits_with_one_line_listing_the_options(args, capsys):
    with pytest.raises(SystemExit) as exit_:
        check_group_choices(args, CONF_DIR)
    message = str(exit_.value.code)
    assert "\n" not in message and "is not allowed: must be one of" in message
    group = args[-1].split("=")[0]
    assert all(p.stem in message for p in (CONF_DIR / group).glob("*.yaml"))


def test_sweep_jobs_cross_the_command_line_with_the_experiments_sweep():
    jobs = sweep_jobs(["-m", "experiment=cifar10_table10", "seed=1,2", "trainer.max_steps=3"], CONF_DIR)
    assert len(jobs) == 2 * 6
    assert ["norm=prmsnorm", "experiment=cifar10_table10", "seed=2", "trainer.max_steps=3"] in jobs


def _hydra_launch_order(args: list[str], sweep_dir) -> list[list[str]]:
    """The task overrides of each job as Hydra's own multirun launches them (jobs do nothing)."""
    script = (
        "import sys, hydra\n"
        "import repro.train\n"
        "from hydra.core.hydra_config import HydraConfig\n"
        "from repro.util.paths import CONF_DIR\n"
        "def job(cfg):\n"
        "    print('JOB', HydraConfig.get().job.num, ' '.join(HydraConfig.get().overrides.task), flush=True)\n"
        "hydra.main(config_path=str(CONF_DIR), config_name='config', version_base='1.3')(job)()\n"
    )
    result = subprocess.run([sys.executable, "-c", script, "-m", *args, f"hydra.sweep.dir={sweep_dir}",
                             "hydra/job_logging=disabled", "hydra/hydra_logging=disabled"],
                            capture_output=True, text=True, timeout=300, check=True)
    lines = [line.split(" ", 2) for line in result.stdout.splitlines() if line.startswith("JOB ")]
    assert [int(num) for _, num, _ in lines] == list(range(len(lines)))
    return [overrides.split(" ") for _, _, overrides in lines]


@pytest.mark.parametrize("args", [
    # the experiment's params name norm only: the command line's seed sweep goes inside each norm
    ["experiment=cifar10_table10_mini", "logger=none", "seed=1,2", "norm=none,layernorm"],
    # params seed, then norm: seed-major whatever the command line's order
    ["experiment=multi30k_table4_cpu", "logger=none", "norm=rmsnorm,none", "seed=1,2"],
])
def test_sweep_jobs_are_the_jobs_hydra_launches_in_its_order(args, tmp_path):
    assert sweep_jobs(["-m", *args], CONF_DIR) == _hydra_launch_order(args, tmp_path / "sweep")


def test_the_cpu_table4_sweep_gives_every_norm_its_first_seed_first():
    command = ("experiment=multi30k_table4_cpu data.root=../shared/data/multi30k logger=none seed=1,2,3 "
               "norm=none,layernorm,rmsnorm,prmsnorm hydra.sweep.dir=results/runs/multi30k_table4_cpu").split()
    jobs = sweep_jobs(["-m", *command], CONF_DIR)
    order = [(next(o for o in job if o.startswith("seed=")), next(o for o in job if o.startswith("norm=")))
             for job in jobs]
    assert order == [(f"seed={s}", f"norm={n}") for s in (1, 2, 3) for n in ("none", "layernorm", "rmsnorm", "prmsnorm")]


def test_a_bad_value_in_any_sweep_job_stops_the_sweep_before_it_starts():
    check_sweep(["-m", "norm=layernorm,rmsnorm", "seed=1,2"], CONF_DIR)  # all valid: no exit
    with pytest.raises(SystemExit) as exit_:
        check_sweep(["-m", "norm=layernorm,rmsnorm", "norm.eps=1e-5,-1"], CONF_DIR)
    message = str(exit_.value.code)
    assert "\n" not in message and message.startswith("error: norm.eps") and "norm.eps=-1" in message


@pytest.mark.parametrize("override,start,allowed", [
    ("norm.eps_mode=sideways", "error: norm.eps_mode", "inside"),       # a rule, checked on the composed config
    ("trainer.deterministic=maybe", "error: trainer.deterministic", "true or false"),  # a type, in Hydra's compose
])
def test_cli_reports_a_bad_value_in_one_line_before_any_work(tmp_path, override, start, allowed):
    result = subprocess.run(
        [sys.executable, "-m", "repro.cli.train", override, "logger=none", f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(start) and allowed in lines[0], result.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_hydras_own_flags_and_their_values_are_not_taken_for_overrides():
    args = ["--cfg", "job", "-p", "norm", "norm=rmsnorm", "hydra.run.dir=x", "--resolve"]
    assert _overrides(args) == ["norm=rmsnorm"]
    check_composes(args, CONF_DIR)  # "job" and "norm" are flag values, not overrides: no exit
    assert checks_apply(args)
    # another config, or only help: our checks know conf/config.yaml only, Hydra answers alone
    assert not any(checks_apply(a) for a in (["-cn", "other", "x=1"], ["--config-dir", "/tmp"], ["--help"]))


def test_two_hydra_modes_at_once_are_a_one_line_error():
    check_modes(["-m", "norm=rmsnorm"])  # one mode: no exit
    check_modes(["--cfg", "job"])
    with pytest.raises(SystemExit) as exit_:
        check_modes(["-m", "seed=1", "--cfg", "job"])
    message = str(exit_.value.code)
    assert "\n" not in message and message.startswith("error: --multirun and --cfg cannot be given together")


def test_cli_prints_the_config_and_its_help_as_hydra_does():
    run = [sys.executable, "-m", "repro.cli.train"]
    shown = subprocess.run([*run, "--cfg", "job", "-p", "norm", "norm=prmsnorm"], capture_output=True, text=True,
                           timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert yaml.safe_load(shown.stdout.split("\n", 1)[1])["name"] == "prmsnorm"  # after "# @package norm"
    helped = subprocess.run([*run, "--help"], capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0 and "norm: " in helped.stdout, helped.stderr


def test_resolved_config_has_no_interpolations_left():
    resolved = OmegaConf.to_container(compose_config(), resolve=True)
    assert "${" not in OmegaConf.to_yaml(resolved)
    assert resolved["data"]["root"].endswith("/cifar10") and resolved["trainer"]["checkpoint_every"] == 1000


def test_a_run_recorded_before_the_decode_group_still_rebuilds():
    """Runs recorded when decoding and loss options lived in the data group (config.yaml,
    checkpoints) are rebuilt with them read where they now live (decode, task)."""
    from repro.tasks import build_task

    old = OmegaConf.to_container(compose_config("task=multi30k_transformer"), resolve=True)
    old["data"].update(beam=2, length_penalty=1.0, label_smoothing=0.2)
    old["decode"] = None
    del old["task"]["label_smoothing"]
    task = build_task(old)
    assert (task.decode.beam, task.decode.length_penalty, task.smoothing) == (2, 1.0, 0.2)


def test_the_trainer_schema_is_the_one_place_for_a_trainer_option(tmp_path):
    """A trainer option is a TrainerSettings field: a config without its line takes the field's
    default, and a key the schema lacks (a typo) is a one-line error before any work."""
    import shutil

    from repro.train import TrainerSettings
    from repro.train import compose_config as compose_with
    from repro.util import check_options

    conf = shutil.copytree(CONF_DIR, tmp_path / "conf")
    trainer_file = conf / "trainer" / "default.yaml"
    lines = trainer_file.read_text().splitlines(keepends=True)
    trainer_file.write_text("".join(line for line in lines if not line.startswith("keep_checkpoints:")))
    cfg = compose_with([], conf_dir=conf)
    validate_config(cfg)
    assert check_options(cfg.trainer, TrainerSettings, "trainer").keep_checkpoints == 0
    with pytest.raises(ConfigError) as error:
        validate_config(compose_config("+trainer.max_step=5"))
    message = str(error.value)
    assert "\n" not in message and message.startswith("trainer.max_step is not an option here") and "max_steps" in message


def test_rerunning_a_completed_run_from_another_checkout_leaves_its_directory_as_it_was(cifar_jpeg, tmp_path):
    """The queue reruns its sweeps to resume them; a completed run's directory, committed, must not
    change: not its train.log, nor the .hydra records (Hydra's hydra.yaml names the checkout's
    paths, and used to be rewritten by every rerun from another folder). A run that starts or
    continues records the invocation that ran it."""
    run = tmp_path / "run"

    def repro_train(*overrides, cwd):
        result = subprocess.run(
            [sys.executable, "-m", "repro.cli.train", "experiment=smoke", "trainer.max_steps=2", "trainer.eval_every=2",
             *overrides, f"hydra.run.dir={run}"], cwd=cwd, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}

    first = repro_train(f"data.root={cifar_jpeg}", cwd=Path.cwd())
    assert {".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml", "train.log", "summary.json"} <= set(first)
    assert f"data.root={cifar_jpeg}" in yaml.safe_load(first[".hydra/overrides.yaml"])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    again = repro_train(f"data.root={cifar_jpeg.parent}/./{cifar_jpeg.name}", cwd=elsewhere)
    assert again == first  # byte for byte, train.log included
    continued = repro_train(f"data.root={cifar_jpeg}", "trainer.max_steps=3", cwd=elsewhere)
    assert "trainer.max_steps=3" in yaml.safe_load(continued[".hydra/overrides.yaml"])
    assert continued["train.log"].startswith(first["train.log"]) and len(continued["train.log"]) > len(first["train.log"])
