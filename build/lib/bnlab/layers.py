"""Building blocks with explicit backward passes: linear, dropout, activation.

Every tensor carries the member axis first: activations are (K, B, width), a linear weight is
(K, fan_out, fan_in) (nn.Linear's layout per member). Training does not use autograd: each
layer saves what its backward needs in `forward` (in training mode) and `backward(dy)` returns
dL/dx and sets `.grad` on its parameters. The forward is built from differentiable torch ops,
so autograd on the same forward is the oracle the tests check every backward against.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

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
    """K independent affine maps y = x W^T + b, weight (K, fan_out, fan_in) as in nn.Linear.

    Input (K, B, fan_in), or (B, fan_in) shared by all members. With the (out, in) layout the
    weight gradient is dy^T x, which MKL computes faster than x^T dy into an (in, out) weight
    (measured here: a quarter less time for the first layer at batch 64 and 5 members, 3-4x
    less for the 10-unit output layer).
    """

    def __init__(self, members: int, fan_in: int, fan_out: int, bias: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(members, fan_out, fan_in))
        self.bias = nn.Parameter(torch.zeros(members, 1, fan_out)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:  # shared input (evaluation): one GEMM against all members' weights
            k, fan_out, fan_in = self.weight.shape
            # W x^T rather than x W^T: the faster product here; (K, B, out) as a transposed view
            out = (self.weight.view(k * fan_out, fan_in) @ x.T).view(k, fan_out, len(x))
            out = out.transpose(1, 2)
            return out if self.bias is None else out + self.bias
        if self.training:
            self.saved["x"] = x
        w_t = self.weight.transpose(1, 2)
        return torch.bmm(x, w_t) if self.bias is None else torch.baddbmm(self.bias, x, w_t)

    def backward(
        self, dy: torch.Tensor, need_dx: bool = True, weight_grad: bool = True
    ) -> torch.Tensor | None:
        """dL/dx from dL/dy; sets .grad of the bias and, with weight_grad, of the weight
        (an optimiser using sgd_step does not need it)."""
        if weight_grad:
            dy_t = dy.transpose(1, 2)
            if self.weight.grad is None:
                self.weight.grad = torch.bmm(dy_t, self.saved["x"])  # (K, out, in)
            else:  # in place: a fresh (K, out, in) buffer every step costs page faults
                torch.bmm(dy_t, self.saved["x"], out=self.weight.grad)
        if self.bias is not None:
            self.bias.grad = dy.sum(1, keepdim=True)
        return torch.bmm(dy, self.weight) if need_dx else None

    def sgd_step(self, lr: float) -> None:
        """W -= lr * dL/dW for the last MLP.backward (which keeps dy in `saved`), as one GEMM
        W += -lr dy^T x: the gradient is never written out and W is read and written once (a
        third of the memory traffic of gradient then update, which limits small batches)."""
        self.weight.baddbmm_(self.saved["dy"].transpose(1, 2), self.saved["x"], alpha=-lr)


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
