"""Ghost batch normalization (model.bn_group, Hoffer et al. 2017) against per-group oracles."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import explicit_pass, make_cfg

from bnlab.engine.model import build_model
from bnlab.engine.norms import BatchNorm, ScratchBatchNorm, make_norm, population_statistics
from bnlab.measurement.probes import train_mode_moments
from bnlab.runs.config import ConfigError

LAYERS = {"batch": BatchNorm, "batch_scratch": ScratchBatchNorm}
K, C, EPS = 3, 5, 1e-3


def _layer(norm, group, momentum=0.1):
    """A float64 layer with member-distinct gamma and beta (group None: the default argument)."""
    args = (K, C, EPS, momentum) + (() if group is None else ("running", group))
    layer = LAYERS[norm](*args).double()
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        layer.weight.uniform_(0.5, 2, generator=g)
        layer.bias.uniform_(-1, 1, generator=g)
    return layer


def _data(b, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(K, b, C, generator=g, dtype=torch.float64) * 3 + 1
    return x, torch.randn(K, b, C, generator=g, dtype=torch.float64)


def _oracle(layer, x, dy, sizes):
    """F.batch_norm(training=True) on each member's each consecutive slice of `sizes` examples,
    under autograd: (y, dx, dgamma, dbeta) of L = sum(y * dy)."""
    x = x.clone().requires_grad_()
    gamma = layer.weight.detach().clone().requires_grad_()
    beta = layer.bias.detach().clone().requires_grad_()
    y = torch.stack(
        [
            torch.cat(
                [
                    F.batch_norm(s, None, None, gamma[k], beta[k], training=True, eps=EPS)
                    for s in x[k].split(sizes)
                ]
            )
            for k in range(K)
        ]
    )
    dx, dgamma, dbeta = torch.autograd.grad(y, (x, gamma, beta), dy)
    return y.detach(), dx, dgamma, dbeta


def _stats(x, sizes):
    """What one step moves the running statistics towards, by hand: the mean over groups of
    the group means and of the groups' unbiased variances, each (K, C)."""
    means, variances = [], []
    for s in x.split(sizes, dim=1):
        m = s.sum(1) / s.shape[1]
        means.append(m)
        variances.append(((s - m[:, None]) ** 2).sum(1) / (s.shape[1] - 1))
    return sum(means) / len(means), sum(variances) / len(variances)


def _close(a, b):
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, rtol=1e-9, atol=1e-11)


# (B, g, the group sizes): multiples, and batches that are not (tensor_split's near-equal slices)
CASES = [(64, 2, [2] * 32), (64, 4, [4] * 16), (64, 16, [16] * 4), (16, 4, [4] * 4)]
CASES += [(16, 2, [2] * 8), (50, 16, [17, 17, 16]), (65, 4, [5] + [4] * 15), (10, 16, [10])]


@pytest.mark.parametrize("norm", LAYERS)
@pytest.mark.parametrize("b, g, sizes", CASES)
def test_ghost_bn_equals_batch_norm_per_group(norm, b, g, sizes):
    layer = _layer(norm, g)
    x, dy = _data(b)
    _close(explicit_pass(layer, x, dy), _oracle(layer, x, dy, sizes))
    # the forward under autograd (probes' extra passes) is the same function
    xa = x.clone().requires_grad_()
    layer.weight.grad = layer.bias.grad = None
    with torch.enable_grad():
        y = layer(xa)
        y.backward(dy)
    _close((y, xa.grad, layer.weight.grad, layer.bias.grad), _oracle(layer, x, dy, sizes))


@pytest.mark.parametrize("norm", LAYERS)
@pytest.mark.parametrize("b, g, sizes", CASES)
@pytest.mark.parametrize("momentum", [0.1, None])
def test_running_statistics_after_one_and_several_steps(norm, b, g, sizes, momentum):
    layer = _layer(norm, g, momentum)
    mean, var = torch.zeros(K, C, dtype=torch.float64), torch.ones(K, C, dtype=torch.float64)
    for step in range(1, 5):
        x, dy = _data(b, seed=step)
        explicit_pass(layer, x, dy)
        mu, v = _stats(x, sizes)
        rate = momentum or 1 / step
        mean, var = (1 - rate) * mean + rate * mu, (1 - rate) * var + rate * v
        torch.testing.assert_close(layer.running_mean, mean, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(layer.running_var, var, rtol=1e-10, atol=1e-12)
    assert layer.batches_seen == 4  # one rate() per step, not per group


@pytest.mark.parametrize("norm", LAYERS)
@pytest.mark.parametrize("b", [16, 64])
def test_one_group_of_the_whole_batch_is_plain_batch_norm(norm, b):
    ghost, plain = _layer(norm, b), _layer(norm, 0)
    for step in range(3):
        x, dy = _data(b, seed=step)
        _close(explicit_pass(ghost, x, dy), explicit_pass(plain, x, dy))
    _close((ghost.running_mean, ghost.running_var), (plain.running_mean, plain.running_var))


@pytest.mark.parametrize("norm", LAYERS)
def test_group_0_is_the_layer_without_the_argument(norm):
    cfg = make_cfg(f"model.norm={norm}", "model.bn_eps=0.001")
    built, plain = make_norm(cfg.model, K, C).double(), _layer(norm, None)
    zero = _layer(norm, 0)
    assert built.group == 0 and plain.group == 0
    with torch.no_grad():
        built.weight.copy_(plain.weight), built.bias.copy_(plain.bias)
    for step in range(2):
        x, dy = _data(16, seed=step)
        expect = explicit_pass(plain, x, dy)
        for layer in (zero, built):
            for u, v in zip(explicit_pass(layer, x, dy), expect):
                assert torch.equal(u, v)
    for layer in (zero, built):
        assert torch.equal(layer.running_mean, plain.running_mean)
        assert torch.equal(layer.running_var, plain.running_var)


@pytest.mark.parametrize("norm", LAYERS)
@pytest.mark.parametrize("mode", ["running", "population", "batch"])
def test_evaluation_ignores_the_group(norm, mode):
    ghost, plain = _layer(norm, 4), _layer(norm, 0)
    explicit_pass(ghost, *_data(16))  # moves ghost's running statistics; copy them to plain
    with torch.no_grad():
        ghost.population_mean.uniform_(-1, 1), ghost.population_var.uniform_(0.5, 2)
        for name, buf in ghost.named_buffers():
            getattr(plain, name).copy_(buf)
    ghost.eval(), plain.eval()
    ghost.eval_stats = plain.eval_stats = mode
    x, _ = _data(16, seed=9)
    assert torch.equal(ghost(x), plain(x))


@pytest.mark.parametrize("norm", LAYERS)
def test_model_explicit_backward_equals_autograd(norm):
    from bnlab.engine.loss import loss_and_grad, member_losses

    over = [f"model.norm={norm}", "model.widths=[24,16]", "data.batch_size=16"]
    cfg = make_cfg(*over, "model.bn_group=4")
    assert cfg.model.bn_group == 4
    x, y = torch.rand(3, 16, 784, dtype=torch.float64), torch.randint(0, 10, (3, 16))
    manual, auto = (build_model(cfg.model, [0, 1, 2]).double() for _ in range(2))
    plain = build_model(make_cfg(*over).model, [0, 1, 2]).double()
    manual.train(), auto.train(), plain.train()
    with torch.no_grad():
        losses, dlogits = loss_and_grad(manual(x), y, "sum")
        manual.backward(dlogits)
        assert not torch.allclose(losses, member_losses(plain(x), y, "sum"))  # groups act
    with torch.enable_grad():
        expect_losses = member_losses(auto(x), y, "sum")
        expect_losses.sum().backward()
    torch.testing.assert_close(losses, expect_losses.detach(), rtol=1e-12, atol=1e-12)
    autos = dict(auto.named_parameters())
    for name, p in manual.named_parameters():
        torch.testing.assert_close(
            p.grad, autos[name].grad, rtol=1e-9, atol=1e-12, msg=lambda m, n=name: f"{n}: {m}"
        )
    for name, b in manual.named_buffers():
        torch.testing.assert_close(b, dict(auto.named_buffers())[name])


def test_probes_training_mode_passes_on_an_odd_batch():
    """train_mode_moments runs a 50-image batch (not a multiple of 16) through the groups and
    leaves the model as it was; population_statistics runs with groups configured."""
    cfg = make_cfg("model.norm=batch", "model.widths=[24,16]", "model.bn_group=16")
    model = build_model(cfg.model, [0, 1]).double()
    before = {n: b.clone() for n, b in model.named_buffers()}
    moments = train_mode_moments(model, torch.rand(50, 784, dtype=torch.float64))
    assert all(torch.isfinite(m).all() and torch.isfinite(v).all() for m, v in moments.values())
    for n, b in model.named_buffers():
        assert torch.equal(b, before[n])
    assert population_statistics(model, torch.rand(200, 784, dtype=torch.float64), 64, 3) == 3


@pytest.mark.parametrize(
    "over",
    [
        ["model.norm=none", "model.bn_group=4"],
        ["model.norm=layer", "model.bn_group=4"],
        ["model.norm=renorm", "model.bn_group=4"],
        ["model.norm=batch", "model.bn_group=5", "data.batch_size=16"],
        ["model.norm=batch", "model.bn_group=1", "data.batch_size=16"],
        ["model.norm=batch", "model.bn_group=4", "train.reorder=2"],
    ],
)
def test_config_refuses_bad_groups(over):
    with pytest.raises(ConfigError, match="model.bn_group"):
        make_cfg(*over)


def test_the_twice_differentiable_forward_of_the_curvature_probes_keeps_the_groups():
    """probes' second-derivative path swaps batch_scratch's forward for plain torch ops: with
    groups it must normalise per group as training does."""
    from bnlab.measurement.probes import _twice_differentiable

    cfg = make_cfg("model.norm=batch_scratch", "model.bn_group=4", "data.batch_size=16")
    model = build_model(cfg.model, [0, 1]).double().train()
    x = torch.rand(2, 16, 784, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model(x)
    with torch.enable_grad(), _twice_differentiable(model):
        got = model(x)
    torch.testing.assert_close(got.detach(), want, rtol=1e-12, atol=1e-12)
