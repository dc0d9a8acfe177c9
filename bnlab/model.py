"""The MLP as a seed ensemble, with an explicit backward pass for every layer.

Every tensor carries the member axis first: activations are (K, B, width), a linear weight is
(K, fan_in, fan_out), BN parameters and buffers are (K, width). One forward pass runs all
members with batched matrix multiplies; nothing couples them, so member k of an ensemble
computes what the same seed computes alone.

Training does not use autograd: each layer saves what its backward needs in `forward` (in
training mode) and `backward(dy)` returns dL/dx and sets `.grad` on its parameters. For an
MLP this is a handful of fused kernels per layer, about half the cost of an autograd step at
small batches (scripts/benchmark.py). The forward is built from differentiable torch ops, so
autograd on the same forward is the oracle the tests check every backward against.

Layer names are stable across settings (fc1, bn1, act1, drop1, ..., fc{L+1} for the output),
so probe rows join across runs with and without BN.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig

IN_FEATURES, CLASSES = 784, 10
aten = torch.ops.aten

ACTIVATIONS = {
    "relu": torch.relu,
    "lrelu": lambda x: F.leaky_relu(x, 0.2),
    "sigmoid": torch.sigmoid,
    "softplus": F.softplus,
    "tanh": torch.tanh,
}


def generator(seed: int, stream: str, device: str | torch.device = "cpu") -> torch.Generator:
    """An independent torch.Generator for one purpose ('init', 'data', 'noise') of one seed."""
    state = np.random.SeedSequence([seed, *stream.encode()]).generate_state(2, dtype=np.uint64)
    return torch.Generator(device=device).manual_seed(int(state[0] >> np.uint64(1)))


class Layer(nn.Module):
    """A layer with an explicit backward pass.

    forward(x) saves what backward needs in `self.saved` (a plain dict: nn.Module's
    __setattr__ is too slow for the hot path) when the layer is in training mode;
    backward(dy) returns dL/dx and sets .grad of the layer's parameters.
    """

    def __init__(self):
        super().__init__()
        self.saved: dict[str, torch.Tensor] = {}

    def backward(self, dy: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class Linear(Layer):
    """K independent affine maps. Input (K, B, fan_in), or (B, fan_in) shared by all members."""

    def __init__(self, members: int, fan_in: int, fan_out: int, bias: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(members, fan_in, fan_out))
        self.bias = nn.Parameter(torch.zeros(members, 1, fan_out)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:  # shared input (evaluation): one GEMM against all members' weights
            k, fan_in, fan_out = self.weight.shape
            w = self.weight.transpose(0, 1).reshape(fan_in, k * fan_out)
            out = (x @ w).view(len(x), k, fan_out).transpose(0, 1)
            return out if self.bias is None else out + self.bias
        if self.training:
            self.saved["x"] = x
        if self.bias is None:
            return torch.bmm(x, self.weight)
        return torch.baddbmm(self.bias, x, self.weight)

    def backward(self, dy: torch.Tensor, need_dx: bool = True) -> torch.Tensor | None:
        self.weight.grad = torch.bmm(self.saved["x"].transpose(1, 2), dy)  # (K, in, out)
        if self.bias is not None:
            self.bias.grad = dy.sum(1, keepdim=True)
        return torch.bmm(dy, self.weight.transpose(1, 2)) if need_dx else None


class BatchNorm(Layer):
    """PyTorch's batch-norm kernels (native_batch_norm and its backward), per-member statistics.

    Training normalises with the biased batch variance and stores the unbiased one in
    running_var (PyTorch's convention); momentum=None gives a cumulative average. At
    evaluation it uses the running statistics, or with eval_stats='batch' the evaluation
    batch's own statistics (what the 2017 study did), without touching the buffers.
    """

    def __init__(
        self,
        members: int,
        width: int,
        eps: float,
        momentum: float | None,
        eval_stats: str = "running",
    ):
        super().__init__()
        self.eps, self.momentum, self.eval_stats = eps, momentum, eval_stats
        self.weight = nn.Parameter(torch.ones(members, width))  # gamma
        self.bias = nn.Parameter(torch.zeros(members, width))  # beta
        self.register_buffer("running_mean", torch.zeros(members, width))
        self.register_buffer("running_var", torch.ones(members, width))
        self.batches_seen = 0  # for momentum=None (cumulative average)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, b, c = x.shape
        flat = x.transpose(0, 1).reshape(b, k * c)  # member k's unit j is channel k*c + j
        w, beta = self.weight.view(-1), self.bias.view(-1)
        if self.training:
            self.batches_seen += 1
            momentum = self.momentum or 1.0 / self.batches_seen
            y, mean, invstd = torch.native_batch_norm(
                flat,
                w,
                beta,
                self.running_mean.view(-1),
                self.running_var.view(-1),
                True,
                momentum,
                self.eps,
            )
            self.saved["flat"], self.saved["mean"], self.saved["invstd"] = flat, mean, invstd
        elif self.eval_stats == "batch":
            y = F.batch_norm(flat, None, None, w, beta, True, 0.0, self.eps)
        else:
            y = F.batch_norm(
                flat,
                self.running_mean.view(-1),
                self.running_var.view(-1),
                w,
                beta,
                False,
                0.0,
                self.eps,
            )
        return y.view(b, k, c).transpose(0, 1).contiguous()  # bmm is slow on other layouts

    def backward(self, dy: torch.Tensor) -> torch.Tensor:
        flat, mean, invstd = self.saved["flat"], self.saved["mean"], self.saved["invstd"]
        k, b, c = dy.shape
        dx, dw, db = aten.native_batch_norm_backward(
            dy.transpose(0, 1).reshape(b, k * c),
            flat,
            self.weight.view(-1),
            None,
            None,
            mean,
            invstd,
            True,
            self.eps,
            [True, True, True],
        )
        self.weight.grad, self.bias.grad = dw.view(k, c), db.view(k, c)
        return dx.view(b, k, c).transpose(0, 1).contiguous()


class Dropout(Layer):
    """Inverted dropout with one random stream per member (set `generators` before training)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p
        self.generators: list[torch.Generator] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.empty_like(x)
        for k, g in enumerate(self.generators):
            keep[k].bernoulli_(1.0 - self.p, generator=g)
        self.saved["scale"] = keep.div_(1.0 - self.p)  # (K, B, width): 0 or 1/(1-p)
        return x * self.saved["scale"]

    def backward(self, dy: torch.Tensor) -> torch.Tensor:
        return dy * self.saved["scale"]


class Activation(Layer):
    """relu, lrelu (slope 0.2), sigmoid, softplus or tanh, with PyTorch's backward kernels."""

    def __init__(self, name: str):
        super().__init__()
        self.name, self.fn = name, ACTIVATIONS[name]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fn(x)
        if self.training:
            self.saved["x"], self.saved["y"] = x, y
        return y

    def backward(self, dy: torch.Tensor) -> torch.Tensor:
        if self.name == "relu":
            return aten.threshold_backward(dy, self.saved["y"], 0.0)
        if self.name == "lrelu":
            return aten.leaky_relu_backward(dy, self.saved["x"], 0.2, False)
        if self.name == "sigmoid":
            return aten.sigmoid_backward(dy, self.saved["y"])
        if self.name == "tanh":
            return aten.tanh_backward(dy, self.saved["y"])
        return aten.softplus_backward(dy, self.saved["x"], 1.0, 20.0)

    def extra_repr(self) -> str:
        return self.name


def make_norm(cfg: ModelConfig, members: int, width: int) -> nn.Module:
    if cfg.norm == "batch":
        return BatchNorm(members, width, cfg.bn_eps, cfg.bn_momentum, cfg.bn_eval)
    raise ValueError(f"unknown norm {cfg.norm!r}")


class MLP(nn.Module):
    """784 -> widths -> 10, hidden blocks of linear, optional norm, activation, optional dropout.

    Block order: fc, bn, act (placement=before) or fc, act, bn (placement=after). Dropout
    `after_act` sits at the end of every hidden block, `before_bn` directly before the norm
    layer (directly after fc when there is no norm), `final` only at the end of the last block.
    """

    def __init__(self, cfg: ModelConfig, members: int):
        super().__init__()
        self.members = members
        self.order: list[str] = []  # module names in forward order
        dims = [IN_FEATURES, *cfg.widths]
        n_hidden = len(cfg.widths)
        has_norm = cfg.norm != "none"
        for i in range(1, n_hidden + 1):
            bias = not (has_norm and cfg.placement == "before") or cfg.bias_before_norm
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
            self.order += [f"fc{i}", *block]
        out = f"fc{n_hidden + 1}"
        setattr(self, out, Linear(members, dims[-1], CLASSES, bias=True))
        self.order.append(out)

    def linears(self) -> list[Linear]:
        return [m for m in self.modules() if isinstance(m, Linear)]

    def forward(self, x: torch.Tensor, record: dict | None = None) -> torch.Tensor:
        """Logits (K, B, 10) from x (K, B, 784) or shared x (B, 784).

        With `record`, every named layer's output is stored in it (probes use this).
        """
        for name in self.order:
            x = getattr(self, name).forward(x)  # .forward: no hooks, less per-call overhead
            if record is not None:
                record[name] = x
        return x

    def backward(self, dlogits: torch.Tensor) -> None:
        """Backpropagate dL/dlogits (K, B, 10) through the last training-mode forward, setting
        .grad of every parameter (the input gradient is not computed)."""
        dy = dlogits
        for name in reversed(self.order[1:]):
            dy = getattr(self, name).backward(dy)
        getattr(self, self.order[0]).backward(dy, need_dx=False)


def init_member(model: MLP, k: int, cfg: ModelConfig, seed: int) -> None:
    """Draw member k's initial parameters from `seed` alone.

    Weights are drawn first, layer by layer, from one generator, so for a given seed they do
    not depend on the norm setting or on which biases exist (paired BN/no-BN comparisons).
    study: truncated normal cut at 2 sd, sd = sqrt(2/fan_in) (the 2017 study); normal: sd
    init_std; torch: PyTorch's nn.Linear default U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    """
    g = generator(seed, "init")
    with torch.no_grad():
        for lin in model.linears():
            fan_in, fan_out = lin.weight.shape[1:]
            w = torch.empty(fan_in, fan_out)
            if cfg.init == "study":
                sd = math.sqrt(2.0 / fan_in)
                nn.init.trunc_normal_(w, 0.0, sd, -2 * sd, 2 * sd, generator=g)
            elif cfg.init == "normal":
                w.normal_(0.0, cfg.init_std, generator=g)
            else:
                w.uniform_(-1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in), generator=g)
            lin.weight[k] = w * cfg.init_scale
        for lin in model.linears():
            fan_in, fan_out = lin.weight.shape[1:]
            b = torch.full((fan_out,), cfg.bias_init)
            if cfg.init == "torch":
                b.uniform_(-1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in), generator=g)
            if lin.bias is not None:
                lin.bias[k, 0] = b


def build_model(cfg: ModelConfig, seeds: list[int], device="cpu") -> MLP:
    """An ensemble MLP with one member per seed, initialised, with per-member noise streams."""
    model = MLP(cfg, len(seeds))
    for k, seed in enumerate(seeds):
        init_member(model, k, cfg, cfg.init_seed if cfg.init_seed is not None else seed)
    model.to(device)
    for name, m in model.named_modules():
        if isinstance(m, Dropout):
            m.generators = [generator(s, f"noise-{name}", device) for s in seeds]
    return model
