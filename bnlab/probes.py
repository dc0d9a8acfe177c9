"""Probes: measurements of every mechanism credited to BN, on the same runs, per member.

Each probe is a plain function returning rows (split, metric, layer, values) with values a
(K,) tensor, one number per ensemble member. The training loop calls them on the schedule
`probes.<name>.every` (0 = off; a probe fires at steps that are multiples of it, step 0
included where it makes sense). State probes look at the model after step t on a fixed probe
batch drawn once per run; step probes look at step t itself (its batch, its gradient, its
update). One probe also keeps a running sum over every step (scale: ScaleTracker, a dot product
per layer and step of what the step already computed). Probes observe and never steer: state
probes run in eval mode, which changes nothing, and every extra training-mode pass (of a step
probe, or ics_train's) restores BN buffers, counters and random streams (capture/restore), so
the loss history is bit-for-bit what it is with probes off (tested). Each probe's docstring
cites the paper and section it implements.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NamedTuple

import torch

from . import records
from .config import PROBES
from .layers import Activation, Layer, Linear
from .loss import loss_and_grad, member_losses
from .model import scale_invariant_linears
from .modelstate import capture, linears, norms, restore  # noqa: F401 (also for callers)
from .norms import (
    BatchStatNorm,
    ScratchBatchNorm,
    bn_forward,
    ghost_join,
    ghost_params,
    ghost_split,
)
from .schedules import lr_factor

JAC_BINS = torch.tensor(records.JAC_BINS)  # edges of the log10(s) histogram (24 bins)
JAC_TINY = 1e-6


# --------------------------------------------------------------------------- 1. weights
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


# --------------------------------------------------------------------------- 2. gradients
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


# --------------------------------------------------------------------------- 3./4. activations
def _inputs_of(model, record, name):
    """The input of layer `name` in a recorded forward pass."""
    return record[model.order[model.order.index(name) - 1]]


@torch.no_grad()
def activation_stats(model, x: torch.Tensor, unit: int = 0) -> tuple[list, dict]:
    """On the fixed probe batch x (N, 784), model in eval mode (BN as at evaluation): per hidden
    layer, the pre-activation (input of act{i}): 15/50/85th percentiles over examples of unit
    `unit` and the median over units of each unit's percentiles (Ioffe & Szegedy Fig. 1b,c);
    mean over units of the per-unit mean and variance; the saturated fraction (sigmoid:
    |x| > ln 19; tanh: |x| > ln(19)/2) and for relu the dead fraction (units never active).
    Also returns input_moments of that pass, for distributional ICS."""
    was = model.training
    model.eval()
    record = {}
    model(x, record=record)
    model.train(was)
    out, q = [], torch.tensor([0.15, 0.50, 0.85], device=x.device)
    for name in model.order:
        layer = getattr(model, name)
        if not isinstance(layer, Activation):
            continue
        z = _inputs_of(model, record, name)  # (K, N, C)
        pct = torch.quantile(z, q, dim=1)  # (3, K, C)
        for i, p in enumerate((15, 50, 85)):
            out.append(("test", f"preact_p{p}", name, pct[i, :, unit]))
            out.append(("test", f"preact_med_p{p}", name, pct[i].quantile(0.5, dim=1)))
        out += [
            ("test", "preact_mean", name, z.mean(1).mean(1)),
            ("test", "preact_var", name, z.var(1).mean(1)),
        ]
        limit = layer.spec.saturation
        if limit is not None:
            out.append(("test", "saturated_frac", name, (z.abs() > limit).float().mean((1, 2))))
        if layer.spec.dead:
            out.append(("test", "dead_frac", name, (z <= 0).all(1).float().mean(1)))
    return out, input_moments(model, record)


def input_moments(model, record: dict) -> dict:
    """Per-unit mean and variance (unbiased, over the batch) of the input of every activation
    (the pre-activation: the norm layer's output where it sits before the activation) and of
    every linear layer after the first, from a recorded forward pass: {layer: (mean, var)},
    each (K, C)."""
    names = [n for n in model.order if isinstance(getattr(model, n), Activation)]
    names += [n for n, _ in linears(model)[1:]]
    return {
        n: (_inputs_of(model, record, n).mean(1), _inputs_of(model, record, n).var(1))
        for n in names
    }


def gaussian_kl(m0, v0, m1, v1, eps: float = 1e-8):
    """KL(N(m0, v0) || N(m1, v1)), elementwise."""
    v0, v1 = v0 + eps, v1 + eps
    return 0.5 * (torch.log(v1 / v0) + (v0 + (m0 - m1) ** 2) / v1 - 1.0)


def ics_distribution(moments: dict, previous: dict, initial: dict) -> list:
    """Distributional internal covariate shift: for the input of every linear
    layer after the first, on the probe batch, the change of its per-unit moments since the
    previous probe (`ics_*`) and since step 0 (`ics0_*`): mean |delta mean|, mean
    |log(var/var_ref)| and mean Gaussian KL(reference || now), averaged over units."""
    out = []
    for tag, ref in (("ics", previous), ("ics0", initial)):
        for name, (m, v) in moments.items():
            if name not in ref:
                continue
            m0, v0 = ref[name]
            out += [
                ("test", f"{tag}_mean_shift", name, (m - m0).abs().mean(1)),
                (
                    "test",
                    f"{tag}_logvar_shift",
                    name,
                    (torch.log(v + 1e-8) - torch.log(v0 + 1e-8)).abs().mean(1),
                ),
                ("test", f"{tag}_kl", name, gaussian_kl(m0, v0, m, v).mean(1)),
            ]
    return out


def scale_free_drift(m, v, m_ref, v_ref) -> torch.Tensor:
    """Per member (K,), the median over units j of
    d_j = |m_j - m_ref_j| / sqrt(v_ref_j + delta) + 0.5 |log((v_j + delta) / (v_ref_j + delta))|
    with delta = 0.01 median_j(v_ref_j), from per-unit means m and variances v (K, C) and their
    reference values: the mean's shift in reference standard deviations plus half the log
    variance ratio, free of the layer's scale. delta bounds the contribution of units whose
    input barely varies (nearly dead units), and the median ignores the few units that move
    most. NaN for a member whose reference variances are all 0."""
    delta = 0.01 * v_ref.quantile(0.5, dim=1, keepdim=True)
    shift = (m - m_ref).abs() / (v_ref + delta).sqrt()
    scale = 0.5 * torch.log((v + delta) / (v_ref + delta)).abs()
    return (shift + scale).quantile(0.5, dim=1)


def drift_rows(moments: dict, previous: dict, initial: dict, split: str, prefix: str) -> list:
    """Rows `{prefix}_prev` (against the previous probe's moments) and `{prefix}0` (against
    step 0's) of scale_free_drift for every layer of `moments` (input_moments) that the
    reference has."""
    out = []
    for tag, ref in (("_prev", previous), ("0", initial)):
        for name, (m, v) in moments.items():
            if name in ref:
                out.append((split, f"{prefix}{tag}", name, scale_free_drift(m, v, *ref[name])))
    return out


@torch.no_grad()
def train_mode_moments(model, x: torch.Tensor) -> dict:
    """input_moments of one training-mode forward pass on x (N, 784), as a training step's
    forward: batch-statistics norms normalise with x's own statistics, and noise (Santurkar et
    al. 2018, Sec. 2.1) and dropout draw from their streams. BN buffers, counters, random
    streams and every layer's saved tensors are restored afterwards, so training continues as
    if the pass had not happened."""
    state = capture(model)
    layers = [m for m in model.modules() if isinstance(m, Layer)]
    saved = [dict(m.saved) for m in layers]
    was, record = model.training, {}
    try:
        model.train()
        model(x, record=record)
    finally:
        model.train(was)
        restore(model, state)
        for m, s in zip(layers, saved):
            m.saved = s
    return input_moments(model, record)


# --------------------------------------------------------------------------- 7. Jacobians
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


# --------------------------------------------------------------------------- 8. mismatch
@torch.no_grad()
def mismatch_stats(model, x: torch.Tensor) -> list:
    """BN train/inference mismatch on the training probe batch x, model in eval mode (dropout
    off): per batch-statistics norm layer, with mu_B, var_B the batch moments of its input and
    mu_run, sigma_run its running statistics: mean over units of r = sigma_B/sigma_run and of
    |d| = |mu_B - mu_run|/sigma_run, and the dropout variance-shift ratio
    max(real_var/moving_var, moving_var/real_var) (Li et al. 2019)."""
    was = model.training
    model.eval()
    record = {}
    model(x, record=record)
    model.train(was)
    out = []
    for name, layer in norms(model):
        z = _inputs_of(model, record, name)
        mu_b, var_b = z.mean(1), z.var(1, unbiased=False)
        mu_run, sigma_run = layer.running_moments()  # sigma_run = sqrt(moving var + eps)
        ratio = var_b / (sigma_run**2 - layer.eps)
        out += [
            ("train", "mismatch_r", name, ((var_b + layer.eps).sqrt() / sigma_run).mean(1)),
            ("train", "mismatch_d_abs", name, ((mu_b - mu_run).abs() / sigma_run).mean(1)),
            ("train", "var_shift", name, torch.maximum(ratio, 1 / ratio).mean(1)),
        ]
    return out


@torch.no_grad()
def bn_gain_stats(model, x: torch.Tensor) -> list:
    """BN's gain on the training probe batch x (N, 784): a batch-statistics norm multiplies each
    unit's centred input by s_j = gamma_j / sqrt(var_B,j + eps) (Ioffe & Szegedy 2015,
    Algorithm 1), which scales the layer Jacobian whatever the spread of its singular values.
    One forward pass in eval mode with every such norm normalising with x's own statistics
    (eval_stats='batch': the training-mode normalisation with no buffer, counter or random
    stream touched; dropout and noise off), var_B the biased batch variance of the norm's
    input. Per norm layer: bn_log_gain, the mean over units of log10 |s_j|, and bn_log_gain_sd,
    its SD over units."""
    layers = norms(model)
    if not layers:
        return []
    modes, was, record = [layer.eval_stats for _, layer in layers], model.training, {}
    try:
        for _, layer in layers:
            layer.eval_stats = "batch"
        model.eval()
        model(x, record=record)
    finally:
        model.train(was)
        for (_, layer), mode in zip(layers, modes):
            layer.eval_stats = mode
    out = []
    for name, layer in layers:
        var = _inputs_of(model, record, name).var(1, unbiased=False)  # (K, C)
        log_gain = torch.log10(layer.weight.abs() / (var + layer.eps).sqrt())
        out += [
            ("train", "bn_log_gain", name, log_gain.mean(1)),
            ("train", "bn_log_gain_sd", name, log_gain.std(1)),
        ]
    return out


# --------------------------------------------------------------------------- 5./6. step probes
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


# --------------------------------------------------------------------------- scale invariance
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


# --------------------------------------------------------------------------- the schedule
class Prober:
    """Runs the probes of `cfg.probes` on their schedules for one training run."""

    def __init__(self, cfg, model, x_train: torch.Tensor, x_test: torch.Tensor):
        self.cfg, self.p, self.model = cfg, cfg.probes, model
        g = torch.Generator().manual_seed(0)  # the same probe batch for every run and member
        n = self.p.batch
        self.x_train = x_train[torch.randperm(len(x_train), generator=g)[:n].to(x_train.device)]
        self.x_test = x_test[torch.randperm(len(x_test), generator=g)[:n].to(x_test.device)]
        self.previous: dict = {}
        self.initial: dict | None = None
        self.train_previous: dict = {}  # the ics_train probe's moments (training mode)
        self.train_initial: dict | None = None
        self.realised = cfg.optim.name == "adam" or cfg.optim.momentum > 0
        self.scale = ScaleTracker(cfg, model) if self.p.scale.every > 0 else None
        self.total = cfg.train.steps  # steps() sets the run's real length

    def lr(self, step: int) -> float:
        """The base learning rate step `step` used (optim.lr under optim.schedule)."""
        return self.cfg.optim.lr * lr_factor(self.cfg.optim, step, self.total)

    @property
    def record(self) -> dict | None:
        """The dict every train_step records the layers' outputs into (probes.scale), or None."""
        return None if self.scale is None else self.scale.record

    def stepped(self) -> None:
        """Call after every training step (not only probed ones): probes.scale's accumulator."""
        if self.scale is not None:
            self.scale.stepped()

    def steps(self, steps: int) -> set[int]:
        """The training steps 1..steps at which some probe fires (the loop skips the rest)."""
        self.total = steps
        out: set[int] = set()
        for name in PROBES:
            every = getattr(self.p, name).every
            out.update(range(every, steps + 1, every) if every > 0 else ())
        return out

    def due(self, name: str, step: int) -> bool:
        every = getattr(self.p, name).every
        return every > 0 and step % every == 0

    def before_step(self, step: int):
        """Call before training step `step`: what the step probes need, or None if none due."""
        if step == 0 or not any(
            self.due(n, step) for n in ("weights", "grads", "ics_grad", "landscape", "curvature")
        ):
            return None
        params = {n: p.detach().clone() for n, p in self.model.named_parameters()}
        return params, capture(self.model)

    def step_rows(self, step: int, before, x, y) -> list:
        """Probes of training step `step` (after its optimiser step)."""
        if before is None:
            return []
        params, state = before
        out = []
        if self.due("grads", step):
            out += grad_stats(self.model, self.cfg.train.loss)
            out += grad_weight_cosine(self.model, params)
        if self.due("weights", step):
            out += update_stats(
                self.model, params, self.lr(step) * self.cfg.optim.invariant_lr_scale
            )
        if any(self.due(n, step) for n in ("ics_grad", "landscape", "curvature")):
            ctx = StepContext(self.model, x, y, self.cfg.train.loss, params, state)
            lr, steps = self.lr(step), list(self.p.landscape_steps)
            if self.due("ics_grad", step):
                out += ics_gradient(ctx)
            if self.due("landscape", step):
                out += landscape(ctx, lr, steps, self.realised)
            if self.due("curvature", step):
                out += curvature(ctx, lr, steps, self.p.curvature_iters)
        return out

    def state_rows(self, step: int) -> list:
        """Probes of the model as it is after step `step` (step 0: at initialisation)."""
        out = []
        if self.due("weights", step):
            out += weight_stats(self.model)
        if self.due("activations", step):
            rows_, moments = activation_stats(self.model, self.x_test)
            self.initial = moments if self.initial is None else self.initial
            inputs = {n: moments[n] for n, _ in linears(self.model)[1:]}  # ics_*: linear inputs
            out += rows_ + ics_distribution(inputs, self.previous, self.initial)
            out += drift_rows(moments, self.previous, self.initial, "test", "drift")
            self.previous = moments
            out += bn_gain_stats(self.model, self.x_train)
        if self.due("ics_train", step):
            moments = train_mode_moments(self.model, self.x_train)
            self.train_initial = moments if self.train_initial is None else self.train_initial
            ref = self.train_previous, self.train_initial
            out += drift_rows(moments, *ref, "train", "train_drift")
            self.train_previous = moments
        if self.due("mismatch", step):
            out += mismatch_stats(self.model, self.x_train)
        if self.due("jacobian", step):
            x = self.x_test[: self.p.jacobian_samples]
            out += jacobian_stats(self.model, x, self.p.jacobian_variants)
        if self.due("scale", step) and step > 0:
            out += self.scale.rows()
        return out
