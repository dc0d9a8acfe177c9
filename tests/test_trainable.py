"""optim.trainable (Frankle et al. 2021): frozen parameters stay bit-identical to their
initial values, the trained ones step as torch.optim steps them on an autograd copy."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import make_cfg, synthetic_data

from bnlab.engine.loss import member_losses
from bnlab.engine.model import build_model
from bnlab.engine.optim import make_optimizer, train_step, trainable_parameters
from bnlab.runs.config import ConfigError
from bnlab.runs.train import run

OPTIMS = {
    "sgd": ["optim=sgd"],  # bnlab's fused SGD
    "momentum": ["optim=sgd", "optim.momentum=0.9", "optim.weight_decay=0.01"],
    "adam": ["optim=adam"],
}
HIDDEN = {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}  # bias: model.placement=after


def _torch_optimizer(cfg, params):
    o = cfg.optim
    if o.name == "adam":
        return torch.optim.Adam(params, lr=o.lr, betas=tuple(o.betas), eps=o.eps)
    return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)


@pytest.mark.parametrize("optim", list(OPTIMS))
@pytest.mark.parametrize("trainable", ["norm_only", "norm_only_head"])
def test_frozen_parameters_stay_and_the_rest_train_as_torch_optim(trainable, optim):
    cfg = make_cfg("model.norm=batch", "model.placement=after", "model.widths=[24,16]",
                   *OPTIMS[optim], "optim.lr=0.01", f"optim.trainable={trainable}")  # fmt: skip
    ours = build_model(cfg.model, [0, 1]).double()
    ref, start = copy.deepcopy(ours), copy.deepcopy(ours)
    frozen = HIDDEN | ({"fc3.weight", "fc3.bias"} if trainable == "norm_only" else set())
    opt = make_optimizer(cfg.optim, ours)
    ref_opt = _torch_optimizer(cfg, [p for n, p in ref.named_parameters() if n not in frozen])
    g = torch.Generator().manual_seed(0)
    for _ in range(4):
        x = torch.rand(2, 16, 784, generator=g, dtype=torch.float64)
        y = torch.randint(0, 10, (2, 16), generator=g)
        train_step(ours, opt, x, y, None, "sum")
        ref_opt.zero_grad()
        with torch.enable_grad():
            member_losses(ref(x), y, "sum").sum().backward()
        ref_opt.step()
    init = dict(start.named_parameters())
    for (name, a), b in zip(ours.named_parameters(), ref.parameters()):
        if name in frozen:
            assert torch.equal(a, init[name]), name
        else:
            assert not torch.equal(a, init[name]), name
            torch.testing.assert_close(
                a, b, rtol=1e-10, atol=1e-12, msg=lambda m, n=name: f"{n}: {m}"
            )


def test_norm_only_trains_exactly_the_norms_gamma_and_beta():
    model = build_model(make_cfg("model.norm=batch").model, [0, 1, 2])
    count = sum(p.numel() for p in trainable_parameters(model, "norm_only"))
    assert count == 3 * 2 * (100 + 100)  # gamma and beta of bn1, bn2 (100 units each)
    head = sum(p.numel() for p in trainable_parameters(model, "norm_only_head"))
    assert head == count + 3 * (100 * 10 + 10)
    assert len(trainable_parameters(model, "all")) == len(list(model.parameters()))


def test_random_features_baseline_trains_only_the_output_layer(tmp_path):
    """model.norm=none with norm_only_head: fixed random hidden layers, a trained readout."""
    cfg = make_cfg("optim.trainable=norm_only_head", "optim.lr=0.05", "train.steps=5",
                   "seeds=[0,1]", "data.batch_size=16", "train.save_model=false")  # fmt: skip
    model = build_model(cfg.model, [0, 1])
    start = copy.deepcopy(model.state_dict())
    run(cfg, tmp_path, data=synthetic_data(), model=model)
    for name, t in model.state_dict().items():
        assert torch.equal(t, start[name]) == name.startswith(("fc1", "fc2")), name


@pytest.mark.parametrize(
    "over, message",
    [
        (["optim.trainable=norm_only"], "optim.trainable=norm_only trains only the norm layers' "
         "gamma and beta and model.norm=none has none"),
        (["optim.trainable=norm_only", "model.norm=noise"], "model.norm=noise has none"),
        (["optim.trainable=bn"], "optim.trainable='bn' is not allowed; choose one of: all, "
         "norm_only, norm_only_head"),
    ],
)  # fmt: skip
def test_trainable_settings_that_train_nothing_are_refused(over, message):
    with pytest.raises(ConfigError, match=message):
        make_cfg(*over)
