"""The claims report: `bnlab claims` reads RESULTS/tables/*.csv (bnlab.tables) and
writes RESULTS/CLAIMS.md, one section per claim C1-C19 (the claims made by the 2017 study, the BN
explainers and the papers they cite).

Each claim is split into comparisons between two arms (sets of members, one value per seed).
A comparison's verdict comes from the 95% t-interval of the mean difference (paired by seed
when both arms have the same seeds: BN and no-BN members of one seed start from the same
weights) and a smallest effect that matters, `margin`:

  directional claim "A > B":   supported       the interval lies above 0 and the mean
                                               difference is at least the margin
                               not supported   the interval lies below 0 (the opposite holds),
                                               or entirely below the margin (too small to matter)
                               inconclusive    otherwise: the interval does not decide (the
                                               seeds spread too much, or it straddles the margin)
  equivalence claim "A ~ B":   supported       the interval lies within +-margin
                               not supported   the interval lies entirely outside +-margin
                               inconclusive    otherwise

A claim's verdict combines its comparisons: all alike -> that verdict; otherwise "mixed".
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from . import experiments
from .collect import acc_or_zero, select
from .records import MANIFEST, manifest, verify, write_atomic

SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE, MIXED = (
    "supported",
    "not supported",
    "inconclusive",
    "mixed",
)
ACC_MARGIN = 0.005  # single-seed accuracy differences under ~0.005 are noise on MNIST


@dataclass
class Comparison:
    """Arm a vs arm b on one measure; claim: a > b (kind 'greater') or a ~ b ('equivalent')."""

    label: str
    a: pd.Series  # values indexed by seed
    b: pd.Series
    margin: float
    kind: str = "greater"
    log: bool = False  # compare log values (ratios) instead of differences
    unit: str = ""

    def diff(self) -> tuple[float, float, float, bool]:
        """Mean difference a - b (of logs if self.log) and its 95% t-interval; paired?"""
        a, b = self.a.dropna(), self.b.dropna()
        if self.log:
            a, b = np.log(a.clip(lower=1e-300)), np.log(b.clip(lower=1e-300))
        paired = len(a) > 1 and sorted(a.index) == sorted(b.index)
        if paired:
            d = (a - b.reindex(a.index)).to_numpy()
            n, mean, se = len(d), d.mean(), d.std(ddof=1) / math.sqrt(len(d))
            dof = n - 1
        else:
            if len(a) < 2 or len(b) < 2:
                return (float(a.mean() - b.mean()), -math.inf, math.inf, False)
            va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
            mean, se = a.mean() - b.mean(), math.sqrt(va + vb)
            dof = (va + vb) ** 2 / ((va**2) / (len(a) - 1) + (vb**2) / (len(b) - 1) or 1e-300)
        if se == 0:
            return float(mean), float(mean), float(mean), paired
        t = stats.t.ppf(0.975, dof)
        return float(mean), float(mean - t * se), float(mean + t * se), paired

    def verdict(self) -> str:
        """This comparison's verdict (see the module docstring)."""
        return verdict(*self.diff()[:3], margin=self.margin, kind=self.kind)


def verdict(mean: float, lo: float, hi: float, margin: float, kind: str = "greater") -> str:
    """The verdict of one comparison from its mean difference and 95% interval [lo, hi]."""
    if kind == "equivalent":
        if -margin <= lo and hi <= margin:
            return SUPPORTED
        if lo > margin or hi < -margin:
            return NOT_SUPPORTED
        return INCONCLUSIVE
    if lo > 0 and mean >= margin:
        return SUPPORTED
    if hi < 0 or hi < margin:
        return NOT_SUPPORTED
    return INCONCLUSIVE


def combine(verdicts: list[str]) -> str:
    """A claim's verdict from its comparisons' verdicts."""
    if not verdicts:
        return INCONCLUSIVE
    return verdicts[0] if len(set(verdicts)) == 1 else MIXED


@dataclass
class Claim:
    """One claim of the ledger: what is claimed, how bnlab tests it, and the comparisons."""

    key: str
    statement: str
    source: str
    test: str
    figure: str | None
    comparisons: list[Comparison] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    missing: str | None = None

    @property
    def verdict(self) -> str:
        """The claim's verdict: its comparisons combined, or 'not run'."""
        if self.missing:
            return "not run"
        return combine([c.verdict() for c in self.comparisons])


class MissingTable(LookupError):
    """A sweep's table is not in RESULTS/tables (its experiment has not been run)."""


class Tables:
    """The per-member tables of RESULTS/tables, asked for by experiment (bnlab.experiments)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def get(self, experiment: str) -> pd.DataFrame:
        """The members of the experiment's sweep table that finished or diverged
        (diverged_rule applied); MissingTable if absent."""
        sweep = experiments.sweep(experiment)
        path = self.folder / f"{sweep}.csv"
        if not path.exists():
            try:
                listed = (self.folder / MANIFEST).exists() and path.name in manifest(self.folder)
            except ValueError as e:  # an unreadable manifest: a report, not a traceback
                raise TableError(str(e)) from None
            if listed:  # written, then lost
                raise TableError(f"{path} is missing but was written; rerun `bnlab tables`")
            raise MissingTable(sweep)
        t = read_table(path)
        return diverged_rule(t[t["status"].isin(["finished", "diverged"])])


class TableError(ValueError):
    """A table that is not what bnlab tables wrote: the report is not written."""


def read_table(path: Path, members: bool = True) -> pd.DataFrame:
    """A table of RESULTS/tables, verified against the manifest written with it (and, for a
    per-member table, holding members)."""
    try:
        verify(path)
        table = pd.read_csv(path)
        if members and (table.empty or "status" not in table):
            raise ValueError("no members")
    except (ValueError, pd.errors.ParserError) as e:  # EmptyDataError is a ValueError
        raise TableError(
            f"{path}: {' '.join(str(e).split())}; rerun `bnlab tables` (or `bnlab reproduce "
            "--stage report`) to write the tables again"
        ) from None
    return table


def diverged_rule(table: pd.DataFrame) -> pd.DataFrame:
    """The one rule for failures in every claim: a non-finite number is missing (NaN), and a
    diverged member did not train: its accuracies count as 0 and its other measures are
    missing (its last good evaluation before divergence is not a result)."""
    t = table.replace([np.inf, -np.inf], np.nan)
    settings = ("seed", "data.", "model.", "optim.", "train.", "probes.")
    results = [c for c in t.select_dtypes("number").columns if not c.startswith(settings)]
    div = t["status"] == "diverged"
    t.loc[div, results] = np.nan
    t.loc[div, [c for c in results if c.endswith("acc") or "_acc_" in c]] = 0.0
    return t


def arm(table: pd.DataFrame, measure: str, **where) -> pd.Series:
    """One value of `measure` per seed among the members matching `where` ('__' for '.')."""
    if measure not in table:  # not recorded by these runs: an empty arm (inconclusive)
        return pd.Series(dtype=float)
    rows = select(table, **where)
    if rows["seed"].duplicated().any():
        raise ValueError(f"arm {where} of {measure} matches several members per seed")
    return rows.set_index("seed")[measure]


ACTS = ["relu", "lrelu", "sigmoid", "softplus", "tanh"]


def _bn_vs_none(t, measure, margin, acts=ACTS, flip=False, log=False, unit="", **where):
    """Per activation: BN > no BN (or no BN > BN with flip)."""
    out = []
    for act in acts:
        bn = arm(t, measure, model__norm="batch", model__activation=act, **where)
        no = arm(t, measure, model__norm="none", model__activation=act, **where)
        if bn.empty or no.empty:
            continue
        a, b, lab = (no, bn, f"{act}: no BN > BN") if flip else (bn, no, f"{act}: BN > no BN")
        out.append(Comparison(lab, a, b, margin, log=log, unit=unit))
    return out


def build_claims(tables: Tables) -> list[Claim]:
    """Every claim with its comparisons on the tables (claims whose runs are missing say so)."""
    claims = []

    def claim(key, statement, source, test, figure, make):
        c = Claim(key, statement, source, test, figure)
        try:
            make(c)
        except MissingTable as e:
            c.missing = f"table {e.args[0]}.csv not found: run its experiment"
        claims.append(c)

    def c1(c):
        t = tables.get("mlds2017_fig1")
        c.comparisons = _bn_vs_none(
            t, "w2_mean_abs_final", math.log(1.1), flip=True, log=True, optim__name="sgd"
        )
        for n in ("none", "batch"):  # the figure's setting: sigmoid
            where = dict(model__norm=n, model__activation="sigmoid", optim__name="sgd")
            s, f = arm(t, "w2_mean_abs_start", **where), arm(t, "w2_mean_abs_final", **where)
            c.notes.append(
                f"sigmoid, {'BN' if n == 'batch' else 'no BN'}: mean |W2| "
                f"{s.mean():.4f} at step 0 -> {f.mean():.4f} at the end"
            )

    claim(
        "C1",
        "BN limits the growth of weight magnitude ('BN regularises').",
        "2017 study, Fig. 1",
        "mean |W2| at the end of the 40,000-step SGD runs (lr 1e-4, summed loss), no BN > BN, "
        "per activation; compared as a ratio, margin 10%.",
        "mlds2017_fig1",
        c1,
    )

    def c2(c):
        t = tables.get("mlds2017_fig2")
        c.comparisons = _bn_vs_none(
            t, "grad1_mean_abs_1k", math.log(1.25), acts=["sigmoid", "relu"], log=True
        )

    claim(
        "C2",
        "BN enlarges first-layer gradients and so fights vanishing gradients (sigmoid ~0.1 vs "
        "~0.02 in the study).",
        "2017 study, Fig. 2",
        "mean |dL/dW1| of the summed loss averaged over steps 1-1,000, BN > no BN, sigmoid and "
        "relu; ratio, margin 25%.",
        "mlds2017_fig2",
        c2,
    )

    def c3(c):
        t = tables.get("mlds2017_fig4")
        for layer in ("fc1", "fc2", "hidden"):
            for cmp in _bn_vs_none(t, f"jac_frac_iso_{layer}", 0.05, optim__name="sgd"):
                cmp.label = f"{cmp.label.split(':')[0]}, {layer}: BN > no BN"
                c.comparisons.append(cmp)

    claim(
        "C3",
        "BN pushes layer-Jacobian singular values toward 1 (better isometry).",
        "2017 study; Ioffe & Szegedy Sec. 3.3 (conjecture)",
        "fraction of per-sample Jacobian singular values in [1/2, 2] (BN in eval mode, 100 test "
        "images), averaged over the probes of the 40,000-step SGD runs, BN > no BN, per "
        "activation, for layer 1, layer 2 and the end-to-end hidden Jacobian; margin 0.05.",
        "mlds2017_fig3",
        c3,
    )

    def c4(c):
        t = tables.get("mlds2017_fig4")
        c.comparisons = _bn_vs_none(t, "test_acc", ACC_MARGIN, optim__name="sgd")
        gains = {x.label.split(":")[0]: x.diff()[0] for x in c.comparisons}
        if gains:
            best = max(gains, key=gains.get)
            c.notes.append(
                "gain from BN (mean test accuracy difference): "
                + ", ".join(f"{k} {v:+.4f}" for k, v in gains.items())
                + f"; largest for {best}"
                + (" (as claimed)" if best == "sigmoid" else " (the claim says sigmoid)")
            )

    claim(
        "C4",
        "BN improves accuracy for every activation, and helps sigmoid the most.",
        "2017 study, Fig. 4",
        "final test accuracy (40,000 steps, SGD lr 1e-4, BN with running statistics), BN > no "
        "BN per activation; margin 0.005.",
        "mlds2017_fig4",
        c4,
    )

    def c5(c):
        t = tables.get("mlds2017_fig5")
        a = arm(t, "test_acc", model__activation="relu", optim__name="sgd", model__norm="batch")
        b = arm(t, "test_acc", model__activation="relu", optim__name="adam", model__norm="none")
        c.comparisons.append(
            Comparison("relu+SGD+BN ~ relu+Adam, no BN", a, b, ACC_MARGIN, "equivalent")
        )
        bn = (
            t[t["model.norm"] == "batch"]
            .groupby(["model.activation", "optim.name"])["test_acc"]
            .mean()
        )
        if {("relu", "sgd"), ("sigmoid", "sgd"), ("relu", "adam"), ("sigmoid", "adam")} <= set(
            bn.index
        ):
            act = abs(bn["relu"].mean() - bn["sigmoid"].mean())
            opt = abs(bn.xs("adam", level=1).mean() - bn.xs("sgd", level=1).mean())
            c.notes.append(
                f"with BN: activation effect |relu - sigmoid| = {act:.4f}, optimiser effect "
                f"|Adam - SGD| = {opt:.4f} (mean final test accuracy): the "
                f"{'activation' if act > opt else 'optimiser'} matters more"
            )

    claim(
        "C5",
        "With BN the activation matters more than the optimiser; relu+SGD+BN is about as good as "
        "relu+Adam without BN.",
        "2017 study, Fig. 5",
        "final test accuracy after 40,000 steps (lr 1e-4): relu+SGD+BN equivalent to relu+Adam "
        "without BN within 0.005; the activation and optimiser effects under BN as a note.",
        "mlds2017_fig5",
        c5,
    )

    def c6(c):
        t = tables.get("mlds2017_fig6")
        for col, what in (
            ("test_acc_running", "running statistics"),
            ("test_acc_batch", "batch statistics"),
        ):
            no = arm(t, "test_acc", model__norm="none", data__batch_size=4)
            bn = arm(t, col, model__norm="batch", data__batch_size=4)
            c.comparisons.append(
                Comparison(f"batch 4, faithful, BN with {what}: no BN > BN", no, bn, ACC_MARGIN)
            )
        try:
            e = tables.get("mlds2017_fig6_epochs")
            no = arm(e, "test_acc", model__norm="none", data__batch_size=4)
            bn = arm(e, "test_acc", model__norm="batch", data__batch_size=4)
            c.comparisons.append(
                Comparison(
                    "batch 4, corrected (mean loss, 5 epochs): no BN > BN", no, bn, ACC_MARGIN
                )
            )
        except MissingTable:
            c.notes.append("corrected companion (mlds2017_batch_epochs) not run")
        for bs in (16, 64, 256):
            no = arm(t, "test_acc", model__norm="none", data__batch_size=bs)
            bn = arm(t, "test_acc_running", model__norm="batch", data__batch_size=bs)
            if len(no) and len(bn):
                c.notes.append(
                    f"batch {bs}: BN - no BN = {bn.mean() - no.mean():+.4f} "
                    "(faithful, running statistics)"
                )

    claim(
        "C6",
        "BN hurts at very small batch sizes (batch 4).",
        "2017 study, Fig. 6",
        "final test accuracy at batch 4, no BN > BN: faithful runs (sigmoid, SGD lr 0.01 on the "
        "summed loss, 40,000 steps) with BN evaluated with running and with batch statistics, "
        "and the corrected companion (mean loss, equal 5 epochs); margin 0.005.",
        "mlds2017_fig6",
        c6,
    )

    def c7(c):
        t = tables.get("mlds2017_fig9")
        no = arm(t, "test_acc", model__norm="none", data__batch_size=4)
        bn = arm(t, "test_acc_running", model__norm="batch", data__batch_size=4)
        rn = arm(t, "test_acc_running", model__norm="renorm", data__batch_size=4)
        c.comparisons.append(Comparison("batch 4: Batch Renorm > BN", rn, bn, ACC_MARGIN))
        penalty = no.mean() - bn.mean()
        c.notes.append(
            f"small-batch penalty of BN (no BN - BN) = {penalty:+.4f}; Batch Renorm - BN = "
            f"{rn.mean() - bn.mean():+.4f}; Batch Renorm - no BN = {rn.mean() - no.mean():+.4f}"
        )
        ln = arm(t, "test_acc", model__norm="layer", data__batch_size=4)
        if len(ln):
            c.notes.append(f"layer norm (batch-independent): {ln.mean():.4f} vs BN {bn.mean():.4f}")

    claim(
        "C7",
        "Batch Renorm removes most of the small-batch penalty.",
        "2017 study, Fig. 9; Ioffe 2017",
        "final test accuracy at batch 4 (faithful Fig. 6 protocol; Batch Renorm with the paper's "
        "r_max/d_max schedule), both evaluated with running statistics: Batch Renorm > BN, "
        "margin 0.005; the size of the penalty it removes as a note.",
        "mlds2017_fig9",
        c7,
    )

    def c8(c):
        t = tables.get("mlds2017_mismatch")
        for col, what in (
            ("test_acc_batch", "test-batch statistics (the study's)"),
            ("test_acc_running", "running statistics"),
        ):
            for ratio in (9.0, 19.0, 99.0):
                no = arm(t, "test_acc", model__norm="none", data__test_ratio=ratio)
                bn = arm(t, col, model__norm="batch", data__test_ratio=ratio)
                c.comparisons.append(
                    Comparison(f"1:0 = {ratio:g}:1, BN with {what}: no BN > BN", no, bn, ACC_MARGIN)
                )

    claim(
        "C8",
        "BN degrades under train/test distribution mismatch.",
        "2017 study (mismatch experiment)",
        "test accuracy after 1,000 steps on digits 0/1 (sigmoid, SGD lr 1e-4), test sets with "
        "1:0 ratios 9, 19, 99: no BN > BN, with BN evaluated on the test batch's statistics and "
        "on running statistics; margin 0.005.",
        "mlds2017_mismatch",
        c8,
    )

    def c9(c):
        t = tables.get("santurkar2018_ics")
        measures = (
            ("ics_kl", "distributional ICS (Gaussian KL), input of"),
            ("ics_mean_shift", "distributional ICS (mean shift), input of"),
            ("ics_grad_rel", "gradient ICS (relative l2),"),
        )
        for layer in ("fc2", "fc3"):
            for measure, what in measures:
                for cmp in _bn_vs_none(
                    t,
                    f"{measure}_{layer}",
                    math.log(1.25),
                    acts=["relu", "sigmoid"],
                    flip=True,
                    log=True,
                    optim__name="sgd",
                ):
                    act = cmp.label.split(":")[0]
                    cmp.label = f"{what} {layer}, {act}: no BN > BN"
                    c.comparisons.append(cmp)
        c.notes.append(
            "the Gaussian KL is averaged over units; a unit whose input barely varies on the probe "
            "images (a nearly dead relu unit feeding fc3 without BN) makes it explode, which is "
            "why the mean shift is reported next to it"
        )

    claim(
        "C9",
        "BN reduces internal covariate shift (Ioffe & Szegedy); in the gradient sense it does "
        "not (Santurkar et al.).",
        "Ioffe & Szegedy 2015; Santurkar et al. 2018",
        "averaged over the probes of the 40,000-step SGD runs (relu, sigmoid): distributional "
        "ICS = Gaussian KL between a layer input's distributions at consecutive probes (every "
        "1,000 steps, 500 test images); gradient ICS = ||G - G'||/||G|| (Santurkar Def. 2.1, "
        "every 1,000 steps); also the mean absolute shift of the per-unit means. Claim tested: "
        "no BN > BN (BN reduces ICS); ratio, margin 25%. "
        "Santurkar's position predicts 'supported' for the distributional rows and 'not "
        "supported' for the gradient rows.",
        "santurkar2018_ics",
        c9,
    )

    def c10(c):
        t = tables.get("santurkar2018_landscape")
        for measure, what in (
            ("landscape_beta", "beta-smoothness"),
            ("landscape_grad_diff_max", "gradient change"),
            ("landscape_loss_range", "loss range"),
        ):
            for suffix, when in (("", "whole run"), ("_early", "first quarter")):
                for cmp in _bn_vs_none(
                    t,
                    measure + suffix,
                    math.log(1.25),
                    acts=["relu", "sigmoid"],
                    flip=True,
                    log=True,
                    optim__name="sgd",
                ):
                    cmp.label = f"{what}, {when}, {cmp.label}"
                    c.comparisons.append(cmp)

    claim(
        "C10",
        "BN makes the loss landscape smoother.",
        "Santurkar et al. 2018, Sec. 3",
        "along the gradient at probes every 1,000 steps of the SGD runs (relu, sigmoid; step "
        "sizes 0.5-4 x lr): effective beta-smoothness, largest gradient change, loss range; "
        "no BN > BN (BN smoother), over the whole run and its first quarter; ratio, margin 25%.",
        "santurkar2018_landscape",
        c10,
    )

    def c11(c):
        t = tables.get("santurkar2018_noisy_bn")
        for act in ("relu", "sigmoid"):
            nb = arm(t, "test_acc", model__norm="noisy_batch", model__activation=act)
            bn = arm(t, "test_acc", model__norm="batch", model__activation=act)
            c.comparisons.append(Comparison(f"{act}: noisy BN ~ BN", nb, bn, 0.01, "equivalent"))
            no = arm(t, "test_acc", model__norm="none", model__activation=act)
            nz = arm(t, "test_acc", model__norm="noise", model__activation=act)
            c.comparisons.append(
                Comparison(f"{act}: no BN > noise without BN (noise hurts)", no, nz, 0.05)
            )
            for n in ("batch", "noisy_batch", "none", "noise"):
                d = arm(t, "ics0_mean_shift_fc3_final", model__norm=n, model__activation=act)
                if len(d):
                    c.notes.append(
                        f"{act}, {n}: drift of the layer-3 input mean since step 0 = {d.mean():.3g}"
                    )

    claim(
        "C11",
        "Noisy BN trains about as well as BN; the same noise without BN fails.",
        "Santurkar et al. 2018, Sec. 2.1",
        "final test accuracy after 5,000 steps (studies protocol: SGD lr 0.1 on the mean loss, "
        "batch 64): noisy BN equivalent to BN within 0.01; no BN > noise without BN by at "
        "least 0.05.",
        "santurkar2018_noisy_bn",
        c11,
    )

    def c12(c):
        t = tables.get("study_lr")
        t = t.assign(acc0=acc_or_zero(t))
        # per member: the highest learning rate of the grid at which it reaches 90%
        ok = t[t["acc0"] >= 0.9].groupby(["model.norm", "seed"])["optim.lr"].max()
        bn, no = ok.get("batch", pd.Series(dtype=float)), ok.get("none", pd.Series(dtype=float))
        c.comparisons.append(
            Comparison("highest lr reaching 90%: BN > no BN", bn, no, math.log(2), log=True)
        )
        bn = arm(t, "acc0", model__norm="batch", optim__lr=3.0)
        no = arm(t, "acc0", model__norm="none", optim__lr=3.0)
        c.comparisons.append(Comparison("lr 3: BN > no BN (diverged = 0)", bn, no, ACC_MARGIN))
        for n in ("none", "batch"):
            g = t[t["model.norm"] == n].groupby("optim.lr")["acc0"].agg(["mean", "min"])
            best = g["mean"].idxmax()
            c.notes.append(
                f"{'BN' if n == 'batch' else 'no BN'}: best lr {best:g} "
                f"({g['mean'].max():.4f}); mean accuracy per lr "
                + ", ".join(f"{lr:g}: {v:.3f}" for lr, v in g["mean"].items())
            )
        c.notes.append("the grid ends at lr 3: a highest lr of 3 means 'at least 3'")

    claim(
        "C12",
        "BN permits higher learning rates.",
        "Ioffe & Szegedy 2015; seed explainers",
        "SGD on the mean loss (relu, batch 64) at learning rates 0.01-3 for 5,000 steps, "
        "diverged members counting as accuracy 0: the highest learning rate at which a member "
        "reaches 90% test accuracy, BN > no BN (per seed, ratio, margin 2x); and the test "
        "accuracy at lr 3, BN > no BN (margin 0.005).",
        "study_lr",
        c12,
    )

    def c13(c):
        t = tables.get("study_init_scale")
        t = t.assign(acc0=acc_or_zero(t))
        for s in (0.1, 0.3, 3.0, 10.0):
            bn = arm(t, "acc0", model__norm="batch", model__init_scale=s)
            no = arm(t, "acc0", model__norm="none", model__init_scale=s)
            c.comparisons.append(Comparison(f"init scale {s:g}: BN > no BN", bn, no, ACC_MARGIN))
        for n in ("none", "batch"):
            g = t[t["model.norm"] == n].groupby("model.init_scale")["acc0"].mean()
            c.notes.append(
                f"{'BN' if n == 'batch' else 'no BN'}: accuracy range over scales "
                f"{g.max() - g.min():.4f}"
            )

    claim(
        "C13",
        "BN reduces sensitivity to the weight-initialisation scale.",
        "seed explainers",
        "test accuracy after 5,000 steps (studies protocol, relu) with every initial weight "
        "scaled by 0.1-10: BN > no BN at the scales away from 1; margin 0.005.",
        "study_init_scale",
        c13,
    )

    def c14(c):
        t = tables.get("study_placement")
        for act in ACTS:
            b = arm(t, "test_acc", model__placement="before", model__activation=act)
            a = arm(t, "test_acc", model__placement="after", model__activation=act)
            if len(a) and len(b):
                c.comparisons.append(Comparison(f"{act}: before > after", b, a, ACC_MARGIN))
        better = {}
        for cmp in c.comparisons:
            _, lo, hi, _ = cmp.diff()
            which = "before" if lo > 0 else "after" if hi < 0 else "no detectable difference"
            better.setdefault(which, []).append(cmp.label.split(":")[0])
        c.notes.append(
            "better placement per activation: "
            + "; ".join(f"{k}: {', '.join(v)}" for k, v in sorted(better.items()))
        )

    claim(
        "C14",
        "BN before the activation (the BN paper's placement) is better than after it.",
        "seed explainers (debated: some recommend after)",
        "test accuracy after 5,000 steps (studies protocol) with BN before vs after each "
        "activation: before > after; margin 0.005.",
        "study_placement",
        c14,
    )

    def c15(c):
        d = tables.get("study_dropout")
        base = tables.get("study_lr")
        bn0 = arm(base, "test_acc", model__norm="batch", optim__lr=0.1)
        no0 = arm(base, "test_acc", model__norm="none", optim__lr=0.1)
        for where in ("after_act", "before_bn"):
            bnd = arm(d, "test_acc", model__norm="batch", model__dropout_at=where)
            nod = arm(d, "test_acc", model__norm="none", model__dropout_at=where)
            c.comparisons.append(
                Comparison(
                    f"dropout {where}: cost of dropout with BN > cost without BN",
                    (bn0 - bnd).dropna(),
                    (no0 - nod).dropna(),
                    ACC_MARGIN,
                )
            )
            vs = arm(d, "var_shift_bn2_final", model__norm="batch", model__dropout_at=where)
            if len(vs.dropna()):
                c.notes.append(f"dropout {where} with BN: variance shift at bn2 = {vs.mean():.3g}")
        fin = arm(d, "test_acc", model__norm="batch", model__dropout_at="final")
        c.comparisons.append(
            Comparison(
                "dropout only after the last BN ~ BN without dropout",
                fin,
                bn0,
                ACC_MARGIN,
                "equivalent",
            )
        )

    claim(
        "C15",
        "Dropout combined with BN hurts ('never apply dropout with BN'); dropout only after "
        "the last BN is harmless.",
        "seed explainer; Li et al. 2019",
        "test accuracy after 5,000 steps (studies protocol, relu, dropout 0.5): the accuracy "
        "lost to dropout is larger with BN than without (per seed, margin 0.005), for dropout "
        "after the activation and directly before BN; dropout only before the output layer "
        "with BN equivalent to BN without dropout within 0.005.",
        "study_dropout",
        c15,
    )

    def c16(c):
        t = tables.get("study_bias")
        for act in ("relu", "sigmoid"):
            on = arm(t, "test_acc", model__bias_before_norm=True, model__activation=act)
            off = arm(t, "test_acc", model__bias_before_norm=False, model__activation=act)
            c.comparisons.append(
                Comparison(f"{act}: with bias ~ without bias", on, off, ACC_MARGIN, "equivalent")
            )

    claim(
        "C16",
        "The bias before BN is redundant (beta subsumes it).",
        "seed explainer",
        "test accuracy after 5,000 steps (studies protocol) with and without the bias of the "
        "linear layers feeding BN: equivalent within 0.005.",
        "study_bias",
        c16,
    )

    def c17(c):
        t = tables.get("study_order")
        base = tables.get("study_lr")
        same = arm(t, "test_acc", model__norm="batch")
        own = arm(base, "test_acc", model__norm="batch", optim__lr=0.1)
        c.comparisons.append(
            Comparison(
                "BN: mean accuracy, same init & own order ~ own init & order",
                same,
                own,
                ACC_MARGIN,
                "equivalent",
            )
        )
        c.notes.append(
            f"BN, accuracy SD across members: {same.std():.4f} (same init, data order differs) vs "
            f"{own.std():.4f} (init and order differ)"
        )
        path = tables.folder / "running_stats.csv"
        if path.exists():
            rs = read_table(path, members=False)
            rs = rs[rs["sweep"] == "study_order"]
            for _, r in rs.iterrows():
                c.notes.append(
                    f"{r['layer']} running {r['stat']}: SD across data orders {r['member_sd']:.3g} "
                    f"= {r['ratio']:.2f} x the SD across units ({r['unit_sd']:.3g})"
                )

    claim(
        "C17",
        "The order of mini-batches changes the learned running statistics, but the effect "
        "averages out under shuffling.",
        "seed explainer",
        "members with the same initial weights and their own data order (BN, studies "
        "protocol): the spread of the final running statistics across orders (notes), and the "
        "mean test accuracy equivalent within 0.005 to members that also differ in init.",
        "study_order",
        c17,
    )

    def c18(c):
        t = tables.get("mlds2017_fig4")
        c.comparisons = _bn_vs_none(t, "gap", 0.002, flip=True, optim__name="sgd")
        for cmp in c.comparisons:
            cmp.label = cmp.label.replace("no BN > BN", "gap without BN > gap with BN")

    claim(
        "C18",
        "BN adds a mild regularisation effect: a smaller train/test gap.",
        "seed explainers",
        "train accuracy (first 10,000 training images) minus test accuracy at the end of the "
        "40,000-step SGD runs, per activation: larger without BN; margin 0.002.",
        "mlds2017_fig4",
        c18,
    )

    def c19(c):
        t = tables.get("mlds2017_fig4")
        c.comparisons = _bn_vs_none(
            t, "steps_to_0.9", math.log(1.5), flip=True, log=True, optim__name="sgd"
        )
        for cmp in c.comparisons:
            cmp.label = cmp.label.replace("no BN > BN", "steps to 90% without BN > with BN")
        try:
            i = tables.get("ioffe2015_fig1")
            no = arm(i, "steps_to_0.97", model__norm="none")
            bn = arm(i, "steps_to_0.97", model__norm="batch")
            c.comparisons.append(
                Comparison(
                    "Ioffe Fig. 1 setting: steps to 97% without BN > with BN",
                    no,
                    bn,
                    math.log(1.5),
                    log=True,
                )
            )
            reached = i.groupby("model.norm")["reached_0.97"].sum()
            c.notes.append(
                f"Ioffe setting: 97% reached by {reached.get('none', 0)} no-BN and "
                f"{reached.get('batch', 0)} BN members; "
                f"mean steps {no.mean():.0f} vs {bn.mean():.0f} ({no.mean() / bn.mean():.1f}x)"
            )
        except MissingTable:
            c.notes.append("ioffe2015 not run")

    claim(
        "C19",
        "BN speeds up training: fewer steps to reach a given accuracy.",
        "Ioffe & Szegedy 2015 (14x on ImageNet; MNIST Fig. 1a)",
        "first evaluated step with test accuracy >= 0.9 in the 40,000-step SGD runs per "
        "activation, and >= 0.97 in the Ioffe Fig. 1 setting (members that never reach it "
        "count as the run length + 1); no BN > BN as a ratio, margin 1.5x.",
        "mlds2017_fig4",
        c19,
    )
    return claims


def _fmt(x: float) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.4g}"


def _arm_text(s: pd.Series) -> str:
    s = s.dropna()
    if s.empty:
        return "no members"
    return f"{_fmt(s.mean())} [{_fmt(s.min())}, {_fmt(s.max())}] (n={len(s)})"


DIFFERENCES = """\
## Settings that differ from the originals, and why

- **Seeds.** Every configuration runs 5 seeds (the 2017 study ran one). BN and no-BN members
  of a seed start from the same weights, so comparisons are paired by seed.
- **Evaluation schedule.** Test accuracy every 1,000 steps (every 250 for the first 5,000)
  instead of every 50 steps, to keep evaluation a small share of the run time.
- **BN at test time.** Curves use BN's running statistics (the correct inference mode); the
  2017 study used the test batch's own statistics. Every run also reports its final accuracy
  with running, population (Algorithm 2) and batch statistics, and C6/C8 test both.
- **Batch Renorm.** bnlab's Batch Renorm is Ioffe 2017 as published (paper schedule:
  r_max 1 -> 3 over steps 5k-40k, d_max 0 -> 5 over 5k-25k, rate 0.01); the study's variant
  had the affine transform in the wrong place and used batch statistics at test time
  (available as model.norm=renorm_mlds2017, not used here).
- **Layer-Jacobian.** The per-sample Jacobian with BN in eval mode (well defined); the
  study's batch-sum quantity is drawn next to it in Fig. 3, labelled.
- **Mismatch test sets** are built as labelled (1:0 ratios 1, 9, 19, 99 from the test
  digits 0 and 1); the study's code built them wrongly.
- **Batch-size study.** The faithful runs confound batch size with epochs seen (summed loss,
  fixed steps); a corrected companion (mean loss, lr 0.64, 5 epochs for every batch size)
  is reported next to it.
- **Ioffe & Szegedy Fig. 1.** The paper does not state the optimiser, learning rate or
  weight scale: bnlab uses SGD, lr 0.5 on the mean loss, N(0, 0.05^2) weights, zero biases.
- **Santurkar et al.** measured ICS and smoothness on VGG and deep linear networks at their
  training learning rates; here the same definitions are applied to the 2017 study's MLP runs
  (SGD lr 1e-4 on the summed loss, step sizes 0.5-4 x that lr). Smoothness is measured in
  parameter space, where BN's scale-invariant weights keep their initial size (C1) while the
  no-BN weights grow; that difference in scale is one candidate reason for the results here.
- **Claim studies (C11-C17)** use one shorter protocol (relu unless stated, SGD lr 0.1 on the
  mean loss, batch 64, 5,000 steps), since the explainers making these claims give none.
- **Out of scope:** "BN should not be used in RNNs": bnlab has no recurrent model.
"""


def render(claims: list[Claim], figures: str = "figures") -> str:
    """The report as Markdown."""
    lines = [
        "# Which claims about batch normalization hold? (bnlab claims report)",
        "",
        "Generated by `bnlab claims` from the tables in `results/tables/` (written by",
        "`bnlab reproduce`). Do not edit by hand. Numbers: mean [min, max] over",
        "seeds, n = members; differences with their 95% t-interval (paired by seed where the",
        "arms share seeds; ratios for quantities compared on a log scale). Verdict rules are in",
        "`bnlab/claims.py`: *supported* = the interval excludes zero in the claimed direction",
        "and the mean effect reaches the margin; *not supported* = the opposite holds or the",
        "effect is reliably below the margin; *inconclusive* = the interval does not decide",
        "(the seeds spread too much, or it straddles the margin); *mixed* = the comparisons of",
        "a claim disagree (the claim holds in some settings and not in others).",
        "",
        "| claim | statement | verdict |",
        "|---|---|---|",
    ]
    for c in claims:
        lines.append(f"| [{c.key}](#{c.key.lower()}) | {c.statement} | **{c.verdict}** |")
    lines.append("")
    for c in claims:
        lines += [f"## {c.key}", "", f"**Claim.** {c.statement} *Source:* {c.source}", ""]
        lines += [f"**Test.** {c.test}", ""]
        if c.figure:
            lines += [f"**Figure.** [{c.figure}]({figures}/{c.figure}.png)", ""]
        if c.missing:
            lines += [f"**Verdict: not run** ({c.missing}).", ""]
            continue
        lines += [
            "| comparison | arm A | arm B | A - B [95% CI] | verdict |",
            "|---|---|---|---|---|",
        ]
        for cmp in c.comparisons:
            mean, lo, hi, paired = cmp.diff()
            if cmp.log:
                diff = f"x{_fmt(math.exp(mean))} [{_fmt(math.exp(lo))}, {_fmt(math.exp(hi))}]"
            else:
                diff = f"{mean:+.4f} [{lo:+.4f}, {hi:+.4f}]"
            diff += "" if paired else " (unpaired)"
            lines.append(
                f"| {cmp.label} | {_arm_text(cmp.a)} | {_arm_text(cmp.b)} | "
                f"{diff} | {cmp.verdict()} |"
            )
        lines.append("")
        for note in c.notes:
            lines.append(f"- {note}")
        lines += ["", f"**Verdict: {c.verdict}.**", ""]
    lines.append(DIFFERENCES)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bnlab claims", description=__doc__)
    p.add_argument("--results", type=Path, default=Path("results"), help="results folder")
    args = p.parse_args(argv)
    if not (args.results / "tables").is_dir():
        print(
            f"error: --results {args.results}: no tables folder {args.results / 'tables'}; "
            "run `bnlab tables --results DIR` (or `bnlab reproduce`) first",
            file=sys.stderr,
        )
        return 2
    try:
        claims = build_claims(Tables(args.results / "tables"))
    except TableError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = args.results / "CLAIMS.md"
    write_atomic(out, render(claims))
    for c in claims:
        print(f"{c.key}: {c.verdict}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
