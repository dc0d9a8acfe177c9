"""optim.warmup_steps against torch.optim's LinearLR/SequentialLR, and optim.clip_norm against
torch.nn.utils.clip_grad_norm_ on an autograd copy, member by member."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import make_cfg, synthetic_data

from bnlab.engine.data import Batches
from bnlab.engine.loss import member_losses
from bnlab.engine.model import build_model
from bnlab.engine.optim import SGD, make_optimizer, train_step
from bnlab.engine.schedules import SCHEDULES, lr_factor
from bnlab.runs.config import ConfigError
from bnlab.runs.train import run


def _warmup_scheduler(name, opt, steps, warmup, milestones, gamma):
    """torch's warmup: LinearLR from 1/warmup (step 1) to 1 (step warmup), then the schedule's
    own scheduler over the remaining steps (SequentialLR)."""
    rest = steps - warmup
    main = {
        "constant": lambda: torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 1.0),
        "step": lambda: torch.optim.lr_scheduler.MultiStepLR(
            opt, [round(f * rest) for f in milestones], gamma
        ),
        "cosine": lambda: torch.optim.lr_scheduler.CosineAnnealingLR(opt, rest),
    }[name]
    linear = torch.optim.lr_scheduler.LinearLR(opt, 1 / warmup, 1.0, warmup - 1)
    return torch.optim.lr_scheduler.SequentialLR(opt, [linear, main()], [warmup])


@pytest.mark.parametrize("warmup", [2, 7])
@pytest.mark.parametrize("name", list(SCHEDULES))
def test_warmup_then_schedule_gives_the_rate_torch_gives(name, warmup):
    cfg = make_cfg(f"optim.schedule={name}", "optim.lr=0.3", "optim.milestones=[0.25,0.75]",
                   f"optim.warmup_steps={warmup}")  # fmt: skip
    steps = warmup + 40  # milestones at whole steps of the 40 after warmup (torch rounds them)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.3)
    sched = _warmup_scheduler(name, opt, steps, warmup, [0.25, 0.75], cfg.optim.gamma)
    rates = []
    for t in range(1, steps + 1):  # step t uses the rate the scheduler holds after t - 1 steps
        rates.append(0.3 * lr_factor(cfg.optim, t, steps))
        assert rates[-1] == pytest.approx(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert rates[0] == pytest.approx(0.3 / warmup) and rates[warmup - 1] == pytest.approx(0.3)


def test_no_warmup_leaves_every_schedule_as_it_was():
    for name in SCHEDULES:
        cfg = make_cfg(f"optim.schedule={name}").optim
        want = [SCHEDULES[name](t, 50, cfg.milestones, cfg.gamma) for t in range(1, 51)]
        assert [lr_factor(cfg, t, 50) for t in range(1, 51)] == want


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_a_warmed_up_run_trains_as_torch_optim_with_its_schedulers(tmp_path, schedule):
    steps, warmup = 12, 4
    cfg = make_cfg("model.norm=batch", f"optim.schedule={schedule}", "optim.lr=0.05",
                   f"optim.warmup_steps={warmup}", f"train.steps={steps}", "seeds=[0,1]",
                   "data.batch_size=16", "train.save_model=false")  # fmt: skip
    data = synthetic_data()
    ours = build_model(cfg.model, [0, 1])
    ref = copy.deepcopy(ours)
    run(cfg, tmp_path, data=data, model=ours)
    opt = torch.optim.SGD(ref.parameters(), lr=0.05)
    sched = _warmup_scheduler(schedule, opt, steps, warmup, [], 1.0)
    batches = Batches(data.x_train, data.y_train, 16, [0, 1])
    ref.train()
    for _ in range(steps):
        x, y = batches.next()
        train_step(ref, opt, x, y, None, cfg.train.loss)
        sched.step()
    for (name, a), b in zip(ours.named_parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("optim", [["optim=sgd"], ["optim=sgd", "optim.momentum=0.9"],
                                   ["optim=adam"]])  # fmt: skip
@pytest.mark.parametrize("clip", [0.5, 100.0, 1e6])
def test_clipping_equals_clip_grad_norm_per_member_on_an_autograd_copy(optim, clip):
    """Each member's gradient over all its parameters clipped on its own (with clip=100,
    members with larger and with smaller norms in the same ensemble), then the optimiser's
    step (no norm layer, so that inputs of other scales give gradients of other sizes); the
    reference: autograd, torch.nn.utils.clip_grad_norm_ on one member's gradients
    at a time, torch.optim."""
    cfg = make_cfg("model.widths=[24,16]", *optim, "optim.lr=0.01",
                   f"optim.clip_norm={clip}")  # fmt: skip
    ours = build_model(cfg.model, [0, 1, 2]).double()
    ref = copy.deepcopy(ours)
    opt = make_optimizer(cfg.optim, ours)
    assert not isinstance(opt, SGD)  # the fused SGD never reads the clipped .grad
    kw = {"betas": (0.9, 0.999), "eps": 1e-8} if cfg.optim.name == "adam" else {}
    kind = torch.optim.Adam if cfg.optim.name == "adam" else torch.optim.SGD
    if cfg.optim.name == "sgd":
        kw["momentum"] = cfg.optim.momentum
    ref_opt = kind(ref.parameters(), lr=0.01, **kw)
    g = torch.Generator().manual_seed(0)
    clipped, kept = set(), set()
    for _ in range(3):
        x = torch.rand(3, 16, 784, generator=g, dtype=torch.float64) * torch.tensor(
            [0.1, 1.0, 10.0], dtype=torch.float64
        ).view(3, 1, 1)  # members with gradients of different sizes
        y = torch.randint(0, 10, (3, 16), generator=g)
        train_step(ours, opt, x, y, None, "sum")
        ref_opt.zero_grad()
        with torch.enable_grad():
            member_losses(ref(x), y, "sum").sum().backward()
        for k in range(3):
            views = [p.grad[k].clone() for p in ref.parameters()]
            leaves = [torch.zeros_like(v, requires_grad=True) for v in views]
            for leaf, v in zip(leaves, views):
                leaf.grad = v
            norm = torch.nn.utils.clip_grad_norm_(leaves, clip)
            (clipped if norm > clip else kept).add(k)
            for p, leaf in zip(ref.parameters(), leaves):
                p.grad[k] = leaf.grad
        ref_opt.step()
    for (name, a), b in zip(ours.named_parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12, msg=lambda m, n=name: f"{n}: {m}")
    assert bool(clipped) == (clip < 1e6) and bool(kept) == (clip > 1)


def test_clipping_changes_training_and_a_huge_bound_does_not(tmp_path):
    def params(*over):
        cfg = make_cfg("model.norm=none", "optim.lr=0.05", "train.steps=5", "seeds=[0,1]",
                       "data.batch_size=16", "train.save_model=false", *over)  # fmt: skip
        model = build_model(cfg.model, [0, 1])
        run(cfg, tmp_path / "-".join(over or ["plain"]), data=synthetic_data(), model=model)
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    model = build_model(make_cfg().model, [0, 1])
    fused = SGD(model, 0.1)
    fused.clip_norm = 1.0  # never made by make_optimizer: refused rather than left unclipped
    with pytest.raises(TypeError, match="fused SGD never reads .grad"):
        train_step(model, fused, torch.rand(2, 4, 784), torch.zeros(2, 4, dtype=int), None, "sum")
    plain = params()  # bnlab's fused SGD; with clipping torch.optim's SGD: other rounding
    torch.testing.assert_close(params("optim.clip_norm=1e9"), plain, rtol=0, atol=1e-3)
    assert (params("optim.clip_norm=0.1") - plain).abs().max() > 1e-2


def test_the_scale_probe_sums_steps_only_when_each_is_lr_times_the_gradient():
    """Its step sum assumes plain SGD steps lr g: warmup, clipping and frozen weights are not."""
    from bnlab.measurement.probes import ScaleTracker

    model = build_model(make_cfg("model.norm=batch").model, [0])
    for over in (
        [],
        ["optim.warmup_steps=10"],
        ["optim.clip_norm=1"],
        ["optim.trainable=norm_only"],
    ):
        assert ScaleTracker(make_cfg("model.norm=batch", *over), model).plain == (not over)


@pytest.mark.parametrize(
    "over, message",
    [
        (["optim.warmup_steps=-1"], r"optim.warmup_steps=-1 must be >= 0"),
        (["optim.warmup_steps=2000"], r"optim.warmup_steps=2000 must be fewer than the run's "
         r"2000 steps \(0 = no warmup\), e.g. optim.warmup_steps=200"),
        (["optim.clip_norm=-1"], r"optim.clip_norm=-1.0 must be >= 0"),
    ],
)  # fmt: skip
def test_bad_warmup_and_clipping_are_refused(over, message):
    with pytest.raises(ConfigError, match=message):
        make_cfg(*over)


@pytest.mark.parametrize("on", ["all", "invariant"])
def test_weight_decay_on_the_weights_feeding_bn_only(on):
    """optim.weight_decay_on=invariant: one SGD step decays the weights that feed BN (fc1, fc2:
    w - lr (g + wd w)) and nothing else (w - lr g); `all` decays every parameter. Reference:
    autograd's gradient and the update written out."""
    lr, wd = 0.1, 0.05
    cfg = make_cfg("model.norm=batch", "model.widths=[24,16]", f"optim.lr={lr}",
                   f"optim.weight_decay={wd}", f"optim.weight_decay_on={on}")  # fmt: skip
    ours = build_model(cfg.model, [0, 1]).double()
    ref = copy.deepcopy(ours)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 16, 784, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (2, 16), generator=g)
    train_step(ours, make_optimizer(cfg.optim, ours), x, y, None, "mean")
    with torch.enable_grad():
        member_losses(ref(x), y, "mean").sum().backward()
    feeding_bn = {"fc1.weight", "fc2.weight"}
    for (name, a), b in zip(ours.named_parameters(), ref.parameters()):
        decays = on == "all" or name in feeding_bn
        want = b - lr * (b.grad + (wd * b if decays else 0.0))
        torch.testing.assert_close(a, want.detach(), rtol=1e-9, atol=1e-12, msg=name)


def test_weight_decay_on_invariant_weights_needs_them():
    with pytest.raises(ConfigError, match=r"optim.weight_decay_on=invariant .*model.norm=none"):
        make_cfg("optim.weight_decay=0.01", "optim.weight_decay_on=invariant")
    with pytest.raises(ConfigError, match="optim.weight_decay_on"):
        make_cfg("optim.weight_decay_on=some")
