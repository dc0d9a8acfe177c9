"""The scale-free drift of layer-input distributions (distributional ICS, Ioffe & Szegedy 2015),
in eval mode (activations probe) and in training mode with the noise on (ics_train probe,
Santurkar et al. 2018 Sec. 2.1): known answers, a NumPy oracle, and its per-member tables."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import make_cfg, synthetic_data

from bnlab.analysis.tables import MissingMeasure, check_sources, measures
from bnlab.engine.model import build_model
from bnlab.engine.modelstate import capture
from bnlab.measurement.probes import (
    Prober,
    gaussian_kl,
    scale_free_drift,
    train_mode_moments,
)
from bnlab.runs.compose import compose
from bnlab.runs.records import read_history
from bnlab.runs.train import run


def _drift_numpy(m, v, m_ref, v_ref):
    """d_j = |m_j - m_ref_j| / sqrt(v_ref_j + delta) + 0.5 |log((v_j + delta)/(v_ref_j + delta))|,
    delta = 0.01 median_j v_ref_j; the median over units j, per member (rows)."""
    delta = 0.01 * np.median(v_ref, axis=1, keepdims=True)
    d = np.abs(m - m_ref) / np.sqrt(v_ref + delta)
    d += 0.5 * np.abs(np.log((v + delta) / (v_ref + delta)))
    return np.median(d, axis=1)


def _moments_numpy(model, x, layers):
    """Per-unit mean and unbiased variance of each layer's input, from a recorded forward."""
    record = {}
    with torch.no_grad():
        model(x, record=record)
    order = model.order
    out = {}
    for name in layers:
        z = record[order[order.index(name) - 1]].numpy()  # (K, N, C)
        out[name] = z.mean(1), z.var(1, ddof=1)
    return out


def _rows(rows, metric):
    return {layer: v.numpy() for _, m, layer, v in rows if m == metric}


def test_known_answers():
    g = torch.Generator().manual_seed(0)
    m_ref = torch.randn(3, 8, generator=g, dtype=torch.float64)
    v_ref = torch.rand(3, 8, generator=g, dtype=torch.float64) + 0.5
    assert torch.equal(scale_free_drift(m_ref, v_ref, m_ref, v_ref), torch.zeros(3))
    delta = 0.01 * v_ref.quantile(0.5, dim=1, keepdim=True)
    for c in (0.3, 2.0):  # a pure shift of every mean by c reference standard deviations
        shifted = m_ref - c * (v_ref + delta).sqrt()
        torch.testing.assert_close(
            scale_free_drift(shifted, v_ref, m_ref, v_ref), torch.full((3,), c, dtype=torch.float64)
        )
    # variances scaled by e^2: 0.5 |log e^2| = 1 where delta is negligible (here 1% of v)
    v = torch.full((2, 6), 4.0, dtype=torch.float64)
    d = scale_free_drift(m_ref[:2, :6], v * math.e**2, m_ref[:2, :6], v)
    expect = 0.5 * math.log((math.e**2 + 0.01) / 1.01)
    torch.testing.assert_close(d, torch.full((2,), expect, dtype=torch.float64))
    assert d.sub(1).abs().max() < 0.005
    # the same whatever the layer's scale
    torch.testing.assert_close(
        scale_free_drift(10 * shifted, 100 * v_ref, 10 * m_ref, 100 * v_ref),
        torch.full((3,), c, dtype=torch.float64),
    )


def test_a_nearly_dead_unit_does_not_dominate_the_median():
    """The mean Gaussian KL explodes when a nearly dead unit (variance ~0 on the probe batch)
    moves a little; the median drift does not move."""
    m_ref, v_ref = torch.zeros(1, 9), torch.ones(1, 9)
    m, v = m_ref + 0.1, v_ref.clone()
    v_ref[0, 0], m[0, 0], v[0, 0] = 1e-4, 0.5, 1e-6
    assert gaussian_kl(m_ref, v_ref, m, v).mean() > 1000  # KL(then || now): / v, v ~ 0
    assert scale_free_drift(m, v, m_ref, v_ref).item() == pytest.approx(0.1 / math.sqrt(1.01))
    assert scale_free_drift(m, v, m_ref, v_ref).item() == pytest.approx(
        _drift_numpy(m.numpy(), v.numpy(), m_ref.numpy(), v_ref.numpy())[0]
    )


@pytest.mark.parametrize("norm", ["none", "batch"])
def test_eval_mode_drift_rows_equal_a_numpy_computation(norm):
    """Prober's drift_prev / drift0 rows on a tiny model whose weights move between probes,
    against moments recomputed from a recorded eval-mode forward and drift in NumPy."""
    cfg = make_cfg(f"model.norm={norm}", "model.widths=[6,4]", "seeds=[0,1]", "probes.batch=40")
    model = build_model(cfg.model, [0, 1])
    data = synthetic_data(n_train=64, n_test=64)
    prober = Prober(cfg, model, data.x_train, data.x_test)
    layers = ["act1", "act2", "fc2", "fc3"]
    model.eval()
    moments = [_moments_numpy(model, prober.x_test, layers)]
    rows0 = prober.state_rows(0)
    assert set(_rows(rows0, "drift0")) == set(layers) and not _rows(rows0, "drift_prev")
    np.testing.assert_array_equal(np.stack(list(_rows(rows0, "drift0").values())), 0.0)
    g = torch.Generator().manual_seed(3)
    for step in (500, 1000):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.2 * torch.randn(p.shape, generator=g))
        model.eval()
        moments.append(_moments_numpy(model, prober.x_test, layers))
        rows = prober.state_rows(step)
        for metric, ref in (("drift_prev", moments[-2]), ("drift0", moments[0])):
            got = _rows(rows, metric)
            assert set(got) == set(layers)
            for layer in layers:
                expect = _drift_numpy(*moments[-1][layer], *ref[layer])
                np.testing.assert_allclose(got[layer], expect, rtol=1e-4)
                assert np.all(expect > 0)
    model.train()


def test_train_mode_pass_is_a_training_forward_and_changes_nothing():
    """train_mode_moments equals the moments of a plain training-mode forward (BN with the
    batch's statistics, the noise drawn), differs from eval mode, and leaves buffers, BN
    counters and random streams as they were (a second call gives the same numbers)."""
    cfg = make_cfg("model.norm=noisy_batch", "model.widths=[6,4]", "seeds=[0,1]")
    model = build_model(cfg.model, [0, 1])
    x = synthetic_data(n_train=64).x_train[:50]
    layers = ["act1", "act2", "fc2", "fc3"]
    saved = capture(model)
    buffers = [b.clone() for b in model.buffers()]
    streams = [s.clone() for _, s in saved[2]]
    got = train_mode_moments(model, x)
    again = train_mode_moments(model, x)
    assert all(torch.equal(again[n][i], got[n][i]) for n in layers for i in (0, 1))
    assert [b for b in model.buffers() if b.dtype.is_floating_point]  # running statistics
    assert all(torch.equal(a, b) for a, b in zip(buffers, model.buffers()))
    assert all(torch.equal(s, g.get_state()) for s, (g, _) in zip(streams, saved[2]))
    assert model.bn1.batches_seen == 0
    model.train()
    expect = _moments_numpy(model, x, layers)  # the same streams: the same noise
    model.eval()
    evaluated = _moments_numpy(model, x, layers)
    for layer in layers:
        np.testing.assert_allclose(got[layer][0].numpy(), expect[layer][0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got[layer][1].numpy(), expect[layer][1], rtol=1e-4)
        assert not np.allclose(expect[layer][1], evaluated[layer][1], rtol=1e-2)


def test_noise_makes_the_training_mode_drift_large(tmp_path):
    """Santurkar et al.'s noise redraws every unit's shift and scale at each step: between
    probes, a noisy-BN pre-activation moves by about E|U - U'| = 1/3 of its SD (U ~ U(-.5, .5))
    in training mode, where BN's own output barely moves. (In eval mode the noise is the
    identity: the activations probe cannot see it.)"""
    drift = {}
    for norm in ("batch", "noisy_batch"):
        cfg = make_cfg(
            f"model.norm={norm}",
            "model.widths=[32,32]",
            "seeds=[0,1]",
            "optim.lr=0.01",
            "train.steps=12",
            "train.eval_every=12",
            "data.batch_size=16",
            "probes.batch=128",
            "probes.activations.every=4",
            "probes.ics_train.every=4",
        )
        run(cfg, tmp_path / norm, data=synthetic_data())
        h = read_history(tmp_path / norm, 0)
        for metric in ("drift_prev", "train_drift_prev"):
            rows = h[(h["metric"] == metric) & (h["layer"] == "act1")]
            assert list(rows["step"]) == [4, 8, 12]
            drift[norm, metric] = rows["value"].mean()
    assert drift["noisy_batch", "train_drift_prev"] > 0.2
    assert drift["batch", "train_drift_prev"] < drift["noisy_batch", "train_drift_prev"] / 5


def _tables():
    """Two members with drift rows every 10 steps and evaluations every 20."""
    runs = pd.DataFrame(
        {
            "run": ["a", "a"],
            "seed": [0, 1],
            "model.norm": ["batch", "none"],
            "model.activation": ["relu", "relu"],
            "optim.name": ["sgd", "sgd"],
            "optim.lr": [0.1, 0.1],
            "data.batch_size": [64, 64],
            "probes.activations.every": [10, 10],
            "probes.ics_train.every": [10, 0],
            "status": ["finished", "finished"],
            "steps_done": [40, 40],
            "test_acc": [0.95, 0.9],
            "train_acc": [0.99, 0.91],
            "best_test_acc": [0.95, 0.9],
            "test_loss": [0.2, 0.3],
            "train_loss": [0.05, 0.2],
        }
    )
    rows = []
    losses = {0: {0: 2.0, 20: 0.25, 40: 0.05}, 1: {0: 2.0, 20: 0.5, 40: 0.2}}
    for seed, loss in losses.items():
        for step, value in loss.items():
            rows += [(seed, step, "train", "loss", "", value), (seed, step, "test", "acc", "", 0.5)]
        for step in range(0, 50, 10):
            for metric in ("ics_kl", "ics_mean_shift", "ics0_kl", "ics0_mean_shift"):
                rows.append((seed, step, "test", metric, "fc2", 0.0))  # the older ICS rows
            for layer in ("act1", "fc2"):
                rows.append((seed, step, "test", "drift0", layer, step / 10 + seed))
                if step:
                    rows.append((seed, step, "test", "drift_prev", layer, step / 100 + seed))
                    if seed == 0:
                        rows.append((seed, step, "train", "train_drift_prev", layer, 3.0))
                if seed == 0:
                    rows.append((seed, step, "train", "train_drift0", layer, step / 10))
    hist = pd.DataFrame(rows, columns=["seed", "step", "split", "metric", "layer", "value"])
    return runs, hist.assign(run="a")


def test_drift_measures_at_matched_training_loss():
    runs, hist = _tables()
    check_sources(runs, hist, "s")
    t = measures(runs, hist).set_index("seed")
    assert t.loc[0, "drift_prev_act1"] == pytest.approx(np.mean([0.1, 0.2, 0.3, 0.4]))
    assert t.loc[1, "drift_prev_fc2_final"] == pytest.approx(1.4)
    assert t.loc[0, "drift0_act1_final"] == 4.0
    assert t.loc[0, "drift_prev_act1_at_0.3"] == pytest.approx(0.2)  # loss 0.25 at step 20
    assert t.loc[1, "drift_prev_act1_at_0.3"] == pytest.approx(1.4)  # loss 0.2 at step 40
    assert t.loc[0, "drift0_fc2_at_0.1"] == 4.0  # loss 0.05 at step 40
    assert np.isnan(t.loc[1, "drift0_fc2_at_0.1"])  # never that low
    assert t.loc[0, "train_drift_prev_act1"] == 3.0 and np.isnan(t.loc[1, "train_drift_prev_act1"])
    assert "drift_prev_act2" not in t  # a layer the runs do not have: no column


def test_old_sweeps_without_drift_rows_keep_their_tables():
    """Runs recorded before the drift rows existed (no probes.ics_train in their config) are
    not refused and get no drift columns; new runs that lost the rows are refused."""
    runs, hist = _tables()
    old = hist[~hist["metric"].str.contains("drift")]
    check_sources(runs.drop(columns="probes.ics_train.every"), old, "s")
    assert not [c for c in measures(runs, old).columns if "drift" in c]
    with pytest.raises(MissingMeasure, match="'drift_prev'.*probes.activations"):
        check_sources(runs, old, "s")


def test_the_noisy_bn_experiment_runs_the_training_mode_probe_with_its_evaluations():
    """santurkar2018_noisy_bn records both drifts every 250 steps and evaluates on those steps
    (matched-loss columns need both); study_lr's activations probe includes its evaluations."""
    assert make_cfg().probes.ics_train.every == 0
    noisy = compose(["experiment=santurkar2018_noisy_bn", "model.norm=noisy_batch"])
    p = noisy.probes
    assert p.ics_train.every == p.activations.every == noisy.train.eval_every == 250
    lr = compose(["experiment=study_lr"])
    # C9a at matched loss: every evaluation step is also a training-mode drift probe step
    assert lr.train.eval_every % lr.probes.ics_train.every == 0
