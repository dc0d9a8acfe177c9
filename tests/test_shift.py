"""Test-time covariate shift (bnlab.measurement.shift, train.shifts): the shifts against geometric
and statistical oracles, the adapted and prediction-time BN modes against a forward pass written
out in float64, and shift_rows leaving the model untouched."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import make_cfg, synthetic_data

from bnlab.engine.evaluation import evaluate
from bnlab.engine.model import build_model
from bnlab.engine.norms import BatchStatNorm, population_statistics, set_eval_stats
from bnlab.measurement import shift
from bnlab.measurement.shift import SHIFTS, shift_rows
from bnlab.runs.config import ConfigError

TINY = ["model.widths=[6,5]", "data.batch_size=16"]
ENTRIES = ["rotation:30", "noise:0.3", "contrast:0.4"]
NEUTRAL = {"rotation": 0.0, "noise": 0.0, "contrast": 1.0}
F32 = {"rtol": 1e-5, "atol": 1e-6}  # the model runs in float32, the hand forward in float64
STRENGTHS = {"rotation": [-45.0, 30.0, 90.0], "noise": [0.1, 0.5], "contrast": [0.3, 2.5]}


def _images(n: int = 20, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 784, generator=torch.Generator().manual_seed(seed))


def _grid(x: torch.Tensor) -> torch.Tensor:
    return x.view(-1, 28, 28)


# --------------------------------------------------------------------------- the shifts
def test_every_kind_has_a_neutral_strength_and_strengths_to_test():
    assert set(SHIFTS) == set(NEUTRAL) == set(STRENGTHS)  # a new kind must be added here


@pytest.mark.parametrize(
    "kind,strength", [(k, s) for k in SHIFTS for s in STRENGTHS[k]], ids=lambda v: str(v)
)
def test_shape_range_determinism_and_no_in_place_change(kind, strength):
    x = _images()
    before = x.clone()
    a, b = SHIFTS[kind](x, strength), SHIFTS[kind](x.clone(), strength)
    assert a.shape == (20, 784) and a.dtype == torch.float32
    assert a.min() >= 0.0 and a.max() <= 1.0
    assert torch.equal(a, b)  # the same images every call (every run, every member)
    assert torch.equal(x, before)
    assert not torch.allclose(a, x, atol=1e-3)  # it does shift


@pytest.mark.parametrize("kind", list(SHIFTS))
def test_identity_at_the_neutral_strength(kind):
    x = _images()
    torch.testing.assert_close(SHIFTS[kind](x, NEUTRAL[kind]), x, rtol=0, atol=1e-6)


def test_rotation_by_90_is_rot90_counter_clockwise():
    x = _images()
    got = _grid(shift.rotation(x, 90.0))
    want = torch.rot90(_grid(x), 1, dims=(1, 2))  # torch/numpy: counter-clockwise
    torch.testing.assert_close(got[:, 1:-1, 1:-1], want[:, 1:-1, 1:-1], rtol=0, atol=1e-5)
    clockwise = torch.rot90(_grid(x), -1, dims=(1, 2))
    assert not torch.allclose(got, clockwise, atol=0.1)  # the direction is checked
    torch.testing.assert_close(_grid(shift.rotation(x, -90.0)), clockwise, rtol=0, atol=1e-5)


def test_rotation_turns_a_point_right_of_centre_to_above_it():
    """Pixel (row 14, col 24) sits at (10.5, 0.5) from the centre (13.5, 13.5), y down;
    a quarter turn counter-clockwise on screen takes it to (0.5, -10.5): row 3, col 14."""
    x = torch.zeros(1, 28, 28)
    x[0, 14, 24] = 1.0
    got = _grid(shift.rotation(x.view(1, 784), 90.0))[0]
    assert got[3, 14] == pytest.approx(1.0, abs=1e-5)
    assert got.sum() == pytest.approx(1.0, abs=1e-5)
    # 10 degrees: its mass moves up and a little left, to the rotated point (bilinear
    # resampling on a rotated grid keeps the centre of mass only to a few hundredths)
    got = _grid(shift.rotation(x.view(1, 784), 10.0))[0]
    rows, cols = torch.arange(28.0)[:, None], torch.arange(28.0)[None, :]
    mass = got.sum()
    a = math.radians(10.0)
    want_col = 13.5 + 10.5 * math.cos(a) + 0.5 * math.sin(a)
    want_row = 13.5 - 10.5 * math.sin(a) + 0.5 * math.cos(a)
    assert (got * cols).sum() / mass == pytest.approx(want_col, abs=0.02)
    assert (got * rows).sum() / mass == pytest.approx(want_row, abs=0.02)


def test_rotation_by_180_twice_is_the_identity_in_the_centre():
    x = _images()
    twice = _grid(shift.rotation(shift.rotation(x, 180.0), 180.0))
    torch.testing.assert_close(twice[:, 2:-2, 2:-2], _grid(x)[:, 2:-2, 2:-2], rtol=0, atol=1e-5)
    once = _grid(shift.rotation(x, 180.0))
    torch.testing.assert_close(once[:, 2:-2, 2:-2], _grid(x).flip(1, 2)[:, 2:-2, 2:-2])


def test_contrast_0_is_each_images_mean_and_scales_deviations():
    x = _images() * torch.linspace(0.2, 1.0, 20)[:, None]  # images of different means
    flat = shift.contrast(x, 0.0)
    torch.testing.assert_close(flat, x.mean(1, keepdim=True).expand_as(x))
    half = shift.contrast(x, 0.5)  # no clipping: the mean stays, deviations halve
    torch.testing.assert_close(half.mean(1), x.mean(1))
    torch.testing.assert_close(half - half.mean(1, keepdim=True), (x - x.mean(1, keepdim=True)) / 2)


@pytest.mark.parametrize("sd", [0.02, 0.05])
def test_noise_on_mid_grey_has_the_strength_as_sd(sd):
    x = torch.full((100, 784), 0.5)
    d = shift.noise(x, sd) - x  # 10 SD from the clip: none clipped
    assert d.std().item() == pytest.approx(sd, rel=0.02)
    assert abs(d.mean().item()) < 0.02 * sd
    assert not torch.allclose(d[0], d[1])  # each image its own noise
    assert torch.equal(shift.noise(x, sd), shift.noise(x, sd))


# --------------------------------------------------------------------------- the modes
def _model(*over, seeds=(0, 1)):
    cfg = make_cfg(*TINY, f"train.shifts={ENTRIES}", *over, f"seeds={list(seeds)}")
    model = build_model(cfg.model, list(seeds))
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():  # BN state unlike the initial one, so the modes differ
        for m in model.modules():
            if isinstance(m, BatchStatNorm):
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0.0, 0.3, generator=g)
                m.running_mean.normal_(0.0, 0.5, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
    return cfg, model


def _hand_forward(model, x: torch.Tensor, y: torch.Tensor) -> tuple:
    """Summed cross-entropy and correct count per member, float64, with every batch-statistics
    norm layer normalising with the mean and biased variance of its input over all of x:
    the model's layers by name (fc, bn, act = relu), written out with plain tensor ops."""
    loss, correct = [], []
    for k in range(model.members):
        a = x.double()
        for name in model.order:
            layer = getattr(model, name)
            if name.startswith("fc"):
                a = a @ layer.weight[k].double().T
                a = a if layer.bias is None else a + layer.bias[k, 0].double()
            elif name.startswith("bn"):
                mu, var = a.mean(0), ((a - a.mean(0)) ** 2).mean(0)
                gamma, beta = layer.weight[k].double(), layer.bias[k].double()
                a = gamma * (a - mu) / torch.sqrt(var + layer.eps) + beta
            elif name.startswith("act"):
                a = torch.where(a > 0, a, torch.zeros_like(a))
            else:
                raise AssertionError(f"no hand forward for {name}")
        logz = a.max(1).values + torch.log(torch.exp(a - a.max(1, keepdim=True).values).sum(1))
        loss.append((logz - a[torch.arange(len(y)), y]).sum())
        correct.append((a.argmax(1) == y).sum().double())
    return torch.stack(loss), torch.stack(correct)


def _rows(rows) -> dict:
    return {(metric, entry): torch.tensor(v, dtype=torch.float64) for _, metric, entry, v in rows}


@pytest.mark.parametrize("over", [[], ["model.placement=after"], ["model.bias_before_norm=true"]])
def test_adapted_and_batch_modes_match_a_forward_written_out(over):
    cfg, model = _model("model.norm=batch", *over)
    data = synthetic_data(n_test=200)  # 200 = 12 batches of 16 and one of 8
    rows = _rows(shift_rows(cfg, model, data))
    for entry in ["clean", *ENTRIES]:
        x = data.x_test
        if entry != "clean":
            kind, strength = entry.split(":")
            x = SHIFTS[kind](x, float(strength))
        n = len(x)
        loss, correct = _hand_forward(model, x, data.y_test)
        torch.testing.assert_close(rows[("shift_loss_adapted", entry)], loss / n, **F32)
        torch.testing.assert_close(rows[("shift_acc_adapted", entry)], correct / n)
        per_batch = [
            _hand_forward(model, x[i : i + 16], data.y_test[i : i + 16]) for i in range(0, n, 16)
        ]
        loss, correct = (sum(v) / n for v in zip(*per_batch))
        torch.testing.assert_close(rows[("shift_loss_batch", entry)], loss, **F32)
        torch.testing.assert_close(rows[("shift_acc_batch", entry)], correct)
        assert not torch.allclose(
            rows[("shift_loss_adapted", entry)], rows[("shift_loss_running", entry)]
        )


def test_running_is_the_plain_evaluation_and_the_model_is_left_alone():
    cfg, model = _model("model.norm=batch", "model.dropout=0.3")
    data = synthetic_data(n_test=200)
    layers = [m for m in model.modules() if isinstance(m, BatchStatNorm)]
    layers[0].eval_stats = "population"  # whatever the caller left, it gets back
    modes = [m.eval_stats for m in layers]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    streams = [g.get_state() for m in model.modules() for g in getattr(m, "generators", [])]
    model.train()
    rows = shift_rows(cfg, model, data)
    assert model.training
    assert [m.eval_stats for m in layers] == modes
    after = model.state_dict()
    assert after.keys() == state.keys() and all(torch.equal(after[k], state[k]) for k in state)
    after = [g.get_state() for m in model.modules() for g in getattr(m, "generators", [])]
    assert all(torch.equal(a, b) for a, b in zip(streams, after))

    assert {e for _, _, e, _ in rows} == {"clean", *ENTRIES}
    assert {m for _, m, _, _ in rows} == {
        f"shift_{v}_{mode}" for v in ("acc", "loss") for mode in ("running", "adapted", "batch")
    }
    assert all(s == "test" and len(v) == 2 for s, _, _, v in rows)
    got = _rows(rows)
    set_eval_stats(model, "running")
    for entry in ["clean", *ENTRIES]:
        x = data.x_test if entry == "clean" else shift.shifted(entry, data.x_test)
        loss, acc = evaluate(model, x, data.y_test, cfg.train.eval_batch)
        assert torch.equal(got[("shift_loss_running", entry)], loss)
        assert torch.equal(got[("shift_acc_running", entry)], acc)


def test_running_with_population_statistics_is_the_runs_evaluation():
    """bn_eval=population: recomputed as evaluation.Evaluator does before it evaluates, and
    the model's own (here stale) population statistics put back afterwards."""
    cfg, model = _model("model.norm=batch", "model.bn_eval=population")
    data = synthetic_data(n_test=200)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    got = _rows(shift_rows(cfg, model, data))
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    population_statistics(model, data.x_train, 16, cfg.model.population_batches)
    x = shift.shifted("rotation:30", data.x_test)
    loss, _ = evaluate(model, x, data.y_test, cfg.train.eval_batch)
    assert torch.equal(got[("shift_loss_running", "rotation:30")], loss)


@pytest.mark.parametrize("norm", ["none", "layer"])
def test_a_model_without_batch_statistics_gets_only_running_rows(norm):
    cfg, model = _model(f"model.norm={norm}")
    rows = shift_rows(cfg, model, synthetic_data(n_test=100))
    assert {m for _, m, _, _ in rows} == {"shift_acc_running", "shift_loss_running"}
    assert {e for _, _, e, _ in rows} == {"clean", *ENTRIES}


def test_no_entries_no_rows_and_the_config_checks_entries():
    cfg = make_cfg(*TINY, "model.norm=batch")
    assert shift_rows(cfg, build_model(cfg.model, [0]), synthetic_data()) == []
    with pytest.raises(ConfigError, match="train.shifts"):
        make_cfg("train.shifts=[blur:2]")
    with pytest.raises(ConfigError, match="KIND:STRENGTH"):
        make_cfg("train.shifts=[rotation:steep]")
