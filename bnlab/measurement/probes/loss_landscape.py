"""The loss landscape and its curvature at a training step, on the step's batch: gradient ICS
(Santurkar et al. 2018, Def. 2.1), the landscape along the gradient and the update (their
Sec. 3), the top Hessian eigenvalue by Lanczos and the overshoot along the gradient. Each
probe gets the step as a StepContext: extra passes in training mode with the step's own BN
statistics and masks, and everything restored afterwards."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NamedTuple

import torch

from ...engine.layers import Layer
from ...engine.loss import loss_and_grad, member_losses
from ...engine.model import scale_invariant_linears
from ...engine.modelstate import capture, linears, restore
from ...engine.norms import ScratchBatchNorm, bn_forward, ghost_join, ghost_params, ghost_split
from .registry import STEP, probe


@probe("ics_grad", STEP)
def _ics_grad(prober, step) -> list:
    return ics_gradient(step.context)


@probe("landscape", STEP)
def _landscape(prober, step) -> list:
    """Also along the update actually taken where it is not -lr g (Adam, momentum)."""
    o = prober.cfg.optim
    realised = o.name == "adam" or o.momentum > 0
    return landscape(step.context, prober.lr(step.number), list(prober.p.landscape_steps), realised)


@probe("curvature", STEP)
def _curvature(prober, step) -> list:
    lr, steps = prober.lr(step.number), list(prober.p.landscape_steps)
    return curvature(step.context, lr, steps, prober.p.curvature_iters)


class StepContext:
    """What a step probe sees of training step t: its batch, the parameters before and after
    the optimiser step, the gradient used (G), and the model state before the step's forward
    (so extra passes see the same BN statistics and dropout masks as the real one)."""

    def __init__(self, model, x, y, reduction, before: dict, state_before: tuple):
        self.model, self.x, self.y, self.reduction = model, x, y, reduction
        self.before, self.state_before = before, state_before
        self.after = {n: p.detach().clone() for n, p in model.named_parameters()}
        self.grad = {n: p.grad.clone() for n, p in model.named_parameters()}

    @torch.no_grad()
    def loss_and_grads(self, params: dict) -> tuple[torch.Tensor, dict]:
        """Per-member loss (K,) and gradients at `params` on the step's batch, in training
        mode with the step's BN statistics and random masks; the model is left untouched."""
        model, state = self.model, capture(self.model)
        for n, p in model.named_parameters():
            p.copy_(params[n])
        restore(model, self.state_before)
        losses, dlogits = loss_and_grad(model(self.x), self.y, self.reduction)
        model.backward(dlogits)
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        restore(model, state)
        for n, p in model.named_parameters():
            p.copy_(self.after[n])
            p.grad.copy_(self.grad[n])  # in place: backward writes into .grad
        return losses, grads

    @contextmanager
    def loss_graph(self) -> Iterator[tuple[list, torch.Tensor, tuple]]:
        """Yields (params, losses, grads) at the parameters before the step, on the step's
        batch, in training mode with the step's BN statistics and random masks: the model's
        parameters (set to their values before the step), the per-member loss (K,) and its
        gradients built with create_graph, so that torch.autograd.grad of the gradients gives
        Hessian-vector products. One forward through differentiable torch ops; the model's
        parameters, buffers, layer state, random streams and saved tensors are restored on
        exit."""
        model, state = self.model, capture(self.model)
        layers = [m for m in model.modules() if isinstance(m, Layer)]
        saved = [dict(m.saved) for m in layers]
        params = list(model.parameters())
        try:
            with torch.no_grad():
                for n, p in model.named_parameters():
                    p.copy_(self.before[n])
            restore(model, self.state_before)
            with torch.enable_grad(), _twice_differentiable(model):
                losses = member_losses(model(self.x), self.y, self.reduction)
                grads = torch.autograd.grad(losses.sum(), params, create_graph=True)
            with torch.no_grad():
                yield params, losses.detach(), grads
        finally:
            restore(model, state)
            for m, s in zip(layers, saved):
                m.saved = s
            with torch.no_grad():
                for n, p in model.named_parameters():
                    p.copy_(self.after[n])


@contextmanager
def _twice_differentiable(model) -> Iterator[None]:
    """Every layer's forward differentiable twice by autograd. ScratchBatchNorm under autograd
    runs BatchNormFunction, whose backward takes the batch mean, variance and xhat saved by
    the forward as constants: its first derivatives are right, its second derivatives with
    respect to the input are not. For the duration, such layers run bn_forward instead (the
    same formula in plain torch ops; they then leave their running statistics alone, which
    the callers restore anyway)."""
    layers = [m for m in model.modules() if isinstance(m, ScratchBatchNorm)]
    for m in layers:
        m.train_forward = functools.partial(_scratch_forward, m)
    try:
        yield
    finally:
        for m in layers:
            del m.train_forward


def _scratch_forward(layer: ScratchBatchNorm, x: torch.Tensor) -> torch.Tensor:
    if not layer.group:
        return bn_forward(x, layer.weight, layer.bias, layer.eps)[0]
    blocks = ghost_split(x, layer.group)  # ghost BN: each group with its own statistics
    params = [ghost_params(p, blocks[0]) for p in (layer.weight, layer.bias)]
    out = tuple(bn_forward(block, *params, layer.eps)[0] for block in blocks)
    return ghost_join(out, x.shape, layer.group)


def _member_norm(tensors) -> torch.Tensor:
    """Euclidean norm per member over a collection of (K, ...) tensors."""
    return torch.sqrt(sum(t.flatten(1).pow(2).sum(1) for t in tensors))


def ics_gradient(ctx: StepContext) -> list:
    """Santurkar et al. 2018, Definition 2.1, per linear layer i: G_i = dL/dW_i used at step t,
    G'_i = dL/dW_i on the same batch after layers 1..i-1 (W, b, gamma, beta) moved to their
    step t+1 values, layers i..L still at step t. Logs ||G - G'||_F, its ratio to ||G||_F and
    cos(G, G'). Layer 1 has no earlier layer: its ICS is exactly 0."""
    out, order = [], ctx.model.order
    for name, _ in linears(ctx.model):
        pos = order.index(name)
        mixed = {
            n: (ctx.after if order.index(n.split(".")[0]) < pos else ctx.before)[n]
            for n in ctx.before
        }
        _, grads = ctx.loss_and_grads(mixed)
        g, g2 = ctx.grad[f"{name}.weight"].flatten(1), grads[f"{name}.weight"].flatten(1)
        diff, norm = (g - g2).norm(dim=1), g.norm(dim=1)
        cos = (g * g2).sum(1) / (norm * g2.norm(dim=1))
        out += [
            ("train", "ics_grad_l2", name, diff),
            ("train", "ics_grad_rel", name, diff / norm),
            ("train", "ics_grad_cos", name, cos),
        ]
    return out


def landscape(ctx: StepContext, lr: float, multipliers: list[float], realised: bool) -> list:
    """Santurkar et al. 2018, Sec. 3, at step t on its batch, BN in training mode with the
    step's statistics (buffers restored): along -g (g the step's gradient) for step sizes
    eta = m * lr, m in `multipliers`: loss range (min and max of L(theta - eta g)), gradient
    predictiveness (min and max of ||grad L(theta - eta g) - g||) and effective beta-smoothness
    (max of ||grad L(theta - eta g) - g|| / (eta ||g||)); layer column 'grad'. With
    `realised`, also along the update actually taken, u = theta_{t+1} - theta_t, at
    theta + m u (layer column 'update'; smoothness divides by m ||u||)."""
    names = list(ctx.before)
    g = [ctx.grad[n] for n in names]
    directions = [("grad", [-t for t in g], lr)]
    if realised:
        directions.append(("update", [ctx.after[n] - ctx.before[n] for n in names], 1.0))
    out = []
    for label, d, scale in directions:
        dnorm = _member_norm(d)
        losses, diffs, betas = [], [], []
        for m in multipliers:
            step = m * scale
            point = {n: ctx.before[n] + step * t for n, t in zip(names, d)}
            loss, grads = ctx.loss_and_grads(point)
            diff = _member_norm([grads[n] - t for n, t in zip(names, g)])
            losses.append(loss)
            diffs.append(diff)
            betas.append(diff / (step * dnorm))
        losses, diffs, betas = map(torch.stack, (losses, diffs, betas))  # (M, K)
        out += [
            ("train", "landscape_loss_min", label, losses.amin(0)),
            ("train", "landscape_loss_max", label, losses.amax(0)),
            ("train", "landscape_grad_diff_min", label, diffs.amin(0)),
            ("train", "landscape_grad_diff_max", label, diffs.amax(0)),
            ("train", "landscape_beta", label, betas.amax(0)),
        ]
    return out


# --------------------------------------------------------------------------- curvature
CURVATURE_SEED = 0  # the Lanczos iteration's random start (its own generator, never the run's)


def _member_dot(a, b) -> torch.Tensor:
    """Inner product per member of two collections of (K, ...) tensors: (K,)."""
    return sum((s * t).flatten(1).sum(1) for s, t in zip(a, b))


def _per_member(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(K,) -> broadcastable against a (K, ...) tensor."""
    return v.view(-1, *[1] * (like.dim() - 1))


def _unit(v: list) -> list:
    """Each member's part of v scaled to norm 1 (a member's zero vector stays zero)."""
    n = _member_norm(v)
    n = torch.where(n > 0, n, torch.ones_like(n))
    return [t / _per_member(n, t) for t in v]


CURVATURE_TOL = 1e-3  # Lanczos stops at a relative residual ||Hy - lambda y|| / |lambda| below


class Eigen(NamedTuple):
    """The top eigenvalue per member (K,), the Lanczos steps it took (K,) and its relative
    residual ||Hy - lambda y|| / |lambda| for the unit Ritz vector y (K,)."""

    value: torch.Tensor
    iters: torch.Tensor
    residual: torch.Tensor


def top_eigenvalue(
    hvp: Callable[[list], list], v0: list, max_iters: int, tol: float = CURVATURE_TOL
) -> Eigen:
    """The largest (algebraic) eigenvalue per member of a symmetric operator H that is
    block-diagonal by member, given by hvp (a list of (K, ...) tensors -> H times it), by the
    Lanczos iteration from v0 with full reorthogonalisation (each member its own Krylov
    space, all members advanced together).

    After step j the largest eigenvalue of the j x j tridiagonal matrix (the top Ritz value
    theta) is the estimate; a member stops when its relative residual ||Hy - theta y|| /
    |theta| (y the unit Ritz vector; beta_j |s_j| from the tridiagonal matrix) is below
    `tol`, which puts theta within tol |theta| of an eigenvalue of H, or when its Krylov space
    is exhausted (the estimate is then exact), at `max_iters` steps at most; the residual is
    then recomputed with one more product and returned. Power iteration, which this replaces,
    converges like (lambda_2/lambda_1)^(2j) and stalls where the top eigenvalues are close (a
    tanh + BN network with 191, 202 and 209 at the top: 197 after 20 steps); Lanczos
    converges like a Chebyshev polynomial in the gap, and takes the largest algebraic
    eigenvalue even where a negative one has a larger magnitude.
    Every Ritz value is <= lambda_max, so the estimate approaches it from below."""
    if max_iters < 1:
        raise ValueError(f"the Lanczos iteration needs max_iters >= 1, got {max_iters}")
    k, dim = v0[0].shape[0], sum(t[0].numel() for t in v0)
    basis, alphas, betas = [], [], []
    v, v_prev, beta = _unit(v0), None, torch.zeros(k, dtype=torch.float64)
    active = torch.ones(k, dtype=torch.bool)
    steps = torch.zeros(k, dtype=torch.long)
    top = torch.full((k,), -math.inf, dtype=torch.float64)
    ritz = [None] * k
    for _ in range(max_iters):
        hv = hvp(v)
        alpha = _member_dot(v, hv)
        w = [h - _per_member(alpha, h) * t for h, t in zip(hv, v)]
        if v_prev is not None:
            w = [a - _per_member(beta.to(a.dtype), a) * b for a, b in zip(w, v_prev)]
        for u in [*basis, v]:  # full reorthogonalisation: float32 loses orthogonality fast
            c = _member_dot(u, w)
            w = [a - _per_member(c, a) * b for a, b in zip(w, u)]
        basis.append(v)
        alphas.append(alpha.double().cpu())
        beta = _member_norm(w).double().cpu()
        betas.append(beta)
        steps += active
        scale = torch.stack(alphas).abs().amax(0) + 1e-300
        for m in torch.nonzero(active).flatten().tolist():
            n = int(steps[m])
            t = torch.diag(torch.stack([a[m] for a in alphas[:n]]))
            off = torch.stack([b[m] for b in betas[: n - 1]]) if n > 1 else None
            if off is not None:
                t += torch.diag(off, 1) + torch.diag(off, -1)
            evals, evecs = torch.linalg.eigh(t)
            new = evals[-1]
            # ||H y - theta y|| = beta_j |s_j| for the Ritz pair (theta, y = V s)
            settled = float(beta[m] * evecs[-1, -1].abs()) <= tol * abs(float(new))
            top[m], ritz[m] = new, evecs[:, -1]
            if settled or beta[m] <= 1e-12 * scale[m] or n >= dim:
                active[m] = False
        if not active.any():
            break
        v_prev = v
        v = _unit(w)
        v = [t * _per_member(active.to(t.device, t.dtype), t) for t in v]  # done: stays put
    # the Ritz vectors y = V s (unit) and their residuals, with one more product
    y = [torch.zeros_like(t) for t in v0]
    for i, b in enumerate(basis):
        c = torch.tensor([float(ritz[m][i]) if i < len(ritz[m]) else 0.0 for m in range(k)])
        y = [a + _per_member(c.to(t.device, t.dtype), t) * t for a, t in zip(y, b)]
    hy = hvp(y)
    r = _member_norm([h - _per_member(top.to(h.device, h.dtype), h) * t for h, t in zip(hy, y)])
    residual = r.double().cpu() / top.abs().clamp_min(1e-300)
    return Eigen(top.to(v0[0].dtype), steps, residual)


def _hvp(outputs: list, inputs: list) -> Callable[[list], list]:
    """v -> d(outputs . v)/d(inputs): Hessian-vector products from gradients built with
    create_graph (outputs are the gradients with respect to inputs)."""
    pairs = [(i, g) for i, g in enumerate(outputs) if g.requires_grad]  # else constant

    def hvp(v: list) -> list:
        if not pairs:
            return [torch.zeros_like(p) for p in inputs]
        res = torch.autograd.grad(
            [g for _, g in pairs],
            inputs,
            [v[i] for i, _ in pairs],
            retain_graph=True,
            allow_unused=True,
        )
        return [torch.zeros_like(p) if r is None else r for r, p in zip(res, inputs)]

    return hvp


def curvature(
    ctx: StepContext, lr: float, multipliers: list[float], iters: int = 100, tol=CURVATURE_TOL
) -> list:
    """Hessian curvature at step t, on its batch, BN in training mode with the step's statistics
    and masks (everything restored afterwards), H the Hessian of the run's training loss (its
    reduction, sum or mean; no weight decay) with respect to all parameters at theta_t, the
    parameters before the step; per member (members are independent, so H is block-diagonal by
    member and one Lanczos iteration serves them all):

    - curv_lambda_max (layer 'all'): the largest eigenvalue of H, by the Lanczos iteration
      with Hessian-vector products (double backward) from a seeded random start, to a
      relative residual of `tol` or `iters` steps (top_eigenvalue);
    - curv_lanczos_iters, curv_residual ('all'): the steps it took and its final relative
      residual ||Hy - lambda y|| / |lambda|;
    - curv_lr_lambda ('all'): lr * lambda_max. Gradient descent on a quadratic with curvature
      lambda is stable for lr * lambda < 2, the edge of stability of Cohen et al. 2021
      (arXiv:2103.00065; for Adam the preconditioned curvature matters instead);
    - curv_lambda_w_scaled (each scale-invariant linear layer: no bias, feeding a
      batch-statistics norm, as in update_stats): the largest eigenvalue of the Hessian block
      of that layer's weight alone times ||W_l||_F^2, which does not change when W_l is
      rescaled (the block scales as 1/c^2 when W_l scales by c);
    - curv_gHg (layer 'grad'): g'Hg / ||g||^2, g the step's gradient: the curvature along the
      step's direction;
    - curv_overshoot ('grad'): D = max over eta = m * lr, m in `multipliers`, of
      |L(theta - eta g) - L(theta) + eta ||g||^2| / (eta ||g||^2): how far the loss along -g
      departs from its first-order prediction, relative to the predicted decrease (about
      eta g'Hg / (2 ||g||^2) for small eta, 0 in the first-order regime), at the step sizes
      of landscape (Santurkar et al. 2018, Sec. 3).
    """
    names = [n for n, _ in ctx.model.named_parameters()]  # the order of loss_graph's params
    g = [ctx.grad[n] for n in names]
    gen = torch.Generator().manual_seed(CURVATURE_SEED)
    out = []
    with ctx.loss_graph() as (params, _, grads):
        v0 = [torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device) for p in params]
        hvp = _hvp(list(grads), params)
        top = top_eigenvalue(hvp, v0, iters, tol)
        lam = top.value
        out += [
            ("train", "curv_lambda_max", "all", lam),
            ("train", "curv_lr_lambda", "all", lr * lam),
            ("train", "curv_lanczos_iters", "all", top.iters.to(lam.dtype)),
            ("train", "curv_residual", "all", top.residual.to(lam.dtype)),
        ]
        index = {id(p): i for i, p in enumerate(params)}
        for name, lin in scale_invariant_linears(ctx.model):
            i = index[id(lin.weight)]
            block = top_eigenvalue(_hvp([grads[i]], [params[i]]), [v0[i]], iters, tol).value
            w2 = ctx.before[f"{name}.weight"].flatten(1).pow(2).sum(1)
            out.append(("train", "curv_lambda_w_scaled", name, block * w2))
        out.append(("train", "curv_gHg", "grad", _member_dot(g, hvp(g)) / _member_norm(g) ** 2))
    out.append(("train", "curv_overshoot", "grad", overshoot(ctx, lr, multipliers)))
    return out


def overshoot(ctx: StepContext, lr: float, multipliers: list[float]) -> torch.Tensor:
    """D = max over eta = m * lr of |L(theta - eta g) - L(theta) + eta ||g||^2| / (eta ||g||^2)
    per member (K,), g the step's gradient, losses on the step's batch in training mode with
    the step's statistics and masks (StepContext.loss_and_grads)."""
    names = list(ctx.before)
    g = [ctx.grad[n] for n in names]
    gg = _member_norm(g) ** 2
    base, _ = ctx.loss_and_grads(ctx.before)
    dev = []
    for m in multipliers:
        eta = m * lr
        loss, _ = ctx.loss_and_grads({n: ctx.before[n] - eta * t for n, t in zip(names, g)})
        dev.append((loss - base + eta * gg).abs() / (eta * gg))
    return torch.stack(dev).amax(0)
