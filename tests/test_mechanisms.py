"""The settings and measures of the extra studies (C20-C26): learning-rate schedules against
torch.optim's schedulers, the rescaling of the weights that feed BN (exact in floating point
for a power of two), activation-space gradients against autograd, and the table measures
built on them."""

from __future__ import annotations

import copy
import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import make_cfg, synthetic_data

from bnlab.analysis.tables import activation_gradients, equivalence, measures, shift_columns
from bnlab.engine.data import Batches
from bnlab.engine.model import build_model, scale_invariant_linears
from bnlab.engine.optim import SGD, make_optimizer, set_lr, train_step
from bnlab.engine.schedules import SCHEDULES, lr_factor
from bnlab.measurement.probes import grad_stats
from bnlab.runs.config import ConfigError
from bnlab.runs.records import read_history
from bnlab.runs.train import run


def _scheduler(name: str, opt, steps: int, milestones, gamma):
    """torch.optim's scheduler for an optim.schedule (the independent oracle)."""
    if name == "constant":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 1.0)
    if name == "step":
        at = [round(f * steps) for f in milestones]
        return torch.optim.lr_scheduler.MultiStepLR(opt, at, gamma)
    return torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_every_schedule_gives_the_rate_torch_optims_scheduler_gives(name):
    cfg = make_cfg(f"optim.schedule={name}", "optim.lr=0.3", "optim.milestones=[0.25,0.75]")
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.3)
    sched = _scheduler(name, opt, 40, [0.25, 0.75], cfg.optim.gamma)
    for t in range(1, 41):  # step t uses the rate the scheduler holds after t - 1 steps
        assert 0.3 * lr_factor(cfg.optim, t, 40) == pytest.approx(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()


@pytest.mark.parametrize("name", ["step", "cosine"])
def test_a_scheduled_run_trains_as_torch_optim_with_its_scheduler(tmp_path, name):
    """run() with momentum and a schedule against a hand loop over the same batches with
    torch.optim.SGD and torch's scheduler."""
    steps, over = 12, ["model.norm=batch", "optim.momentum=0.9", "optim.milestones=[0.5]"]
    cfg = make_cfg(*over, f"optim.schedule={name}", "optim.lr=0.05", f"train.steps={steps}",
                   "seeds=[0,1]", "data.batch_size=16", "train.save_model=false")  # fmt: skip
    data = synthetic_data()
    ours = build_model(cfg.model, [0, 1])
    ref = copy.deepcopy(ours)
    run(cfg, tmp_path, data=data, model=ours)
    opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9)
    sched = _scheduler(name, opt, steps, [0.5], cfg.optim.gamma)
    batches = Batches(data.x_train, data.y_train, 16, [0, 1])
    ref.train()
    for _ in range(steps):
        x, y = batches.next()
        train_step(ref, opt, x, y, None, cfg.train.loss)
        sched.step()
    for (name_, a), b in zip(ours.named_parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=lambda m, n=name_: f"{n}: {m}")


def test_the_weights_feeding_bn_take_their_own_learning_rate():
    """bnlab's fused SGD and torch.optim with momentum against torch.optim.SGD with a second
    parameter group for the scale-invariant weights, in float64."""
    cfg = make_cfg("model.norm=batch", "optim.lr=0.05", "optim.invariant_lr_scale=9")
    invariant = {id(lin.weight) for _, lin in scale_invariant_linears(build_model(cfg.model, [0]))}
    assert len(invariant) == 2  # fc1 and fc2 feed BN; fc3, the output, does not
    for momentum in (0.0, 0.9):
        ours = build_model(cfg.model, [0, 1]).double()
        ref = copy.deepcopy(ours)
        inv = {id(lin.weight) for _, lin in scale_invariant_linears(ours)}
        opt = make_optimizer(replace_optim(cfg.optim, momentum=momentum), ours)
        assert isinstance(opt, SGD) == (momentum == 0)
        params = list(ref.parameters())
        own = [p for p, q in zip(params, ours.parameters()) if id(q) in inv]
        rest = [p for p, q in zip(params, ours.parameters()) if id(q) not in inv]
        ref_opt = torch.optim.SGD(
            [{"params": rest}, {"params": own, "lr": 0.45}], lr=0.05, momentum=momentum
        )
        g = torch.Generator().manual_seed(0)
        for _ in range(3):
            x = torch.rand(2, 16, 784, generator=g, dtype=torch.float64)
            y = torch.randint(0, 10, (2, 16), generator=g)
            train_step(ours, opt, x, y, None, "mean", weight_grads=False)
            train_step(ref, ref_opt, x, y, None, "mean")
        for (name, a), b in zip(ours.named_parameters(), ref.parameters()):
            torch.testing.assert_close(
                a, b, rtol=1e-12, atol=1e-14, msg=lambda m, n=name: f"{n}: {m}"
            )
        set_lr(opt, 0.1)  # the base rate, times each group's own multiplier
        assert [g["lr"] for g in opt.param_groups] == ([0.1] if momentum == 0 else [0.1, 0.9])


def replace_optim(o, **changes):
    o = copy.copy(o)
    for k, v in changes.items():
        setattr(o, k, v)
    return o


def _history(tmp_path, name, *over):
    cfg = make_cfg("model.norm=batch", "optim.lr=0.1", "train.loss=mean", "train.steps=40",
                   "train.eval_every=10", "seeds=[0,1]", "data.batch_size=32",
                   "train.save_model=false", *over)  # fmt: skip
    run(cfg, tmp_path / name, data=synthetic_data())
    h = read_history(tmp_path / name, 0)
    return h[h["layer"].isna() | (h["layer"] == "")].reset_index(drop=True)


def test_scaling_the_weights_feeding_bn_by_a_and_their_lr_by_a2_trains_the_same_network(
    tmp_path,
):
    """Scale invariance (Ioffe & Szegedy 2015, Sec. 3.3): with BN's eps x a^2 the histories
    are equal; bit for bit for a = 4 (a power of two scales without rounding), to float32
    rounding for a = 3; with eps fixed they differ."""
    ref = _history(tmp_path, "ref")
    four = _history(tmp_path, "four", "model.invariant_init_scale=4",
                    "optim.invariant_lr_scale=16", "model.bn_eps=0.016")  # fmt: skip
    pd.testing.assert_frame_equal(ref, four, check_exact=True)
    three = _history(tmp_path, "three", "model.invariant_init_scale=3",
                     "optim.invariant_lr_scale=9", "model.bn_eps=0.009")  # fmt: skip
    assert not ref["value"].equals(three["value"])
    np.testing.assert_allclose(three["value"], ref["value"], rtol=1e-4)
    fixed = _history(tmp_path, "fixed", "model.invariant_init_scale=0.25",
                     "optim.invariant_lr_scale=0.0625")  # fmt: skip
    assert np.abs(fixed["value"] - ref["value"]).max() > 1e-4
    cfg = make_cfg("model.norm=batch", "model.invariant_init_scale=4")
    w = build_model(cfg.model, [0]).fc1.weight
    w0 = build_model(make_cfg("model.norm=batch").model, [0]).fc1.weight
    assert torch.equal(w, 4 * w0)


@pytest.mark.parametrize(
    "over",
    [
        ["model.norm=none", "model.invariant_init_scale=2"],
        ["model.norm=batch", "model.placement=after", "optim.invariant_lr_scale=4"],
        ["model.norm=layer", "model.invariant_init_scale=2"],
        ["model.norm=batch", "model.bias_before_norm=true", "model.invariant_init_scale=2"],
        ["model.norm=renorm", "model.invariant_init_scale=2"],
        [
            "model.norm=batch",
            "model.dropout=0.2",
            "model.dropout_at=before_bn",
            "optim.invariant_lr_scale=4",
        ],  # fmt: skip
    ],
)
def test_rescaling_without_weights_feeding_bn_is_refused(over):
    with pytest.raises(ConfigError, match="invariant_init_scale and optim.invariant_lr_scale"):
        make_cfg(*over)


BAD = [
    ["optim.schedule=linear"],
    ["optim.milestones=[0.5,1.5]"],
    ["optim.gamma=0"],
    ["train.shifts=[blur:2]"],
    ["train.shifts=[rotation:x]"],
    ["train.shifts=[rotation:inf]"],
    ["train.shifts=[noise:-0.1]"],
    ["train.shifts=[noise:0.3,noise:0.3]"],
    ["train.shifts=[noise:0.3]", "data.standardize=true"],
]


@pytest.mark.parametrize("over", BAD)
def test_bad_schedules_and_shifts_are_refused_naming_the_key(over):
    key = over[0].split("=")[0]
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        make_cfg(*over)


def _oracle_grad_z(model, x, y, act, k):
    """Per-example ||d(sum_j L_j)/dz_i|| at every hidden pre-activation of member k, from a
    forward written with torch.nn.functional under autograd (float64)."""
    fcs = [getattr(model, f"fc{i}") for i in (1, 2, 3)]
    bns = [getattr(model, f"bn{i}", None) for i in (1, 2)]
    h, zs = x[k], []
    for i in range(2):
        h = h @ fcs[i].weight[k].T + (0 if fcs[i].bias is None else fcs[i].bias[k, 0])
        if bns[i] is not None:
            h = F.batch_norm(h, None, None, bns[i].weight[k], bns[i].bias[k], True, 0.0, bns[i].eps)
        h.retain_grad()
        zs.append(h)
        h = torch.relu(h) if act == "relu" else torch.sigmoid(h)
    logits = h @ fcs[2].weight[k].T + fcs[2].bias[k, 0]
    F.cross_entropy(logits, y[k], reduction="sum").backward()
    return [z.grad.norm(dim=1).mean().item() for z in zs]


@pytest.mark.parametrize("norm", ["none", "batch"])
@pytest.mark.parametrize("loss", ["sum", "mean"])
def test_activation_space_gradients_equal_autograd(norm, loss):
    cfg = make_cfg(f"model.norm={norm}", "model.activation=sigmoid", f"train.loss={loss}")
    model = build_model(cfg.model, [0, 1]).double()
    oracle = copy.deepcopy(model)
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 16, 784, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (2, 16), generator=g)
    train_step(model, make_optimizer(cfg.optim, model), x, y, None, loss)
    rows = {(m, lay): v for _, m, lay, v in grad_stats(model, loss) if m == "grad_z"}
    assert set(rows) == {("grad_z", "act1"), ("grad_z", "act2")}
    for k in range(2):
        want = _oracle_grad_z(oracle, x, y, "sigmoid", k)
        got = [rows[("grad_z", f"act{i}")][k].item() for i in (1, 2)]
        np.testing.assert_allclose(got, want, rtol=1e-9)


def _hist(rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["run", "seed", "step", "split", "metric", "layer", "value"])


def test_activation_gradient_ratios_per_member_and_depth():
    rows = []
    for step in (1, 100, 2000):  # the 2,000 probe is past the 1k window
        rows += [("a", 0, step, "train", "grad_z", f"act{i}", 10.0 ** (i - 1)) for i in (1, 2, 3)]
        rows += [("b", 0, step, "train", "grad_z", f"act{i}", step * 2.0**i) for i in (1, 2)]
    cols = activation_gradients(_hist(rows))
    first, early = cols["agrad_log_ratio_first"], cols["agrad_log_ratio_1k"]
    assert first[("a", 0)] == pytest.approx(-2.0)  # act1 / act3 = 1/100
    assert early[("b", 0)] == pytest.approx(math.log10(0.5))  # its last layer is act2
    assert activation_gradients(_hist([])) == {}


def test_equivalence_against_the_unscaled_member_of_the_same_seed():
    table = pd.DataFrame(
        {
            "run": ["ref", "ref", "x4", "x4", "x3", "x3"],
            "seed": [0, 1, 0, 1, 0, 1],
            "model.invariant_init_scale": [1.0, 1.0, 4.0, 4.0, 3.0, 3.0],
        }
    )
    rows = []
    for run_, off in (("ref", 0.0), ("x4", 0.0), ("x3", 0.01)):
        for seed in (0, 1):
            for step in (0, 10):
                rows += [
                    (run_, seed, step, "test", "loss", "", 2.0 + step + off * step),
                    (run_, seed, step, "train", "loss", "", 1.0),
                    (run_, seed, step, "test", "acc", "", 0.5 + off),
                ]
    eq = equivalence(table, _hist(rows))
    assert eq["equiv_exact"].tolist() == [True, True, True, True, False, False]
    assert eq.loc[4, "equiv_max_rel_loss"] == pytest.approx(0.1 / 12)
    assert eq.loc[5, "equiv_max_acc"] == pytest.approx(0.01)
    assert equivalence(table.iloc[:2], _hist(rows)).empty
    # another setting swept with the scale: each member pairs with the reference of its own
    both = pd.concat([table.assign(**{"optim.lr": lr}) for lr in (0.1, 0.3)], ignore_index=True)
    both["run"] = both["run"] + both["optim.lr"].astype(str)
    rows2 = [(r + str(lr), *rest) for lr in (0.1, 0.3) for r, *rest in rows]
    rows2 = [(r, s, st, sp, m, la, v + (0.5 if r == "ref0.3" and m == "acc" else 0.0))
             for r, s, st, sp, m, la, v in rows2]  # fmt: skip
    exact = equivalence(both, _hist(rows2))["equiv_exact"].tolist()
    assert exact == [True] * 4 + [False] * 2 + [True] * 2 + [False] * 4  # ref0.3 moved


def test_shift_columns_and_effective_lr_at_half_and_end():
    rows = [
        ("r", 0, 100, "test", "shift_acc_adapted", "rotation:30", 0.8),
        ("r", 0, 100, "test", "shift_acc_running", "rotation:30", 0.6),
    ]
    cols = shift_columns(_hist(rows))
    assert cols["shift_acc_adapted_rotation:30"][("r", 0)] == 0.8
    runs = pd.DataFrame({"run": ["r"], "seed": [0], "model.norm": ["batch"],
                         "model.activation": ["relu"], "optim.name": ["sgd"], "optim.lr": [0.1],
                         "data.batch_size": [64], "status": ["finished"], "steps_done": [100],
                         "test_acc": [0.9], "train_acc": [0.95], "best_test_acc": [0.9],
                         "test_loss": [0.3], "train_loss": [0.2]})  # fmt: skip
    eff = [("r", 0, s, "train", "lr_over_w2", "fc2", 1.0 / s) for s in (25, 50, 75, 100)]
    t = measures(runs, _hist(rows + eff))
    assert t.loc[0, "eff_lr_fc2_half"] == pytest.approx(1 / 50)
    assert t.loc[0, "eff_lr_fc2_final"] == pytest.approx(1 / 100)
    assert t.loc[0, "shift_acc_running_rotation:30"] == 0.6
