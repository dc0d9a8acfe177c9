"""BN's scale invariance and gain (bnlab.measurement.probes: grad_weight_cosine, ScaleTracker,
bn_gain_stats) against independent computations, and the probe never steers training."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import make_cfg, synthetic_data

from bnlab.analysis import tables
from bnlab.analysis.tables import MissingMeasure, check_sources, measures
from bnlab.engine.loss import loss_and_grad
from bnlab.engine.model import build_model
from bnlab.engine.norms import BatchStatNorm
from bnlab.engine.optim import make_optimizer, train_step
from bnlab.measurement.probes import ScaleTracker, bn_gain_stats, grad_weight_cosine
from bnlab.runs.config import PROBES
from bnlab.runs.records import read_history
from bnlab.runs.train import run

SEEDS = (0, 1)


def _values(rows, metric, layer):
    (v,) = [v for _, m, lay, v in rows if m == metric and lay == layer]
    return v


def _tiny(*over, eps=None):
    """A float64 BN network 784-12-8-10 (tanh) with random gamma and beta, and its config."""
    cfg = make_cfg("model.norm=batch", "model.widths=[12,8]", "model.activation=tanh", *over)
    model = build_model(cfg.model, list(SEEDS)).double()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("bn"):  # gamma around 1 (some negative), beta around 0
                p.add_(0.6 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    for m in model.modules():
        if isinstance(m, BatchStatNorm) and eps is not None:
            m.eps = eps  # the config refuses 0
    return cfg, model, g


def _batch(g, b=8):
    x = torch.rand(len(SEEDS), b, 784, generator=g, dtype=torch.float64)
    return x, torch.randint(0, 10, (len(SEEDS), b), generator=g)


def _oracle_grads(model, params, eps, x, y, reduction, k):
    """Member k's gradient at `params` ({name: (K, ...)}) by torch.func.grad of its loss
    written out from the formulas (x W^T + b, BN with the batch's mean and biased variance,
    tanh, cross-entropy with the run's reduction), not through bnlab's layers."""

    def loss(p):
        h = x[k]
        for name in model.order:
            if name.startswith("fc"):
                h = h @ p[f"{name}.weight"].T
                h = h + p[f"{name}.bias"][0] if f"{name}.bias" in p else h
            elif name.startswith("bn"):
                mu = h.mean(0)
                var = ((h - mu) ** 2).mean(0)
                h = p[f"{name}.weight"] * (h - mu) / torch.sqrt(var + eps) + p[f"{name}.bias"]
            else:
                assert name.startswith("act")
                h = torch.tanh(h)
        return F.cross_entropy(h, y[k], reduction=reduction)

    return torch.func.grad(loss)({n: p[k].detach().clone() for n, p in params.items()})


@pytest.mark.parametrize("norm", ["batch", "batch_scratch"])
@pytest.mark.parametrize("eps", [0.0, 1e-3])
def test_gradient_cosine_is_zero_without_eps_and_equals_autograd(norm, eps):
    """w . dL/dw = 0 for every unit feeding BN when eps = 0 (float64: to rounding, 1e-12);
    with eps > 0 the cosine is small but not 0, and equals the one from autograd's gradient
    of an independent forward."""
    cfg, model, g = _tiny(f"model.norm={norm}", "train.loss=sum", eps=eps)
    x, y = _batch(g)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.train()
    with torch.no_grad():
        _, d = loss_and_grad(model(x), y, "sum")
        model.backward(d)
        make_optimizer(cfg.optim, model).step()
    rows = grad_weight_cosine(model, before)
    assert {lay for _, m, lay, _ in rows if m == "grad_w_cos"} == {"fc1", "fc2"}
    for k in range(len(SEEDS)):
        grads = _oracle_grads(model, before, eps, x, y, "sum", k)
        for name in ("fc1", "fc2"):
            w, ga = before[f"{name}.weight"][k], grads[f"{name}.weight"]
            torch.testing.assert_close(getattr(model, name).weight.grad[k], ga, rtol=1e-9, atol=0)
            cos = (w * ga).sum() / (w.norm() * ga.norm())
            unit = ((w * ga).sum(1) / (w.norm(dim=1) * ga.norm(dim=1))).abs().mean()
            got, got_unit = (
                _values(rows, "grad_w_cos", name)[k],
                _values(rows, "grad_w_cos_unit_abs", name)[k],
            )
            if eps == 0:
                assert abs(got) < 1e-12 and got_unit < 1e-12
                assert abs(cos) < 1e-12 and unit < 1e-12
            else:
                assert got_unit > 1e-6  # eps breaks the invariance measurably
                assert got.item() == pytest.approx(cos.item(), rel=1e-6, abs=1e-14)
                assert got_unit.item() == pytest.approx(unit.item(), rel=1e-6)


@pytest.mark.parametrize("loss, lr", [("mean", 0.5), ("sum", 0.05)])
@pytest.mark.parametrize("norm", ["batch", "batch_scratch"])
@pytest.mark.parametrize("eps", [1e-12, 0.1])
def test_weight_growth_equals_the_sum_of_squared_sgd_steps(norm, loss, lr, eps):
    """40 plain SGD steps of a float64 BN network through train_step and ScaleTracker, the sum
    of lr^2 ||g_t||^2 accumulated here from an independent autograd gradient at every step
    (checked to be the step the optimiser took, with the run's loss reduction). The tracker's
    sum equals it for any eps; ||W_T||^2 - ||W_0||^2 equals it to 1e-6 when eps is tiny (the
    identity), and departs from it when eps is large (so the ratio is not 1 by construction)."""
    over = [f"model.norm={norm}", f"train.loss={loss}", f"optim.lr={lr}", "probes.scale.every=1"]
    cfg, model, g = _tiny(*over, f"model.bn_eps={eps}")
    opt = make_optimizer(cfg.optim, model)
    tracker = ScaleTracker(cfg, model)
    tracker.FOLD = 7  # fold the elementwise buffers into float64 several times
    layers = ("fc1", "fc2")
    w0 = {n: getattr(model, n).weight.detach().clone() for n in layers}
    expect = {n: torch.zeros(len(SEEDS), dtype=torch.float64) for n in layers}
    model.train()
    for _ in range(40):
        x, y = _batch(g)
        now = dict(model.named_parameters())
        grads = [_oracle_grads(model, now, eps, x, y, loss, k) for k in range(len(SEEDS))]
        old = {n: getattr(model, n).weight.detach().clone() for n in layers}
        train_step(model, opt, x, y, None, loss, False, tracker.record)
        tracker.stepped()
        for n in layers:
            step = old[n] - getattr(model, n).weight.detach()
            for k in range(len(SEEDS)):
                ga = grads[k][f"{n}.weight"]
                torch.testing.assert_close(step[k], lr * ga, rtol=1e-9, atol=1e-15)
                expect[n][k] += lr**2 * ga.pow(2).sum()
    rows = tracker.rows()
    for n in layers:
        n0 = w0[n].flatten(1).pow(2).sum(1)
        growth = getattr(model, n).weight.detach().flatten(1).pow(2).sum(1) - n0
        assert torch.all(expect[n] > 0.05 * n0)  # the weights grew visibly
        torch.testing.assert_close(_values(rows, "scale_w2_growth", n), growth)
        torch.testing.assert_close(_values(rows, "scale_w2_growth_rel", n), growth / n0)
        total = _values(rows, "scale_step2_sum", n)
        torch.testing.assert_close(total, expect[n], rtol=1e-9, atol=0)
        ratio = _values(rows, "scale_ratio", n)
        torch.testing.assert_close(ratio, growth / total)
        if eps < 1e-9:
            torch.testing.assert_close(growth, expect[n], rtol=1e-6, atol=0)
            assert torch.all((ratio - 1).abs() < 1e-6)
        else:
            assert torch.all((ratio - 1).abs() > 1e-4)


@pytest.mark.parametrize(
    "optim", [["optim.momentum=0.9"], ["optim.weight_decay=1e-3"], ["optim.name=adam"]]
)
def test_the_sum_and_ratio_are_nan_unless_plain_sgd(optim):
    cfg, model, g = _tiny(*optim, "probes.scale.every=1")
    opt = make_optimizer(cfg.optim, model)
    tracker = ScaleTracker(cfg, model)
    assert tracker.record is None  # nothing is accumulated
    x, y = _batch(g)
    model.train()
    train_step(model, opt, x, y, None, "sum", False, tracker.record)
    tracker.stepped()
    rows = tracker.rows()
    for n in ("fc1", "fc2"):
        assert torch.isfinite(_values(rows, "scale_w2_growth", n)).all()
        assert torch.isnan(_values(rows, "scale_step2_sum", n)).all()
        assert torch.isnan(_values(rows, "scale_ratio", n)).all()


@pytest.mark.parametrize("placement", ["before", "after"])
def test_log_gain_equals_numpy_with_the_batch_statistics(placement):
    """An independent numpy forward on the probe batch, every norm layer normalising with the
    batch's own mean and biased variance, dropout off; the running statistics (moved away
    from the batch's) play no part, and nothing of the model changes."""
    over = [f"model.placement={placement}", "model.dropout=0.3"]
    cfg, model, g = _tiny(*over)
    model.train()
    with torch.no_grad():
        for _ in range(3):  # running statistics away from their initial values
            model(2 * torch.rand(len(SEEDS), 32, 784, generator=g, dtype=torch.float64))
    model.eval()
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    x = torch.rand(50, 784, generator=g, dtype=torch.float64)
    rows = bn_gain_stats(model, x)
    assert not model.training
    assert all(m.eval_stats == "running" for m in model.modules() if isinstance(m, BatchStatNorm))
    for n, b in model.named_buffers():
        assert torch.equal(b, buffers[n])
    p = {n: t.detach().numpy() for n, t in model.named_parameters()}
    eps = cfg.model.bn_eps
    for k in range(len(SEEDS)):
        h = x.numpy()
        for name in model.order:
            if name.startswith("fc"):
                h = h @ p[f"{name}.weight"][k].T
                h = h + p[f"{name}.bias"][k, 0] if f"{name}.bias" in p else h
            elif name.startswith("bn"):
                mu, var = h.mean(0), h.var(0)
                gamma, beta = p[f"{name}.weight"][k], p[f"{name}.bias"][k]
                log_gain = np.log10(np.abs(gamma) / np.sqrt(var + eps))
                mean = _values(rows, "bn_log_gain", name)[k].item()
                sd = _values(rows, "bn_log_gain_sd", name)[k].item()
                assert mean == pytest.approx(log_gain.mean(), rel=1e-10)
                assert sd == pytest.approx(log_gain.std(ddof=1), rel=1e-10)
                h = gamma * (h - mu) / np.sqrt(var + eps) + beta
            elif name.startswith("act"):
                h = np.tanh(h)
    assert bn_gain_stats(build_model(make_cfg().model, [0]), x.float()) == []  # no BN


def _over(*extra):
    return [
        "model.norm=batch",
        "optim.lr=0.5",
        "train.loss=mean",
        "train.steps=30",
        "train.eval_every=10",
        "data.batch_size=16",
        "seeds=[0,1]",
        "probes.batch=64",
        *extra,
    ]


def test_the_scale_probe_in_a_run_never_steers_and_holds_the_identity(tmp_path):
    """Through run() (float32): the loss history is bit for bit the same with the scale probe
    (and the gain and cosine rows) on and with every probe off; rows at the multiples of
    probes.scale.every after step 0, the identity to float32 rounding and BN's eps (1e-3)."""
    off = [f"probes.{n}.every=0" for n in PROBES]
    on = [*off, "probes.scale.every=10", "probes.activations.every=10", "probes.grads.every=10"]
    data = synthetic_data()
    run(make_cfg(*_over(*on)), tmp_path / "on", data=data)
    run(make_cfg(*_over(*off)), tmp_path / "off", data=data)
    for seed in (0, 1):
        a, b = read_history(tmp_path / "on", seed), read_history(tmp_path / "off", seed)
        keep = ["loss", "acc", "batch_loss"]
        assert (
            a[a["metric"].isin(keep)]
            .reset_index(drop=True)
            .equals(b[b["metric"].isin(keep)].reset_index(drop=True))
        )
        ratio = a[a["metric"] == "scale_ratio"]
        assert set(ratio["step"]) == {10, 20, 30} and set(ratio["layer"]) == {"fc1", "fc2"}
        assert ((ratio["value"] - 1).abs() < 0.02).all()
        gain = a[a["metric"] == "bn_log_gain"]
        assert set(gain["step"]) == {0, 10, 20, 30} and set(gain["layer"]) == {"bn1", "bn2"}
        cos = a[a["metric"] == "grad_w_cos"]
        assert set(cos["step"]) == {10, 20, 30} and (cos["value"].abs() < 0.01).all()
        assert math.isfinite(a[a["metric"] == "scale_step2_sum"]["value"].sum())


def _table_inputs(norm="batch"):
    """Hand-made runs and histories of two members with the scale, gain and cosine rows."""
    runs = pd.DataFrame(
        {
            "run": ["a", "a"],
            "seed": [0, 1],
            "model.norm": [norm, norm],
            "model.activation": ["relu", "relu"],
            "model.placement": ["before" if norm != "none" else None] * 2,
            "model.bias_before_norm": [False, False],
            "model.dropout": [0.0, 0.0],
            "model.dropout_at": ["after_act", "after_act"],
            "optim.name": ["sgd", "sgd"],
            "optim.lr": [0.1, 0.1],
            "data.batch_size": [64, 64],
            **{f"probes.{p}.every": [10, 10] for p in ("scale", "activations", "grads")},
            "status": ["finished", "finished"],
            "steps_done": [30, 30],
            **{c: [0.9, 0.9] for c in ("test_acc", "train_acc", "best_test_acc")},
            **{c: [0.3, 0.3] for c in ("test_loss", "train_loss")},
        }
    )
    rows = []
    for seed in (0, 1):
        for i, step in enumerate((0, 10, 20, 30)):
            for layer in ("fc1", "fc2"):
                if step:
                    rows += [
                        (seed, step, "scale_ratio", layer, 1 - 0.01 * i - seed),
                        (seed, step, "scale_w2_growth_rel", layer, 0.5 * i),
                        (seed, step, "grad_w_cos", layer, (-1) ** i * 0.001 * i),
                        (seed, step, "grad_w_cos_unit_abs", layer, 0.01 * i),
                    ]
            for layer in ("bn1", "bn2"):
                rows.append((seed, step, "bn_log_gain", layer, 0.5 - 0.1 * i + seed))
    hist = pd.DataFrame(rows, columns=["seed", "step", "metric", "layer", "value"])
    return runs, hist.assign(run="a", split="train")


def test_table_measures_of_scale_gain_and_cosine(monkeypatch):
    mine = ("scale_ratio", "bn_log_gain", "grad_w_cos")  # the other probes' rows are not made
    monkeypatch.setattr(tables, "SOURCES", {m: tables.SOURCES[m] for m in mine})
    runs, hist = _table_inputs()
    check_sources(runs, hist, "sweep")
    t = measures(runs, hist).set_index("seed")
    assert t.loc[1, "scale_ratio_fc1"] == pytest.approx(1 - 0.03 - 1)  # the last probe
    assert t.loc[0, "scale_growth_rel_fc2"] == pytest.approx(1.5)
    assert t.loc[0, "bn_log_gain_bn1_start"] == pytest.approx(0.5)
    assert t.loc[1, "bn_log_gain_bn2_final"] == pytest.approx(0.5 - 0.3 + 1)
    assert t.loc[0, "grad_w_cos_abs_fc1"] == pytest.approx(0.002)  # mean |.| over steps > 0
    assert t.loc[0, "grad_w_cos_unit_abs_fc2"] == pytest.approx(0.02)
    for metric in mine:  # a renamed row is refused
        with pytest.raises(MissingMeasure, match=metric):
            check_sources(runs, hist[hist["metric"] != metric], "sweep")
    none_runs, _ = _table_inputs("none")  # no layer feeding BN: nothing is expected
    check_sources(none_runs, hist.iloc[:0], "sweep")
    older = runs.drop(columns="probes.scale.every")  # a bnlab before these rows
    check_sources(older, hist.iloc[:0], "sweep")
