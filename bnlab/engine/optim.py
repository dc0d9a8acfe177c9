"""Optimisers and the training step: plain SGD with the update fused into the gradient
product, torch.optim's SGD (momentum, weight decay) and Adam, all per member; the learning
rate of every step (optim.schedule, bnlab.engine.schedules) and of the weights feeding BN
(optim.invariant_lr_scale); which parameters train (optim.trainable) and gradient-norm
clipping (optim.clip_norm)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from .loss import loss_and_grad
from .model import MLP, scale_invariant_linears

if TYPE_CHECKING:
    from ..runs.config import OptimConfig


class SGD:
    """Plain SGD (no momentum, no weight decay), p -= lr * grad, the update torch.optim.SGD
    makes. The linear weights are updated by Linear.sgd_step, one GEMM from the layer's saved
    input and output gradient, so their gradient is not needed (MLP.backward(...,
    weight_grads=False)); every other parameter from its .grad (one foreach add). The first
    layer's gradient and update take 1.7-2.6x less time at batch 4 with 16 members
    (bnlab bench times whole steps). Rounds differently from gradient-then-update in
    the last bit."""

    def __init__(self, model: MLP, lr: float, invariant_scale: float = 1.0, trainable="all"):
        params = trainable_parameters(model, trainable)
        train = {id(p) for p in params}
        self.linears = [lin for lin in model.linears() if id(lin.weight) in train]
        invariant = {id(lin) for _, lin in scale_invariant_linears(model)}
        self.scales = [invariant_scale if id(lin) in invariant else 1.0 for lin in self.linears]
        fused = {id(lin.weight) for lin in self.linears}
        self.others = [p for p in params if id(p) not in fused]
        self.state: dict = {}  # no optimiser state (run() zeroes a diverged member's state)
        self.param_groups = [{"lr": lr, "scale": 1.0}]  # set_lr's interface, as torch.optim's

    @torch.no_grad()
    def step(self) -> None:
        """Call after MLP.backward."""
        lr = self.param_groups[0]["lr"]
        for lin, scale in zip(self.linears, self.scales):
            lin.sgd_step(lr * scale)
        torch._foreach_add_(self.others, [p.grad for p in self.others], alpha=-lr)


def trainable_parameters(model: MLP, trainable: str) -> list:
    """The parameters optim.trainable trains, in model.parameters() order: all; norm_only: all
    but the linear layers' weights and biases (Frankle et al. 2021: the norms' gamma and beta;
    config refuses residual scalars with it); norm_only_head: those and the output layer."""
    if trainable == "all":
        return list(model.parameters())
    head = model.linears()[-1] if trainable == "norm_only_head" else None
    frozen = {id(p) for lin in model.linears() if lin is not head for p in lin.parameters()}
    return [p for p in model.parameters() if id(p) not in frozen]


def make_optimizer(cfg: OptimConfig, model: MLP) -> SGD | torch.optim.Optimizer:
    """bnlab's SGD for plain SGD; torch.optim's SGD (multi-tensor) with momentum, weight
    decay or gradient clipping; torch.optim's Adam (fused kernel: ~4x faster than multi-tensor
    on CPU). All update elementwise (or per member), so each ensemble member is updated exactly
    as if alone. The weights feeding a batch-statistics norm get lr * optim.invariant_lr_scale
    (a second parameter group; every group keeps its multiplier under 'scale' for set_lr);
    with optim.weight_decay_on=invariant only that group decays.
    Only the parameters of optim.trainable are given to the optimiser: the others never move.
    optim.clip_norm is kept on the optimiser as `clip_norm` for train_step; bnlab's SGD
    updates the linear weights from the layer's saved input and output gradient, never from a
    (clipped) .grad, so a clipped run takes torch.optim's SGD, the same update."""
    opt = _optimizer(cfg, model)
    opt.clip_norm = cfg.clip_norm
    return opt


def _optimizer(cfg: OptimConfig, model: MLP) -> SGD | torch.optim.Optimizer:
    if cfg.name == "sgd" and cfg.momentum == 0 and cfg.weight_decay == 0 and not cfg.clip_norm:
        return SGD(model, cfg.lr, cfg.invariant_lr_scale, cfg.trainable)
    invariant = {id(lin.weight) for _, lin in scale_invariant_linears(model)}
    params = trainable_parameters(model, cfg.trainable)
    others = cfg.weight_decay if cfg.weight_decay_on == "all" else 0.0  # else invariant only
    split = (  # (parameters, lr multiplier, weight decay)
        ([p for p in params if id(p) not in invariant], 1.0, others),
        ([p for p in params if id(p) in invariant], cfg.invariant_lr_scale, cfg.weight_decay),
    )
    groups = [
        {"params": ps, "scale": s, "lr": cfg.lr * s, "weight_decay": wd}
        for ps, s, wd in split
        if ps
    ]
    if cfg.name == "sgd":
        return torch.optim.SGD(
            groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, foreach=True
        )
    return torch.optim.Adam(
        groups,
        lr=cfg.lr,
        betas=tuple(cfg.betas),
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
        fused=True,
    )


def set_lr(opt: SGD | torch.optim.Optimizer, lr: float) -> None:
    """Set the base learning rate of every parameter group (times the group's 'scale')."""
    for group in opt.param_groups:
        group["lr"] = lr * group["scale"]


@torch.no_grad()
def train_step(
    model: MLP,
    opt: SGD | torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    alive: torch.Tensor | None,
    reduction: str,
    weight_grads: bool = True,
    record: dict | None = None,
) -> torch.Tensor:
    """One optimiser step of every member on its own batch x (K, B, 784), y (K, B).

    Explicit backward (MLP.backward), no autograd graph. With bnlab's SGD the linear weights'
    .grad is only written when `weight_grads` (probes read it); the update is the same.
    `alive` (K,) bool masks members out (None: all alive). A masked member, or one whose loss
    is not finite, gets a zero loss gradient, so nothing outside its own slice of the
    parameters can change (run() then freezes it). With `record`, the forward stores every
    layer's output in it (MLP.forward; the scale probe reads the fc outputs). Returns the
    per-member losses (K,).
    """
    losses, dlogits = loss_and_grad(model(x, record=record), y, reduction)
    keep = alive
    if not math.isfinite(losses.sum().item()):  # rare: also drop members with non-finite loss
        keep = torch.isfinite(losses) if alive is None else alive & torch.isfinite(losses)
    if keep is not None:
        dlogits = torch.where(keep.view(-1, 1, 1), dlogits, 0.0)
    model.backward(dlogits, weight_grads or not isinstance(opt, SGD))
    if getattr(opt, "clip_norm", 0.0):  # the trained parameters' gradient (make_optimizer)
        if isinstance(opt, SGD):
            raise TypeError("bnlab's fused SGD never reads .grad: clip with torch.optim.SGD")
        clip_member_grads([p for g in opt.param_groups for p in g["params"]], opt.clip_norm)
    opt.step()
    return losses


@torch.no_grad()
def clip_member_grads(params: list, max_norm: float) -> torch.Tensor:
    """torch.nn.utils.clip_grad_norm_ for every member on its own: with ||g_k|| the norm of
    member k's gradient over the .grad of `params` (each (K, ...)), multiply them by
    min(1, max_norm / (||g_k|| + 1e-6)). Needs every .grad written (not bnlab's fused SGD).
    Returns the norms before clipping (K,)."""
    grads = [p.grad for p in params]
    norms = torch.stack([g.flatten(1).pow(2).sum(1) for g in grads]).sum(0).sqrt()
    coef = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(coef.view(-1, *[1] * (g.dim() - 1)))
    return norms


def freeze_member(model: MLP, opt: SGD | torch.optim.Optimizer, k: int) -> None:
    """Freeze a diverged member: zero its parameters, buffers and optimiser state so it stays
    finite and inert (its loss is masked out, so it receives zero gradients from now on)."""
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            if t.dim() > 0 and t.shape[0] == model.members:
                t[k] = 0.0
        for state in opt.state.values():
            for v in state.values():
                if torch.is_tensor(v) and v.dim() > 0 and v.shape[0] == model.members:
                    v[k] = 0.0
