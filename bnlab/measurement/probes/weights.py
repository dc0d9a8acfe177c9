"""Weights and gradients: norms of the parameters, the effective learning rate of the rows
feeding BN, gradient magnitudes of the step's batch, activation-space gradients and the
gradient's angle to the weights (scale invariance)."""

from __future__ import annotations

import torch

from ...engine.layers import Activation
from ...engine.model import scale_invariant_linears
from ...engine.modelstate import linears
from .registry import STATE, STEP, probe


@probe("weights", STATE)
def _weights(prober, step: int) -> list:
    return weight_stats(prober.model)


@probe("grads", STEP)
def _grads(prober, step) -> list:
    model = prober.model
    return grad_stats(model, prober.cfg.train.loss) + grad_weight_cosine(model, step.before)


@probe("weights", STEP)
def _updates(prober, step) -> list:
    lr = prober.lr(step.number) * prober.cfg.optim.invariant_lr_scale
    return update_stats(prober.model, step.before, lr)


@torch.no_grad()
def weight_stats(model) -> list:
    """Per linear layer: mean |W| (the 2017 study's Fig. 1 quantity), Frobenius and spectral
    norm; per norm layer: ||gamma||, ||beta||. Parameters only, no batch."""
    out = []
    for name, lin in linears(model):
        w = lin.weight  # (K, fan_out, fan_in)
        out += [
            ("train", "w_mean_abs", name, w.abs().mean((1, 2))),
            ("train", "w_fro", name, w.flatten(1).norm(dim=1)),
            ("train", "w_spec", name, spectral_norm(w)),
        ]
    for name, params in affine_layers(model):
        out += [("train", f"{role}_norm", name, p.norm(dim=1)) for role, p in params.items()]
    return out


def affine_layers(model) -> list[tuple[str, dict[str, torch.Tensor]]]:
    """(name, {'gamma': ..., 'beta': ...}) of every layer that declares affine parameters
    (Layer.affine: the norms' gamma and beta), in forward order."""
    layers = [(n, getattr(model, n)) for n in model.order]
    return [(n, layer.affine_params()) for n, layer in layers if layer.affine]


def spectral_norm(w: torch.Tensor) -> torch.Tensor:
    """Largest singular value per member of w (K, m, n): the square root of the largest
    eigenvalue of its smaller Gram matrix, in float64 (_sv). A third of the time of float32 SVD
    (torch.linalg.matrix_norm(w, 2)) here, and more accurate; NaN for a non-finite w."""
    d = w.double()
    gram = d @ d.transpose(1, 2) if w.shape[1] <= w.shape[2] else d.transpose(1, 2) @ d
    return _sv(gram)[..., 0].to(w.dtype)


def _sv(gram: torch.Tensor) -> torch.Tensor:
    """Singular values from Gram matrices (..., C, C), descending; NaN for a matrix that is not
    finite or that LAPACK cannot decompose (a member blowing up must not stop the run)."""
    g = gram.double()
    bad = ~torch.isfinite(g.sum((-2, -1)))  # float32 entries cannot overflow a float64 sum
    if bad.any():
        g = torch.where(bad[..., None, None], 0.0, g)
    try:
        ev = torch.linalg.eigvalsh(g)
    except torch.linalg.LinAlgError:
        flat = g.flatten(0, -3)
        ev = torch.stack([_eigvalsh_or_nan(m) for m in flat]).view(g.shape[:-1])
    ev = torch.where(bad[..., None], float("nan"), ev.clamp_min(0.0))
    return ev.sqrt().flip(-1).to(gram.dtype)


def _eigvalsh_or_nan(m: torch.Tensor) -> torch.Tensor:
    try:
        return torch.linalg.eigvalsh(m)
    except torch.linalg.LinAlgError:
        return torch.full(m.shape[:-1], float("nan"), dtype=m.dtype)


@torch.no_grad()
def update_stats(model, old: dict, lr: float) -> list:
    """Effective learning rate of scale-invariant rows: for each linear layer
    without bias that feeds a batch-statistics norm, per unit j with incoming weights w_j:
    relative update ||dw_j||/||w_j||, angular step angle(w_j, w_j + dw_j) in radians, and
    lr/||w_j||^2; each averaged over units. Uses the weights before and after the step."""
    out = []
    for name, lin in scale_invariant_linears(model):
        w0, w1 = old[f"{name}.weight"], lin.weight  # (K, fan_out, fan_in): row j is w_j
        n0, n1 = w0.norm(dim=2), w1.norm(dim=2)  # (K, fan_out)
        cos = ((w0 * w1).sum(2) / (n0 * n1)).clamp(-1.0, 1.0)
        out += [
            ("train", "rel_update", name, ((w1 - w0).norm(dim=2) / n0).mean(1)),
            ("train", "angular_step", name, torch.arccos(cos).mean(1)),
            ("train", "lr_over_w2", name, (lr / n0**2).mean(1)),
        ]
    return out


@torch.no_grad()
def grad_stats(model, reduction: str = "sum") -> list:
    """Gradients of the step just taken (current training batch, the run's loss reduction):
    per linear layer mean |dL/dW| (the study's Fig. 2 quantity), Frobenius norm and
    ||grad W||/||W||; per norm layer the backprop signal ||dL/dxhat|| = ||dL/dy * gamma||
    over the batch (y = gamma * xhat + beta); per hidden layer the activation-space gradient
    (activation_grads)."""
    out = activation_grads(model, reduction)
    for name, lin in linears(model):
        g, w = lin.weight.grad, lin.weight
        fro = g.flatten(1).norm(dim=1)
        out += [
            ("train", "grad_mean_abs", name, g.abs().mean((1, 2))),
            ("train", "grad_fro", name, fro),
            ("train", "grad_rel", name, fro / w.flatten(1).norm(dim=1)),
        ]
    for name, params in affine_layers(model):
        dy = getattr(model, name).saved.get("dy")
        if dy is not None:
            dxhat = dy * params["gamma"].unsqueeze(1)
            out.append(("train", "grad_xhat_norm", name, dxhat.flatten(1).norm(dim=1)))
    return out


@torch.no_grad()
def activation_grads(model, reduction: str) -> list:
    """Activation-space gradients of the step just taken: for every hidden layer l, the
    pre-activation z_l (the activation's input: the linear output, or BN's output when BN
    comes before the activation) and grad_z = the mean over the batch of ||d(sum_j L_j)/dz_il||,
    the gradient of the batch's summed loss with respect to example i's z_l (the backward's
    dL/dz times the batch size when the run's loss is the batch mean; without BN above layer l,
    example i's own loss gradient). Its ratio between the first and the last hidden
    layer (tables) is what "vanishing gradients" is about. Read from the backward pass that
    the step already made (MLP.backward keeps every layer's output gradient)."""
    out = []
    for i, name in enumerate(model.order):
        if isinstance(getattr(model, name), Activation) and i > 0:
            dz = getattr(model, model.order[i - 1]).saved.get("dy")  # dL/d(activation input)
            if dz is not None:
                scale = dz.shape[1] if reduction == "mean" else 1.0
                out.append(("train", "grad_z", name, dz.norm(dim=2).mean(1) * scale))
    return out


@torch.no_grad()
def grad_weight_cosine(model, before: dict) -> list:
    """Scale invariance seen in the step's gradient (Ioffe & Szegedy 2015, Sec. 3.3): for each
    linear layer without bias that feeds a batch-statistics norm (scale_invariant_linears),
    the loss does not change when a unit's incoming weights w_j are multiplied by c > 0, so
    d/dc L(c w_j) = w_j . g_j = 0 at c = 1 (g_j = dL/dw_j): the gradient is orthogonal to the
    weights, exactly for eps = 0 and nearly for the norm's eps. With W the weights the step's
    gradient G was computed at (before the step), in float64: grad_w_cos, the cosine
    <W, G> / (||W|| ||G||) over the whole layer, and grad_w_cos_unit_abs, the mean over units of
    |w_j . g_j| / (||w_j|| ||g_j||) (units with g_j = 0 left out)."""
    out = []
    for name, lin in scale_invariant_linears(model):
        w, g = before[f"{name}.weight"].double(), lin.weight.grad.double()  # (K, out, in)
        dot = (w * g).sum(2)  # (K, out): w_j . g_j
        cos = dot.sum(1) / (w.flatten(1).norm(dim=1) * g.flatten(1).norm(dim=1))
        gn = g.norm(dim=2)
        unit = torch.where(gn > 0, dot.abs() / (w.norm(dim=2) * gn), torch.nan)
        out += [
            ("train", "grad_w_cos", name, cos),
            ("train", "grad_w_cos_unit_abs", name, unit.nanmean(1)),
        ]
    return out
