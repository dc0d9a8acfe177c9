"""The batch-order intervention (bnlab.measurement.reorder, train.reorder): running statistics
recomputed over the last batches in shuffled orders, checked against a hand-written moving average,
on invariants, on the batches the run used, and for leaving training untouched."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import make_cfg, synthetic_data

import bnlab.runs.train
from bnlab.engine.data import Batches
from bnlab.engine.model import build_model
from bnlab.engine.modelstate import capture, restore
from bnlab.measurement import reorder
from bnlab.runs.config import ConfigError
from bnlab.runs.records import read_history, read_summary
from bnlab.runs.train import run

TINY = ["model.widths=[6,5]", "data.batch_size=16", "train.eval_every=20", "probes.batch=50"]


def _model(*over, seeds=(0, 1)):
    cfg = make_cfg("model.norm=batch", *TINY, *over, f"seeds={list(seeds)}")
    return cfg, build_model(cfg.model, list(seeds))


def _hand_running_stats(model, x, idx, order, start, momentum):
    """The moving average written out in numpy float64 for the model fc1-bn1-act1-fc2-bn2-
    act2-fc3 (BN before relu, no bias before BN): per member, each batch in its order,
    normalised with its biased variance, the running variance updated with the unbiased one."""
    x = x.double().numpy()
    out = {}
    for k in range(idx.shape[1]):
        rm = {n: start[n][0][k].double().numpy().copy() for n in ("bn1", "bn2")}
        rv = {n: start[n][1][k].double().numpy().copy() for n in ("bn1", "bn2")}
        for t in order[k].tolist():
            a = x[idx[t, k].numpy()]  # (B, 784)
            for i in (1, 2):
                bn = getattr(model, f"bn{i}")
                h = a @ getattr(model, f"fc{i}").weight[k].double().detach().numpy().T
                mu, var_b, var_u = h.mean(0), h.var(0), h.var(0, ddof=1)
                rm[f"bn{i}"] = (1 - momentum) * rm[f"bn{i}"] + momentum * mu
                rv[f"bn{i}"] = (1 - momentum) * rv[f"bn{i}"] + momentum * var_u
                gamma = bn.weight[k].double().detach().numpy()
                beta = bn.bias[k].double().detach().numpy()
                a = np.maximum(gamma * (h - mu) / np.sqrt(var_b + bn.eps) + beta, 0.0)
        for n in ("bn1", "bn2"):
            out.setdefault(n, ([], []))
            out[n][0].append(rm[n])
            out[n][1].append(rv[n])
    return {n: (np.stack(m), np.stack(v)) for n, (m, v) in out.items()}


@pytest.mark.parametrize("norm", ["batch", "batch_scratch"])
def test_moving_average_matches_a_hand_written_one_and_the_layers_own(norm):
    _, model = _model(f"model.norm={norm}", "model.bn_momentum=0.3")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a start state unlike the initial one
        for n in ("bn1", "bn2"):
            getattr(model, n).running_mean.normal_(generator=g)
            getattr(model, n).running_var.uniform_(0.5, 2.0, generator=g)
            getattr(model, n).weight.uniform_(0.5, 1.5, generator=g)
            getattr(model, n).bias.normal_(generator=g)
    x = torch.randn(60, 784, generator=g)
    idx = torch.randint(0, 60, (5, 2, 16), generator=g)  # 5 batches of 16, 2 members
    order = torch.stack([torch.tensor([3, 0, 4, 1, 2]), torch.tensor([1, 4, 2, 0, 3])])
    start = {
        n: (getattr(model, n).running_mean.clone(), getattr(model, n).running_var.clone())
        for n in ("bn1", "bn2")
    }
    saved = capture(model)
    batches = reorder.batch_moments(model, x, idx)
    restore(model, saved)
    got = {
        n: [reorder.moving_average(s, b, order, [0.3] * 5) for s, b in zip(start[n], batches[n])]
        for n in start
    }
    want = _hand_running_stats(model, x, idx, order, start, 0.3)
    model.train()  # the layers' own update: the batches through the model in this order
    with torch.no_grad():
        for t in range(5):
            model(x[idx[order[:, t], torch.arange(2)]])
    for n in ("bn1", "bn2"):
        own = (getattr(model, n).running_mean, getattr(model, n).running_var)
        for a, b, c in zip(got[n], want[n], own):
            np.testing.assert_allclose(a.double().numpy(), b, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(got[n][0], start[n][0])  # they did move


def test_order_does_not_matter_for_identical_batches_or_only_the_last_one_counting():
    g = torch.Generator().manual_seed(1)
    start, stats = torch.randn(2, 7, generator=g), torch.randn(6, 2, 7, generator=g)
    same = stats[:1].expand(6, 2, 7)  # one batch's statistics, 6 times
    orders = torch.stack([torch.randperm(6, generator=g).expand(2, 6) for _ in range(3)])
    a = reorder.moving_average(start, same, orders, [0.3] * 6)  # (3, 2, 7)
    assert torch.equal(a[0], a[1]) and torch.equal(a[0], a[2])
    # momentum 1: the statistics are the last batch's, whatever came before it
    ends = torch.tensor([[0, 1, 2, 3, 4, 5], [4, 2, 0, 3, 1, 5], [1, 2, 3, 4, 0, 5]])
    b = reorder.moving_average(start, stats, ends[:, None].expand(3, 2, 6), [1.0] * 6)
    assert all(torch.equal(b[o], stats[5]) for o in range(3))
    b = reorder.moving_average(start, stats, ends[:, None].expand(3, 2, 6), [0.3] * 6)
    assert not torch.allclose(b[0], b[1])  # otherwise they differ


def test_rows_are_zero_spread_when_every_order_ends_alike(monkeypatch):
    cfg, model = _model("model.bn_momentum=1.0", "train.reorder=4", "train.reorder_batches=8")
    data = synthetic_data()
    ends_alike = torch.stack([torch.cat([torch.randperm(7), torch.tensor([7])]) for _ in range(4)])
    monkeypatch.setattr(reorder, "orders", lambda s, o, n: ends_alike[:o, None].expand(o, 2, n))
    rows = {(m, layer): v for _, m, layer, v in reorder.reorder_rows(cfg, model, data, [0, 1], 30)}
    assert rows[("reorder_acc_sd", "")] == [0.0, 0.0]
    assert rows[("reorder_loss_sd", "")] == [0.0, 0.0]
    assert rows[("reorder_mean_ratio", "bn1")] == [0.0, 0.0]
    assert rows[("reorder_log_var_ratio", "bn2")] == [0.0, 0.0]
    monkeypatch.undo()
    spread = reorder.reorder_rows(cfg, model, data, [0, 1], 30)
    assert min(v for _, m, _, vs in spread if m.endswith("ratio") for v in vs) > 0


def test_a_cumulative_average_does_not_depend_on_the_order(tmp_path):
    """model.bn_momentum=null: rates 1/count over the last batches weigh them all alike."""
    over = ["model.bn_momentum=null", "train.steps=30", "train.reorder=3"]
    cfg, model = _model(*over, "train.reorder_batches=10")
    data = synthetic_data()
    run(cfg, tmp_path, data=data, model=model)
    rows = {(m, layer): v for _, m, layer, v in reorder.reorder_rows(cfg, model, data, [0, 1], 30)}
    for key in [("reorder_mean_ratio", "bn1"), ("reorder_log_var_ratio", "bn2")]:
        assert max(rows[key]) < 1e-5  # float32 rounding only
    assert rows[("reorder_acc_sd", "")] == [0.0, 0.0]


def test_regenerated_batches_are_the_runs_last_batches(monkeypatch, tmp_path):
    used = []

    class Recording(Batches):
        def next(self):
            x, y = super().next()
            used.append((x.clone(), y.clone()))
            return x, y

    monkeypatch.setattr(bnlab.runs.train, "Batches", Recording)
    data = synthetic_data()  # 512 images: 32 batches per epoch, so 45 steps cross an epoch
    cfg = make_cfg(*TINY, "model.norm=batch", "train.steps=45", "seeds=[3,7]")
    run(cfg, tmp_path, data=data)
    idx = reorder.last_batches(len(data.y_train), 16, [3, 7], 45, 20)  # (20, K, B)
    assert len(used) == 45 and idx.shape == (20, 2, 16)
    assert torch.equal(data.x_train[idx], torch.stack([x for x, _ in used[-20:]]))
    assert torch.equal(data.y_train[idx], torch.stack([y for _, y in used[-20:]]))


def test_enabling_it_changes_neither_training_nor_the_final_model(tmp_path):
    data = synthetic_data()
    over = [*TINY, "model.dropout=0.2", "model.dropout_at=before_bn", "model.bn_momentum=0.5"]
    over += ["train.steps=40", "train.final_eval=[running,population]", "seeds=[0,1]"]
    models, hists = {}, {}
    for name, extra in (("off", []), ("on", ["train.reorder=3", "train.reorder_batches=10"])):
        cfg = make_cfg("model.norm=batch", *over, *extra)
        models[name] = build_model(cfg.model, [0, 1])
        run(cfg, tmp_path / name, data=data, model=models[name])
        hists[name] = read_history(tmp_path / name, 1)
    on = hists["on"]
    assert (on["metric"].str.startswith("reorder_")).sum() == 8  # 4 + 2 per BN layer
    pd.testing.assert_frame_equal(
        on[~on["metric"].str.startswith("reorder_")].reset_index(drop=True), hists["off"]
    )
    a, b = models["off"].state_dict(), models["on"].state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for m_off, m_on in zip(models["off"].modules(), models["on"].modules()):
        assert m_off.training == m_on.training
        assert getattr(m_off, "batches_seen", 0) == getattr(m_on, "batches_seen", 0)
        assert getattr(m_off, "eval_stats", 0) == getattr(m_on, "eval_stats", 0)
        for g_off, g_on in zip(getattr(m_off, "generators", []), getattr(m_on, "generators", [])):
            assert torch.equal(g_off.get_state(), g_on.get_state())
    saved = {n: torch.load(tmp_path / n / "seed1" / "model.pt") for n in ("off", "on")}
    assert all(torch.equal(saved["off"][k], saved["on"][k]) for k in saved["off"])
    s_off, s_on = read_summary(tmp_path / "off", 1), read_summary(tmp_path / "on", 1)
    assert s_on["test_acc_population"] == s_off["test_acc_population"]
    assert {k for k in s_on if k not in s_off} == {
        f"test_reorder_{m}_{s}" for m in ("acc", "loss") for s in ("sd", "shift")
    }


def test_config_refuses_one_order_renorm_and_an_unforgotten_start():
    with pytest.raises(ConfigError, match="train.reorder=1"):
        make_cfg("model.norm=batch", "train.reorder=1")
    with pytest.raises(ConfigError, match="use at least 44 batches"):
        make_cfg("model.norm=batch", "train.reorder=10", "train.reorder_batches=20")
    with pytest.raises(ConfigError, match="model.norm=renorm does"):
        make_cfg("model.norm=renorm", "train.reorder=10")
    make_cfg("model.norm=batch", "train.reorder=10")  # 0.9^1000: forgotten
    make_cfg("model.norm=noisy_batch", "model.bn_momentum=null", "train.reorder=5")
    make_cfg("model.norm=renorm", "train.reorder_batches=5")  # off: nothing to refuse


def test_rows_reduce_the_orders_as_documented():
    """reorder_rows against a slow path: the run's own batches in orders(), passed through
    the model in training mode (the layers' own updates), evaluated, then reduced by hand
    (SD with n - 1, mean minus own, mean over units of the SD across orders over the SD
    across units)."""
    from bnlab.engine.evaluation import evaluate

    cfg, model = _model("model.bn_momentum=0.5", "train.reorder=3", "train.reorder_batches=10")
    data, seeds = synthetic_data(), [0, 1]
    rows = {
        (m, layer): np.array(v)
        for _, m, layer, v in reorder.reorder_rows(cfg, model, data, seeds, 40)
    }
    saved, test = capture(model), (data.x_test, data.y_test, 10000)
    own = evaluate(model, *test)
    idx = reorder.last_batches(len(data.y_train), 16, seeds, 40, 10)
    accs, losses, stats = [], [], []
    for order in reorder.orders(seeds, 3, 10):
        restore(model, saved)
        model.train()
        with torch.no_grad():
            for t in range(10):
                model(data.x_train[idx[order[:, t], torch.arange(2)]])
        stats.append(
            {
                n: (
                    model.get_buffer(f"{n}.running_mean").clone(),
                    model.get_buffer(f"{n}.running_var").clone(),
                )
                for n in ("bn1", "bn2")
            }
        )
        loss, acc = evaluate(model, *test)
        accs.append(acc.numpy())
        losses.append(loss.numpy())
    restore(model, saved)
    np.testing.assert_allclose(rows[("reorder_acc_sd", "")], np.std(accs, 0, ddof=1))
    np.testing.assert_allclose(
        rows[("reorder_loss_shift", "")], np.mean(losses, 0) - own[0].numpy(), rtol=1e-4
    )
    for n in ("bn1", "bn2"):
        for i, metric in ((0, "reorder_mean_ratio"), (1, "reorder_log_var_ratio")):
            v = np.stack([s[n][i].double().numpy() for s in stats])  # (orders, K, C)
            v = np.log(v) if i else v
            want = np.std(v, 0, ddof=1).mean(1) / np.std(v.mean(0), 1, ddof=1)
            np.testing.assert_allclose(rows[(metric, n)], want, rtol=1e-3)


def test_tables_carry_the_rows_and_refuse_a_sweep_that_lost_them(tmp_path):
    from bnlab.analysis.tables import MissingMeasure, check_sources, measures
    from bnlab.runs.collect import collect

    data = synthetic_data()
    for norm in ("batch", "none"):
        cfg = make_cfg(*TINY, f"model.norm={norm}", "model.bn_momentum=0.5", "train.steps=30")
        cfg.train.reorder, cfg.train.reorder_batches = 3, 10
        run(cfg, tmp_path / norm, data=data)
    runs, history = collect(tmp_path)
    check_sources(runs, history, "sweep")
    table = measures(runs, history).set_index(["run", "seed"])
    bn = read_history(tmp_path / "batch", 1)
    for metric, layer, column in (
        ("reorder_acc_sd", "", "reorder_acc_sd"),
        ("reorder_loss_shift", "", "reorder_loss_shift"),
        ("reorder_log_var_ratio", "bn2", "reorder_log_var_ratio_bn2"),
    ):
        want = bn[(bn["metric"] == metric) & (bn["layer"] == layer)]["value"].item()
        assert table.loc[("batch", 1), column] == pytest.approx(want)
        assert np.isnan(table.loc[("none", 1), column])  # no BN: nothing to reorder
    with pytest.raises(MissingMeasure, match="reorder_acc_sd"):
        check_sources(runs, history[~history["metric"].str.startswith("reorder")], "sweep")
