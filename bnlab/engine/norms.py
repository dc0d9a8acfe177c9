"""Normalization layers (`model.norm`), each with an explicit backward and per-member state.

    batch            PyTorch's BN kernels (native_batch_norm and its backward)
    batch_scratch    BN written out from Ioffe & Szegedy 2015: Algorithm 1 and the printed
                     backward pass (BatchNormFunction is the same code as an autograd.Function)
    renorm           Batch Renormalization (Ioffe 2017), r and d clipped, constant in backprop
    renorm_mlds2017  the 2017 study's *defective* Batch Renorm, (gamma*xhat + beta)*r + d
                     (the 2017 study's code); only for reproducing its Fig. 9, never a default
    noisy_batch      BN followed by Santurkar et al.'s noise (Sec. 2.1), training only
    noise            the same noise with no BN (their control)
    layer            layer normalization: per example, over the units
    group            group normalization (Wu & He 2018): per example, over each of
                     `model.groups` groups of consecutive units

Batch-statistics norms evaluate with `eval_stats`: 'running' (EMA, or cumulative average when
momentum is None; PyTorch's convention: biased batch variance to normalise in training, the
unbiased one in the running estimate), 'population' (Algorithm 2, recomputed after training
by population_statistics), or 'batch' (the evaluated batch's own statistics, what the 2017
study did at test time). `model.bn_group` = g (batch, batch_scratch) makes training ghost BN
(Hoffer et al. 2017): statistics over consecutive groups of g examples (ghost_split).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from .layers import Layer, aten

if TYPE_CHECKING:
    from ..runs.config import ModelConfig


def _col(t: torch.Tensor) -> torch.Tensor:
    """(K, C) -> (K, 1, C), to broadcast a per-member, per-unit value over the batch."""
    return t.unsqueeze(1)


def ghost_split(x: torch.Tensor, group: int) -> tuple[torch.Tensor, ...]:
    """Views of x (K, B, C) cut into ghost batches of `group` consecutive examples, as blocks
    (K, m, G, C) that a batch norm normalises over dim 1 in one call each. When group divides
    B: one block, m = group, G = B/group (group i is [:, :, i]). Otherwise (a probe's
    training-mode pass on an odd batch; config makes training batches multiples): the
    max(1, B // group) near-equal consecutive slices of torch.tensor_split, G = 1 each."""
    k, b, c = x.shape
    if b % group:
        return tuple(s.unsqueeze(2) for s in x.tensor_split(max(1, b // group), dim=1))
    return (x.view(k, b // group, group, c).transpose(1, 2),)


def ghost_join(blocks: tuple[torch.Tensor, ...], shape: torch.Size, group: int) -> torch.Tensor:
    """ghost_split's inverse: the blocks back to one (K, B, C) tensor."""
    if shape[1] % group:
        return torch.cat(blocks, 1).view(shape)
    return blocks[0].transpose(1, 2).reshape(shape)


def ghost_params(p: torch.Tensor, block: torch.Tensor) -> torch.Tensor:
    """gamma or beta (K, C) shared by a ghost block's G groups: a (K, G, C) view."""
    return p.unsqueeze(1).expand(-1, block.shape[2], -1)


class BatchStatNorm(Layer):
    """What the batch-statistics norms share: gamma, beta, running and population statistics,
    and evaluation. Subclasses implement train_forward and backward (and block_forward,
    block_backward for ghost BN, `group` > 0)."""

    state = ("batches_seen",)
    affine = ("weight", "bias")
    jacobian = "diagonal"  # a per-unit affine map at evaluation

    @classmethod
    def build(cls, cfg: ModelConfig, members: int, width: int) -> BatchStatNorm:
        return cls(members, width, cfg.bn_eps, cfg.bn_momentum, cfg.bn_eval, cfg.bn_group)

    def __init__(
        self,
        members: int,
        width: int,
        eps: float,
        momentum: float | None,
        eval_stats: str = "running",
        group: int = 0,
    ):
        super().__init__()
        self.eps, self.momentum, self.eval_stats = eps, momentum, eval_stats
        self.group = group  # ghost batch size in training (Hoffer et al. 2017); 0 = whole batch
        self.weight = nn.Parameter(torch.ones(members, width))  # gamma
        self.bias = nn.Parameter(torch.zeros(members, width))  # beta
        self.register_buffer("running_mean", torch.zeros(members, width))
        self.register_buffer("running_var", torch.ones(members, width))
        self.register_buffer("population_mean", torch.zeros(members, width))
        self.register_buffer("population_var", torch.ones(members, width))
        self.batches_seen = 0

    def rate(self) -> float:
        """Weight of the new batch in the running estimate (counts the batch)."""
        self.batches_seen += 1
        return self.momentum or 1.0 / self.batches_seen

    def track(self, mean: torch.Tensor, var: torch.Tensor) -> None:
        """Move the running statistics towards one step's mean and unbiased variance (K, C)."""
        rate = self.rate()
        with torch.no_grad():
            self.running_mean.lerp_(mean, rate)
            self.running_var.lerp_(var, rate)

    def running_moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) used at inference with eval_stats='running', each (K, C)."""
        return self.running_mean, (self.running_var + self.eps).sqrt()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return self.train_forward(x)
        if self.eval_stats == "batch":
            mean, std = x.mean(1), (x.var(1, unbiased=False) + self.eps).sqrt()
        elif self.eval_stats == "population":
            mean, std = self.population_mean, (self.population_var + self.eps).sqrt()
        else:
            mean, std = self.running_moments()
        return (x - _col(mean)) * _col(self.weight / std) + _col(self.bias)

    def jacobian_diagonal(self, x: torch.Tensor) -> torch.Tensor:
        """The per-unit multiplier at evaluation, gamma / std, (K, 1, C)."""
        if self.eval_stats == "batch":
            std = (x.var(1, unbiased=False) + self.eps).sqrt()
        elif self.eval_stats == "population":
            std = (self.population_var + self.eps).sqrt()
        else:
            std = self.running_moments()[1]
        return (self.weight / std).unsqueeze(1)

    def train_forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def block_forward(self, x, weight, bias):
        """Training-mode BN over dim 1 of x (K, m, *units) with weight, bias (K, *units), the
        buffers untouched: (y, what block_backward needs, mean, unbiased variance (K, *units))."""
        raise NotImplementedError

    def block_backward(self, dy, saved, weight):
        """block_forward's backward: (dL/dx, dL/dweight, dL/dbias)."""
        raise NotImplementedError

    def ghost_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Ghost BN (Hoffer et al. 2017): each ghost batch (ghost_split) normalised with its own
        mean and biased variance, gamma and beta shared by all groups. The running statistics
        move once per step (one rate(), the momentum of the ungrouped layer, so the same EMA
        time scale) towards the mean over groups of the group means and of the groups'
        unbiased variances: both estimate the population moments."""
        blocks = ghost_split(x, self.group)
        weight, bias = (ghost_params(p, blocks[0]) for p in (self.weight, self.bias))
        y, self.saved["ghost"], mean, var = zip(
            *(self.block_forward(b, weight, bias) for b in blocks)
        )
        self.track(torch.cat(mean, 1).mean(1), torch.cat(var, 1).mean(1))
        return ghost_join(y, x.shape, self.group)

    def ghost_backward(self, dy: torch.Tensor) -> torch.Tensor:
        """ghost_forward's backward: block_backward per block, gamma's and beta's gradients
        summed over the groups."""
        blocks = ghost_split(dy, self.group)
        weight = ghost_params(self.weight, blocks[0])
        dx, dw, db = zip(
            *(self.block_backward(d, s, weight) for d, s in zip(blocks, self.saved["ghost"]))
        )
        self.weight.grad, self.bias.grad = torch.cat(dw, 1).sum(1), torch.cat(db, 1).sum(1)
        return ghost_join(dx, dy.shape, self.group)


class BatchNorm(BatchStatNorm):
    """PyTorch's batch-norm kernels, one set of statistics per member."""

    def train_forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.group:
            return self.ghost_forward(x)
        y, self.saved["kernel"] = self.kernel(
            x, self.weight, self.bias, self.running_mean, self.running_var, self.rate()
        )
        return y.contiguous()  # bmm is slow on other layouts

    def kernel(self, x, weight, bias, running_mean, running_var, rate):
        """native_batch_norm over dim 1 of x (K, B, *units), weight and bias (K, *units),
        moving the running buffers (K, *units) by `rate`: y and what block_backward needs."""
        flat = x.transpose(0, 1).reshape(x.shape[1], -1)  # channels: member-major
        y, mean, invstd = torch.native_batch_norm(
            flat,
            weight.reshape(-1),
            bias.reshape(-1),
            running_mean.view(-1),
            running_var.view(-1),
            True,
            rate,
            self.eps,
        )
        return y.view(x.transpose(0, 1).shape).transpose(0, 1), (flat, mean, invstd)

    def block_forward(self, x, weight, bias):
        """kernel with fresh buffers at rate 1: they catch the block's mean, unbiased var."""
        mean, var = x.new_zeros(weight.shape), x.new_zeros(weight.shape)
        y, saved = self.kernel(x, weight, bias, mean, var, 1.0)
        return y, saved, mean, var

    def block_backward(self, dy, saved, weight):
        flat, mean, invstd = saved
        dx, dw, db = aten.native_batch_norm_backward(
            dy.transpose(0, 1).reshape(flat.shape),
            flat,
            weight.reshape(-1),
            None,
            None,
            mean,
            invstd,
            True,
            self.eps,
            [True, True, True],
        )
        shape = weight.shape
        return dx.view(dy.transpose(0, 1).shape).transpose(0, 1), dw.view(shape), db.view(shape)

    def backward(self, dy: torch.Tensor) -> torch.Tensor:
        if self.group:
            return self.ghost_backward(dy)
        dx, self.weight.grad, self.bias.grad = self.block_backward(
            dy, self.saved["kernel"], self.weight
        )
        return dx.contiguous()


def bn_forward(x, gamma, beta, eps):
    """Ioffe & Szegedy 2015, Algorithm 1, over the batch axis (dim 1) of x (K, B, C)
    (or of a ghost block (K, m, G, C), gamma and beta then (K, G, C)).

    Returns y and the cache the backward needs (x, mu_B, var_B, xhat).
    """
    mu = x.mean(1, keepdim=True)  # mini-batch mean
    var = ((x - mu) ** 2).mean(1, keepdim=True)  # mini-batch variance (biased)
    xhat = (x - mu) / torch.sqrt(var + eps)  # normalize
    y = _col(gamma) * xhat + _col(beta)  # scale and shift
    return y, (x, mu, var, xhat)


def bn_backward(dy, cache, gamma, eps):
    """The backward pass as printed in Ioffe & Szegedy 2015 (Sec. 3), line by line.

    Returns dL/dx (K, B, C), dL/dgamma and dL/dbeta (K, C).
    """
    x, mu, var, xhat = cache
    m = x.shape[1]
    dxhat = dy * _col(gamma)
    dvar = (dxhat * (x - mu) * -0.5 * (var + eps) ** -1.5).sum(1, keepdim=True)
    dmu = (dxhat * -1 / torch.sqrt(var + eps)).sum(1, keepdim=True) + dvar * (-2 * (x - mu)).sum(
        1, keepdim=True
    ) / m
    dx = dxhat / torch.sqrt(var + eps) + dvar * 2 * (x - mu) / m + dmu / m
    dgamma = (dy * xhat).sum(1)
    dbeta = dy.sum(1)
    return dx, dgamma, dbeta


class BatchNormFunction(torch.autograd.Function):
    """bn_forward/bn_backward as an autograd.Function (gradcheck-able; used under autograd)."""

    @staticmethod
    def forward(ctx, x, gamma, beta, eps):
        y, cache = bn_forward(x, gamma, beta, eps)
        ctx.save_for_backward(*cache, gamma)
        ctx.eps = eps
        return y

    @staticmethod
    def backward(ctx, dy):
        *cache, gamma = ctx.saved_tensors
        dx, dgamma, dbeta = bn_backward(dy, cache, gamma, ctx.eps)
        return dx, dgamma, dbeta, None


class ScratchBatchNorm(BatchStatNorm):
    """BN from the paper's formulas (bn_forward, bn_backward): the reference implementation."""

    def train_forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.group:
            return self.ghost_forward(x)
        y, self.saved["cache"], mean, var = self.block_forward(x, self.weight, self.bias)
        self.track(mean, var)
        return y

    def block_forward(self, x, weight, bias):
        if torch.is_grad_enabled():  # autograd callers get the printed backward through it
            y, cache = BatchNormFunction.apply(x, weight, bias, self.eps), None
            mu, var = x.detach().mean(1, keepdim=True), x.detach().var(1, False, keepdim=True)
        else:
            y, cache = bn_forward(x, weight, bias, self.eps)
            _, mu, var, _ = cache
        m = x.shape[1]  # running statistics, PyTorch's convention (unbiased variance)
        return y, cache, mu[:, 0], var[:, 0] * m / (m - 1)

    def block_backward(self, dy, saved, weight):
        return bn_backward(dy, saved, weight, self.eps)

    def backward(self, dy: torch.Tensor) -> torch.Tensor:
        if self.group:
            return self.ghost_backward(dy)
        dx, self.weight.grad, self.bias.grad = bn_backward(
            dy, self.saved["cache"], self.weight, self.eps
        )
        return dx


class BatchRenorm(BatchStatNorm):
    """Batch Renormalization (Ioffe 2017).

    sigma_B = sqrt(var_B + eps); r = clip(sigma_B/sigma, 1/r_max, r_max);
    d = clip((mu_B - mu)/sigma, -d_max, d_max), both constants for backprop;
    y = gamma*((x - mu_B)/sigma_B * r + d) + beta; mu += alpha(mu_B - mu),
    sigma += alpha(sigma_B - sigma); inference y = gamma*(x - mu)/sigma + beta.
    r_max rises linearly from 1 over [r_start, r_end], d_max from 0 over [d_start, d_end].
    """

    state = ("batches_seen", "clip_sum", "clip_batches")

    @classmethod
    def build(cls, cfg, members, width):
        return cls(members, width, cfg.bn_eps, cfg.bn_eval, cfg.renorm)

    def __init__(self, members, width, eps, eval_stats, cfg):
        super().__init__(members, width, eps, cfg.momentum, eval_stats)
        self.cfg = cfg
        del self._buffers["running_var"]  # renorm keeps a moving standard deviation instead
        self.register_buffer("running_std", torch.ones(members, width))
        self.clip_sum, self.clip_batches = torch.zeros(2, members), 0  # r, d clip fractions

    def limits(self, step: int) -> tuple[float, float]:
        """(r_max, d_max) at a training step (the number of batches seen before it)."""
        c = self.cfg

        def ramp(start, end):  # 0 until start, linear, 1 from end on
            return 1.0 if step >= end else max(step - start, 0) / (end - start)

        return 1 + (c.r_max - 1) * ramp(c.r_start, c.r_end), c.d_max * ramp(c.d_start, c.d_end)

    def running_moments(self):
        return self.running_mean, self.running_std

    def train_stats(self) -> dict[str, torch.Tensor]:
        """Fraction of units whose r (d) was clipped, averaged over the batches since the last
        call, per member; resets the average."""
        if not self.clip_batches:
            return {}
        frac = self.clip_sum / self.clip_batches
        self.clip_sum, self.clip_batches = torch.zeros_like(self.clip_sum), 0
        return {"renorm_r_clipped": frac[0], "renorm_d_clipped": frac[1]}

    def train_forward(self, x: torch.Tensor) -> torch.Tensor:
        r_max, d_max = self.limits(self.batches_seen)
        alpha = self.rate()
        mu_b, sigma_b = x.mean(1), (x.var(1, unbiased=False) + self.eps).sqrt()  # (K, C)
        with torch.no_grad():  # r and d are constants for backprop
            r_raw = sigma_b / self.running_std
            d_raw = (mu_b - self.running_mean) / self.running_std
            r, d = r_raw.clamp(1 / r_max, r_max), d_raw.clamp(-d_max, d_max)
            self.clip_sum[0] += (r != r_raw).float().mean(1).cpu()
            self.clip_sum[1] += (d != d_raw).float().mean(1).cpu()
            self.clip_batches += 1
            self.running_mean.lerp_(mu_b, alpha)
            self.running_std.lerp_(sigma_b, alpha)
        xn = (x - _col(mu_b)) / _col(sigma_b)  # mu_B, sigma_B differentiable under autograd
        xhat = xn * _col(r) + _col(d)
        self.saved.update(xn=xn, xhat=xhat, r=r, sigma_b=sigma_b)
        return self.combine(xn, xhat, r, d)

    def combine(self, xn, xhat, r, d):
        return _col(self.weight) * xhat + _col(self.bias)

    def backward(self, dy: torch.Tensor) -> torch.Tensor:
        s = self.saved
        self.weight.grad, self.bias.grad = (dy * s["xhat"]).sum(1), dy.sum(1)
        return _normalize_backward(dy * _col(self.weight * s["r"]), s["xn"], s["sigma_b"])


class MLDS2017Renorm(BatchRenorm):
    """The 2017 study's Batch Renorm: y = (gamma*xn + beta)*r + d (the 2017 study's code). Defective
    (r and d act after the affine map); kept only to reproduce its Fig. 9 faithfully."""

    def combine(self, xn, xhat, r, d):
        return (_col(self.weight) * xn + _col(self.bias)) * _col(r) + _col(d)

    def backward(self, dy: torch.Tensor) -> torch.Tensor:
        s = self.saved
        dz = dy * _col(s["r"])
        self.weight.grad, self.bias.grad = (dz * s["xn"]).sum(1), dz.sum(1)
        return _normalize_backward(dz * _col(self.weight), s["xn"], s["sigma_b"])


def _normalize_backward(dxn, xn, sigma_b):
    """dL/dx through xn = (x - mu_B)/sigma_B, batch statistics differentiated: (K, B, C)."""
    return (dxn - dxn.mean(1, keepdim=True) - xn * (dxn * xn).mean(1, keepdim=True)) / _col(sigma_b)


class Noise(Layer):
    """Santurkar et al. 2018, Sec. 2.1: a_ij <- s_ij * a_ij + m_ij at every training step, with
    per unit mu_j ~ U(-a, a), sigma_j ~ U(lo, hi) and per sample m_ij ~ U(mu_j - j, mu_j + j),
    s_ij ~ N(sigma_j, j) (a=0.5, lo=1, hi=1.25, j=0.1). Identity at evaluation. One random
    stream per member (set `generators`)."""

    jacobian = "identity"  # at evaluation

    @classmethod
    def build(cls, cfg, members, width):
        return cls(cfg.noise)

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.generators: list[torch.Generator] = []

    def draw(self, k: int, b: int, c: int, like: torch.Tensor):
        """Noise of member k: scale s (B, C) and shift m (B, C)."""
        cfg, g = self.cfg, self.generators[k]
        u = torch.rand(2 * c + b * c, generator=g, device=like.device, dtype=like.dtype)
        mu = (u[:c] * 2 - 1) * cfg.mean_range
        sigma = cfg.scale_low + u[c : 2 * c] * (cfg.scale_high - cfg.scale_low)
        m = mu + (u[2 * c :].view(b, c) * 2 - 1) * cfg.jitter
        s = sigma + cfg.jitter * torch.randn(
            b, c, generator=g, device=like.device, dtype=like.dtype
        )
        return s, m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        k, b, c = x.shape
        s, m = map(torch.stack, zip(*(self.draw(i, b, c, x) for i in range(k))))
        self.saved["s"] = s
        return s * x + m

    def backward(self, dy: torch.Tensor) -> torch.Tensor:
        return dy * self.saved["s"]


class NoisyBatchNorm(BatchNorm):
    """BN followed by Noise (Santurkar et al.'s 'noisy BN')."""

    @classmethod
    def build(cls, cfg, members, width):
        return cls(members, width, cfg.bn_eps, cfg.bn_momentum, cfg.bn_eval, cfg.noise)

    def __init__(self, members, width, eps, momentum, eval_stats, noise_cfg):
        super().__init__(members, width, eps, momentum, eval_stats)
        self.noise = Noise(noise_cfg)

    def train_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.noise(super().train_forward(x))

    def backward(self, dy: torch.Tensor) -> torch.Tensor:
        return super().backward(self.noise.backward(dy))


class LayerNorm(Layer):
    """Layer normalization: each example normalised over its units, then per-unit gamma, beta.
    Independent of the other examples in the batch, in training and at evaluation alike."""

    affine = ("weight", "bias")
    jacobian = "not_diagonal"  # every unit depends on all units of its example

    @classmethod
    def build(cls, cfg, members, width):
        return cls(members, width, cfg.bn_eps)

    def __init__(self, members: int, width: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(members, width))
        self.bias = nn.Parameter(torch.zeros(members, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[-1]
        xhat, mean, rstd = torch.native_layer_norm(x, [c], None, None, self.eps)
        if self.training:
            self.saved.update(x=x, xhat=xhat, mean=mean, rstd=rstd)
        return xhat * _col(self.weight) + _col(self.bias)

    def backward(self, dy: torch.Tensor) -> torch.Tensor:
        s = self.saved
        self.weight.grad, self.bias.grad = (dy * s["xhat"]).sum(1), dy.sum(1)
        dx, _, _ = aten.native_layer_norm_backward(
            dy * _col(self.weight),
            s["x"],
            [dy.shape[-1]],
            s["mean"],
            s["rstd"],
            None,
            None,
            [True, False, False],
        )
        return dx


class GroupNorm(LayerNorm):
    """Group normalization (Wu & He 2018): each example's units cut into `groups` groups of
    consecutive units, each group normalised over its own units (layer norm within a group),
    then per-unit gamma, beta. groups=1 is layer norm; groups=width normalises every unit
    alone (the instance-norm limit: in an MLP a unit has one value per example, so the output
    is beta). A subclass of LayerNorm: its declarations are layer norm's (gamma and beta are
    reported; not a per-unit map at evaluation, so no Jacobian)."""

    @classmethod
    def build(cls, cfg, members, width):
        return cls(members, width, cfg.bn_eps, cfg.groups)

    def __init__(self, members: int, width: int, eps: float, groups: int):
        super().__init__(members, width, eps)
        self.groups = groups

    def grouped(self, t: torch.Tensor) -> torch.Tensor:
        """(K, B, C) -> (K, B, groups, C/groups)."""
        return t.reshape(*t.shape[:-1], self.groups, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xg = self.grouped(x)
        xhat, mean, rstd = torch.native_layer_norm(xg, [xg.shape[-1]], None, None, self.eps)
        xhat = xhat.view(x.shape)
        if self.training:
            self.saved.update(x=xg, xhat=xhat, mean=mean, rstd=rstd)
        return xhat * _col(self.weight) + _col(self.bias)

    def backward(self, dy: torch.Tensor) -> torch.Tensor:
        s = self.saved
        self.weight.grad, self.bias.grad = (dy * s["xhat"]).sum(1), dy.sum(1)
        dx, _, _ = aten.native_layer_norm_backward(
            self.grouped(dy * _col(self.weight)),
            s["x"],
            [s["x"].shape[-1]],
            s["mean"],
            s["rstd"],
            None,
            None,
            [True, False, False],
        )
        return dx.view(dy.shape)


# model.norm -> its layer class, built per hidden layer by Class.build(model config, members,
# width). The config's allowed values, the batch-statistics set and the tests come from here.
NORMS: dict[str, type[Layer]] = {
    "batch": BatchNorm,
    "batch_scratch": ScratchBatchNorm,
    "renorm": BatchRenorm,
    "renorm_mlds2017": MLDS2017Renorm,
    "noisy_batch": NoisyBatchNorm,
    "noise": Noise,
    "layer": LayerNorm,
    "group": GroupNorm,
}
# norms that normalise with batch statistics (running/population statistics, eval modes)
BATCH_STAT_NORMS = tuple(n for n, cls in NORMS.items() if issubclass(cls, BatchStatNorm))


def set_eval_stats(model, mode: str) -> None:
    """Make every batch-statistics norm layer of `model` evaluate with `mode`."""
    for m in model.modules():
        if isinstance(m, BatchStatNorm):
            m.eval_stats = mode


def make_norm(cfg: ModelConfig, members: int, width: int) -> Layer:
    """The layer `model.norm` names, for one hidden layer of `width` units."""
    return NORMS[cfg.norm].build(cfg, members, width)


@torch.no_grad()
def population_statistics(
    model, x: torch.Tensor, batch_size: int, n_batches: int, lower: str = "batch", seed: int = 0
) -> int:
    """Ioffe & Szegedy 2015, Algorithm 2: set every batch-statistics norm layer's population
    mean E[mu_B] and variance m/(m-1) E[var_B] over `n_batches` training batches of size m.

    The batches are drawn once (seeded, without replacement) and shared by all members; dropout
    and noise are off. lower='batch': lower norm layers normalise with each batch's own
    statistics, as in training; lower='inference': layer l's statistics are gathered with the
    layers below it already using their population statistics (one pass per layer).
    Returns the number of batches used.
    """
    names = [n for n in model.order if isinstance(getattr(model, n), BatchStatNorm)]
    if not names:
        return 0
    n_batches = max(1, min(n_batches, len(x) // batch_size))
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(x), generator=g)[: n_batches * batch_size].to(x.device)
    batches = x[idx].view(n_batches, batch_size, -1)
    was_training, modes = model.training, {n: getattr(model, n).eval_stats for n in names}
    model.eval()
    groups = [names] if lower == "batch" else [[n] for n in names]
    for group in groups:
        done = names[: names.index(group[0])]
        for n in names:
            getattr(model, n).eval_stats = "population" if n in done else "batch"
        sums = {n: [0.0, 0.0] for n in group}
        for xb in batches:
            record = {}
            model(xb, record=record)
            for n in group:
                inp = record[model.order[model.order.index(n) - 1]]  # the norm layer's input
                sums[n][0] += inp.mean(1)
                sums[n][1] += inp.var(1, unbiased=False)
        for n in group:
            layer = getattr(model, n)
            layer.population_mean.copy_(sums[n][0] / n_batches)
            layer.population_var.copy_(sums[n][1] / n_batches * batch_size / (batch_size - 1))
    for n in names:
        getattr(model, n).eval_stats = modes[n]
    model.train(was_training)
    return n_batches
