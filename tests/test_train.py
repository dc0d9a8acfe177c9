"""Loop semantics on real MNIST: learning, reproducibility, ensembles, divergence, schedule."""

from __future__ import annotations

import copy

import pandas as pd
import pytest
import torch
from conftest import make_cfg, synthetic_data

from bnlab.engine.evaluation import eval_steps
from bnlab.engine.model import build_model
from bnlab.engine.optim import SGD, make_optimizer, train_step
from bnlab.runs.records import read_history, read_summary
from bnlab.runs.train import run

pytestmark = pytest.mark.slow
FAST = ["train.eval_every=50", "data.eval_train_size=2000"]


def test_real_mnist_smoke_run_learns_well_above_chance(mnist, tmp_path):
    cfg = make_cfg(
        "model.norm=batch",
        "model.activation=sigmoid",
        "optim.lr=0.01",
        "train.steps=300",
        "seeds=[0,1]",
        *FAST,
    )
    summaries = run(cfg, tmp_path, data=mnist)
    for s in summaries:
        assert s["status"] == "finished" and s["steps_done"] == 300
        assert s["test_acc"] > 0.85  # chance is 0.10
        assert s["best_test_acc"] >= s["test_acc"]
    hist = read_history(tmp_path, 0)
    assert sorted(hist["step"].unique()) == sorted(eval_steps(cfg))
    assert {"loss", "acc", "batch_loss", "w_mean_abs", "preact_p50"} <= set(hist["metric"])


def test_same_seed_reproduces_the_history_bit_for_bit(mnist, tmp_path):
    cfg = make_cfg("model.norm=batch", "model.dropout=0.2", "train.steps=120", "seeds=[4,5]", *FAST)
    run(cfg, tmp_path / "a", data=mnist)
    run(cfg, tmp_path / "b", data=mnist)
    for seed in (4, 5):
        a = (tmp_path / "a" / f"seed{seed}" / "history.csv").read_bytes()
        b = (tmp_path / "b" / f"seed{seed}" / "history.csv").read_bytes()
        assert a == b
    assert not read_history(tmp_path / "a", 4).equals(read_history(tmp_path / "a", 5))


@pytest.mark.parametrize(
    "over",
    [
        ["model.norm=batch", "model.activation=sigmoid", "optim.lr=0.01"],
        ["model.norm=batch", "model.dropout=0.3", "optim.name=adam", "optim.lr=1e-3"],
        ["model.activation=tanh", "optim.momentum=0.9", "data.batch_size=4"],
    ],
)
def test_ensemble_member_equals_its_solo_run(mnist, tmp_path, over):
    steps = ["train.steps=150", *FAST]
    ens_model = build_model(make_cfg(*over, "seeds=[0,1,2]").model, [0, 1, 2])
    solo_model = build_model(make_cfg(*over, "seeds=[1]").model, [1])
    run(make_cfg(*over, *steps, "seeds=[0,1,2]"), tmp_path / "ens", data=mnist, model=ens_model)
    run(make_cfg(*over, *steps, "seeds=[1]"), tmp_path / "solo", data=mnist, model=solo_model)
    a, b = read_history(tmp_path / "ens", 1), read_history(tmp_path / "solo", 1)
    pd.testing.assert_frame_equal(a.drop(columns="value"), b.drop(columns="value"))
    torch.testing.assert_close(
        torch.tensor(a["value"].values), torch.tensor(b["value"].values), rtol=1e-4, atol=1e-5
    )
    solo_state = solo_model.state_dict()
    for name, p_ens in ens_model.state_dict().items():
        p_solo = solo_state[name]
        if p_ens.dim():
            torch.testing.assert_close(
                p_ens[1:2], p_solo, rtol=1e-4, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}"
            )


def test_zero_steps_leave_weights_and_statistics_unchanged(tmp_path):
    cfg = make_cfg("model.norm=batch", "data.batch_size=32")
    cfg.train.steps = 0  # below validation on purpose: run() itself must train nothing
    model = build_model(cfg.model, cfg.seeds)
    before = copy.deepcopy(model.state_dict())
    summaries = run(cfg, tmp_path, data=synthetic_data(), model=model)
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert all(s["steps_done"] == 0 for s in summaries)
    assert set(read_history(tmp_path, cfg.seeds[0])["step"]) == {0}


def test_one_training_step_moves_weights_and_running_statistics(tmp_path):
    cfg = make_cfg("model.norm=batch", "data.batch_size=32", "optim.lr=0.01")
    cfg.train.steps = 1
    model = build_model(cfg.model, cfg.seeds)
    before = copy.deepcopy(model.state_dict())
    run(cfg, tmp_path, data=synthetic_data(), model=model)
    for name in ("fc1.weight", "bn1.weight", "bn1.running_mean", "bn2.running_var"):
        assert not torch.equal(model.state_dict()[name], before[name]), name


@pytest.mark.parametrize("norm", ["batch", "none"])
def test_sgd_with_the_update_fused_into_the_gradient_product_equals_torch_optim(norm):
    """bnlab's SGD (W -= lr dy^T x in one GEMM, biases and BN parameters from .grad) against
    torch.optim.SGD on the same model in float64, with and without weight gradients kept."""
    cfg = make_cfg(f"model.norm={norm}", "model.activation=tanh", "optim.lr=0.05")
    ours = build_model(cfg.model, [0, 1]).double()
    ref, start = copy.deepcopy(ours), copy.deepcopy(ours.state_dict())
    opt, ref_opt = make_optimizer(cfg.optim, ours), torch.optim.SGD(ref.parameters(), lr=0.05)
    assert isinstance(opt, SGD)
    g = torch.Generator().manual_seed(0)
    for i in range(4):
        x = torch.rand(2, 16, 784, generator=g, dtype=torch.float64)
        y = torch.randint(0, 10, (2, 16), generator=g)
        train_step(ours, opt, x, y, None, "sum", weight_grads=i == 2)
        train_step(ref, ref_opt, x, y, None, "sum")
        if i == 2:
            for a, b in zip(ours.linears(), ref.linears()):
                torch.testing.assert_close(a.weight.grad, b.weight.grad, rtol=1e-10, atol=1e-13)
    for (name, a), b in zip(ours.named_parameters(), ref.parameters()):
        assert not torch.equal(a, start[name]), name
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15, msg=lambda m, n=name: f"{n}: {m}")
    momentum = make_cfg("optim.momentum=0.9").optim
    assert isinstance(make_optimizer(momentum, ours), torch.optim.SGD)


def test_a_diverging_member_is_marked_and_the_others_finish(mnist, tmp_path):
    cfg_over = ["model.activation=sigmoid", "optim.lr=0.01", "train.steps=100", *FAST]
    cfg = make_cfg(*cfg_over, "seeds=[0,1,2]")
    model = build_model(cfg.model, cfg.seeds)
    with torch.no_grad():
        model.fc3.weight[1] *= 1e38  # member 1's logits overflow: its loss is not finite
    summaries = run(cfg, tmp_path, data=mnist, model=model)
    assert [s["status"] for s in summaries] == ["finished", "diverged", "finished"]
    assert summaries[1]["steps_done"] == 0
    # the healthy members trained exactly as they would have without the diverging one
    solo = run(make_cfg(*cfg_over, "seeds=[2]"), tmp_path / "solo", data=mnist)[0]
    assert abs(summaries[2]["test_acc"] - solo["test_acc"]) < 1e-3 and solo["test_acc"] > 0.6
    assert torch.isfinite(model.fc1.weight).all()  # the diverged member was frozen, not NaN
    assert set(read_history(tmp_path, 1)["step"]) == {0}  # history up to the last good eval


def test_a_huge_learning_rate_diverges_every_member_without_crashing(mnist, tmp_path):
    cfg = make_cfg("model.activation=relu", "optim.lr=1e6", "train.steps=200", "seeds=[0,1]", *FAST)
    summaries = run(cfg, tmp_path, data=mnist)
    assert all(s["status"] == "diverged" and s["steps_done"] < 200 for s in summaries)
    for s in summaries:
        assert read_summary(tmp_path, s["seed"]) == s
        assert "test_acc" in s  # last good metrics kept (from the evaluation at step 0)


def test_evaluation_schedule_is_dense_early_when_asked():
    cfg = make_cfg(
        "train.steps=1000",
        "train.eval_every=250",
        "train.eval_dense_until=50",
        "train.eval_dense_every=10",
    )
    assert sorted(eval_steps(cfg)) == [0, 10, 20, 30, 40, 250, 500, 750, 1000]
    assert max(eval_steps(make_cfg("train.steps=1001", "train.eval_every=500"))) == 1001


def test_bn_evaluated_with_batch_statistics_differs_from_running_statistics(mnist, tmp_path):
    base = [
        "model.norm=batch",
        "model.activation=sigmoid",
        "optim.lr=0.01",
        "train.steps=100",
        "seeds=[0]",
        *FAST,
    ]
    run_acc = run(make_cfg(*base), tmp_path / "r", data=mnist)[0]["test_acc"]
    batch_acc = run(make_cfg(*base, "model.bn_eval=batch"), tmp_path / "b", data=mnist)[0]
    # same training (bn_eval only changes evaluation), so the training batch losses agree
    a, b = read_history(tmp_path / "r", 0), read_history(tmp_path / "b", 0)
    bl = a["metric"] == "batch_loss"
    assert a[bl]["value"].tolist() == b[bl]["value"].tolist()
    assert batch_acc["test_acc"] != run_acc and batch_acc["test_acc"] > 0.8
