"""Extension points fail loudly or work correctly: the registries' tables, the autograd
fallback for layers without a hand-written backward, what layers declare for the probes (their
affine parameters, their Jacobian rule, or config's refusal of a norm that declares none),
declared layer state (probes never steer) and ensemble members that equal their solo runs for
every structure the registries allow."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import make_cfg, model_settings, synthetic_data
from torch import nn

from bnlab.engine import layers, norms
from bnlab.engine.data import Batches
from bnlab.engine.layers import ACTIVATIONS, ActivationFn, Layer
from bnlab.engine.loss import loss_and_grad, member_losses
from bnlab.engine.model import build_model
from bnlab.engine.modelstate import capture, restore
from bnlab.engine.optim import make_optimizer, train_step
from bnlab.measurement.probes import grad_stats, singular_values, weight_stats
from bnlab.runs.config import ConfigError


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_each_activation_derivative_and_backward_equal_autograd(name):
    spec = ACTIVATIONS[name]
    x = torch.linspace(-30, 30, 2001, dtype=torch.float64).requires_grad_()
    y = spec.fn(x)
    (auto,) = torch.autograd.grad(y.sum(), x, retain_graph=True)
    torch.testing.assert_close(spec.derivative(x.detach()), auto, rtol=1e-10, atol=1e-12)
    if spec.backward is not None:
        dy = torch.rand_like(auto)
        (expect,) = torch.autograd.grad(y, x, dy)
        got = spec.backward(dy, x.detach(), y.detach())
        torch.testing.assert_close(got, expect, rtol=1e-10, atol=1e-12)


def _gelu() -> ActivationFn:
    """GELU registered the way a user would start: function and derivative, no backward."""

    def derivative(z):
        return 0.5 * (1 + torch.erf(z / math.sqrt(2))) + z * torch.exp(-0.5 * z**2) / math.sqrt(
            2 * math.pi
        )

    return ActivationFn(F.gelu, derivative)


class RMSNorm(Layer):
    """A norm a user adds with a forward only: y = gamma * x / rms(x) over the units."""

    @classmethod
    def build(cls, cfg, members, width):
        return cls(members, width)

    def __init__(self, members, width):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(members, width))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight.unsqueeze(1)


def _autograd_reference(model, x, y):
    """Losses and parameter gradients of `model` by plain autograd."""
    model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        losses = member_losses(model(x), y, "sum")
        losses.sum().backward()
    return losses.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def _explicit(model, x, y):
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        losses, dlogits = loss_and_grad(model(x), y, "sum")
        model.backward(dlogits)
    return losses, {n: p.grad.clone() for n, p in model.named_parameters()}


def _check_fallback(over):
    cfg = make_cfg(*over, "model.widths=[24,16]")
    explicit, reference = (build_model(cfg.model, [0, 1]).double() for _ in range(2))
    x, y = torch.rand(2, 16, 784, dtype=torch.float64), torch.randint(0, 10, (2, 16))
    explicit.train(), reference.train()
    losses, grads = _explicit(explicit, x, y)
    expect_losses, expect = _autograd_reference(reference, x, y)
    torch.testing.assert_close(losses, expect_losses)
    for name, g in grads.items():
        torch.testing.assert_close(
            g, expect[name], rtol=1e-9, atol=1e-12, msg=lambda m, n=name: f"{n}: {m}"
        )
    return explicit


def test_an_activation_without_backward_trains_with_autograds_gradient(monkeypatch):
    monkeypatch.setitem(ACTIVATIONS, "gelu", _gelu())
    model = _check_fallback(["model.activation=gelu", "model.norm=batch"])
    assert model.autograd == [False, False, True, False, False, True, False]  # act1, act2
    test_each_activation_derivative_and_backward_equal_autograd("gelu")


def test_a_norm_without_backward_trains_with_autograds_gradient(monkeypatch):
    monkeypatch.setitem(norms.NORMS, "rms", RMSNorm)
    _check_fallback(["model.norm=rms", "model.activation=tanh", "probes.jacobian.every=0"])


@pytest.mark.parametrize("over", [["model.norm=batch"], ["model.norm=noisy_batch"], []])
def test_every_layer_on_autograd_equals_the_explicit_backward(over):
    """The benchmark's "autograd, same layout" model computes the same gradients."""
    cfg = make_cfg(*over, "model.widths=[24,16]", "model.dropout=0.2")
    fast = build_model(cfg.model, [0, 1]).double()
    slow = build_model(cfg.model, [0, 1], autograd=True).double()
    assert all(slow.autograd) and not any(fast.autograd)
    x, y = torch.rand(2, 16, 784, dtype=torch.float64), torch.randint(0, 10, (2, 16))
    fast.train(), slow.train()
    a, ga = _explicit(fast, x, y)
    b, gb = _explicit(slow, x, y)
    torch.testing.assert_close(a, b)
    for name in ga:
        torch.testing.assert_close(
            ga[name], gb[name], rtol=1e-9, atol=1e-12, msg=lambda m, n=name: f"{n}: {m}"
        )


def test_a_norm_that_declares_no_jacobian_rule_is_refused_while_the_probe_is_on(monkeypatch):
    monkeypatch.setitem(norms.NORMS, "rms", RMSNorm)
    with pytest.raises(ConfigError) as e:
        make_cfg("model.norm=rms", "probes.jacobian.every=100")
    msg = str(e.value)
    assert "\n" not in msg
    for part in ("model.norm=rms", "probes.jacobian.every=100", "probes.jacobian.every=0"):
        assert part in msg
    assert 'jacobian = "not_diagonal"' in msg and "jacobian_diagonal" in msg
    model = build_model(make_cfg("model.norm=rms", "probes.jacobian.every=0").model, [0])
    with pytest.raises(TypeError, match=r"no rule for layer bn1 \(RMSNorm\)"):
        singular_values(model, torch.rand(4, 784))  # called directly, past validation


class DeclaredRMSNorm(RMSNorm):
    affine = ("weight",)  # gamma only
    jacobian = "not_diagonal"  # every unit depends on all units of its example


def test_a_norms_declarations_reach_the_probes(monkeypatch):
    """Its gamma is reported by the weight and gradient probes, and the Jacobian probe skips a
    norm whose Jacobian is not diagonal, as it does layer norm."""
    monkeypatch.setitem(norms.NORMS, "rms", DeclaredRMSNorm)
    cfg = make_cfg("model.norm=rms", "model.widths=[24,16]", "probes.jacobian.every=1")
    model = build_model(cfg.model, [0, 1])
    x, y = torch.rand(2, 8, 784), torch.randint(0, 10, (2, 8))
    model.train()
    train_step(model, make_optimizer(cfg.optim, model), x, y, None, "sum")
    rows = {(m, layer): v for _, m, layer, v in weight_stats(model) + grad_stats(model)}
    torch.testing.assert_close(rows["gamma_norm", "bn2"], model.bn2.weight.norm(dim=1))
    assert ("grad_xhat_norm", "bn1") in rows and ("beta_norm", "bn1") not in rows
    assert singular_values(model.eval(), torch.rand(4, 784)) == {}


@pytest.mark.parametrize("norm", list(norms.NORMS))
def test_every_registered_norm_declares_its_affine_parameters_and_jacobian_rule(norm):
    """Nothing reaches the probes by a list of classes: a norm with parameters names them as
    gamma and beta, and every norm says what its Jacobian is (layer and group norm: not
    diagonal, so the probe records none and runs with them by default)."""
    layer = norms.NORMS[norm].build(make_cfg(f"model.norm={norm}").model, 2, 6)
    params = {n for n, _ in layer.named_parameters()}
    assert set(layer.affine) <= params and bool(layer.affine) == bool(params)
    assert layer.jacobian in ("diagonal", "identity", "not_diagonal")
    make_cfg(f"model.norm={norm}", "probes.jacobian.every=100")  # accepted


@pytest.mark.parametrize("norm", list(norms.NORMS))
def test_a_training_pass_changes_only_declared_state(norm):
    """What capture/restore cannot see would let probes steer training: every attribute a
    training-mode forward changes must be a parameter, a buffer, `saved` or declared `state`."""
    cfg = make_cfg(f"model.norm={norm}", "model.widths=[24,16]", "model.dropout=0.2")
    model = build_model(cfg.model, [0, 1])
    model.train()

    def snapshot():
        return {
            (name, key): (v.clone() if torch.is_tensor(v) else v)
            for name, m in model.named_modules()
            for key, v in vars(m).items()
            if not key.startswith("_")
            and key not in ("saved", "training", "generators")
            and isinstance(v, (int, float, torch.Tensor))
        }

    before, state = snapshot(), capture(model)
    with torch.no_grad():
        model(torch.rand(2, 16, 784))
        model(torch.rand(2, 16, 784))
    after = snapshot()
    changed = {
        k
        for k in before
        if not (
            torch.equal(before[k], after[k])
            if torch.is_tensor(before[k])
            else before[k] == after[k]
        )
    }
    declared = {(n, s) for n, m in model.named_modules() if isinstance(m, Layer) for s in m.state}
    assert changed <= declared, f"undeclared state changed by training: {changed - declared}"
    restore(model, state)
    assert all(
        torch.equal(before[k], v) if torch.is_tensor(v) else before[k] == v
        for k, v in snapshot().items()
    )


@pytest.mark.parametrize("over", model_settings())
def test_ensemble_member_equals_its_solo_model(over):
    """Member 1 of a 3-member ensemble trains as seed 1 alone does (its initialisation, data
    order, dropout and noise streams), for every structure of the registries."""
    cfg = make_cfg(*over, "model.widths=[24,16]", "optim.lr=0.05")
    data = synthetic_data(n_train=128, n_test=16)
    models = {}
    for seeds in ([0, 1, 2], [1]):
        model = build_model(cfg.model, seeds)
        opt = make_optimizer(cfg.optim, model)
        batches = Batches(data.x_train, data.y_train, 16, seeds)
        model.train()
        for _ in range(3):
            x, y = batches.next()
            train_step(model, opt, x, y, None, "sum")
        models[len(seeds)] = model
    solo = models[1].state_dict()
    for name, t in models[3].state_dict().items():
        if t.dim():
            torch.testing.assert_close(
                t[1:2], solo[name], rtol=1e-5, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}"
            )


def test_registries_name_what_config_validation_allows():
    for name in ACTIVATIONS:
        make_cfg(f"model.activation={name}")
    for name in norms.NORMS:
        make_cfg(f"model.norm={name}")
    unknown = "_".join(ACTIVATIONS)  # longer than any registered name
    with pytest.raises(ConfigError, match=f"model.activation='{unknown}' is not allowed"):
        make_cfg(f"model.activation={unknown}")
    assert layers.ACTIVATIONS is ACTIVATIONS
