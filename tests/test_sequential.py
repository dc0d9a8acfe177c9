"""Selection apart from confirmation (bnlab.analysis.sequential, selection.at_best_lr,
bnlab.confirm): the sequential rule's error rate under optional stopping, simulated with the
real verdict machinery; the two-stage lr choice on hand-made tables; the grid's edge extension."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import pytest

import bnlab.confirm as confirm_module
from bnlab.analysis.selection import ClaimError, at_best_lr
from bnlab.analysis.sequential import (
    BATCH,
    CAP,
    CONFIRM_FROM,
    FIRST,
    LOOKS,
    confirmation_seeds,
    next_rate,
    seeds_needed,
    wants_more,
)
from bnlab.analysis.verdicts import ALPHA, INCONCLUSIVE, SUPPORTED, Comparison, judge
from bnlab.confirm import edge_points

MARGIN = 0.05  # in units of the seeds' SD: a small margin, so support is mostly the t-test's


def _run_sequential(rng, effect: float, looks: int, gate: bool = True) -> tuple[str, int]:
    """One simulated confirmation: paired arms (difference ~ N(effect, 1) per seed), looked at
    with FIRST seeds, then BATCH more while wants_more asks (or, with gate=False, while
    inconclusive at all: the most peeking the design allows), at most CAP. The comparisons'
    looks = `looks` (1: a fixed-size test, peeked at). Its last verdict and seeds."""
    diff = rng.normal(effect, 1.0, CAP)
    n = FIRST
    while True:
        seeds = confirmation_seeds(n)
        a = pd.Series(diff[:n], index=seeds)
        b = pd.Series(np.zeros(n), index=seeds)
        c = Comparison("sim", a, b, MARGIN, looks=looks)
        (r,) = judge([c])
        more = wants_more(c, r) if gate else (n + BATCH if r.verdict == INCONCLUSIVE else 0)
        if not more or n >= CAP:
            return r.verdict, n
        n = min(CAP, more)


def test_false_support_stays_at_alpha_under_optional_stopping():
    """No true difference: the adaptive rule supports 'A > B' in at most ALPHA of experiments
    (binomial error allowed), as designed and peeking at every look; the same peeking
    without the looks' correction does not (about 0.15)."""
    rng = np.random.default_rng(0)
    reps = 500
    se = np.sqrt(ALPHA * (1 - ALPHA) / reps)

    def rate(looks, gate):
        return np.mean(
            [_run_sequential(rng, 0.0, looks, gate)[0] == SUPPORTED for _ in range(reps)]
        )

    assert rate(LOOKS, gate=True) <= ALPHA + 2 * se
    assert rate(LOOKS, gate=False) <= ALPHA + 2 * se
    assert rate(1, gate=False) > ALPHA + 2 * se  # peeking without the correction


def test_a_difference_well_past_the_margin_stops_at_the_first_look():
    rng = np.random.default_rng(1)
    runs = [_run_sequential(rng, 3.0, LOOKS) for _ in range(200)]
    assert sum(v == SUPPORTED and n == FIRST for v, n in runs) >= 0.95 * len(runs)


def test_an_undecidable_comparison_is_not_run_forever():
    """A difference on the margin cannot be told from it at any number of seeds: wants_more
    declines once CAP seeds would not suffice, instead of adding seeds up to CAP regardless."""
    rng = np.random.default_rng(2)
    stops = [_run_sequential(rng, MARGIN, LOOKS)[1] for _ in range(200)]
    assert max(stops) <= CAP and np.mean(stops) < CAP


def test_seeds_needed_is_the_normal_approximation():
    """n = (z_{1-alpha/looks} + z_power)^2 sd^2 / d^2, paired; twice that variance for Welch."""
    z = 2.2414027 + 0.8416212  # scipy-free: z(1 - 0.05/4), z(0.8)
    assert seeds_needed(1.0, 0.5, True) == pytest.approx((z / 0.5) ** 2, rel=1e-6)
    assert seeds_needed(1.0, 0.5, False) == pytest.approx(2 * (z / 0.5) ** 2, rel=1e-6)
    assert seeds_needed(1.0, 0.0, True) == np.inf


@pytest.mark.parametrize(
    "lr, up, want",
    [(3.0, True, 10.0), (1.0, True, 3.0), (0.03, False, 0.01), (0.01, False, 0.003),
     (0.3, False, 0.1), (1.0, False, 0.3), (0.5, True, 1.0)],
)  # fmt: skip
def test_next_rate_is_the_next_half_decade(lr, up, want):
    assert next_rate(lr, up) == want


def _table(rows) -> pd.DataFrame:
    """Members: (activation, norm, lr, seed, valid_acc, test_acc)."""
    t = pd.DataFrame(rows, columns=["model.activation", "model.norm", "optim.lr", "seed",
                                    "valid_acc", "test_acc"])  # fmt: skip
    t["model.placement"] = "before"
    t["status"] = "finished"
    t["run"] = [f"{a},{n},lr={lr}" for a, n, lr in zip(t["model.activation"], t["model.norm"],
                                                         t["optim.lr"])]  # fmt: skip
    return t


def test_only_selection_seeds_choose_and_only_confirmation_seeds_are_returned():
    sel = [("relu", "batch", lr, s, acc, 0.5) for lr, acc in ((0.1, 0.90), (1.0, 0.95))
           for s in (0, 1, 2)]  # fmt: skip
    # confirmation seeds at lr 1 (the chosen one) with a high held-out accuracy: they must not
    # take part in the choice, and they alone are returned
    conf = [("relu", "batch", 1.0, s, 0.10, 0.9) for s in confirmation_seeds(FIRST)]
    none = [("relu", "none", 0.1, s, 0.9, 0.4) for s in (0, 1, 2)]  # an arm not confirmed yet
    best = at_best_lr(_table(sel + conf + none))
    bn = best[best["model.norm"] == "batch"]
    assert sorted(bn["seed"]) == confirmation_seeds(FIRST) and set(bn["optim.lr"]) == {1.0}
    assert sorted(best.loc[best["model.norm"] == "none", "seed"]) == [0, 1, 2]


def test_confirmation_seeds_at_a_rate_the_selection_no_longer_chooses_are_refused():
    sel = [("relu", "batch", lr, s, acc, 0.5) for lr, acc in ((0.1, 0.97), (1.0, 0.95))
           for s in (0, 1, 2)]  # fmt: skip
    conf = [("relu", "batch", 1.0, CONFIRM_FROM, 0.95, 0.9)]
    with pytest.raises(ClaimError, match=r"confirmation seed 100 .* lr 1, not at the rate"):
        at_best_lr(_table(sel + conf))


def test_a_rate_chosen_on_the_grids_edge_extends_the_grid_that_way():
    rows = [("relu", "batch", lr, s, acc, 0.5) for lr, acc in ((0.1, 0.90), (1.0, 0.95))
            for s in (0, 1)]  # fmt: skip
    rows += [("relu", "none", lr, s, acc, 0.5) for lr, acc in ((0.1, 0.93), (1.0, 0.91))
             for s in (0, 1)]  # fmt: skip
    rows += [
        ("sigmoid", "none", lr, s, acc, 0.5)
        for lr, acc in ((0.1, 0.8), (0.3, 0.9), (1.0, 0.85))
        for s in (0, 1)
    ]  # fmt: skip  an interior choice: no extension
    t = _table(rows)
    points = {
        r: ([f"optim.lr={lr}", f"+x={r}", "experiment=e"], [0, 1, *confirmation_seeds(2)])
        for r, lr in zip(t["run"], t["optim.lr"])
    }
    new = edge_points(t, points)
    got = sorted(o[-1] for o, _ in new.values())
    assert got == ["optim.lr=0.03", "optim.lr=3.0"]
    assert all(seeds == [0, 1] for _, seeds in new.values())  # selection seeds only


@pytest.mark.slow
def test_reproduce_extends_the_edge_then_confirms_on_fresh_seeds_and_a_rerun_trains_nothing(
    mnist_root, tmp_path, monkeypatch
):
    """study_momentum cut to relu at lr 0.1 and 1 (a two-rate grid: every choice is on its
    edge), 24 steps: the grid grows half a decade at a time from the chosen edge, the chosen
    run folders get confirmation seeds 100-104 and only they are judged; a second run decides
    the same and trains no member."""
    from bnlab import reproduce
    from bnlab.analysis.claims.framework import Tables
    from bnlab.analysis.sequential import MAX_EXTENSIONS
    from bnlab.confirm import more_seeds

    monkeypatch.setenv("BNLAB_DATA_ROOT", str(mnist_root))
    argv = [*reproduce.TINY, "optim.lr=0.1,1.0", "model.activation=relu"]
    argv += ["--only", "study_momentum", "--jobs", "2", "--results", str(tmp_path)]
    assert reproduce.main(argv) == 0
    t = Tables(tmp_path / "tables").get("study_momentum")
    selection = t[t["seed"] < CONFIRM_FROM]
    for norm, arm in selection.groupby("model.norm"):
        rates = sorted(set(arm["optim.lr"]))
        assert {0.1, 1.0} <= set(rates)
        best = at_best_lr(t[t["model.norm"] == norm])
        lr = float(best["optim.lr"].iloc[0])
        assert sorted(best["seed"]) == confirmation_seeds(FIRST)  # judged: fresh seeds only
        assert lr not in (rates[0], rates[-1]) or len(rates) == 2 + MAX_EXTENSIONS
        confirmed = t[(t["model.norm"] == norm) & (t["seed"] >= CONFIRM_FROM)]
        assert set(confirmed["optim.lr"]) == {lr}
    times = pd.read_csv(tmp_path / "tables" / "reproduction_times.csv").set_index("experiment")
    assert times.loc["study_momentum_confirmation", "members"] >= 2 * FIRST
    # every look was taken: on the final tables no comparison asks for seeds it does not have
    have = t[t["seed"] >= CONFIRM_FROM].groupby("run")["seed"].nunique()
    wanted = more_seeds("study_momentum", tmp_path)
    assert all(n <= have.get(run, 0) for run, n in wanted.items()), (wanted, have)
    report = (tmp_path / "CLAIMS.md").read_text()
    assert "selection seeds 0, 1, confirmation seeds 100-104 (study_momentum.csv)" in report
    assert reproduce.main([*argv, "--stage", "train"]) == 0
    again = pd.read_csv(tmp_path / "tables" / "reproduction_times.csv").set_index("experiment")
    assert again.loc["study_momentum_confirmation", "members"] == 0
    assert Tables(tmp_path / "tables").get("study_momentum").equals(t)


def test_each_look_is_judged_on_tables_that_hold_the_seeds_it_trained(monkeypatch, tmp_path):
    """confirm() collects and measures the sweep again after every look before asking which
    comparisons want more seeds; judged on the tables of the look before, it stopped after the
    first look whatever the comparisons said."""
    events, done = [], set()
    fake = type("Exp", (), {"sweep": "e", "arm_keys": ()})
    monkeypatch.setattr(confirm_module, "EXPERIMENTS", {"e": fake})
    monkeypatch.setattr(confirm_module, "edge_points", lambda *a: {})
    monkeypatch.setattr(confirm_module, "chosen_runs", lambda *a: ["r"])
    monkeypatch.setattr(confirm_module, "_points", lambda sweep: {"r": (["x=1"], [0, 1])})
    monkeypatch.setattr(confirm_module, "_done", lambda folder, s: s in done)

    def table(name, results):
        events.append(("tables", len(done)))

    def train(sweep, todo, jobs):
        done.update(todo["r"][1])
        events.append(("train", len(done)))
        return Counter(members=len(done))

    def more(name, results):  # as sequential.wants_more: BATCH more while undecided, to CAP
        seen = [n for kind, n in events if kind == "tables"][-1] - 2  # confirmation seeds
        return {"r": seen + BATCH} if seen < CAP else {}

    monkeypatch.setattr(confirm_module, "_table", table)
    monkeypatch.setattr(confirm_module, "_train", train)
    monkeypatch.setattr(confirm_module, "more_seeds", more)
    row = confirm_module.confirm("e", tmp_path, jobs=1)
    assert done == {0, 1, *confirmation_seeds(CAP)}  # every look up to the cap
    trained = [i for i, (kind, _) in enumerate(events) if kind == "train"]
    assert all(events[i + 1] == ("tables", events[i][1]) for i in trained)
    assert row["experiment"] == "e_confirmation"
