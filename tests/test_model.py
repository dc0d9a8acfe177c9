"""The ensemble MLP: parameter counts, initialisation, BN semantics, member independence."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import make_cfg, model_settings

from bnlab.engine.layers import Dropout
from bnlab.engine.model import build_model
from bnlab.engine.norms import BatchNorm

# Per member, 784-100-100-10: linears 78,400 + 10,000 + 1,000 weights; biases 100 + 100 + 10;
# BN gamma+beta 200 per hidden layer.
PARAMS = {
    ("none", None, False): 78400 + 10000 + 1000 + 210,
    ("batch", "before", False): 78400 + 10000 + 1000 + 10 + 2 * 200,  # fc1/fc2 lose their bias
    ("batch", "before", True): 78400 + 10000 + 1000 + 210 + 2 * 200,
    ("batch", "after", False): 78400 + 10000 + 1000 + 210 + 2 * 200,  # fc feeds act, keeps bias
}


@pytest.mark.parametrize("norm, placement, bias", list(PARAMS))
def test_exact_parameter_counts(norm, placement, bias):
    over = [f"model.norm={norm}", f"model.bias_before_norm={bias}", "seeds=[0,1,2]"]
    if placement:
        over.append(f"model.placement={placement}")
    model = build_model(make_cfg(*over).model, [0, 1, 2])
    assert sum(p.numel() for p in model.parameters()) == 3 * PARAMS[(norm, placement, bias)]


def test_layer_order_and_names():
    def order(*over):
        return build_model(make_cfg(*over).model, [0]).order

    assert order() == ["fc1", "act1", "fc2", "act2", "fc3"]
    assert order("model.norm=batch") == ["fc1", "bn1", "act1", "fc2", "bn2", "act2", "fc3"]
    assert order("model.norm=batch", "model.placement=after")[:3] == ["fc1", "act1", "bn1"]
    drop = ["model.norm=batch", "model.dropout=0.1"]
    assert order(*drop)[:4] == ["fc1", "bn1", "act1", "drop1"]
    assert order(*drop, "model.dropout_at=before_bn")[:4] == ["fc1", "drop1", "bn1", "act1"]
    assert order(*drop, "model.dropout_at=final") == [
        "fc1",
        "bn1",
        "act1",
        "fc2",
        "bn2",
        "act2",
        "drop2",
        "fc3",
    ]


def test_initial_weights_do_not_depend_on_norm_and_follow_the_study():
    plain = build_model(make_cfg().model, [7])
    bn = build_model(make_cfg("model.norm=batch").model, [7])
    for a, b in zip(plain.linears(), bn.linears()):
        assert torch.equal(a.weight, b.weight)
    w = plain.fc1.weight[0]  # (100, 784)
    sd = math.sqrt(2 / 784)
    assert w.abs().max() <= 2 * sd  # truncated at 2 sd
    # a normal truncated at +-2 sd has sd 0.8796 of the untruncated one
    assert abs(w.std().item() / sd - 0.8796) < 0.01
    assert torch.all(plain.fc1.bias == 0.1) and torch.all(bn.fc3.bias == 0.1)
    assert bn.fc1.bias is None
    other = build_model(make_cfg().model, [8])
    assert not torch.equal(other.fc1.weight, plain.fc1.weight)


def test_batchnorm_matches_its_formula_in_training_mode():
    torch.manual_seed(0)
    bn = BatchNorm(members=3, width=5, eps=1e-3, momentum=0.1)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2)
        bn.bias.uniform_(-1, 1)
    x = torch.randn(3, 32, 5) * 4 + 2  # (K, B, C)
    y = bn(x)
    mu, var = x.mean(1, keepdim=True), x.var(1, unbiased=False, keepdim=True)
    expect = bn.weight[:, None] * (x - mu) / torch.sqrt(var + 1e-3) + bn.bias[:, None]
    torch.testing.assert_close(y, expect, rtol=1e-5, atol=1e-5)
    # running statistics: EMA with the *unbiased* batch variance (PyTorch's convention)
    torch.testing.assert_close(bn.running_mean, 0.1 * mu[:, 0])
    torch.testing.assert_close(bn.running_var, 0.9 + 0.1 * x.var(1, unbiased=True))


def test_bn_preactivations_are_standardised_per_unit_in_training():
    model = build_model(make_cfg("model.norm=batch", "model.activation=sigmoid").model, [0, 1])
    model.train()
    rec = {}
    model(torch.rand(2, 128, 784), record=rec)
    for i in (1, 2):  # bn{i} output = the sigmoid's input; gamma = 1 and beta = 0 at init
        z, v = rec[f"bn{i}"], rec[f"fc{i}"].var(1, unbiased=False)
        assert z.mean(1).abs().max() < 1e-5
        # variance 1 up to eps: var(z) = v / (v + eps)
        torch.testing.assert_close(z.var(1, unbiased=False), v / (v + 1e-3), rtol=1e-4, atol=0)


def test_eval_output_of_one_example_does_not_depend_on_the_batch():
    model = build_model(make_cfg("model.norm=batch").model, [0, 1])
    model.train()
    model(torch.rand(2, 64, 784))  # move the running statistics away from (0, 1)
    model.eval()
    x = torch.rand(50, 784)
    alone = model(x[:1])
    torch.testing.assert_close(model(x)[:, :1], alone, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        model(torch.cat([x[:1], x[:1] * 0.5]))[:, :1], alone, rtol=1e-5, atol=1e-6
    )


def test_members_are_independent_and_match_their_solo_model():
    cfg = make_cfg("model.norm=batch", "model.dropout=0.3").model
    ens, solo = build_model(cfg, [0, 1, 2]), build_model(cfg, [1])
    x = torch.rand(3, 16, 784)
    out = ens(x)
    torch.testing.assert_close(out[1:2], solo(x[1:2]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ens.bn1.running_mean[1:2], solo.bn1.running_mean)
    # changing member 0's input does not change members 1 and 2
    x2 = x.clone()
    x2[0] = 1 - x2[0]
    ens2 = build_model(cfg, [0, 1, 2])
    torch.testing.assert_close(ens2(x2)[1:], out[1:])


def test_dropout_keeps_the_stated_fraction_and_scales():
    d = Dropout(0.25)
    d.generators = [torch.Generator().manual_seed(i) for i in range(2)]
    x = torch.ones(2, 1000, 100)
    y = d(x)
    assert abs((y == 0).float().mean().item() - 0.25) < 0.01
    assert torch.allclose(y[y != 0], torch.tensor(1 / 0.75))
    d.eval()
    assert torch.equal(d(x), x)


def _autograd_grads(model, x, y, reduction):
    """The oracle: autograd through the same (differentiable) forward."""
    from bnlab.engine.loss import member_losses

    model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        losses = member_losses(model(x), y, reduction)
        losses.sum().backward()
    return losses.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


# settings beyond the registry grid (model_settings): bias before BN, clipping Batch Renorm
# from step 0, the mean loss, three hidden layers, a cumulative running average
SPECIAL = [
    ["model.activation=softplus", "model.norm=batch", "model.bias_before_norm=true"],
    ["model.norm=batch", "model.dropout=0.2", "model.dropout_at=before_bn", "train.loss=mean"],
    [
        "model.activation=sigmoid",
        "model.dropout=0.5",
        "model.dropout_at=final",
        "model.widths=[30,20,10]",
    ],
    ["model.norm=batch_scratch", "model.bn_momentum=null"],
    [
        "model.norm=renorm",
        "model.renorm.r_start=0",
        "model.renorm.r_end=0",
        "model.renorm.d_start=0",
        "model.renorm.d_end=0",
    ],
]


@pytest.mark.parametrize("over", [*model_settings(), *SPECIAL])
def test_explicit_backward_equals_autograd(over):
    from bnlab.engine.loss import loss_and_grad

    cfg = make_cfg("model.widths=[24,16]", *over)  # narrow: the structure is what is tested
    seeds = [0, 1, 2]
    x, y = torch.rand(3, 16, 784, dtype=torch.float64), torch.randint(0, 10, (3, 16))
    manual_model = build_model(cfg.model, seeds).double()
    auto_model = build_model(cfg.model, seeds).double()
    manual_model.train(), auto_model.train()
    with torch.no_grad():
        losses, dlogits = loss_and_grad(manual_model(x), y, cfg.train.loss)
        manual_model.backward(dlogits)
    # same seeds: same initial weights and dropout masks
    expect_losses, expect = _autograd_grads(auto_model, x, y, cfg.train.loss)
    torch.testing.assert_close(losses, expect_losses, rtol=1e-12, atol=1e-12)
    for name, p in manual_model.named_parameters():
        torch.testing.assert_close(
            p.grad, expect[name], rtol=1e-9, atol=1e-12, msg=lambda m, n=name: f"{n}: {m}"
        )
    for name, b in manual_model.named_buffers():
        torch.testing.assert_close(b, dict(auto_model.named_buffers())[name])


@pytest.mark.parametrize("norm", ["batch", "batch_scratch", "noisy_batch"])
def test_a_bias_feeding_bn_gets_exactly_zero_gradient(norm):
    """C16's mechanism: BN subtracts the batch mean, so a bias before it cancels and its
    gradient is zero (float64: to rounding), while the same bias before no norm learns."""
    from bnlab.engine.loss import loss_and_grad

    x, y = torch.rand(2, 32, 784, dtype=torch.float64), torch.randint(0, 10, (2, 32))
    grads = {}
    for n in (norm, "none"):
        over = [f"model.norm={n}", "model.widths=[24,16]"]
        over += ["model.bias_before_norm=true"] if n != "none" else []
        model = build_model(make_cfg(*over).model, [0, 1]).double()
        model.train()
        with torch.no_grad():
            _, dlogits = loss_and_grad(model(x), y, "sum")
            model.backward(dlogits)
        grads[n] = (model.fc1.bias.grad.abs().max().item(), model.fc2.bias.grad.abs().max().item())
    assert max(grads[norm]) < 1e-12 * max(grads["none"])
    assert min(grads["none"]) > 1e-6
