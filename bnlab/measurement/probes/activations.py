"""Activations and internal covariate shift: pre-activation percentiles and saturation,
distributional ICS and scale-free drift of the layer inputs (in eval mode and, probes.ics_train,
in training mode), BN's train/inference mismatch and BN's gain."""

from __future__ import annotations

import torch

from ...engine.layers import Activation, Layer
from ...engine.modelstate import capture, linears, norms, restore
from .registry import STATE, probe


@probe("activations", STATE)
def _activations(prober, step: int) -> list:
    """activation_stats on the test probe batch; ics_* (linear inputs) and drift* (every input
    of input_moments) against the previous firing and the first; bn_gain_stats."""
    out, moments = activation_stats(prober.model, prober.x_test)
    previous, initial = prober.memory.get("activations", ({}, moments))
    inputs = {n: moments[n] for n, _ in linears(prober.model)[1:]}  # ics_*: linear inputs
    out += ics_distribution(inputs, previous, initial)
    out += drift_rows(moments, previous, initial, "test", "drift")
    prober.memory["activations"] = moments, initial
    return out + bn_gain_stats(prober.model, prober.x_train)


@probe("ics_train", STATE)
def _ics_train(prober, step: int) -> list:
    """train_drift*: drift_rows of train_mode_moments on the training probe batch."""
    moments = train_mode_moments(prober.model, prober.x_train)
    previous, initial = prober.memory.get("ics_train", ({}, moments))
    prober.memory["ics_train"] = moments, initial
    return drift_rows(moments, previous, initial, "train", "train_drift")


@probe("mismatch", STATE)
def _mismatch(prober, step: int) -> list:
    return mismatch_stats(prober.model, prober.x_train)


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
