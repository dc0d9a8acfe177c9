"""The per-member measures of `bnlab tables`, on hand-made runs and histories with known
answers, and the refusal of a sweep whose probe ran but recorded none of a read metric."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bnlab.analysis.tables import FIT_LOSS, MissingMeasure, check_sources, measures
from bnlab.runs.collect import collect
from bnlab.runs.config import RunConfig, to_dict
from bnlab.runs.records import write_config

HISTORY = ["run", "seed", "step", "split", "metric", "layer", "value"]


def _tables():
    runs = pd.DataFrame(
        {
            "run": ["a", "a"],
            "seed": [0, 1],
            "model.norm": ["batch", "batch"],
            "model.activation": ["relu", "relu"],
            "optim.name": ["sgd", "sgd"],
            "optim.lr": [0.1, 0.1],
            "data.batch_size": [64, 64],
            "probes.jacobian.every": [10, 10],
            "status": ["finished", "finished"],
            "steps_done": [30, 30],
            "test_acc": [0.95, 0.9],
            "train_acc": [0.99, 0.91],
            "best_test_acc": [0.95, 0.9],
            "test_loss": [0.2, 0.3],
            "train_loss": [0.01, 0.3],
        }
    )
    rows = []
    for seed, train_loss in ((0, [2.0, 0.5, FIT_LOSS, 0.01]), (1, [2.0, 1.0, 0.5, 0.3])):
        for i, step in enumerate((0, 10, 20, 30)):
            rows += [
                (seed, step, "train", "loss", "", train_loss[i]),
                (seed, step, "train", "acc", "", 0.5 + 0.1 * i),
                (seed, step, "test", "loss", "", 3.0 - i),
                (seed, step, "test", "acc", "", 0.4 + 0.1 * i + 0.01 * seed),
            ]
            for layer, (v, m) in {"fc1": (8.0, 2.0), "fc2": (1.0, 1.0)}.items():
                rows += [
                    (seed, step, "test", "jac_s2_var", layer, v * (i + 1)),
                    (seed, step, "test", "jac_s2_mean", layer, m),
                    (seed, step, "test", "jac_frac_iso", layer, 0.5),
                    (seed, step, "test", "jac_log10_cond", layer, 1.0),
                ]
    hist = pd.DataFrame(rows, columns=["seed", "step", "split", "metric", "layer", "value"])
    return runs, hist.assign(run="a")


def test_measures_known_answers():
    runs, hist = _tables()
    t = measures(runs, hist).set_index("seed")
    # spread var(s^2)/mean(s^2)^2 averaged over the probes after step 0 (i = 1, 2, 3)
    assert t.loc[0, "jac_spread_fc1"] == pytest.approx(np.mean([8 * 2 / 4, 8 * 3 / 4, 8 * 4 / 4]))
    assert t.loc[1, "jac_spread_fc2"] == pytest.approx(np.mean([2, 3, 4]))
    # matched fit: seed 0 first reaches FIT_LOSS at step 20; seed 1 never does
    assert t.loc[0, "fit_step"] == 20
    assert t.loc[0, "test_loss_at_fit"] == 1.0 and t.loc[0, "test_acc_at_fit"] == pytest.approx(0.6)
    assert t.loc[0, "gap_at_fit"] == pytest.approx(0.7 - 0.6)
    assert np.isnan(t.loc[1, "fit_step"]) and np.isnan(t.loc[1, "gap_at_fit"])
    # steps to a target: the first evaluated step at or above it, or steps_done + 1
    assert t.loc[1, "steps_to_0.9"] == 31 and not t.loc[1, "reached_0.9"]
    assert t.loc[0, "gap"] == pytest.approx(0.04)


def test_a_probe_that_ran_but_recorded_nothing_is_refused():
    runs, hist = _tables()
    check_sources(runs, hist, "s")
    renamed = hist.assign(metric=hist["metric"].replace("jac_s2_var", "jac_s2_variance"))
    with pytest.raises(MissingMeasure, match="'jac_s2_var'.*probes.jacobian"):
        check_sources(runs, renamed, "s")
    check_sources(runs.assign(**{"probes.jacobian.every": 0}), renamed, "s")  # probe off: fine


def test_curvature_at_matched_training_loss():
    runs, hist = _tables()
    curv = [
        (seed, step, "train", "curv_overshoot", "grad", 10.0 * seed + step)
        for seed in (0, 1)
        for step in (10, 20, 30)
    ]
    hist = pd.concat([hist, pd.DataFrame(curv, columns=hist.columns[:-1]).assign(run="a")])
    t = measures(runs, hist).set_index("seed")
    assert t.loc[0, "curv_overshoot_mean"] == 20.0 and t.loc[1, "curv_overshoot_mean"] == 30.0
    assert t.loc[0, "curv_overshoot_at_0.3"] == 20.0  # seed 0: training loss 0.02 at step 20
    assert t.loc[1, "curv_overshoot_at_0.3"] == 40.0  # seed 1: 0.3 at step 30
    assert np.isnan(t.loc[1, "curv_overshoot_at_0.1"])  # never that low


def test_an_explicit_null_is_a_value_and_a_missing_setting_its_default():
    """Issue 30: model.bn_momentum=null and 0.1 are two configurations (the null stays null,
    empty in the CSV); an older member whose config lacks the setting counts as 0.1."""
    runs, hist = _tables()
    runs = pd.concat([runs, runs.assign(run="b")], ignore_index=True)
    hist = pd.concat([hist, hist.assign(run="b")], ignore_index=True)
    runs["model.bn_momentum"] = [None, None, 0.1, 0.1]
    runs["null_settings"] = ["model.bn_momentum,train.epochs", "model.bn_momentum", "", ""]
    t = measures(runs, hist).set_index(["run", "seed"])
    assert t["model.bn_momentum"].isna().tolist() == [True, True, False, False]
    csv = t.reset_index().to_csv(index=False).splitlines()
    col = csv[0].split(",").index("model.bn_momentum")
    assert [row.split(",")[col] for row in csv[1:]] == ["", "", "0.1", "0.1"]
    missing = runs.assign(null_settings=["", "model.init_seed", "", ""])  # config lacks it
    assert "model.bn_momentum" not in measures(missing, hist)  # 0.1 throughout: not varying
    assert "model.bn_momentum" not in measures(runs.drop(columns="null_settings"), hist)


def test_collect_names_the_settings_a_config_sets_to_null(tmp_path):
    for name, momentum in (("a", None), ("b", 0.1)):
        config = to_dict(RunConfig())
        config["model"]["bn_momentum"] = momentum
        write_config(tmp_path / name, {**config, "seeds": [0]})
    del config["model"]["bn_momentum"]  # an older member's config, without the setting
    write_config(tmp_path / "c", {**config, "seeds": [0]})
    runs = collect(tmp_path)[0].set_index("run")
    assert "model.bn_momentum" in runs.loc["a", "null_settings"].split(",")
    assert "model.bn_momentum" not in runs.loc["b", "null_settings"].split(",")
    assert "model.bn_momentum" not in runs.loc["c", "null_settings"].split(",")
    table = measures(runs.reset_index().assign(seed=0), pd.DataFrame(columns=HISTORY))
    assert table.set_index("run")["model.bn_momentum"].isna().tolist() == [True, False, False]
