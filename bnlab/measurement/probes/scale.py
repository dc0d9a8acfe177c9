"""Scale invariance: how the weights feeding BN grow under plain SGD (ScaleTracker, the one
probe that also runs on every training step)."""

from __future__ import annotations

import torch

from ...engine.model import scale_invariant_linears
from .registry import STATE, probe


@probe("scale", STATE)
def _scale(prober, step: int) -> list:
    """ScaleTracker.rows, after step 0 (the Prober keeps the tracker: prober.scale)."""
    return prober.scale.rows() if step > 0 else []


class ScaleTracker:
    """probes.scale: how the weights feeding BN grow under plain SGD (Ioffe & Szegedy 2015,
    Sec. 3.3; van Laarhoven 2017, arXiv:1706.05350; Arora et al. 2019, arXiv:1812.03981).

    For each linear layer without bias that feeds a batch-statistics norm
    (scale_invariant_linears), with W_t its weight after step t and g_t the gradient step t
    applied (the run's loss, summed or mean), plain SGD (W_t+1 = W_t - lr g_t) gives exactly
    ||W_t+1||^2 = ||W_t||^2 - 2 lr <W_t, g_t> + lr^2 ||g_t||^2, and scale invariance makes
    <W_t, g_t> = 0 (grad_weight_cosine), so ||W_T||^2 = ||W_0||^2 + sum_{t<=T} lr^2 ||g_t||^2:
    the weights only grow, by the squared steps, and without weight decay nothing holds them
    back. The norm's eps breaks the invariance slightly (Batch Renorm's r and d break it once
    they are no longer clipped to 1 and 0); its radial term is first order in lr while the
    squared steps are second order, so at small learning rates it can dominate the growth
    (MNIST, the studies protocol, lr 0.01, eps 1e-3: fc2's ratio about 1.45 after 500 steps,
    1.00005 with eps 1e-7).

    The sum is not formed from the gradients: bnlab's SGD does not write them out on steps
    without gradient probes, and forming them, or copying the weights to difference them, every
    step costs several percent of a step. Instead every training step (stepped) adds
    <W_t, g_t> = sum over the batch and units of z * dz (z = x W_t^T the layer's output in the
    step's forward, dz = dL/dz from its backward; O(batch x units), on the device, no host
    sync) to a float64 accumulator R, and the exact SGD identity above gives
    sum_t lr^2 ||g_t||^2 = growth + 2 lr R (about 2% of a step: 5 members, batch 64, one CPU
    thread; tests/test_scale.py checks it against autograd gradients summed every step).

    Rows (layer fc*; at the multiples of probes.scale.every, not at step 0), sums over the
    layer's units, squared norms of the weights as stored, in float64: scale_w2_growth,
    ||W_t||^2 - ||W_0||^2 (any optimiser); scale_w2_growth_rel, that over ||W_0||^2;
    scale_step2_sum, sum_{s<=t} lr^2 ||g_s||^2; scale_ratio, the growth over that sum: 1 under
    exact scale invariance, 1 - 2 lr R / sum otherwise. The last two are NaN unless the
    optimiser is plain SGD at a constant lr (optim.name=sgd, momentum 0, weight_decay 0,
    schedule constant; lr here is the layer's, optim.lr * optim.invariant_lr_scale): with
    momentum the step is not -lr g_t, and weight decay shrinks W by a term of its own. A member
    that diverges is no longer logged (MemberLog), so its rows end there."""

    def __init__(self, cfg, model):
        o = cfg.optim
        self.lr, self.layers = o.lr * o.invariant_lr_scale, scale_invariant_linears(model)
        self.plain = (o.name, o.momentum, o.weight_decay, o.schedule) == ("sgd", 0, 0, "constant")
        self.plain &= (o.warmup_steps, o.clip_norm, o.trainable) == (0, 0, "all")  # lr * g steps
        self.w0 = {name: _sq_norm(lin.weight) for name, lin in self.layers}
        self.radial = {name: torch.zeros_like(w) for name, w in self.w0.items()}  # R, (K,)
        # train_step records the layers' outputs into it; None: nothing to accumulate
        self.record: dict | None = {} if self.plain and self.layers else None
        self.products: list[torch.Tensor] = []  # per layer: sum of z * dz since the last fold
        self.pending = 0  # steps in self.products

    FOLD = 100  # steps summed elementwise in the model's dtype before a fold into R

    @torch.no_grad()
    def stepped(self) -> None:
        """After every training step, run with record=self.record: R += <W_t, g_t>. One
        in-place multiply-add per layer (a single foreach call: one kernel on a GPU) into a
        (K, B, units) buffer, folded into R in float64 every FOLD steps (a product and a
        reduction every step took about 1.7x as long on a CPU)."""
        if self.record is None:
            return
        zs = [self.record[name] for name, _ in self.layers]  # (K, B, units): the outputs
        dzs = [lin.saved["dy"] for _, lin in self.layers]  # dL/d(output)
        if not self.products or self.products[0].shape != zs[0].shape:  # first (or new) batch
            self._fold()
            self.products = [torch.zeros_like(z) for z in zs]
        torch._foreach_addcmul_(self.products, zs, dzs)
        self.record.clear()  # the outputs go now, as without the probe
        self.pending += 1
        if self.pending >= self.FOLD:
            self._fold()

    def _fold(self) -> None:
        for (name, _), acc in zip(self.layers, self.products):
            self.radial[name].add_(acc.flatten(1).sum(1, dtype=torch.float64))
            acc.zero_()
        self.pending = 0

    @torch.no_grad()
    def rows(self) -> list:
        self._fold()
        out = []
        for name, lin in self.layers:
            w0 = self.w0[name]
            growth = _sq_norm(lin.weight) - w0
            total = growth + 2 * self.lr * self.radial[name]
            if not self.plain:
                total = torch.full_like(growth, torch.nan)
            out += [
                ("train", "scale_w2_growth", name, growth),
                ("train", "scale_w2_growth_rel", name, growth / w0),
                ("train", "scale_step2_sum", name, total),
                ("train", "scale_ratio", name, growth / total),
            ]
        return out


def _sq_norm(w: torch.Tensor) -> torch.Tensor:
    """Squared norm per member (K,) of a (K, ...) tensor, in float64."""
    return w.detach().double().flatten(1).pow(2).sum(1)
