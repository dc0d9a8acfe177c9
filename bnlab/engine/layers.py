"""Building blocks with explicit backward passes: linear, dropout, activation.

Every tensor carries the member axis first: activations are (K, B, width), a linear weight is
(K, fan_out, fan_in) (nn.Linear's layout per member). Training does not use autograd: each
layer saves what its backward needs in `forward` (in training mode) and `backward(dy)` returns
dL/dx and sets `.grad` on its parameters. The forward is built from differentiable torch ops,
so autograd on the same forward is the oracle the tests check every backward against.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

aten = torch.ops.aten
SIGMOID_SAT = math.log(19)  # |x| > ln 19 <=> sigmoid(x) < 0.05 or > 0.95
TANH_SAT = math.log(19) / 2  # the same output band for tanh = 2 sigmoid(2x) - 1: |tanh| > 0.9


@dataclass(frozen=True)
class ActivationFn:
    """One activation: everything bnlab needs to know about it, in one place.

    fn: the function (differentiable torch ops). derivative: fn' elementwise, which the Jacobian
    probe multiplies into each layer's Jacobian. backward(dy, x, y) -> dL/dx: the hand-written
    fast path from the forward's input x and output y; None leaves the layer on the autograd
    fallback (correct, slower). saturation: |x| beyond which a unit counts as saturated (the
    activations probe's saturated_frac); dead: whether the probe reports units never active.
    The tests check backward and derivative against autograd for every entry.
    """

    fn: Callable[[torch.Tensor], torch.Tensor]
    derivative: Callable[[torch.Tensor], torch.Tensor]
    backward: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    saturation: float | None = None
    dead: bool = False


ACTIVATIONS = {
    "relu": ActivationFn(
        torch.relu,
        lambda z: (z > 0).to(z.dtype),
        lambda dy, x, y: aten.threshold_backward(dy, y, 0.0),
        dead=True,
    ),
    "lrelu": ActivationFn(  # slope 0.2
        lambda x: F.leaky_relu(x, 0.2),
        lambda z: torch.where(z > 0, z.new_tensor(1.0), z.new_tensor(0.2)),
        lambda dy, x, y: aten.leaky_relu_backward(dy, x, 0.2, False),
    ),
    "sigmoid": ActivationFn(
        torch.sigmoid,
        lambda z: torch.sigmoid(z) * (1 - torch.sigmoid(z)),
        lambda dy, x, y: aten.sigmoid_backward(dy, y),
        saturation=SIGMOID_SAT,
    ),
    "softplus": ActivationFn(  # torch's softplus is x itself above 20
        F.softplus,
        lambda z: torch.where(z > 20, z.new_tensor(1.0), torch.sigmoid(z)),
        lambda dy, x, y: aten.softplus_backward(dy, x, 1.0, 20.0),
    ),
    "tanh": ActivationFn(
        torch.tanh,
        lambda z: 1 - torch.tanh(z) ** 2,
        lambda dy, x, y: aten.tanh_backward(dy, y),
        saturation=TANH_SAT,
    ),
}


def generator(seed: int, stream: str, device: str | torch.device = "cpu") -> torch.Generator:
    """An independent torch.Generator for one purpose ('init', 'data', 'noise') of one seed."""
    state = np.random.SeedSequence([seed, *stream.encode()]).generate_state(2, dtype=np.uint64)
    return torch.Generator(device=device).manual_seed(int(state[0] >> np.uint64(1)))


class Layer(nn.Module):
    """A layer with an explicit backward pass, or autograd's.

    forward(x) saves what backward needs in `self.saved` (a plain dict: nn.Module's
    __setattr__ is too slow for the hot path) when the layer is in training mode;
    backward(dy) returns dL/dx and sets .grad of the layer's parameters.

    A layer that does not override `backward` runs on the autograd fallback: the model calls
    `autograd_forward`, which records the forward's graph, and `autograd_backward` backpropagates
    through it. So a new layer is correct first; a hand-written backward makes it fast later.

    `state` names the attributes, besides parameters and buffers, that a training-mode forward
    changes (counters, accumulators): probes save and restore them around their extra passes,
    so that probing never steers training (a test checks every registered layer declares all).

    What the probes need to know about a layer, it declares (the probes keep no lists of
    classes): `affine`, the names of its gamma and beta (the parameters of a per-unit affine
    map y = gamma * xhat + beta; gamma alone is allowed), which the weight and gradient probes
    report; `jacobian`, what its per-sample Jacobian is at evaluation, for the Jacobian probe:
    "diagonal" (a per-unit map; `jacobian_diagonal(x)` gives its diagonal), "identity" (dropout,
    noise) or "not_diagonal" (layer, group norm: the probe records no Jacobian). A norm that
    leaves `jacobian` at None is refused by config validation while the probe is on.
    """

    state: tuple[str, ...] = ()
    affine: tuple[str, ...] = ()
    jacobian: str | None = None

    def __init__(self):
        super().__init__()
        self.saved: dict[str, torch.Tensor] = {}

    @property
    def explicit_backward(self) -> bool:
        """Whether backward is hand-written (else the model uses the autograd fallback)."""
        return type(self).backward is not Layer.backward

    def backward(self, dy: torch.Tensor) -> torch.Tensor:
        return self.autograd_backward(dy)

    def affine_params(self) -> dict[str, torch.Tensor]:
        """The declared affine parameters by role: {'gamma': ..., 'beta': ...}."""
        return {role: getattr(self, n) for role, n in zip(("gamma", "beta"), self.affine)}

    def jacobian_diagonal(self, x: torch.Tensor) -> torch.Tensor:
        """For jacobian = "diagonal": the diagonal of the per-sample Jacobian at evaluation at
        input x (K, N, C), broadcastable to (K, N, C)."""
        raise NotImplementedError(f"{type(self).__name__} declares no jacobian_diagonal")

    def autograd_forward(self, x: torch.Tensor, need_dx: bool = True) -> torch.Tensor:
        """forward(x) with autograd recording its graph in training mode, for
        autograd_backward (without need_dx the input gets no gradient: the first layer).
        Under a caller's own autograd (grad enabled) it is plain forward."""
        if not self.training or torch.is_grad_enabled():
            return self.forward(x)
        with torch.enable_grad():
            x = x.detach().requires_grad_(need_dx)
            y = self.forward(x)
        self.saved["autograd"] = (x, y)
        return y.detach()

    def autograd_backward(self, dy: torch.Tensor) -> torch.Tensor | None:
        """dL/dx and the parameters' .grad through the graph of the last autograd_forward."""
        x, y = self.saved["autograd"]
        params = [p for p in self.parameters() if p.requires_grad]
        inputs = [x, *params] if x.requires_grad else params
        grads = torch.autograd.grad(y, inputs, dy, allow_unused=True)
        for p, g in zip(params, grads[len(inputs) - len(params) :]):
            p.grad = torch.zeros_like(p) if g is None else g
        return grads[0] if x.requires_grad else None


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

    jacobian = "identity"  # at evaluation

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
    """An activation of the ACTIVATIONS table; its backward is the table's, or autograd's."""

    jacobian = "diagonal"

    def __init__(self, name: str):
        super().__init__()
        self.name, self.spec = name, ACTIVATIONS[name]

    @property
    def explicit_backward(self) -> bool:
        return self.spec.backward is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.spec.fn(x)
        if self.training:
            self.saved["x"], self.saved["y"] = x, y
        return y

    def backward(self, dy: torch.Tensor) -> torch.Tensor:
        return self.spec.backward(dy, self.saved["x"], self.saved["y"])

    def jacobian_diagonal(self, x: torch.Tensor) -> torch.Tensor:
        return self.spec.derivative(x)

    def extra_repr(self) -> str:
        return self.name


class Residual(Layer):
    """The end of a residual block, res{i}: the block's output is its input (the identity
    skip, which MLP adds) plus this layer's output, the branch as it is (model.residual_scale
    none) or times a learnable scalar alpha per member, initialised at 0 (zero_init: SkipInit,
    De & Smith 2020), so that every residual block starts as the identity."""

    def __init__(self, members: int, scaled: bool):
        super().__init__()
        # (K, 1), not (K,): every parameter has a member axis and at least one more
        self.alpha = nn.Parameter(torch.zeros(members, 1)) if scaled else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.alpha is None:
            return x
        if self.training:
            self.saved["x"] = x
        return x * self.alpha.view(-1, 1, 1)

    def backward(self, dy: torch.Tensor) -> torch.Tensor:
        if self.alpha is None:
            return dy
        self.alpha.grad = (dy * self.saved["x"]).sum((1, 2)).unsqueeze(1)
        return dy * self.alpha.view(-1, 1, 1)
