"""model.residual and model.residual_scale: identity skips around hidden blocks of equal
width, the zero-initialised branch scalar (SkipInit, De & Smith 2020), the explicit backward
against autograd."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_cfg, synthetic_data

from bnlab.engine.loss import loss_and_grad, member_losses
from bnlab.engine.model import build_model
from bnlab.runs.config import PROBES, ConfigError
from bnlab.runs.records import read_history
from bnlab.runs.train import run

RES = ["model.residual=true", "probes.jacobian.every=0"]


def test_only_blocks_of_equal_width_get_a_skip():
    model = build_model(make_cfg(*RES, "model.widths=[20,20,10,10]").model, [0])
    assert [n for n in model.order if n.startswith("res")] == ["res2", "res4"]
    assert model.order[:5] == ["fc1", "act1", "fc2", "act2", "res2"]
    plain = build_model(make_cfg("model.widths=[20,20,10,10]").model, [0])
    for a, b in zip(plain.parameters(), model.parameters()):  # no parameters, same init
        assert torch.equal(a, b)


def test_a_block_outputs_its_input_plus_its_branch():
    model = build_model(make_cfg(*RES, "model.norm=batch", "model.widths=[20,20]").model, [0, 1])
    rec = {}
    model(torch.rand(2, 8, 784), record=rec)
    torch.testing.assert_close(rec["res2"], rec["act1"] + rec["act2"])
    zero = build_model(make_cfg(*RES, "model.residual_scale=zero_init",
                                "model.widths=[20,20]").model, [0, 1])  # fmt: skip
    assert torch.equal(zero.res2.alpha, torch.zeros(2, 1))
    x, rec = torch.rand(2, 8, 784), {}
    zero(x, record=rec)
    assert torch.equal(rec["res2"], rec["act1"])  # at init every residual block is the identity


@pytest.mark.parametrize(
    "over",
    [
        ["model.norm=batch"],
        ["model.norm=batch", "model.residual_scale=zero_init", "model.dropout=0.2"],
        ["model.norm=layer", "model.placement=after", "model.residual_scale=zero_init"],
        ["model.activation=tanh", "model.residual_scale=zero_init", "train.loss=mean"],
        ["model.norm=group", "model.groups=2", "model.dropout=0.3", "model.dropout_at=final"],
    ],
)
def test_explicit_backward_equals_autograd(over):
    cfg = make_cfg(*RES, "model.widths=[16,16,8,8]", *over)
    seeds = [0, 1, 2]
    x, y = torch.rand(3, 12, 784, dtype=torch.float64), torch.randint(0, 10, (3, 12))
    models = [build_model(cfg.model, seeds).double() for _ in range(2)]
    for model in models:
        model.train()
        for name in ("res2", "res4"):  # branches that act (zero_init starts them at 0)
            alpha = getattr(model, name).alpha
            if alpha is not None:
                with torch.no_grad():
                    alpha.copy_(torch.tensor([[0.5], [-1.0], [2.0]]))
    manual, auto = models
    with torch.no_grad():
        losses, dlogits = loss_and_grad(manual(x), y, cfg.train.loss)
        manual.backward(dlogits)
    with torch.enable_grad():
        expect_losses = member_losses(auto(x), y, cfg.train.loss)
        expect_losses.sum().backward()
    torch.testing.assert_close(losses, expect_losses.detach(), rtol=1e-12, atol=1e-12)
    for (name, p), q in zip(manual.named_parameters(), auto.parameters()):
        torch.testing.assert_close(
            p.grad, q.grad, rtol=1e-9, atol=1e-12, msg=lambda m, n=name: f"{n}: {m}"
        )
    if "model.residual_scale=zero_init" in over:
        assert manual.res2.alpha.grad.abs().min() > 0


def test_every_probe_but_the_jacobian_runs_on_a_residual_network(tmp_path):
    every = [f"probes.{n}.every=2" for n in PROBES if n != "jacobian"]
    cfg = make_cfg(*RES, "model.norm=batch", "model.residual_scale=zero_init",
                   "model.widths=[16,16,16]", "train.steps=4", "train.eval_every=2",
                   "data.batch_size=16", "seeds=[0,1]", "probes.batch=32", *every)  # fmt: skip
    run(cfg, tmp_path, data=synthetic_data())
    hist = read_history(tmp_path, 1)
    assert {"w_mean_abs", "grad_z", "ics_grad_cos", "landscape_beta"} <= set(hist["metric"])
    values = hist[~hist["metric"].str.endswith("log10_cond")]["value"]
    assert values.notna().all() and np.isfinite(values).all()


@pytest.mark.parametrize(
    "over, message",
    [
        (["model.residual=true"], r"probes.jacobian.every=5000: the Jacobian probe has no rule "
         r"for residual blocks \(model.residual=true\); set probes.jacobian.every=0"),
        ([*RES, "model.widths=[100,50]"], r"model.widths=\[100, 50\] has none: use equal widths"),
        (["model.residual_scale=zero_init"], "model.residual=false has none: set "
         "model.residual=true"),
        ([*RES, "model.residual_scale=one"], "model.residual_scale='one' is not allowed"),
        ([*RES, "model.norm=batch", "model.residual_scale=zero_init",
          "optim.trainable=norm_only"], "would freeze model.residual_scale=zero_init's scalars"),
    ],
)  # fmt: skip
def test_residual_settings_that_mean_nothing_are_refused(over, message):
    with pytest.raises(ConfigError, match=message):
        make_cfg(*over)
