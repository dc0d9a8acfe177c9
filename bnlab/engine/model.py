"""The MLP as a seed ensemble: K members with their own weights, statistics and randomness.

One forward pass runs all members with batched matrix multiplies; nothing couples them, so
member k of an ensemble computes what the same seed computes alone. For an MLP an explicit
backward (bnlab.engine.layers) is a handful of fused kernels per layer, about half the cost of an
autograd step at small batches (bnlab bench).

Layer names are stable across settings (fc1, bn1, act1, drop1, res1, ..., fc{L+1} for the
output; bn{i} is whatever norm layer `model.norm` selects), so probe rows join across runs.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from .layers import Activation, Dropout, Linear, Residual, generator
from .norms import BATCH_STAT_NORMS, BatchStatNorm, make_norm

if TYPE_CHECKING:
    from ..runs.config import ModelConfig

IN_FEATURES, CLASSES = 784, 10


class MLP(nn.Module):
    """784 -> widths -> 10, hidden blocks of linear, optional norm, activation, optional dropout.

    Block order: fc, bn, act (placement=before) or fc, act, bn (placement=after). Dropout
    `after_act` sits at the end of every hidden block, `before_bn` directly before the norm
    layer (directly after fc when there is no norm), `final` only at the end of the last block.
    With model.residual, a block whose input and output widths are equal ends in res{i} and
    outputs its input plus res{i}'s output (an identity skip); a block that changes the width
    (the first, from 784 pixels, and any other) has no skip.
    """

    def __init__(self, cfg: ModelConfig, members: int, autograd: bool = False):
        super().__init__()
        self.members = members
        self.order: list[str] = []  # module names in forward order
        dims = [IN_FEATURES, *cfg.widths]
        n_hidden = len(cfg.widths)
        has_norm = cfg.norm != "none"
        # a bias feeding a batch-statistics norm is cancelled by its mean subtraction
        drop_bias = cfg.norm in BATCH_STAT_NORMS and cfg.placement == "before"
        for i in range(1, n_hidden + 1):
            bias = not drop_bias or cfg.bias_before_norm
            setattr(self, f"fc{i}", Linear(members, dims[i - 1], dims[i], bias))
            setattr(self, f"act{i}", Activation(cfg.activation))
            block = [f"act{i}"]
            if has_norm:
                setattr(self, f"bn{i}", make_norm(cfg, members, dims[i]))
                block.insert(0 if cfg.placement == "before" else 1, f"bn{i}")
            if cfg.dropout > 0:
                if cfg.dropout_at == "before_bn":
                    block.insert(block.index(f"bn{i}") if has_norm else 0, f"drop{i}")
                elif cfg.dropout_at == "after_act" or i == n_hidden:
                    block.append(f"drop{i}")
                if f"drop{i}" in block:
                    setattr(self, f"drop{i}", Dropout(cfg.dropout))
            if cfg.residual and dims[i - 1] == dims[i]:
                setattr(self, f"res{i}", Residual(members, cfg.residual_scale == "zero_init"))
                block.append(f"res{i}")
            self.order += [f"fc{i}", *block]
        out = f"fc{n_hidden + 1}"
        setattr(self, out, Linear(members, dims[-1], CLASSES, bias=True))
        self.order.append(out)
        # (name, layer, on autograd) in forward order: the hot loops skip nn.Module's attribute
        # lookup. Layers without a hand-written backward (and all with autograd=True, the
        # benchmark's comparison) record their forward for autograd's backward instead.
        self.layers = [(n, getattr(self, n)) for n in self.order]
        self.autograd = [autograd or not layer.explicit_backward for _, layer in self.layers]
        # residual blocks: {position of res{i}: position of fc{i}, whose input is the skip}
        self.skips = {
            self.order.index(n): self.order.index(f"fc{n[3:]}")
            for n in self.order
            if n.startswith("res")
        }
        self.skip_starts = set(self.skips.values())

    def linears(self) -> list[Linear]:
        return [m for m in self.modules() if isinstance(m, Linear)]

    def forward(self, x: torch.Tensor, record: dict | None = None) -> torch.Tensor:
        """Logits (K, B, 10) from x (K, B, 784) or shared x (B, 784).

        With `record`, every named layer's output is stored in it (probes use this).
        """
        for i, (name, layer) in enumerate(self.layers):
            if i in self.skip_starts:
                skip = x  # a residual block's input
            # .forward: no hooks, less per-call overhead; the first layer's input needs no gradient
            x = layer.autograd_forward(x, i > 0) if self.autograd[i] else layer.forward(x)
            if i in self.skips:
                x = skip + x
            if record is not None:
                record[name] = x
        return x

    def backward(self, dlogits: torch.Tensor, weight_grads: bool = True) -> None:
        """Backpropagate dL/dlogits (K, B, 10) through the last training-mode forward, setting
        .grad of every parameter (the input gradient is not computed). weight_grads=False
        leaves the linear weights' .grad alone (bnlab.engine.optim.SGD updates them without it)."""
        dy = dlogits
        for i in reversed(range(len(self.layers))):
            layer = self.layers[i][1]
            layer.saved["dy"] = dy  # dL/d(layer output): gradient probes, Linear.sgd_step
            if i in self.skips:
                skip_dy = dy  # a residual block's output gradient reaches its input directly
            if self.autograd[i]:
                dy = layer.autograd_backward(dy)
            elif isinstance(layer, Linear):
                dy = layer.backward(dy, need_dx=i > 0, weight_grad=weight_grads)
            else:
                dy = layer.backward(dy)
            if i in self.skip_starts and i > 0:
                dy = dy + skip_dy


def scale_invariant_linears(model: MLP) -> list[tuple[str, Linear]]:
    """The linear layers without bias whose output goes straight into a batch-statistics norm:
    each unit's incoming weights are scale-invariant (the loss does not change when they are
    multiplied by a positive number, up to the norm's eps)."""
    layers = [getattr(model, name) for name in model.order]
    return [
        (name, layer)
        for name, layer, following in zip(model.order, layers, layers[1:])
        if isinstance(layer, Linear) and layer.bias is None and isinstance(following, BatchStatNorm)
    ]


def init_member(model: MLP, k: int, cfg: ModelConfig, seed: int) -> None:
    """Draw member k's initial parameters from `seed` alone.

    Weights are drawn first, layer by layer, from one generator, so for a given seed they do
    not depend on the norm setting or on which biases exist (paired BN/no-BN comparisons).
    study: truncated normal cut at 2 sd, sd = sqrt(2/fan_in) (the 2017 study); normal: sd
    init_std; torch: PyTorch's nn.Linear default U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    model.invariant_init_scale multiplies the weights feeding a batch-statistics norm, and the
    norm's initial running variance by its square: the same network, in training and in
    evaluation, as without it (with optim.invariant_lr_scale and bn_eps scaled to match).
    """
    g = generator(seed, "init")
    with torch.no_grad():
        for lin in model.linears():
            fan_out, fan_in = lin.weight.shape[1:]
            w = torch.empty(fan_in, fan_out)
            if cfg.init == "study":
                sd = math.sqrt(2.0 / fan_in)
                nn.init.trunc_normal_(w, 0.0, sd, -2 * sd, 2 * sd, generator=g)
            elif cfg.init == "normal":
                w.normal_(0.0, cfg.init_std, generator=g)
            else:
                w.uniform_(-1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in), generator=g)
            lin.weight[k] = (w * cfg.init_scale).T  # drawn (in, out): same values as before
        scale = cfg.invariant_init_scale  # != 1 only with BN's running_var (bnlab.runs.config)
        for name, lin in scale_invariant_linears(model) if scale != 1 else []:
            lin.weight[k] *= scale
            norm = getattr(model, model.order[model.order.index(name) + 1])
            norm.running_var[k] *= scale * scale
        for lin in model.linears():
            fan_out, fan_in = lin.weight.shape[1:]
            b = torch.full((fan_out,), cfg.bias_init)
            if cfg.init == "torch":
                b.uniform_(-1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in), generator=g)
            if lin.bias is not None:
                lin.bias[k, 0] = b


def build_model(cfg: ModelConfig, seeds: list[int], device="cpu", autograd: bool = False) -> MLP:
    """An ensemble MLP with one member per seed, initialised, with per-member noise streams
    (autograd=True: every layer on the autograd fallback, the benchmark's comparison)."""
    model = MLP(cfg, len(seeds), autograd)
    for k, seed in enumerate(seeds):
        init_member(model, k, cfg, cfg.init_seed if cfg.init_seed is not None else seed)
    model.to(device)
    for name, m in model.named_modules():
        if hasattr(m, "generators"):  # dropout and noise layers: one stream per member
            m.generators = [generator(s, f"noise-{name}", device) for s in seeds]
    return model
