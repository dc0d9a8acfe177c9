"""The claims logic on hand-built tables with known verdicts, and its statistics against scipy."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import REPO
from scipy import stats

from bnlab.claims import (
    INCONCLUSIVE,
    MIXED,
    NOT_SUPPORTED,
    SUPPORTED,
    Comparison,
    Tables,
    build_claims,
    combine,
    diverged_rule,
    main,
    render,
    verdict,
)
from bnlab.records import update_manifest


@pytest.mark.parametrize(
    "mean, lo, hi, margin, kind, expected",
    [
        (0.02, 0.01, 0.03, 0.005, "greater", SUPPORTED),
        (0.004, 0.001, 0.007, 0.005, "greater", INCONCLUSIVE),  # real but maybe too small
        (0.002, 0.001, 0.003, 0.005, "greater", NOT_SUPPORTED),  # reliably below the margin
        (-0.02, -0.03, -0.01, 0.005, "greater", NOT_SUPPORTED),  # the opposite holds
        (0.01, -0.01, 0.03, 0.005, "greater", INCONCLUSIVE),  # seeds too noisy
        (0.001, -0.003, 0.004, 0.005, "equivalent", SUPPORTED),
        (0.02, 0.01, 0.03, 0.005, "equivalent", NOT_SUPPORTED),
        (0.004, -0.002, 0.01, 0.005, "equivalent", INCONCLUSIVE),
    ],
)
def test_verdict_known_answers(mean, lo, hi, margin, kind, expected):
    assert verdict(mean, lo, hi, margin, kind) == expected


def test_combine():
    assert combine([SUPPORTED, SUPPORTED]) == SUPPORTED
    assert combine([SUPPORTED, NOT_SUPPORTED]) == MIXED
    assert combine([SUPPORTED, INCONCLUSIVE]) == MIXED
    assert combine([]) == INCONCLUSIVE


def test_intervals_match_scipy():
    rng = np.random.default_rng(0)
    a = pd.Series(rng.normal(0.9, 0.01, 5), index=range(5))
    b = pd.Series(rng.normal(0.88, 0.02, 5), index=range(5))
    mean, lo, hi, paired = Comparison("x", a, b, 0.005).diff()
    ci = stats.ttest_rel(a, b).confidence_interval()
    assert paired and (lo, hi) == pytest.approx((ci.low, ci.high))
    assert mean == pytest.approx((a - b).mean())
    b7 = pd.Series(rng.normal(0.88, 0.02, 7), index=range(10, 17))  # other seeds: Welch
    mean, lo, hi, paired = Comparison("x", a, b7, 0.005).diff()
    ci = stats.ttest_ind(a, b7, equal_var=False).confidence_interval()
    assert not paired and (lo, hi) == pytest.approx((ci.low, ci.high))
    mean, lo, hi, _ = Comparison("x", a * 3, a, 0.1, log=True).diff()  # ratios: log scale
    assert mean == pytest.approx(math.log(3)) and lo == hi == pytest.approx(math.log(3))


SEEDS = range(5)


def _members(settings: dict, values, **columns) -> list[dict]:
    return [
        {"seed": s, "status": "finished", **settings, **columns, "test_acc": v}
        for s, v in zip(SEEDS, values)
    ]


def _write(folder, name, rows):
    """A table as bnlab tables writes it: the CSV and its manifest entry."""
    pd.DataFrame(rows).to_csv(folder / f"{name}.csv", index=False)
    update_manifest(folder, [f"{name}.csv"])


def test_claims_on_known_tables(tmp_path):
    noise = np.array([0.001, -0.002, 0.0, 0.002, -0.001])
    rows = []
    gains = {"relu": 0.01, "lrelu": 0.01, "sigmoid": 0.2, "softplus": 0.02, "tanh": 0.03}
    for act, gain in gains.items():
        for norm, acc in (("none", 0.9), ("batch", 0.9 + gain)):
            rows += _members(
                {"model.activation": act, "model.norm": norm, "optim.name": "sgd"},
                acc + noise,
                gap=0.01 if norm == "none" else 0.003,
            )
    _write(tmp_path, "mlds2017", rows)
    # C16: with and without the bias give the same accuracy (within noise): equivalent
    bias = []
    for act in ("relu", "sigmoid"):
        for on in (False, True):
            bias += _members(
                {"model.activation": act, "model.norm": "batch", "model.bias_before_norm": on},
                0.95 + noise[::-1] * (2 if on else 1),
            )
    _write(tmp_path, "study_bias", bias)
    # C14: seeds disagree wildly about the placement: inconclusive
    wild = np.array([0.05, -0.05, 0.04, -0.03, 0.0])
    place = []
    for act in ("relu", "sigmoid"):
        place += _members({"model.activation": act, "model.placement": "before"}, 0.9 + wild)
        place += _members({"model.activation": act, "model.placement": "after"}, 0.9 - wild)
    _write(tmp_path, "study_placement", place)

    claims = {c.key: c for c in build_claims(Tables(tmp_path))}
    assert claims["C4"].verdict == SUPPORTED
    assert "largest for sigmoid (as claimed)" in claims["C4"].notes[0]
    assert claims["C18"].verdict == SUPPORTED  # gap without BN larger by 0.007 > 0.002
    assert claims["C16"].verdict == SUPPORTED
    assert claims["C14"].verdict == INCONCLUSIVE
    assert claims["C12"].verdict == "not run" and "study_lr.csv" in claims["C12"].missing
    # C1's measure is not in the table: its comparisons have no members -> inconclusive
    assert claims["C1"].verdict == INCONCLUSIVE
    report = render(list(claims.values()))
    assert "| [C4](#c4) | BN improves accuracy for every activation" in report
    assert "**Verdict: supported.**" in report and "Out of scope" in report

    # BN worse for relu only: the per-activation comparisons disagree -> mixed
    t = pd.read_csv(tmp_path / "mlds2017.csv")
    hurt = (t["model.activation"] == "relu") & (t["model.norm"] == "batch")
    t.loc[hurt, "test_acc"] -= 0.05
    _write(tmp_path, "mlds2017", t)
    c4 = next(c for c in build_claims(Tables(tmp_path)) if c.key == "C4")
    assert c4.verdict == MIXED
    assert [c.verdict() for c in c4.comparisons][0] == NOT_SUPPORTED


def test_one_rule_for_diverged_members_and_non_finite_numbers():
    table = pd.DataFrame(
        {
            "run": ["a", "b", "c"],
            "seed": [0, 1, 2],
            "status": ["finished", "diverged", "finished"],
            "optim.lr": [0.1, 0.1, 0.1],
            "test_acc": [0.95, 0.97, 0.96],  # b's is its last good evaluation
            "test_acc_batch": [0.95, 0.97, 0.96],
            "steps_to_0.9": [100.0, 50.0, 80.0],
            "landscape_beta": [1.0, 2.0, np.inf],
        }
    )
    t = diverged_rule(table)
    assert t["test_acc"].tolist() == [0.95, 0.0, 0.96]
    assert t["test_acc_batch"].tolist() == [0.95, 0.0, 0.96]
    assert t["steps_to_0.9"].isna().tolist() == [False, True, False]
    assert t["landscape_beta"].isna().tolist() == [False, True, True]  # never +inf
    assert t["optim.lr"].tolist() == [0.1] * 3 and t["seed"].tolist() == [0, 1, 2]


def test_the_committed_report_regenerates_and_damaged_tables_are_refused(tmp_path, capsys):
    shutil.copytree(REPO / "results" / "tables", tmp_path / "tables")
    assert main(["--results", str(tmp_path)]) == 0
    assert (tmp_path / "CLAIMS.md").read_text() == (REPO / "results" / "CLAIMS.md").read_text()
    table = tmp_path / "tables" / "mlds2017.csv"
    good = table.read_text()
    for damaged in ("\n".join(good.splitlines()[:50]) + "\n", good[: len(good) // 2], ""):
        table.write_text(damaged)  # what a kill mid-write or an edit would leave
        capsys.readouterr()
        assert main(["--results", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {table}") and err.count("\n") == 1, err
    assert main(["--results", str(tmp_path / "absent")]) == 2
    table.write_text(good)
    assert main(["--results", str(tmp_path)]) == 0
    for damage in ("study_dropout.csv", "manifest.json"):  # a written table lost; no manifest
        (tmp_path / "tables" / damage).unlink()
        capsys.readouterr()
        assert main(["--results", str(tmp_path)]) == 2
        assert damage in capsys.readouterr().err
