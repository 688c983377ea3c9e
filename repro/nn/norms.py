"""The norm modules: thin nn.Module wrappers of the repro.kernels ops, plus the paper's baselines.

They exist so models hold norms as layers with parameters, and so the trainer can find every norm
layer (`isinstance(m, NormLayer)`) to time it; the math itself lives in repro.kernels.
"""
from __future__ import annotations

import functools
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from repro import kernels
from repro.kernels import reference
from repro.kernels.ops import check_backend, check_eps, check_eps_mode, check_partial

# The authors' defaults: TF/Theano code puts 1e-6 inside the root, their PyTorch code 1e-8 outside.
RMS_NORM_EPS = {"inside": 1e-6, "outside": 1e-8}
LAYER_NORM_EPS = 1e-5
BATCH_NORM_EPS = 1e-5
L2_NORM_EPS = 1e-8
PARTIAL_RMS_NORM_DEFAULT = 0.0625  # the paper's pRMSNorm setting, p = 6.25 %
CONV_MODES = ("spatial", "channel")


def check_dim(dim: int, name: str = "dim") -> None:
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"{name} must be a positive int, got {dim!r}")


def check_flag(name: str, value: bool) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")


def check_conv_mode(conv_mode: str) -> None:
    if conv_mode not in CONV_MODES:
        raise ValueError(f"conv_mode must be one of {CONV_MODES}, got {conv_mode!r}")


class NormLayer(nn.Module):
    """Marker base of every activation-norm module, so the trainer finds and times them all with
    `[m for m in model.modules() if isinstance(m, NormLayer)]`. Composite norms (ConvNorm) hold
    no NormLayer inside them, so each norm in a model is counted once."""


def _gain_and_offset(module: nn.Module, dim: int, affine: bool, bias: bool) -> None:
    # registered even when absent (None), as torch's norms do, so state_dict tools see the slot
    module.register_parameter("weight", nn.Parameter(torch.ones(dim)) if affine else None)
    module.register_parameter("bias", nn.Parameter(torch.zeros(dim)) if affine and bias else None)


class RMSNorm(NormLayer):
    """RMSNorm over the last dim; `partial` < 1 is pRMSNorm (statistic from the first
    floor(partial*dim) features). `eps=None` takes the authors' default for `eps_mode`:
    1e-6 inside the root, 1e-8 outside it. `bias=True` adds the authors' optional offset."""

    def __init__(
        self,
        dim: int,
        eps: Optional[float] = None,
        *,
        partial: float = 1.0,
        eps_mode: str = "inside",
        affine: bool = True,
        bias: bool = False,
        backend: str = "auto",
    ):
        super().__init__()
        check_dim(dim)
        check_eps_mode(eps_mode)
        eps = RMS_NORM_EPS[eps_mode] if eps is None else eps
        check_eps(eps)
        check_partial(partial, dim)
        check_flag("affine", affine)
        check_flag("bias", bias)
        check_backend(backend)
        self.dim, self.eps, self.partial = dim, float(eps), float(partial)
        self.eps_mode, self.backend = eps_mode, backend
        _gain_and_offset(self, dim, affine, bias)

    def forward(self, x: Tensor) -> Tensor:
        return kernels.rms_norm(
            x, self.weight, self.eps, partial=self.partial, eps_mode=self.eps_mode,
            backend=self.backend, bias=self.bias,
        )

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps:g}, partial={self.partial:g}, eps_mode={self.eps_mode!r}"


class PartialRMSNorm(RMSNorm):
    """pRMSNorm: RMSNorm whose statistic comes from the first floor(partial*dim) features."""

    def __init__(
        self, dim: int, eps: Optional[float] = None, *, partial: float = PARTIAL_RMS_NORM_DEFAULT,
        **options,
    ):
        super().__init__(dim, eps, partial=partial, **options)


class LayerNorm(NormLayer):
    """LayerNorm over the last dim (biased variance), through repro.kernels.layer_norm."""

    def __init__(
        self, dim: int, eps: float = LAYER_NORM_EPS, *, affine: bool = True, bias: bool = True,
        backend: str = "auto",
    ):
        super().__init__()
        check_dim(dim)
        check_eps(eps)
        check_flag("affine", affine)
        check_flag("bias", bias)
        check_backend(backend)
        self.dim, self.eps, self.backend = dim, float(eps), backend
        _gain_and_offset(self, dim, affine, bias)

    def forward(self, x: Tensor) -> Tensor:
        return kernels.layer_norm(x, self.weight, self.bias, self.eps, backend=self.backend)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps:g}"


def l2_norm(
    x: Tensor, weight: Optional[Tensor] = None, bias: Optional[Tensor] = None,
    eps: float = L2_NORM_EPS,
) -> Tensor:
    """y = x / max(||x||_2, eps) over the last dim, then the optional gain and offset; computed in
    fp32 (fp64 for fp64 input) like the kernel ops, returned in x's dtype; under autocast it
    follows the kernel ops' rule (repro.kernels.autocast_inputs)."""
    x, weight, bias = kernels.autocast_inputs(x, weight, bias)
    y = F.normalize(x.to(reference.compute_dtype(x)), p=2.0, dim=-1, eps=eps)
    if weight is not None:
        y = y * weight.to(y.dtype)
    if bias is not None:
        y = y + bias.to(y.dtype)
    return y.to(x.dtype)


class L2Norm(NormLayer):
    """The paper's L2-Norm baseline: x / max(||x||_2, eps) over the last dim, times a gain."""

    def __init__(self, dim: int, eps: float = L2_NORM_EPS, *, affine: bool = True):
        super().__init__()
        check_dim(dim)
        check_eps(eps)
        check_flag("affine", affine)
        self.dim, self.eps = dim, float(eps)
        _gain_and_offset(self, dim, affine, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return l2_norm(x, self.weight, eps=self.eps)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps:g}"


class _CheckedBatchNorm(NormLayer):
    # Validates like the other norms, then hands over to the torch BatchNorm next in the MRO.
    def __init__(self, dim: int, eps: float = BATCH_NORM_EPS, *, affine: bool = True):
        check_dim(dim)
        check_eps(eps)
        check_flag("affine", affine)
        super().__init__(dim, eps=eps, affine=affine)


class BatchNorm(_CheckedBatchNorm, nn.BatchNorm1d):
    """BatchNorm over features-last input (..., dim): statistics over every leading position."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.reshape(-1, x.shape[-1])).reshape(x.shape)


class BatchNorm2d(_CheckedBatchNorm, nn.BatchNorm2d):
    """BatchNorm over conv features (N, C, H, W), per channel."""


def global_batch_norm(layer: nn.modules.batchnorm._BatchNorm, x: Tensor) -> Tensor:
    """Training-mode batch norm of x (N, C, ...) with statistics over the batch of every rank:
    per-channel sums, sums of squares and counts are summed across ranks by an all-reduce that
    autograd differentiates (torch.distributed.nn), so gradients flow across ranks as one
    process with the whole batch would have them. Works on any backend (gloo on CPU); torch's
    SyncBatchNorm kernels are CUDA-only."""
    from torch.distributed.nn.functional import all_reduce

    channels, dims = x.shape[1], [0, *range(2, x.dim())]
    xf = x.float()
    local = torch.cat([xf.sum(dims), xf.square().sum(dims), xf.new_full((1,), x.numel() / channels)])
    total = all_reduce(local)
    count = total[-1]
    mean = total[:channels] / count
    var = (total[channels:2 * channels] / count - mean.square()).clamp_min(0.0)
    if layer.track_running_stats:
        with torch.no_grad():
            layer.num_batches_tracked += 1
            momentum = layer.momentum if layer.momentum is not None else 1.0 / float(layer.num_batches_tracked)
            unbiased = var * count / (count - 1).clamp_min(1.0)
            layer.running_mean.lerp_(mean.to(layer.running_mean.dtype), momentum)
            layer.running_var.lerp_(unbiased.to(layer.running_var.dtype), momentum)
    shape = (1, channels) + (1,) * (x.dim() - 2)
    y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + layer.eps)
    if layer.affine:
        y = y * layer.weight.view(shape) + layer.bias.view(shape)
    return y.to(x.dtype)


class _SyncedBatchNorm:
    """Statistics over the global batch while training in a process group: torch's SyncBatchNorm
    on CUDA, `global_batch_norm` elsewhere; the layer's own BatchNorm otherwise (eval, one rank)."""

    def _synced(self) -> bool:
        return (self.training and torch.distributed.is_available() and torch.distributed.is_initialized()
                and torch.distributed.get_world_size() > 1)


class SyncBatchNorm(_SyncedBatchNorm, BatchNorm, nn.SyncBatchNorm):
    """BatchNorm (features last) whose statistics span every rank of the process group. Made by
    `sync_batch_norm`, never by a config directly."""

    def forward(self, x: Tensor) -> Tensor:
        if not self._synced():
            return BatchNorm.forward(self, x)
        rows = x.reshape(-1, x.shape[-1])
        out = nn.SyncBatchNorm.forward(self, rows) if x.is_cuda else global_batch_norm(self, rows)
        return out.reshape(x.shape)


class SyncBatchNorm2d(_SyncedBatchNorm, BatchNorm2d, nn.SyncBatchNorm):
    """BatchNorm2d whose statistics span every rank of the process group."""

    def forward(self, x: Tensor) -> Tensor:
        if not self._synced():
            return BatchNorm2d.forward(self, x)
        return nn.SyncBatchNorm.forward(self, x) if x.is_cuda else global_batch_norm(self, x)


_SYNCED = {BatchNorm: SyncBatchNorm, BatchNorm2d: SyncBatchNorm2d}


def sync_batch_norm(model: nn.Module) -> int:
    """Replace every BatchNorm / BatchNorm2d in `model` (in place) by its synchronized version with
    the same parameters, buffers and momentum, so DDP ranks normalize over the global batch as one
    process would; returns how many were replaced. They stay NormLayers (and isinstance of the
    originals), so the timer, drift monitor and registry see them as before."""
    replaced = 0
    for name, child in model.named_children():
        synced = _SYNCED.get(type(child))
        if synced is None:
            replaced += sync_batch_norm(child)
            continue
        layer = synced(child.num_features, eps=child.eps, affine=child.affine)
        layer.momentum = child.momentum
        layer.load_state_dict(child.state_dict())
        layer.to(next(iter(child.state_dict().values())).device).train(child.training)
        setattr(model, name, layer)
        replaced += 1
    return replaced


class ConvNorm(NormLayer):
    """A row norm applied to conv features (N, C, H, W), with a per-channel gain and bias (C,).

    `mode="spatial"` (the authors' CNN code): each (sample, channel) is normalized over its H*W
    positions, i.e. rows of length H*W; pRMSNorm's statistic then uses the first
    floor(partial*H*W) positions of the row-major flattened map (the top rows of the image).
    `mode="channel"`: each position is normalized over its C channels (a LayerNorm over channels).
    `normalize(rows, weight=None, bias=None)` is the parameter-free row op, e.g. a
    functools.partial of repro.kernels.rms_norm; it is not a module, so this layer counts once.
    `fused_affine=True` says the op takes `affine_dim=-2` (repro.kernels' ops do): in spatial mode
    the per-channel gain and bias are then applied inside its kernels, at the compute precision
    (fp32; fp64 for fp64 input) and rounded once, instead of by a
    torch op of their own after it, which cost more than the norm itself (RMSNorm on
    100 x 32 x 32 x 32, forward + backward, 2 AVX2 cores: 1.60 ms fused against 6.71 unfused in
    fp32, 1.49 against 9.57 in bf16; results/bench/conv_norm_affine/README.md).
    """

    def __init__(
        self, channels: int, normalize: Callable[..., Tensor], *, mode: str = "spatial",
        affine: bool = True, fused_affine: bool = False,
    ):
        super().__init__()
        check_dim(channels, "channels")
        check_conv_mode(mode)
        check_flag("affine", affine)
        check_flag("fused_affine", fused_affine)
        self.channels, self.normalize, self.mode = channels, normalize, mode
        self.fused_affine = fused_affine
        _gain_and_offset(self, channels, affine, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(
                f"x must be conv features (N, {self.channels}, H, W), got shape {tuple(x.shape)}"
            )
        if self.mode == "channel":
            y = self.normalize(x.permute(0, 2, 3, 1), weight=self.weight, bias=self.bias)
            return y.permute(0, 3, 1, 2)
        n, c, h, w = x.shape
        if self.fused_affine:
            rows = x.reshape(n, c, h * w)
            return self.normalize(rows, weight=self.weight, bias=self.bias, affine_dim=-2).view(n, c, h, w)
        y = self.normalize(x.reshape(n * c, h * w)).view(n, c, h, w)
        if self.weight is None:
            return y
        per_channel = (c, 1, 1)
        offset = self.bias.to(y.dtype).view(per_channel)
        return torch.addcmul(offset, y, self.weight.to(y.dtype).view(per_channel))

    def extra_repr(self) -> str:
        return (f"{self.channels}, mode={self.mode!r}, normalize={_describe(self.normalize)}, "
                f"fused_affine={self.fused_affine}")


def _describe(normalize: Callable[..., Tensor]) -> str:
    if isinstance(normalize, functools.partial):
        options = ", ".join(f"{key}={value!r}" for key, value in normalize.keywords.items())
        return f"{normalize.func.__name__}({options})"
    return getattr(normalize, "__name__", repr(normalize))
