"""The precision each norm layer actually ran at: under autocast a norm's input and output dtypes
depend on the layers around it and on the ops' autocast rule (repro.kernels.autocast_inputs), so
the run records them rather than assuming them.

`NormPrecision(model)` hooks every `repro.nn.NormLayer` until its first forward call, records
"<input dtype>-><output dtype>" (e.g. "bfloat16->float32") and removes the hook, so later steps
run without it.
"""
from __future__ import annotations

from torch import Tensor, nn

from repro.nn import NormLayer


def _dtype_name(value) -> str:
    tensor = value[0] if isinstance(value, (tuple, list)) and value else value
    return str(tensor.dtype).removeprefix("torch.") if isinstance(tensor, Tensor) else type(tensor).__name__


class NormPrecision:
    def __init__(self, model: nn.Module):
        self.seen: dict[str, str] = {}
        self.handles = {}
        for name, layer in model.named_modules():
            if isinstance(layer, NormLayer):
                self.handles[name] = layer.register_forward_hook(self._hook(name))

    def _hook(self, name: str):
        def hook(module, inputs, output):
            self.seen[name] = f"{_dtype_name(inputs)}->{_dtype_name(output)}"
            self.handles.pop(name).remove()
        return hook

    def result(self) -> dict[str, str]:
        """{layer name: "<in>-><out>"} for every norm layer that has run, in model order."""
        return dict(self.seen)

    def close(self) -> None:
        for handle in self.handles.values():
            handle.remove()
        self.handles.clear()
