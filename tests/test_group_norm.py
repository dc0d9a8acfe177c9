"""Group norm (model.norm=group, model.groups) against torch's own group_norm, and its limits:
one group is layer norm, one unit per group normalises every unit alone."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import explicit_pass, make_cfg

from bnlab.engine.model import build_model
from bnlab.engine.norms import GroupNorm, LayerNorm
from bnlab.measurement.probes import singular_values, weight_stats
from bnlab.runs.config import ConfigError


def _layer(cls, *args, seed=0):
    g = torch.Generator().manual_seed(seed)
    layer = cls(*args).double()
    with torch.no_grad():
        layer.weight.copy_(torch.rand(layer.weight.shape, generator=g, dtype=torch.float64) + 0.5)
        layer.bias.copy_(torch.randn(layer.bias.shape, generator=g, dtype=torch.float64))
    return layer


@pytest.mark.parametrize("groups", [1, 2, 3, 6, 12])
def test_group_norm_equals_torch_group_norm_forward_and_backward(groups):
    k, b, c, eps = 2, 9, 12, 1e-3
    layer = _layer(GroupNorm, k, c, eps, groups)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(k, b, c, generator=g, dtype=torch.float64) * 3 + 1
    dy = torch.randn(k, b, c, generator=g, dtype=torch.float64)
    y, dx, dgamma, dbeta = explicit_pass(layer, x, dy)
    for m in range(k):  # torch's group_norm on (B, C), one member at a time, autograd backward
        xr = x[m].clone().requires_grad_()
        w = layer.weight[m].detach().clone().requires_grad_()
        bias = layer.bias[m].detach().clone().requires_grad_()
        ref = F.group_norm(xr, groups, w, bias, eps)
        ref.backward(dy[m])
        torch.testing.assert_close(y[m], ref, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(dx[m], xr.grad, rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(dgamma[m], w.grad, rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(dbeta[m], bias.grad, rtol=1e-9, atol=1e-10)


def test_one_group_is_layer_norm():
    x, dy = torch.randn(2, 8, 10, dtype=torch.float64), torch.randn(2, 8, 10, dtype=torch.float64)
    group = explicit_pass(_layer(GroupNorm, 2, 10, 1e-3, 1), x, dy)
    layer = explicit_pass(_layer(LayerNorm, 2, 10, 1e-3), x, dy)
    for u, v in zip(group, layer):
        torch.testing.assert_close(u, v, rtol=1e-12, atol=1e-12)


def test_one_unit_per_group_is_the_instance_limit():
    """Each unit normalised alone over its single value: xhat = 0, so the output is beta and
    no gradient reaches the input or gamma."""
    layer = _layer(GroupNorm, 2, 6, 1e-3, 6)
    x, dy = torch.randn(2, 5, 6, dtype=torch.float64) * 4, torch.randn(2, 5, 6, dtype=torch.float64)
    y, dx, dgamma, dbeta = explicit_pass(layer, x, dy)
    torch.testing.assert_close(y, layer.bias.detach()[:, None].expand_as(y))
    assert dx.abs().max() < 1e-12 and dgamma.abs().max() < 1e-12
    torch.testing.assert_close(dbeta, dy.sum(1))
    two = explicit_pass(_layer(GroupNorm, 2, 6, 1e-3, 3), x, dy)  # and not so with 2 per group
    assert two[1].abs().max() > 1e-3


def test_group_norm_is_per_example_and_evaluates_a_shared_batch_like_training():
    cfg = make_cfg("model.norm=group", "model.groups=5", "model.widths=[20,10]")
    model = build_model(cfg.model, [0, 1]).double()  # float64: with 2 units per group,
    x = torch.rand(16, 784, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    model.train()  # float32 rounding of a batch-size-dependent matmul is amplified by 1/std
    train = model(x.expand(2, -1, -1).contiguous())
    model.eval()  # shared (B, 784) input: the linear's output is a transposed view
    torch.testing.assert_close(model(x), train)
    torch.testing.assert_close(model(x[:3]), train[:, :3])
    assert model.bn1.groups == 5 and model.bn2.groups == 5


@pytest.mark.parametrize(
    "over, message",
    [
        (["model.groups=3"], r"model.groups=3 must be >= 1 and divide every hidden width of "
         r"model.widths=\[100, 100\]; use a divisor of 100, e.g. model.groups=2"),
        (["model.groups=0"], r"model.groups=0 must be >= 1"),
        (["model.groups=4", "model.widths=[100,30]"], r"use a divisor of 10, e.g. model.groups=2"),
    ],
)  # fmt: skip
def test_groups_that_do_not_divide_a_width_are_refused(over, message):
    with pytest.raises(ConfigError, match=message):
        make_cfg("model.norm=group", *over)


def test_groups_without_group_norm_are_refused():
    with pytest.raises(ConfigError, match="model.groups=2 sets group norm's groups; model.norm"):
        make_cfg("model.norm=batch", "model.groups=2")


def test_probes_treat_group_norm_as_layer_norm():
    """gamma and beta are reported; not a per-unit map at evaluation: no Jacobian."""
    model = build_model(make_cfg("model.norm=group").model, [0, 1])
    rows = {(metric, layer) for _, metric, layer, _ in weight_stats(model)}
    assert {("gamma_norm", "bn1"), ("beta_norm", "bn2")} <= rows
    assert singular_values(model, torch.rand(4, 784)) == {}
