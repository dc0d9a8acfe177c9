"""Jacobians: singular values of the per-sample layer Jacobians and of the end-to-end hidden
Jacobian (and, probes.jacobian_variants, the train-mode and the 2017 study's batch-sum
variants), summarised per member."""

from __future__ import annotations

import torch

from ...engine.layers import Activation, Linear
from ...engine.modelstate import norms
from ...engine.norms import BatchStatNorm
from .activations import _inputs_of
from .registry import STATE, probe
from .weights import _sv

# edges of the log10(s) histogram (24 bins): metric {prefix}_hist_BB counts singular values s
# with log10(s) in [JAC_EDGES[BB], JAC_EDGES[BB+1])
JAC_EDGES = tuple(-4.0 + 0.25 * i for i in range(25))
JAC_BINS = torch.tensor(JAC_EDGES)
JAC_TINY = 1e-6


@probe("jacobian", STATE)
def _jacobian(prober, step: int) -> list:
    x = prober.x_test[: prober.p.jacobian_samples]
    return jacobian_stats(prober.model, x, prober.p.jacobian_variants)


@torch.no_grad()
def layer_jacobian_diagonals(model, x: torch.Tensor, batch_sum: bool = False) -> list:
    """Per hidden block l, the diagonal d_l (K, N, C) with J_l = diag(d_l) W_l for each
    sample: act'(pre-activation) times the norm layer's per-unit scale (BN at
    evaluation is a per-unit affine map), each layer's diagonal as it declares
    (Layer.jacobian, Layer.jacobian_diagonal). None for a block with a layer whose Jacobian
    is not diagonal (layer, group norm).

    batch_sum=True gives instead the 2017 study's quantity: the Jacobian of the batch sum of
    the block's outputs with respect to sample i's input, BN normalising with the batch's own
    statistics (call with eval_stats='batch'). With xhat the normalised input, s = gamma/sigma_B
    and a' = act'(gamma xhat + beta), BN before the activation gives
    d_i = s (a'_i - mean_j a'_j - xhat_i mean_j(a'_j xhat_j)) (cross-sample terms); a BN
    output sums to N beta whatever the input, so with BN after the activation d = 0.
    """
    was = model.training
    model.eval()
    record = {}
    model(x, record=record)
    model.train(was)
    out, block, d = [], None, None
    for name in model.order[:-1]:
        layer = getattr(model, name)
        z = None if isinstance(layer, Linear) else _inputs_of(model, record, name)
        if isinstance(layer, Linear):
            if block is not None:
                out.append((block, d))
            block, d, pending = name, torch.ones_like(record[name]), None
        elif d is None or layer.jacobian == "identity":  # identity: dropout, noise at eval
            continue
        elif layer.jacobian == "not_diagonal":
            d = None
        elif layer.jacobian != "diagonal":
            raise TypeError(
                f"the Jacobian probe has no rule for layer {name} ({type(layer).__name__}): "
                "declare it in the class (Layer.jacobian) or set probes.jacobian.every=0"
            )
        elif pending is not None:  # batch sum through BN before the activation
            grad, (s, xhat) = layer.jacobian_diagonal(z), pending
            corr = grad.mean(1, keepdim=True) + xhat * (grad * xhat).mean(1, keepdim=True)
            d, pending = d * s * (grad - corr), None
        elif batch_sum and isinstance(layer, BatchStatNorm):  # the 2017 study's BN quantity
            s = layer.jacobian_diagonal(z)
            xhat = (z - z.mean(1, keepdim=True)) / (
                z.var(1, False, keepdim=True) + layer.eps
            ).sqrt()
            nxt = model.order[model.order.index(name) + 1]
            if isinstance(getattr(model, nxt), Activation):
                pending = s, xhat
            else:
                d = torch.zeros_like(d)
        else:
            d = d * layer.jacobian_diagonal(z)
    out.append((block, d))
    return out


@torch.no_grad()
def singular_values(model, x: torch.Tensor, batch_sum: bool = False) -> dict:
    """Singular values (K, N, C) of every per-sample layer Jacobian J_l = diag(d_l) W_l (W_l
    the layer's (C, fan_in) weight) and, unless batch_sum, of the end-to-end hidden Jacobian
    (key 'hidden'), via the eigenvalues of J J^T (C x C)."""
    out, gram_e2e = {}, None
    for name, d in layer_jacobian_diagonals(model, x, batch_sum):
        if d is None:
            return out  # not per-unit: no well-defined analytic product (layer norm)
        w = getattr(model, name).weight  # (K, C, fan_in)
        wtw = w @ w.transpose(1, 2)  # (K, C, C) = W W^T
        gram = d.unsqueeze(-1) * wtw.unsqueeze(1) * d.unsqueeze(-2)  # (K, N, C, C) = J J^T
        out[name] = _sv(gram)
        if batch_sum:
            continue
        if gram_e2e is None:
            gram_e2e = gram
        else:  # J_e2e J_e2e^T = D W (J_prev J_prev^T) W^T D
            inner = w.unsqueeze(1) @ gram_e2e @ w.transpose(1, 2).unsqueeze(1)
            gram_e2e = d.unsqueeze(-1) * inner * d.unsqueeze(-2)
    if gram_e2e is not None:
        out["hidden"] = _sv(gram_e2e)
    return out


def jacobian_summaries(svs: dict, prefix: str = "jac") -> list:
    """Summaries of singular values s, per member, pooled over samples and
    values: mean s, mean s^2, var s^2, s_max, s_min, mean over samples of log10(s_max/s_min)
    over s > 1e-6, fraction of s < 1e-6, fraction in [1/2, 2], and counts in the log10(s)
    bins JAC_BINS (metric {prefix}_hist_BB)."""
    out = []
    for name, s in svs.items():
        flat = s.flatten(1)  # (K, N*C)
        smin = torch.where(s > JAC_TINY, s, torch.inf).amin(-1)  # smallest s > 1e-6 per sample
        cond = torch.log10(s.amax(-1) / smin)  # -inf where no s > 1e-6: left out below
        cond = torch.where(torch.isfinite(cond), cond, torch.nan)
        out += [
            ("test", f"{prefix}_s_mean", name, flat.mean(1)),
            ("test", f"{prefix}_s2_mean", name, (flat**2).mean(1)),
            ("test", f"{prefix}_s2_var", name, (flat**2).var(1)),
            ("test", f"{prefix}_s_max", name, flat.amax(1)),
            ("test", f"{prefix}_s_min", name, flat.amin(1)),
            ("test", f"{prefix}_log10_cond", name, cond.nanmean(1)),
            ("test", f"{prefix}_frac_tiny", name, (flat < JAC_TINY).float().mean(1)),
            ("test", f"{prefix}_frac_iso", name, ((flat >= 0.5) & (flat <= 2)).float().mean(1)),
        ]
        logs = torch.log10(flat.clamp_min(1e-12))
        idx = torch.bucketize(logs, JAC_BINS.to(logs.device)) - 1  # bin i: [edge i, edge i+1)
        for b in range(len(JAC_BINS) - 1):
            out.append(("test", f"{prefix}_hist_{b:02d}", name, (idx == b).sum(1).to(flat.dtype)))
    return out


@torch.no_grad()
def jacobian_stats(model, x: torch.Tensor, variants: bool = False) -> list:
    """Layer-Jacobian singular values on the probe images x.

    jac_*: per-sample Jacobians, BN in eval mode (the well-defined quantity). With
    `variants`, also jac_batchstat_*: the train-mode variant, BN normalising with the probe
    batch's statistics held constant; and jacsum_*: the 2017 study's batch-sum quantity (its
    Fig. 3), which with BN is not a per-sample Jacobian."""
    out = jacobian_summaries(singular_values(model, x), "jac")
    if not variants:
        return out
    layers = [layer for _, layer in norms(model)]
    modes = [layer.eval_stats for layer in layers]
    try:
        for layer in layers:
            layer.eval_stats = "batch"
        if layers:
            out += jacobian_summaries(singular_values(model, x), "jac_batchstat")
        out += jacobian_summaries(singular_values(model, x, batch_sum=True), "jacsum")
    finally:
        for layer, mode in zip(layers, modes):
            layer.eval_stats = mode
    return out
