"""Table 10 as Salimans & Kingma's code runs it (openai/weightnorm lasagne/train.py), piece by
piece: ZCA data, input noise, the norm on the final layer, no redundant bias, the beta1 switch,
data-dependent init, and the experiment composing the right per-norm settings."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from repro.data import prepare_cifar10
from repro.models import ConvPoolCNNC
from repro.models.convpool_cnn import GaussianNoise, Offset
from repro.nn import BatchNorm, ConvNorm, FixedScale, LayerNorm, NormFactory, RMSNorm, data_dependent_init, init_weights
from repro.train.optim import build_scheduler
from train_helpers import cifar_jpeg, compose_config, one_thread  # noqa: F401

TABLE10_NORMS = ("none", "batchnorm", "weightnorm", "layernorm", "rmsnorm", "prmsnorm")


def factory(name):
    return NormFactory(name, partial=0.125 if name == "prmsnorm" else None)


# ------------------------------------------------------------------------------------ data
def test_zca_whitens_the_training_images_with_their_own_statistics():
    # 300 correlated images, 50 held out for validation: the whitened 250 training images span 249
    # directions (one is lost to the mean), each of unit variance, so their Gram matrix has 249
    # eigenvalues of 1 and one of 0 -- only if the fit saw exactly these images.
    g = torch.Generator().manual_seed(0)
    n, val = 300, 50
    base = torch.rand(n, 1, generator=g) * 200 + torch.rand(n, 3072, generator=g) * 55
    images = base.round().to(torch.uint8).view(n, 32, 32, 3).numpy()
    raw = {"train": (images, np.zeros(n, np.int64)), "test": (images[:4], np.zeros(4, np.int64))}
    splits = prepare_cifar10(raw, val_size=val, preprocess="zca", zca_eps=1e-5)
    x = splits.train[0].flatten(1).double()
    assert len(x) == n - val and x.mean(0).abs().max() < 1e-4
    eig = torch.linalg.eigvalsh(x @ x.T / len(x))
    torch.testing.assert_close(eig[1:], torch.ones(len(x) - 1, dtype=torch.double), atol=2e-3, rtol=0)
    assert eig[0].abs() < 1e-3
    # the test split goes through the same train-fitted transform: a test image equal to a
    # training image whitens to the same values
    from repro.data.cifar10 import VAL_SPLIT_SEED

    kept = torch.randperm(n, generator=torch.Generator().manual_seed(VAL_SPLIT_SEED))[: n - val].sort().values.tolist()
    shared = [t for t in range(4) if t in kept]
    assert shared
    for t in shared:
        torch.testing.assert_close(splits.test[0][t], splits.train[0][kept.index(t)])


# ----------------------------------------------------------------------------------- model
def test_input_noise_only_in_training_mode_with_its_std():
    noise = GaussianNoise(0.15)
    x = torch.zeros(200_000)
    assert noise(x).std().item() == pytest.approx(0.15, rel=0.02)
    noise.eval()
    assert torch.equal(noise(x), x)
    model = ConvPoolCNNC(factory("rmsnorm"), width=4, dropout=0.0, input_noise=0.15)
    images = torch.randn(2, 3, 32, 32)
    assert not torch.equal(model(images), model(images))  # training: fresh noise each call
    model.eval()
    assert torch.equal(model(images), model(images))
    with pytest.raises(ValueError, match="input_noise"):
        GaussianNoise(-0.1)


@pytest.mark.parametrize("name,kind", [("batchnorm", BatchNorm), ("layernorm", LayerNorm), ("rmsnorm", RMSNorm),
                                       ("prmsnorm", RMSNorm)])
def test_the_final_ten_way_layer_is_followed_by_the_norm(name, kind):
    torch.manual_seed(0)
    model = ConvPoolCNNC(factory(name), width=4, dropout=0.0, final_norm=True)
    assert isinstance(model.head[0], kind) and model.head[0].weight.shape == (10,)
    dense = []
    model.classifier.register_forward_hook(lambda _m, _a, out: dense.append(out.flatten(1)))
    logits = model(torch.randn(8, 3, 32, 32))
    z = dense[0]  # the 10-way layer's outputs; gain 1 and offset 0 at init
    expected = {
        "layernorm": (z - z.mean(1, keepdim=True)) / (z.var(1, unbiased=False, keepdim=True) + 1e-5).sqrt(),
        "rmsnorm": z / (z.square().mean(1, keepdim=True) + 1e-6).sqrt(),
        # the statistic from the first floor(0.125 * 10) = 1 logit
        "prmsnorm": z / (z[:, :1].square() + 1e-6).sqrt(),
        "batchnorm": (z - z.mean(0)) / (z.var(0, unbiased=False) + 1e-5).sqrt(),  # per logit over the batch
    }[name]
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)
    # without final_norm the logits are the dense layer's outputs, as before
    plain = ConvPoolCNNC(factory(name), width=4, final_norm=False)
    assert len(plain.head) == 0 and plain.classifier.bias is not None


@pytest.mark.parametrize("name", TABLE10_NORMS)
def test_a_layer_has_a_bias_only_where_its_norm_has_no_offset(name):
    model = ConvPoolCNNC(factory(name), width=4, final_norm=True)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 10  # nine hidden convs and the 10-way layer
    after = {id(conv): nxt for layers in (list(model.features), [model.classifier, *model.head])
             for conv, nxt in zip(layers, layers[1:] + [None]) if isinstance(conv, nn.Conv2d)}
    for conv in convs:
        if name in ("none", "weightnorm"):  # no activation norm: the layer keeps its bias
            assert conv.bias is not None
            continue
        assert conv.bias is None  # the norm after it brings the offset
        norm = after[id(conv)]
        assert isinstance(norm, (ConvNorm, nn.BatchNorm2d, BatchNorm, LayerNorm, RMSNorm))
    if name in ("rmsnorm", "prmsnorm"):  # features-last RMSNorm has a gain only: an offset follows
        assert model.head[0].bias is None and isinstance(model.head[1], Offset)
    if name in ("batchnorm", "layernorm"):
        assert len(model.head) == 1 and model.head[0].bias is not None


# ---------------------------------------------------------------------------- optimization
def test_paper_schedule_lr_and_beta1_at_epochs_0_100_150_200():
    steps_per_epoch, epochs = 5, 200
    param = nn.Parameter(torch.zeros(3))
    optimizer = torch.optim.Adam([param], lr=0.003, betas=(0.9, 0.999))
    scheduler = build_scheduler(optimizer, name="paper", total_steps=steps_per_epoch * epochs, decay_start=0.5,
                                final_beta1=0.5)
    seen = {}
    for step in range(steps_per_epoch * epochs + 1):
        if step % steps_per_epoch == 0:
            group = optimizer.param_groups[0]
            seen[step // steps_per_epoch] = (group["lr"], group["betas"])
        if step < steps_per_epoch * epochs:
            param.grad = torch.ones(3)
            optimizer.step()
            scheduler.step()
    assert seen[0] == (pytest.approx(0.003), (0.9, 0.999))
    assert seen[99] == (pytest.approx(0.003), (0.9, 0.999))
    assert seen[100] == (pytest.approx(0.003), (0.5, 0.999))  # the switch, as their mom1
    assert seen[150] == (pytest.approx(0.0015), (0.5, 0.999))
    assert seen[200] == (pytest.approx(0.0, abs=1e-12), (0.5, 0.999))


def test_paper_schedule_per_epoch_is_their_lr0_min_2_minus_epoch_over_100():
    """Their train.py: lr = lr0 * min(2 - epoch/100, 1), held for the epoch; the last epoch at lr0/100."""
    steps_per_epoch, epochs = 3, 200
    param = nn.Parameter(torch.zeros(3))
    optimizer = torch.optim.Adam([param], lr=0.003, betas=(0.9, 0.999))
    scheduler = build_scheduler(optimizer, name="paper", total_steps=steps_per_epoch * epochs, decay_start=0.5,
                                final_beta1=0.5, decay_per="epoch", steps_per_epoch=steps_per_epoch)
    for step in range(steps_per_epoch * epochs):
        epoch = step // steps_per_epoch
        group = optimizer.param_groups[0]
        assert group["lr"] == pytest.approx(0.003 * min(2 - epoch / 100, 1.0)), (step, epoch)
        assert group["betas"][0] == (0.9 if epoch < 100 else 0.5)
        param.grad = torch.ones(3)
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0)  # after the last step: the line's end
    with pytest.raises(ValueError, match="steps_per_epoch"):
        build_scheduler(optimizer, name="paper", total_steps=10, decay_per="epoch")


def test_decay_per_epoch_is_refused_outside_the_paper_schedule():
    from repro.util import ConfigError

    with pytest.raises(ConfigError, match="optim.schedule.decay_per=epoch is not allowed with cosine: must be step"):
        compose_and_validate("experiment=cifar10_table10", "norm=rmsnorm", "optim.schedule.name=cosine",
                             "optim.schedule.final_beta1=null")
    with pytest.raises(ConfigError, match="optim.schedule.decay_per"):
        compose_and_validate("experiment=cifar10_table10", "norm=rmsnorm", "optim.schedule.decay_per=batch")


def test_the_committed_budget_runs_are_still_the_runs_their_experiment_asks_for():
    """Adding a setting (optim.schedule.decay_per) or a by_norm column must not turn the committed
    runs into "another run": a rerun of their sweep skips them as completed."""
    import yaml
    from omegaconf import OmegaConf

    from repro.train.checkpoint import completed_summary
    from train_helpers import CONF_DIR

    store = CONF_DIR.parent / "results" / "runs" / "cifar10_table10_cpu"
    runs = sorted(store.glob("cifar10_cnn_*"))
    assert len(runs) == 18
    for run in runs:
        recorded = yaml.safe_load((run / "config.yaml").read_text())
        cfg = compose_config("experiment=cifar10_table10_cpu", f"norm={recorded['norm']['name']}",
                             f"seed={recorded['seed']}", "logger=none")
        assert completed_summary(run, OmegaConf.to_container(cfg, resolve=True)) is not None, run.name


def test_beta1_survives_a_resume_exactly():
    def make():
        param = nn.Parameter(torch.zeros(3))
        optimizer = torch.optim.Adam([param], lr=0.003, betas=(0.9, 0.999))
        return param, optimizer, build_scheduler(optimizer, name="paper", total_steps=40, final_beta1=0.5)

    def run(param, optimizer, scheduler, n):
        for _ in range(n):
            param.grad = torch.arange(3.0)
            optimizer.step()
            scheduler.step()

    param, optimizer, scheduler = make()
    run(param, optimizer, scheduler, 30)
    state = copy.deepcopy((optimizer.state_dict(), scheduler.state_dict(), param.detach()))
    run(param, optimizer, scheduler, 5)
    p2, o2, s2 = make()
    with torch.no_grad():
        p2.copy_(state[2])
    o2.load_state_dict(state[0])
    s2.load_state_dict(state[1])
    assert o2.param_groups[0]["betas"][0] == 0.5
    run(p2, o2, s2, 5)
    assert torch.equal(p2, param) and o2.param_groups[0]["betas"] == optimizer.param_groups[0]["betas"]


def test_final_beta1_is_refused_outside_the_paper_schedule():
    from repro.util import ConfigError

    with pytest.raises(ConfigError, match="final_beta1"):
        compose_and_validate("experiment=cifar10_table10", "norm=rmsnorm", "optim.schedule.name=cosine")


# ---------------------------------------------------------------------------- initialization
@pytest.mark.parametrize("name, fixed_scale", [("none", False), ("none", True), ("weightnorm", False)])
def test_data_dependent_init_gives_unit_variance_zero_mean_preactivations(name, fixed_scale):
    torch.manual_seed(0)
    model = ConvPoolCNNC(factory(name), width=4, dropout=0.0, final_norm=True, fixed_scale=fixed_scale)
    images = torch.randn(40, 3, 32, 32)
    assert data_dependent_init(model, images) == 10
    outputs = []
    hooks = [m.register_forward_hook(lambda _m, _a, out: outputs.append(out))
             for m in model.modules() if isinstance(m, nn.Conv2d)]
    model(images)  # no dropout or noise: the same pass again
    for hook in hooks:
        hook.remove()
    assert len(outputs) == 10
    for out in outputs:
        torch.testing.assert_close(out.mean((0, 2, 3)), torch.zeros(out.shape[1]), atol=1e-4, rtol=0)
        torch.testing.assert_close(out.var((0, 2, 3), unbiased=False), torch.ones(out.shape[1]), atol=1e-3, rtol=0)


def test_fixed_scale_init_sets_the_scales_and_leaves_the_trained_weights_alone():
    torch.manual_seed(0)
    model = ConvPoolCNNC(factory("none"), width=4, final_norm=True, weight_init="glorot_uniform", fixed_scale=True)
    layers = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    before = [layer.parametrizations.weight.original.clone() for layer in layers]
    data_dependent_init(model, torch.randn(40, 3, 32, 32))
    for layer, v in zip(layers, before):
        scale = layer.parametrizations.weight[0].scale
        assert isinstance(layer.parametrizations.weight[0], FixedScale)
        assert torch.equal(layer.parametrizations.weight.original, v)  # the init moved g, not v
        assert not torch.allclose(scale, torch.ones_like(scale))
        torch.testing.assert_close(layer.weight, scale.view(-1, 1, 1, 1) * v)
    # g is state (saved, restored on resume), not a parameter the optimizer trains
    names = {name for name, _ in model.named_parameters()}
    assert not any(name.endswith("scale") for name in names)
    assert sum(name.endswith(".scale") for name in model.state_dict()) == len(layers)


def test_under_adam_a_fixed_scale_unit_moves_g_times_as_fast():
    # The same function two ways: weights rescaled by g (our old no-norm init) and v with a fixed
    # scale g (their InitLayer). One Adam step of lr moves the first by lr per weight, the second
    # by g * lr: Adam's step on v is about lr whatever the gradient's size.
    torch.manual_seed(0)
    g = torch.tensor([0.5, 2.0, 4.0])
    plain = nn.Linear(5, 3)
    fixed = nn.Linear(5, 3)
    fixed.load_state_dict(plain.state_dict())
    with torch.no_grad():
        plain.weight.mul_(g.view(-1, 1))
    from torch.nn.utils import parametrize

    parametrize.register_parametrization(fixed, "weight", FixedScale(3))
    fixed.parametrizations.weight[0].scale.copy_(g)
    x = torch.randn(16, 5)
    torch.testing.assert_close(plain(x), fixed(x))
    moves = []
    for layer in (plain, fixed):
        start = layer.weight.detach().clone()
        optimizer = torch.optim.Adam(layer.parameters(), lr=1e-3)
        layer(x).square().sum().backward()
        optimizer.step()
        moves.append((layer.weight.detach() - start).abs().mean(1))
    torch.testing.assert_close(moves[0], torch.full((3,), 1e-3), rtol=1e-3, atol=0)
    torch.testing.assert_close(moves[1], g * 1e-3, rtol=1e-3, atol=0)


def test_glorot_uniform_init_has_lasagnes_bound_and_zero_biases():
    torch.manual_seed(0)
    model = ConvPoolCNNC(factory("none"), width=16, weight_init="glorot_uniform", fixed_scale=True)
    for layer in (m for m in model.modules() if isinstance(m, nn.Conv2d)):
        v = layer.parametrizations.weight.original
        out, inp, kh, kw = v.shape
        bound = (6 / ((inp + out) * kh * kw)) ** 0.5
        assert v.abs().max() <= bound and v.abs().max() > 0.9 * bound
        assert v.std().item() == pytest.approx(bound / 3 ** 0.5, rel=0.25)
        assert torch.equal(layer.bias, torch.zeros_like(layer.bias))
    torch_default = ConvPoolCNNC(factory("none"), width=16)
    assert not torch.equal(torch_default.features[0].bias, torch.zeros_like(torch_default.features[0].bias))


def test_fixed_scale_and_weight_init_refuse_what_they_cannot_do():
    with pytest.raises(ValueError, match="model.fixed_scale=true is not allowed with norm=weightnorm"):
        ConvPoolCNNC(factory("weightnorm"), width=4, fixed_scale=True)
    with pytest.raises(ValueError, match="model.fixed_scale=true is not allowed with norm=rmsnorm"):
        ConvPoolCNNC(factory("rmsnorm"), width=4, fixed_scale=True)
    with pytest.raises(ValueError, match="model.weight_init='he' is not allowed: must be one of torch, glorot_uniform, "
                                         "normal_0.05"):
        ConvPoolCNNC(factory("none"), width=4, weight_init="he")


@pytest.mark.parametrize("name", ["batchnorm", "weightnorm"])
def test_normal_init_draws_their_n0_005_weights_into_what_is_trained(name):
    """Their BatchNormLayer and WeightNormLayer resample the layer below from N(0, 0.05); under
    weight norm that is the direction v (g is data-dependent init's), and the layer's weight is
    then g v / |v| with the g it had."""
    torch.manual_seed(0)
    model = ConvPoolCNNC(factory(name), width=32, weight_init="normal_0.05")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 10
    for conv in convs:
        drawn = conv.parametrizations.weight.original1 if name == "weightnorm" else conv.weight
        assert drawn.mean().abs() < 0.01 and drawn.std().item() == pytest.approx(0.05, rel=0.15)
        if conv.bias is not None:
            assert torch.equal(conv.bias, torch.zeros_like(conv.bias))
        if name == "weightnorm":
            g = conv.parametrizations.weight.original0.flatten()
            norms = conv.weight.flatten(1).norm(dim=1)
            torch.testing.assert_close(norms, g)
    default = ConvPoolCNNC(factory(name), width=32)
    assert default.features[0].weight.std().item() > 0.1  # torch's kaiming-uniform on 27 inputs: not theirs


def test_a_bad_weight_init_is_a_one_line_config_error():
    from repro.util import ConfigError

    from repro.train.run import build_task_and_model

    cfg = compose_and_validate("experiment=cifar10_table10", "norm=none", "model.weight_init=kaiming", "model.width=4")
    with pytest.raises((ConfigError, ValueError), match="model.weight_init='kaiming' is not allowed"):
        build_task_and_model(cfg)


def test_data_dependent_init_refuses_layers_without_a_bias():
    with pytest.raises(ValueError, match="none or weightnorm"):
        data_dependent_init(ConvPoolCNNC(factory("rmsnorm"), width=4), torch.randn(2, 3, 32, 32))


# ------------------------------------------------------------------------------ experiment
def compose_and_validate(*overrides):
    from repro.train.config import validate_config

    cfg = compose_config(*overrides)
    validate_config(cfg)
    return cfg


@pytest.mark.parametrize("name", TABLE10_NORMS)
def test_table10_experiment_composes_the_protocol_for_each_norm(name):
    cfg = compose_and_validate("experiment=cifar10_table10", f"norm={name}")
    assert cfg.optim.lr == (0.0003 if name == "none" else 0.003)
    assert cfg.data.data_init is (name in ("none", "weightnorm")) and cfg.data.data_init_size == 500
    assert (cfg.data.preprocess, cfg.data.zca_eps, cfg.data.crop_padding, cfg.data.flip) == ("zca", 1e-5, 0, False)
    assert (cfg.data.batch_size, cfg.data.val_size, cfg.trainer.max_epochs) == (100, 0, 200)
    assert (cfg.model.width, cfg.model.dropout, cfg.model.input_noise, cfg.model.final_norm) == (96, 0.5, 0.15, True)
    assert cfg.optim._target_ == "torch.optim.Adam" and list(cfg.optim.betas) == [0.9, 0.999]
    assert dict(cfg.optim.schedule) == {"name": "paper", "warmup_steps": 0, "decay_start": 0.5, "final_beta1": 0.5,
                                        "decay_per": "epoch"}
    assert cfg.norm.partial == 0.125
    # none is their no-norm layer: Glorot weights times fixed per-unit scales; their BatchNormLayer
    # and WeightNormLayer draw N(0, 0.05); the others keep lasagne's Glorot default
    init = "normal_0.05" if name in ("batchnorm", "weightnorm") else "glorot_uniform"
    assert (cfg.model.weight_init, cfg.model.fixed_scale) == (init, name == "none")
    assert cfg.norm.eps == (1e-6 if name == "batchnorm" else None)  # theirs: sqrt(1e-6 + var)
    sweep = cfg.hydra.sweeper.params["norm"].split(",") if "hydra" in cfg else None
    assert sweep is None or sweep == list(TABLE10_NORMS)


def test_table10_sweep_lists_the_six_rows():
    from omegaconf import OmegaConf

    from train_helpers import CONF_DIR

    sweep = OmegaConf.load(CONF_DIR / "experiment" / "cifar10_table10.yaml").hydra.sweeper.params.norm
    assert sweep.split(",") == list(TABLE10_NORMS)


# --------------------------------------------------------------------------- through the trainer
def test_the_protocol_trains_resumes_exactly_and_inits_only_a_fresh_run(cifar_jpeg, tmp_path, monkeypatch):
    """Weight norm under the whole protocol (ZCA, noise, final norm, data init, beta1 switch at
    step 3 of 6): a run crashed at step 5 and resumed from its step-4 checkpoint repeats the
    uninterrupted one exactly, and data-dependent init runs at the start of each fresh run only."""
    from repro.tasks import CifarClassification
    from repro.train import checkpoint as ckpt
    from repro.train import train

    overrides = ("experiment=cifar10_table10", "norm=weightnorm", f"data.root={cifar_jpeg}", "data.download=false",
                 "logger=none", "model.width=4", "data.batch_size=20", "data.data_init_size=50",
                 "trainer.max_steps=6", "trainer.checkpoint_every=2", "trainer.log_every=1", "trainer.eval_every=6",
                 "trainer.deterministic=true", "trainer.progress_bar=false")
    inits, real_init = [], CifarClassification.initialize

    def counted_init(self, model):
        inits.append(1)
        return real_init(self, model)

    monkeypatch.setattr(CifarClassification, "initialize", counted_init)
    full, broken = tmp_path / "full", tmp_path / "broken"
    train(compose_config(*overrides), full)
    assert len(inits) == 1

    real_loss, calls = CifarClassification.loss, []

    def crash_in_step_5(self, model, batch):
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("simulated crash")
        return real_loss(self, model, batch)

    monkeypatch.setattr(CifarClassification, "loss", crash_in_step_5)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(compose_config(*overrides), broken)
    assert len(inits) == 2
    monkeypatch.setattr(CifarClassification, "loss", real_loss)
    train(compose_config(*overrides), broken)
    assert len(inits) == 2  # resumed: the checkpoint has the initialized weights
    resumed = ckpt.load(broken / "checkpoints" / "last.pt")
    uninterrupted = ckpt.load(full / "checkpoints" / "last.pt")
    assert all(torch.equal(resumed["model"][k], uninterrupted["model"][k]) for k in uninterrupted["model"])
    assert [g["betas"][0] for g in uninterrupted["optimizer"]["param_groups"]] == [0.5, 0.5]
    # the init moved weight norm's gains off their start at ||v||
    v = uninterrupted["model"]["features.0.parametrizations.weight.original1"]
    g = uninterrupted["model"]["features.0.parametrizations.weight.original0"]
    assert not torch.allclose(g.flatten(), v.flatten(1).norm(dim=1), rtol=0.05)


def test_data_init_with_an_activation_norm_is_a_one_line_config_error():
    from repro.util import ConfigError

    with pytest.raises(ConfigError, match=r"data.data_init=true is not allowed with norm=rmsnorm: .*none, weightnorm"):
        compose_and_validate("experiment=cifar10_table10", "norm=rmsnorm", "data.data_init=true")


@pytest.mark.parametrize("name", ["none", "prmsnorm"])
@pytest.mark.parametrize("experiment, epochs, precision", [("cifar10_table10_mini", 12, "fp32"),
                                                           ("cifar10_table10_cpu", 20, "bf16")])
def test_the_cpu_budgets_are_the_protocol_at_width_32(name, experiment, epochs, precision):
    full = compose_and_validate("experiment=cifar10_table10", f"norm={name}")
    mini = compose_and_validate(f"experiment={experiment}", f"norm={name}")
    assert (mini.model.width, mini.trainer.max_epochs, mini.trainer.precision) == (32, epochs, precision)
    assert full.trainer.precision == "fp32"  # theirs, on a GPU too (auto would be bf16 autocast there)
    assert mini.data == full.data
    # the settings the committed budget runs were made with, before the protocol matched these
    # three of their code: torch's init but for none, the lr decayed per step, BatchNorm eps 1e-5
    assert mini.optim.schedule.decay_per == "step" and full.optim.schedule.decay_per == "epoch"
    assert {k: v for k, v in mini.optim.items() if k != "schedule"} == {k: v for k, v in full.optim.items() if k != "schedule"}
    assert mini.norm.eps is None and {k: v for k, v in mini.norm.items() if k != "eps"} == {
        k: v for k, v in full.norm.items() if k != "eps"}
    assert mini.model.weight_init == ("glorot_uniform" if name == "none" else "torch")
    different = ("width", "weight_init")
    assert {k: v for k, v in mini.model.items() if k not in different} == {
        k: v for k, v in full.model.items() if k not in different}


def test_prmsnorm_prefix_on_a_conv_map_is_its_top_rows():
    # p = 12.5 % of a 32x32 map: the statistic is the first 128 row-major positions, the top 4 rows
    norm = factory("prmsnorm")(3, conv=True)
    x = torch.randn(2, 3, 32, 32)
    changed = x.clone()
    changed[:, :, 4:] *= 7.0  # below the prefix: the scale of every position stays the same
    torch.testing.assert_close(norm(changed)[:, :, :4], norm(x)[:, :, :4])
    changed = x.clone()
    changed[:, :, 3, 31] += 5.0  # the prefix's last position: the statistic moves
    assert not torch.allclose(norm(changed)[:, :, :3], norm(x)[:, :, :3])


@pytest.mark.parametrize("final_partial, logit_0_sees_logit_5", [(None, False), (1.0, True)])
def test_prmsnorm_on_the_10_way_layer_takes_final_partial(final_partial, logit_0_sees_logit_5):
    # p = 12.5 % of 10 logits is 1 logit: the head's statistic is |x_0| unless final_partial widens it
    model = ConvPoolCNNC(factory("prmsnorm").with_partial(0.125), width=4, final_norm=True,
                         final_partial=final_partial)
    head = model.head[0]
    logits = torch.randn(3, 10)
    changed = logits.clone()
    changed[:, 5] *= 9.0
    moved = not torch.allclose(head(changed)[:, 0], head(logits)[:, 0])
    assert moved == logit_0_sees_logit_5
    # every hidden layer keeps the experiment's p
    hidden = [m for m in model.features.modules() if isinstance(m, ConvNorm)]
    assert hidden and all("partial=0.125" in repr(m) for m in hidden)


def test_table10_gives_prmsnorm_the_full_rms_on_the_last_layer_only():
    cfg = compose_and_validate("experiment=cifar10_table10", "norm=prmsnorm")
    assert (cfg.norm.partial, cfg.model.final_partial) == (0.125, 1.0)
    # a norm without a partial ratio is untouched by the option
    ln = factory("layernorm")
    assert ln.with_partial(1.0) is ln
