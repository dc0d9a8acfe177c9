"""Normalization variants and inference modes against independent computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import explicit_pass, make_cfg
from hypothesis import given, settings
from hypothesis import strategies as st

from bnlab.engine.model import build_model
from bnlab.engine.norms import (
    BATCH_STAT_NORMS,
    NORMS,
    BatchNorm,
    BatchNormFunction,
    BatchRenorm,
    LayerNorm,
    Noise,
    NoisyBatchNorm,
    ScratchBatchNorm,
    population_statistics,
)
from bnlab.runs.config import NoiseConfig, RenormConfig
from bnlab.runs.train import run


@settings(max_examples=25, deadline=None)
@given(
    b=st.integers(2, 40),
    c=st.integers(1, 12),
    momentum=st.sampled_from([0.1, 0.5, None]),
    steps=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_scratch_bn_equals_torch_batchnorm1d(b, c, momentum, steps, seed):
    g = torch.Generator().manual_seed(seed)
    ref = torch.nn.BatchNorm1d(c, eps=1e-3, momentum=momentum).double()
    ours = ScratchBatchNorm(1, c, 1e-3, momentum).double()
    with torch.no_grad():
        ref.weight.uniform_(0.5, 2, generator=g)
        ref.bias.uniform_(-1, 1, generator=g)
        ours.weight.copy_(ref.weight[None])
        ours.bias.copy_(ref.bias[None])
    for _ in range(steps):
        x = torch.randn(b, c, generator=g, dtype=torch.float64) * 3 + 1
        dy = torch.randn(b, c, generator=g, dtype=torch.float64)
        xr = x.clone().requires_grad_()
        ref.weight.grad = ref.bias.grad = None
        y_ref = ref(xr)
        y_ref.backward(dy)
        y, dx, dgamma, dbeta = explicit_pass(ours, x[None], dy[None])
        torch.testing.assert_close(y[0], y_ref, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(dx[0], xr.grad, rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(dgamma[0], ref.weight.grad, rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(dbeta[0], ref.bias.grad, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(ours.running_mean[0], ref.running_mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours.running_var[0], ref.running_var, rtol=1e-12, atol=1e-12)
    ref.eval(), ours.eval()
    x = torch.randn(5, c, generator=g, dtype=torch.float64)
    torch.testing.assert_close(ours(x[None])[0], ref(x), rtol=1e-10, atol=1e-10)


def test_scratch_bn_function_passes_gradcheck():
    x = torch.randn(2, 6, 3, dtype=torch.float64, requires_grad=True)
    gamma = torch.rand(2, 3, dtype=torch.float64, requires_grad=True)
    beta = torch.rand(2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, b, c: BatchNormFunction.apply(a, b, c, 1e-3), (x, gamma, beta)
    )


def test_native_bn_layer_equals_scratch_bn_layer():
    x, dy = torch.randn(3, 16, 7, dtype=torch.float64), torch.randn(3, 16, 7, dtype=torch.float64)
    a = explicit_pass(BatchNorm(3, 7, 1e-3, 0.1).double(), x, dy)
    b = explicit_pass(ScratchBatchNorm(3, 7, 1e-3, 0.1).double(), x, dy)
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, rtol=1e-10, atol=1e-12)


def _renorm(**kw):
    cfg = RenormConfig(
        **{
            "r_max": 3.0,
            "d_max": 5.0,
            "r_start": 0,
            "r_end": 0,
            "d_start": 0,
            "d_end": 0,
            "momentum": 0.01,
            **kw,
        }
    )
    return BatchRenorm(1, 1, 1e-3, "running", cfg).double()


def test_batch_renorm_with_r_max_1_and_d_max_0_is_batch_norm():
    cfg = RenormConfig(r_max=1.0, d_max=0.0)
    x, dy = torch.randn(2, 8, 5, dtype=torch.float64), torch.randn(2, 8, 5, dtype=torch.float64)
    for _ in range(3):  # also after the moving statistics moved away from (0, 1)
        a = explicit_pass(BatchRenorm(2, 5, 1e-3, "running", cfg).double(), x, dy)
        b = explicit_pass(BatchNorm(2, 5, 1e-3, 0.1).double(), x, dy)
        for u, v in zip(a, b):
            torch.testing.assert_close(u, v, rtol=1e-10, atol=1e-12)
        x = x * 2 + 1


def test_batch_renorm_hand_computed_case_and_inference():
    layer = _renorm(r_max=1.5)
    y, *_ = explicit_pass(
        layer,
        torch.tensor([[[0.0], [4.0]]], dtype=torch.float64),
        torch.zeros(1, 2, 1, dtype=torch.float64),
    )
    # mu_B = 2, sigma_B = sqrt(4 + 1e-3); r = clip(sigma_B / 1, 1/1.5, 1.5) = 1.5, d = clip(2) = 2
    xn = np.array([-2.0, 2.0]) / np.sqrt(4.001)
    np.testing.assert_allclose(y.flatten().numpy(), xn * 1.5 + 2.0, rtol=1e-12)
    np.testing.assert_allclose(layer.running_mean.item(), 0.02)  # 0 + 0.01 * (2 - 0)
    np.testing.assert_allclose(layer.running_std.item(), 1 + 0.01 * (np.sqrt(4.001) - 1))
    assert layer.train_stats()["renorm_r_clipped"].item() == 1.0  # r was clipped
    layer.eval()  # inference: gamma * (x - mu) / sigma + beta with the moving statistics
    x = torch.tensor([[[1.0], [3.0]]], dtype=torch.float64)
    expect = (x - layer.running_mean) / layer.running_std
    torch.testing.assert_close(layer(x), expect)


def test_batch_renorm_backward_holds_r_and_d_constant():
    layer = _renorm()
    with torch.no_grad():
        layer.running_mean.fill_(0.3)
        layer.running_std.fill_(2.0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 6, 1, dtype=torch.float64, generator=g)
    dy = torch.randn(1, 6, 1, dtype=torch.float64, generator=g)
    _, dx, _, _ = explicit_pass(layer, x, dy)
    # oracle: with r, d unclipped, xhat = (x - mu)/sigma, so with r and d constant dx must be the
    # plain batch-norm gradient scaled by r; letting r, d vary would give dy/sigma instead
    sigma_b = (x.var(1, unbiased=False) + 1e-3).sqrt()
    r = (sigma_b / 2.0).clamp(1 / 3, 3)
    xr = x.clone().requires_grad_()
    bn = ((xr - xr.mean(1, keepdim=True)) / (xr.var(1, unbiased=False) + 1e-3).sqrt()) * r
    bn.backward(dy)
    torch.testing.assert_close(dx, xr.grad)
    assert not torch.allclose(dx, dy / 2.0)


def test_noisy_bn_with_identity_noise_is_bn_and_noise_has_the_stated_moments():
    ident = NoiseConfig(mean_range=0.0, scale_low=1.0, scale_high=1.0, jitter=0.0)
    noisy = NoisyBatchNorm(2, 4, 1e-3, 0.1, "running", ident).double()
    noisy.noise.generators = [torch.Generator().manual_seed(i) for i in range(2)]
    x, dy = torch.randn(2, 8, 4, dtype=torch.float64), torch.randn(2, 8, 4, dtype=torch.float64)
    for u, v in zip(
        explicit_pass(noisy, x, dy), explicit_pass(BatchNorm(2, 4, 1e-3, 0.1).double(), x, dy)
    ):
        torch.testing.assert_close(u, v)
    noise = Noise(NoiseConfig())
    noise.generators = [torch.Generator().manual_seed(0)]
    noise.train()
    n_steps, b, c = 400, 50, 20
    zeros, ones = torch.zeros(1, b, c), torch.ones(1, b, c)
    m = torch.stack([noise(zeros)[0] for _ in range(n_steps)])  # shift m_ij, (steps, B, C)
    s = torch.stack([noise(ones)[0] for _ in range(n_steps)]) - torch.stack(
        [noise(zeros)[0] for _ in range(n_steps)]
    )  # a fresh draw: only its moments matter
    # m_ij = mu_j + U(-0.1, 0.1), mu_j ~ U(-0.5, 0.5): mean 0, var 1/12 + 0.01/3
    assert abs(m.mean().item()) < 0.01
    assert abs(m.var().item() - (1 / 12 + 0.01 / 3)) < 0.005
    # within one step and unit, m varies only by the U(-0.1, 0.1) jitter: var 0.01/3
    assert abs(m.var(1).mean().item() - 0.01 / 3) < 3e-4
    assert m.min() >= -0.6 and m.max() <= 0.6
    noise.eval()
    assert torch.equal(noise(ones), ones)  # no noise at evaluation
    assert s.mean().item() == pytest.approx(1.125, abs=0.02)  # E[sigma_j] = (1 + 1.25)/2


def test_layer_norm_output_does_not_depend_on_the_rest_of_the_batch():
    ln = LayerNorm(2, 6, 1e-5)
    with torch.no_grad():
        ln.weight.uniform_(0.5, 2)
        ln.bias.uniform_(-1, 1)
    x = torch.randn(2, 10, 6)
    for mode in (True, False):
        ln.train(mode)
        torch.testing.assert_close(ln(x)[:, :1], ln(x[:, :1]))
    expect = torch.nn.functional.layer_norm(
        x[0], [6], ln.weight[0].detach(), ln.bias[0].detach(), 1e-5
    )
    torch.testing.assert_close(ln(x)[0], expect)


@pytest.mark.parametrize("lower", ["batch", "inference"])
def test_population_statistics_equal_a_numpy_computation(lower):
    cfg = make_cfg("model.norm=batch", "model.activation=sigmoid", "model.widths=[20,15]")
    model = build_model(cfg.model, [0, 1]).double()
    x = torch.rand(300, 784, dtype=torch.float64)
    m, n_batches = 8, 30
    assert population_statistics(model, x, m, n_batches, lower, seed=3) == n_batches
    idx = torch.randperm(300, generator=torch.Generator().manual_seed(3))[: m * n_batches]
    xs = x[idx].numpy().reshape(n_batches, m, 784)
    w1, w2 = model.fc1.weight.detach().numpy(), model.fc2.weight.detach().numpy()
    g1, b1 = model.bn1.weight.detach().numpy(), model.bn1.bias.detach().numpy()
    for k in range(2):
        z1 = xs @ w1[k].T  # (batches, m, 20)
        mu1, var1 = z1.mean(1), z1.var(1)  # numpy var is biased
        np.testing.assert_allclose(model.bn1.population_mean[k], mu1.mean(0), rtol=1e-10)
        np.testing.assert_allclose(
            model.bn1.population_var[k], var1.mean(0) * m / (m - 1), rtol=1e-10
        )
        if lower == "batch":  # layer 1 normalised with each batch's own statistics
            h1 = (z1 - mu1[:, None]) / np.sqrt(var1[:, None] + 1e-3)
        else:  # layer 1 already in inference mode with its population statistics
            pm, pv = mu1.mean(0), var1.mean(0) * m / (m - 1)
            h1 = (z1 - pm) / np.sqrt(pv + 1e-3)
        z2 = (1 / (1 + np.exp(-(g1[k] * h1 + b1[k])))) @ w2[k].T
        np.testing.assert_allclose(model.bn2.population_mean[k], z2.mean(1).mean(0), rtol=1e-9)
        np.testing.assert_allclose(
            model.bn2.population_var[k], z2.var(1).mean(0) * m / (m - 1), rtol=1e-9
        )
    assert model.bn1.eval_stats == "running"  # restored


def test_population_statistics_are_used_at_evaluation():
    cfg = make_cfg("model.norm=batch", "model.bn_eval=population")
    model = build_model(cfg.model, [0])
    with torch.no_grad():
        model.bn1.population_mean.fill_(5.0)
    model.eval()
    x = torch.rand(4, 784)
    a = model(x)
    model.bn1.eval_stats = "running"
    assert not torch.allclose(a, model(x))


@pytest.mark.slow
@pytest.mark.parametrize("norm", NORMS)
def test_every_variant_learns_real_mnist(mnist, tmp_path, norm):
    cfg = make_cfg(
        f"model.norm={norm}",
        "model.activation=sigmoid",
        "optim.lr=0.01",
        "train.steps=300",
        "train.eval_every=300",
        "seeds=[0,1]",
        "data.eval_train_size=1000",
        "model.renorm.r_start=50",
        "model.renorm.r_end=200",
        "model.renorm.d_start=50",
        "model.renorm.d_end=150",
        "train.final_eval=[running,population,batch]",
        "model.population_batches=50",
    )
    for s in run(cfg, tmp_path, data=mnist):
        assert s["status"] == "finished"
        floor = 0.5 if norm == "noise" else 0.8  # noise without BN trains badly (C11)
        assert s["test_acc"] > floor, (norm, s["test_acc"])
        modes = {"test_acc_running", "test_acc_population", "test_acc_batch"}
        assert modes <= set(s) if norm in BATCH_STAT_NORMS else not modes & set(s)
