"""The claims report: `bnlab claims` reads RESULTS/tables/*.csv (bnlab.tables) and writes
RESULTS/CLAIMS.md, one section per claim: C1-C19, the claims made by the 2017 study, the BN
explainers and the papers they cite; C20-C26, mechanisms studied since (the extra studies).

The claims are a ledger: one function per claim, registered in order by the @claim decorator,
which carries what is claimed, its source, the experiments whose tables it reads, its figure
and its margins and thresholds. The claim's texts are built from those same numbers, and the
function gets them as arguments, so the report states what the code tests. The function splits
the claim into comparisons between two arms (sets of members, one value per seed), judged
together by the rules of bnlab.verdicts (verdicts.RULES). Arms of one sweep table are paired by
seed; a comparison of arms from two tables says paired=False (Welch's t-test).

A claim whose experiment has not been run says "not run". A claim that reads a column its
table lacks, or one that is NaN for every trained member it selects, is an error naming the
claim, the table and the column: the report is not written.
"""

from __future__ import annotations

import argparse
import math
import string
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from . import experiments, verdicts
from .collect import acc_or_zero, select
from .records import MANIFEST, manifest, verify, write_atomic
from .verdicts import TESTS, Comparison, Result, combine, judge

ACC_MARGIN = 0.005  # the smallest accuracy difference that matters: half a percentage point
ACTS = ["relu", "lrelu", "sigmoid", "softplus", "tanh"]
RELU_SIGMOID = ["relu", "sigmoid"]
SHIFT_MODES = ("running", "adapted", "batch")  # bnlab.shift's evaluation modes
NORMS2 = ("none", "batch")


@dataclass
class Claim:
    """One claim of the ledger: what is claimed, how bnlab tests it and what it reads; once
    built on the tables (build_claims), its comparisons and notes."""

    key: str
    statement: str
    source: str
    test: str
    figure: str | None
    experiments: tuple[str, ...] = ()  # the tables it needs, by experiment (bnlab.experiments)
    optional: tuple[str, ...] = ()  # tables it uses if present (Tables.find)
    numbers: dict = field(default_factory=dict)  # its margins and thresholds, by name
    compare: Callable[..., list[Comparison]] | None = None
    comparisons: list[Comparison] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    missing: str | None = None
    protocol: str = ""  # which protocol decides the verdict, and why (not the faithful one)

    @cached_property
    def results(self) -> list[Result]:
        """Its comparisons' verdicts, judged together (verdicts.judge) once built."""
        return judge(self.comparisons)

    @property
    def verdict(self) -> str:
        """The claim's verdict: its comparisons' verdicts combined, or 'not run'."""
        if self.missing:
            return "not run"
        return combine([r.verdict for r in self.results])


class _Text(string.Formatter):
    """str.format, writing a tuple comma-separated: '{ratios:g}' -> '9, 19, 99'."""

    def format_field(self, value, format_spec):
        if isinstance(value, tuple):
            return ", ".join(format(v, format_spec) for v in value)
        return format(value, format_spec)


_TEXT = _Text()
LEDGER: dict[str, Claim] = {}  # key -> claim, in report order


def claim(
    key, *, statement, source, test, experiment, protocol, figure=None, optional=(), **numbers
):
    """Register the decorated function as claim `key` of LEDGER.

    experiment: the experiment (or list of them) whose tables the claim needs; optional: the
    tables it uses if present (Tables.find); protocol: which protocol decides the verdict and
    why (where the faithful one cannot test the claim); figure: the one the report links
    (default: the first experiment's first, bnlab.experiments). The function is called as
    fn(claim, *needed, *optional, **numbers), None for an absent optional table, and returns
    the comparisons (it may add notes to claim.notes). `numbers` are the claim's margins and
    thresholds; the `statement` and `test` texts are str.format templates over them that
    state each one."""
    stated = {
        name.split("[")[0].split(".")[0]
        for text in (statement, test)
        for _, name, _, _ in _TEXT.parse(text)
        if name
    }
    if key in LEDGER:
        raise ValueError(f"claim {key} is registered twice")
    if set(numbers) - stated:
        raise ValueError(f"claim {key}: {sorted(set(numbers) - stated)} not in its texts")

    needed = (experiment,) if isinstance(experiment, str) else tuple(experiment)
    for name in (*needed, *optional):
        if not name.endswith(".csv"):
            experiments.sweep(name)  # KeyError naming the known experiments
    figure = figure or experiments.EXPERIMENTS[needed[0]].figures[0]

    def register(fn):
        LEDGER[key] = Claim(
            key,
            _TEXT.format(statement, **numbers),
            source,
            _TEXT.format(test, **numbers),
            figure,
            needed,
            tuple(optional),
            numbers,
            fn,
            protocol=protocol,
        )
        return fn

    return register


class MissingTable(LookupError):
    """A sweep's table is not in RESULTS/tables (its experiment has not been run)."""


class TableError(ValueError):
    """A table that is not what bnlab tables wrote: the report is not written."""


class ClaimError(ValueError):
    """A claim reads a column that its table lacks, or that no member it selects recorded:
    the report is not written (a renamed measure must not turn a claim inconclusive)."""


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
        t = diverged_rule(t[t["status"].isin(["finished", "diverged"])])
        t.attrs["table"] = str(path)  # for arm's errors
        return t

    def find(self, name: str) -> pd.DataFrame | None:
        """get(name), or a file of RESULTS/tables that is not a sweep's ('running_stats.csv');
        None if absent (not run, or not written)."""
        if name.endswith(".csv"):
            path = self.folder / name
            return read_table(path, members=False) if path.exists() else None
        try:
            return self.get(name)
        except MissingTable:
            return None


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
    settings = ("seed", "data.", "model.", "optim.", "train.", "probes.", "depth")
    results = [c for c in t.select_dtypes("number").columns if not c.startswith(settings)]
    div = t["status"] == "diverged"
    t.loc[div, results] = np.nan
    t.loc[div, [c for c in results if c.endswith("acc") or "_acc_" in c]] = 0.0
    return t


def require(table: pd.DataFrame, *columns: str) -> pd.DataFrame:
    """The table, if it has these columns; ClaimError naming the table and the first absent."""
    for col in columns:
        if col not in table:
            name = table.attrs.get("table", "the table")
            raise ClaimError(
                f"{name} has no column {col!r}; bnlab/claims.py and bnlab/tables.py must agree "
                "on the measures' names (or rerun `bnlab tables`)"
            )
    return table


def arm(table: pd.DataFrame, measure: str, sometimes: bool = False, **where) -> pd.Series:
    """One value of `measure` per seed among the members matching `where` ('__' for '.').

    No member matches: an empty arm (that setting was not run). ClaimError if a column is
    absent, or if `measure` is NaN for every matching member that did not diverge (unless
    `sometimes`: a measure taken at a threshold that members may never reach)."""
    rows = select(require(table, measure, *(k.replace("__", ".") for k in where)), **where)
    what = ", ".join(f"{k.replace('__', '.')}={v}" for k, v in where.items())
    name = table.attrs.get("table", "the table")
    if rows["seed"].duplicated().any():
        raise ClaimError(f"{name}: {what} matches several members per seed")
    values = rows.set_index("seed")[measure]
    values.attrs = {"table": table.attrs.get("table")}  # Comparison: not paired across tables
    trained = (rows["status"] != "diverged").to_numpy()
    if not sometimes and trained.any() and values[trained].isna().all():
        raise ClaimError(
            f"{name}: column {measure!r} is NaN for every member with {what}; did their runs "
            "record it (its probe on)?"
        )
    return values


def with_acc0(table: pd.DataFrame) -> pd.DataFrame:
    """The table with acc0: final test accuracy, diverged members counting as 0 (acc_or_zero)."""
    return table.assign(acc0=acc_or_zero(require(table, "test_acc")))


def _bn_vs_none(t, measure, margin, acts=ACTS, flip=False, log=False, label=None, **where):
    """Per activation with members: BN > no BN (or no BN > BN with flip), labelled
    label.format(act=...)."""
    label = label or ("{act}: no BN > BN" if flip else "{act}: BN > no BN")
    out = []
    for act in acts:
        bn = arm(t, measure, model__norm="batch", model__activation=act, **where)
        no = arm(t, measure, model__norm="none", model__activation=act, **where)
        if bn.empty or no.empty:
            continue
        a, b = (no, bn) if flip else (bn, no)
        out.append(Comparison(label.format(act=act), a, b, margin, log=log))
    return out


def _smaller_with_bn(t, measure, ratio, label=None, acts=ACTS):
    """The SGD runs per activation: no BN > BN as a ratio, margin `ratio`."""
    return _bn_vs_none(
        t, measure, math.log(ratio), acts, flip=True, log=True, label=label, optim__name="sgd"
    )


def _bn(norm: str) -> str:
    """'BN' or 'no BN', for notes."""
    return "BN" if norm == "batch" else "no BN"


ARM_KEYS = ["model.activation", "model.norm", "model.placement"]


def at_best_lr(t: pd.DataFrame, extra: tuple[str, ...] = ()) -> pd.DataFrame:
    """The members of each arm (activation x norm x placement, and the `extra` columns) at the
    arm's own best learning rate: the lr whose members have the highest mean accuracy on the
    held-out training images at the end of the run (valid_acc; diverged members count as 0).
    The test set plays no part in the choice. Adds acc0 (final test accuracy, diverged = 0)."""
    t = with_acc0(require(t, "valid_acc", "optim.lr", *extra))
    t = t.assign(valid0=t["valid_acc"].where(t["status"] == "finished", 0.0))
    keys = [k for k in [*ARM_KEYS, *extra] if k in t]
    mean = t.groupby([*keys, "optim.lr"], dropna=False)["valid0"].transform("mean")
    top = mean == mean.groupby([t[k] for k in keys], dropna=False).transform("max")
    lr = t["optim.lr"].where(top)  # the best lr (the lowest of tied ones), per arm
    best = lr.groupby([t[k] for k in keys], dropna=False).transform("min")
    out = t[np.isclose(t["optim.lr"], best)]
    out.attrs = t.attrs
    return out


def _best_lr_note(best: pd.DataFrame) -> str:
    """'relu: no BN lr 0.3, BN before lr 1, ...': each arm's selected learning rate."""
    if "model.placement" not in best:  # one placement in the sweep: BN before (the default)
        best = best.assign(**{"model.placement": "before"})
    arms = best.groupby(ARM_KEYS, dropna=False)["optim.lr"].first()
    order = {"none": 0, "before": 1, "after": 2}
    parts = []
    for (act, norm, place), lr in sorted(
        arms.items(), key=lambda kv: (kv[0][0], order.get(kv[0][1], order.get(kv[0][2], 3)))
    ):
        name = _bn(norm) + ("" if norm == "none" else f" {place}")
        parts.append(f"{act}, {name}: lr {lr:g}")
    return "learning rate chosen on the held-out images: " + "; ".join(parts)


def _none_bn(values: pd.Series, key: tuple, spec: str) -> str:
    """'no BN x, BN y' from a Series indexed by (*key, model.norm)."""
    return ", ".join(f"{_bn(n)} {format(values.get((*key, n), np.nan), spec)}" for n in NORMS2)


def _as_note(prefix: str, cmp: Comparison) -> str:
    """A comparison that does not decide the verdict, as a note with its interval."""
    mean, lo, hi, _ = cmp.diff()
    if cmp.log:
        mean, lo, hi = (math.exp(x) for x in (mean, lo, hi))
        return f"{prefix}, {cmp.label}: x{mean:.3g} [{lo:.3g}, {hi:.3g}]"
    return f"{prefix}, {cmp.label}: {mean:+.4f} [{lo:+.4f}, {hi:+.4f}]"


def build_claims(tables: Tables, keys: list[str] | None = None) -> list[Claim]:
    """The claims of the ledger (or those of `keys`) on the tables; claims whose runs are
    missing say so. ClaimError, naming the claim, if one reads a column that its table lacks."""
    return [_build(LEDGER[k], tables) for k in (LEDGER if keys is None else keys)]


def _build(spec: Claim, tables: Tables) -> Claim:
    """A copy of the claim with its comparisons and notes on the tables, or 'not run'."""
    c = replace(spec, comparisons=[], notes=[])
    try:
        needed = [tables.get(e) for e in c.experiments]
    except MissingTable as e:
        c.missing = f"table {e.args[0]}.csv not found: run its experiment"
        return c
    optional = [tables.find(name) for name in c.optional]
    try:
        c.comparisons = c.compare(c, *needed, *optional, **c.numbers)
    except ClaimError as e:
        raise ClaimError(f"claim {c.key}: {e}") from None
    return c


@claim(
    "C1",
    statement="BN limits the growth of weight magnitude ('BN regularises').",
    source="2017 study, Fig. 1",
    experiment="mlds2017_fig1",
    optional=["study_lr"],
    growth=0.05,
    protocol="Decided on the 2017 runs (the figure the claim cites) and study_lr's learning rates. "
    "A smaller norm with BN is not regularisation by itself: the weights feeding BN are "
    "scale-invariant, so their norm only sets their effective learning rate lr/||w||^2.",
    test="mean |W2| at the end of the 40,000-step SGD runs (lr 1e-4, summed loss), no BN > BN, "
    "pooled over activation x seed (paired); and at each learning rate of study_lr (relu, "
    "mean loss, 5,000 steps); compared as a ratio, margin {growth:.0%}. Per activation as notes, "
    "and, with BN, the identity ||W_T||^2 = ||W_0||^2 + sum_t lr^2 ||g_t||^2 of plain SGD for "
    "weights that BN makes scale-invariant, checked on every step.",
)
def c1(c, t, lrs, growth):
    """Layer 2's final mean |W|, larger without BN: BN makes a layer invariant to its weights'
    scale, and the study reads its Fig. 1 as BN keeping the weights small. Pooled over the
    activations (one claim about BN, not five), and across learning rates: without weight
    decay a scale-invariant weight's norm grows by the squared step sizes, so growth depends
    on the lr, not on regularisation."""
    per_act = _smaller_with_bn(t, "w2_mean_abs_final", 1 + growth)
    no = pd.concat({x.label.split(":")[0]: x.a for x in per_act})
    bn = pd.concat({x.label.split(":")[0]: x.b for x in per_act})
    label = "lr 1e-4 (summed loss), pooled over activations: no BN > BN"
    out = [Comparison(label, no, bn, math.log(1 + growth), log=True)]
    for x in per_act:
        c.notes.append(f"{x.label}: ratio {math.exp(x.diff()[0]):.3f}")
    for n in ("none", "batch"):  # the figure's setting: sigmoid
        where = dict(model__norm=n, model__activation="sigmoid", optim__name="sgd")
        s, f = arm(t, "w2_mean_abs_start", **where), arm(t, "w2_mean_abs_final", **where)
        c.notes.append(
            f"sigmoid, {_bn(n)}: mean |W2| {s.mean():.4f} at step 0 -> {f.mean():.4f} at the end"
        )
    if lrs is None:
        c.notes.append("study_lr not run")
        return out
    for lr in sorted(lrs["optim.lr"].unique()):
        no = arm(lrs, "w2_mean_abs_final", model__norm="none", optim__lr=lr)
        bn = arm(lrs, "w2_mean_abs_final", model__norm="batch", optim__lr=lr)
        label = f"lr {lr:g} (mean loss, relu): no BN > BN"
        out.append(Comparison(label, no, bn, math.log(1 + growth), log=True))
    for layer in ("fc1", "fc2"):  # the identity, checked on every BN member of study_lr
        cols = (f"scale_ratio_{layer}", f"scale_growth_rel_{layer}")
        bn = require(lrs, *cols)[lrs["model.norm"] == "batch"].groupby("optim.lr")
        ratio, rel = bn[f"scale_ratio_{layer}"].mean(), bn[f"scale_growth_rel_{layer}"].mean()
        c.notes.append(
            f"with BN, {layer} (scale-invariant, no weight decay): (||W_T||^2 - ||W_0||^2) / "
            "sum_t lr^2 ||g_t||^2 per lr (1: the growth is the squared steps, nothing else) "
            + ", ".join(f"{lr:g}: {v:.3g}" for lr, v in ratio.items())
            + "; relative growth ||W_T||^2/||W_0||^2 - 1 "
            + ", ".join(f"{lr:g}: {v:.3g}" for lr, v in rel.items())
        )
    return out


@claim(
    "C2",
    statement="BN enlarges first-layer gradients and so fights vanishing gradients (sigmoid "
    "~0.1 vs ~0.02 in the study).",
    source="2017 study, Fig. 2",
    experiment="mlds2017_fig2",
    growth=0.25,
    protocol="Decided on the 2017 protocol: the claim is about its Fig. 2 (summed loss, lr 1e-4), "
    "whose gradients scale with the batch.",
    test="mean |dL/dW1| of the summed loss averaged over steps 1-1,000, BN > no BN, sigmoid and "
    "relu; ratio, margin {growth:.0%}.",
)
def c2(c, t, growth):
    """Early first-layer gradients, larger with BN (the study's Fig. 2: without BN, sigmoid
    saturates and its gradients vanish)."""
    return _bn_vs_none(
        t, "grad1_mean_abs_1k", math.log(1 + growth), acts=["sigmoid", "relu"], log=True
    )


@claim(
    "C3",
    statement="BN pushes layer-Jacobian singular values toward 1 (better isometry).",
    source="2017 study; Ioffe & Szegedy Sec. 3.3 (conjecture); Yang et al. 2019",
    experiment="mlds2017_fig4",
    optional=["yang2019_depth", "study_lr"],
    figure="mlds2017_fig3",
    gain=1.25,
    spread=1.25,
    protocol="Decided on the 2017 runs' Jacobians and a depth study at initialisation, with gain "
    "and spread as separate comparisons: the faithful figure's [1/2, 2] band counts BN's "
    "gain gamma/sigma_B as isometry.",
    test="per-sample Jacobian singular values s (BN in eval mode, 100 test images), averaged "
    "over the probes of the 40,000-step SGD runs, per activation, for layer 1, layer 2 and the "
    "end-to-end hidden Jacobian, two comparisons each: the gain mean(s^2) closer to 1 with BN "
    "(|log gain|, margin log {gain:g}) and the spread var(s^2)/mean(s^2)^2 smaller with BN "
    "(ratio, margin {spread:g}x). At initialisation, 32 hidden layers (yang2019_depth), BN in "
    "training mode: the end-to-end gain closer to 1 with BN (margin log {gain:g}).",
)
def c3(c, t, depth, lrs, gain, spread):
    """Isometry is two things: a gain near 1 (mean s^2) and a small spread of the singular
    values around it. BN scales a layer by gamma/sigma_B, which moves the gain without
    making the values any more alike, so the two are compared apart. The 2017 study's
    fraction in [1/2, 2], which mixes them, is kept as notes."""
    out = []
    for layer in ("fc1", "fc2", "hidden"):
        for act in ACTS:
            where = dict(model__activation=act, optim__name="sgd")
            bn = arm(t, f"jac_s2_mean_{layer}", model__norm="batch", **where)
            no = arm(t, f"jac_s2_mean_{layer}", model__norm="none", **where)
            label = f"{act}, {layer}: gain further from 1 without BN"
            out.append(Comparison(label, _far_from_1(no), _far_from_1(bn), math.log(gain)))
        label = f"{{act}}, {layer}: spread without BN > with BN"
        out += _smaller_with_bn(t, f"jac_spread_{layer}", spread, label)
        for act in ACTS:
            where = dict(model__activation=act, optim__name="sgd")
            f = {n: arm(t, f"jac_frac_iso_{layer}", model__norm=n, **where) for n in NORMS2}
            c.notes.append(
                f"{act}, {layer}: fraction of s in [1/2, 2] (the study's measure) "
                f"{f['batch'].mean():.3f} with BN, {f['none'].mean():.3f} without"
            )
    if lrs is not None:  # BN's own gain, recorded on study_lr's runs
        bn = require(lrs, "bn_log_gain_bn1_start", "bn_log_gain_bn1_final")
        bn = bn[bn["model.norm"] == "batch"]
        end = bn.groupby("optim.lr")["bn_log_gain_bn1_final"].mean()
        c.notes.append(
            "BN's own gain gamma/sigma_B at bn1 (geometric mean over units, study_lr, relu): "
            f"{10 ** bn['bn_log_gain_bn1_start'].mean():.3g} at step 0 (raw pixels), after "
            "5,000 steps " + ", ".join(f"{10**v:.3g} at lr {lr:g}" for lr, v in end.items())
        )
    if depth is None:
        c.notes.append("yang2019_depth not run")
        return out
    standardized = (
        depth["data.standardize"].eq(True)
        if "data.standardize" in depth
        else pd.Series(False, index=depth.index)
    )
    _input_scale_notes(c, depth[depth["depth"] == 2], standardized)
    depth = depth[~standardized]
    deepest = int(depth["depth"].max())
    for act in sorted(depth["model.activation"].unique()):
        where = dict(model__activation=act, depth=deepest)
        g = {n: arm(depth, "init_jac_gain_hidden", model__norm=n, **where) for n in NORMS2}
        label = f"init, {deepest} layers, {act}: gain further from 1 without BN"
        out.append(
            Comparison(label, _far_from_1(g["none"]), _far_from_1(g["batch"]), math.log(gain))
        )
        for n in NORMS2:
            m = depth[(depth["model.norm"] == n) & (depth["model.activation"] == act)]
            per = m.groupby("depth")["init_jac_gain_hidden"].median()
            c.notes.append(
                f"init, {act}, {_bn(n)}: end-to-end gain by depth (median over seeds) "
                + ", ".join(f"{d}: {v:.3g}" for d, v in per.items())
            )
    return out


def _input_scale_notes(c, shallow: pd.DataFrame, standardized: pd.Series) -> None:
    """C3's control: BN's gain at initialisation with raw and with standardised pixels."""
    std = shallow[standardized.reindex(shallow.index)]
    if std.empty:
        c.notes.append("study_input_scale (standardised inputs) not run")
        return
    raw = shallow[~standardized.reindex(shallow.index)]
    for (act, norm), g in std.groupby(["model.activation", "model.norm"]):
        r = raw[(raw["model.activation"] == act) & (raw["model.norm"] == norm)]
        c.notes.append(
            f"init, 2 hidden layers, {act}, {_bn(norm)}: end-to-end gain (median over seeds) "
            f"{r['init_jac_gain_hidden'].median():.3g} with raw pixels, "
            f"{g['init_jac_gain_hidden'].median():.3g} with standardised pixels"
        )


def _far_from_1(values: pd.Series) -> pd.Series:
    """|log x|: how far a gain is from 1, either way (a factor of 2 up or down alike)."""
    out = np.log(values).abs()
    out.attrs = values.attrs
    return out


@claim(
    "C4",
    statement="BN improves accuracy for every activation, and helps sigmoid the most.",
    source="2017 study, Fig. 4",
    experiment="study_tuned",
    optional=["mlds2017_fig4"],
    margin=ACC_MARGIN,
    protocol="Decided on each arm at its own best learning rate (study_tuned). At the 2017 "
    "protocol's one small learning rate (1e-4) BN's lead is partly the larger effective "
    "step it takes there, so those results are notes.",
    test="final test accuracy after 20,000 steps (studies protocol: SGD on the mean loss, batch "
    "64) with each arm at its own best learning rate of 0.03-3, chosen on the held-out images "
    "(diverged = 0): BN before the activation > no BN, for relu and sigmoid; margin {margin:g}. "
    "The 2017 protocol (40,000 steps at SGD lr 1e-4, every activation) as notes: one small "
    "fixed learning rate favours BN, which trains faster at it.",
)
def c4(c, t, faithful, margin):
    """Final accuracy at each arm's best lr, BN > no BN per activation; which one gains most
    is a note (a ranking of means, not a comparison), and so is the fixed-lr result."""
    best = at_best_lr(t)
    c.notes.append(_best_lr_note(best))
    before = best[best["model.placement"] != "after"]  # BN before its activation, and no BN
    out = _bn_vs_none(before, "acc0", margin, acts=RELU_SIGMOID)
    gains = {x.label.split(":")[0]: x.diff()[0] for x in out}
    if gains:
        top = max(gains, key=gains.get)
        rank = (
            "all within the margin: no activation gains most"
            if max(abs(v) for v in gains.values()) < margin
            else f"largest for {top}"
            + (" (as claimed)" if top == "sigmoid" else " (the claim says sigmoid)")
        )
        c.notes.append(
            "gain from BN at the best learning rates (mean test accuracy difference): "
            + ", ".join(f"{k} {v:+.4f}" for k, v in gains.items())
            + f"; {rank}"
        )
    if faithful is not None:
        for x in _bn_vs_none(faithful, "test_acc", margin, optim__name="sgd"):
            c.notes.append(_as_note("fixed lr 1e-4 (2017 protocol, not judged)", x))
    return out


@claim(
    "C5",
    statement="With BN the activation matters more than the optimiser; relu+SGD+BN is about as "
    "good as relu+Adam without BN.",
    source="2017 study, Fig. 5",
    experiment="mlds2017_fig5",
    margin=ACC_MARGIN,
    protocol="Decided on the 2017 protocol: the claim is about its Fig. 5 settings.",
    test="final test accuracy after 40,000 steps (lr 1e-4): relu+SGD+BN equivalent to relu+Adam "
    "without BN within {margin:g}; the activation and optimiser effects under BN as a note.",
)
def c5(c, t, margin):
    """relu+SGD+BN ~ relu+Adam without BN (the study: BN buys what Adam buys); the sizes of
    the activation and optimiser effects under BN as a note."""
    a = arm(t, "test_acc", model__activation="relu", optim__name="sgd", model__norm="batch")
    b = arm(t, "test_acc", model__activation="relu", optim__name="adam", model__norm="none")
    out = [Comparison("relu+SGD+BN ~ relu+Adam, no BN", a, b, margin, "equivalent")]
    bn = t[t["model.norm"] == "batch"].groupby(["model.activation", "optim.name"])["test_acc"]
    bn = bn.mean()
    if {(a, o) for a in ("relu", "sigmoid") for o in ("sgd", "adam")} <= set(bn.index):
        act = abs(bn["relu"].mean() - bn["sigmoid"].mean())
        opt = abs(bn.xs("adam", level=1).mean() - bn.xs("sgd", level=1).mean())
        c.notes.append(
            f"with BN: activation effect |relu - sigmoid| = {act:.4f}, optimiser effect "
            f"|Adam - SGD| = {opt:.4f} (mean final test accuracy): the "
            f"{'activation' if act > opt else 'optimiser'} matters more"
        )
    return out


@claim(
    "C6",
    statement="BN hurts at very small batch sizes (batch {batch}).",
    source="2017 study, Fig. 6",
    experiment="mlds2017_fig6",
    optional=["mlds2017_fig6_epochs", "study_ghost"],
    margin=ACC_MARGIN,
    batch=4,
    protocol="Decided on the 2017 protocol (its Fig. 6), with BN evaluated with running "
    "statistics; the equal-epochs companion runs separate batch size from epochs seen.",
    test="final test accuracy at batch {batch}, no BN > BN: faithful runs (sigmoid, SGD lr 0.01 "
    "on the summed loss, 40,000 steps) with BN evaluated with running and with batch "
    "statistics, and the corrected companion (mean loss, equal 5 epochs); margin {margin:g}.",
)
def c6(c, t, epochs, ghost, margin, batch):
    """At batch 4, no BN > BN (its batch statistics are noisy), in the faithful runs and in the
    corrected companion if run; the difference at larger batches as notes."""
    no = arm(t, "test_acc", model__norm="none", data__batch_size=batch)
    out = []
    for col, what in (
        ("test_acc_running", "running statistics"),
        ("test_acc_batch", "batch statistics"),
    ):
        bn = arm(t, col, model__norm="batch", data__batch_size=batch)
        label = f"batch {batch}, faithful, BN with {what}: no BN > BN"
        out.append(Comparison(label, no, bn, margin))
    if epochs is None:
        c.notes.append("corrected companion (mlds2017_batch_epochs) not run")
    else:
        no = arm(epochs, "test_acc", model__norm="none", data__batch_size=batch)
        bn = arm(epochs, "test_acc", model__norm="batch", data__batch_size=batch)
        label = f"batch {batch}, corrected (mean loss, 5 epochs): no BN > BN"
        out.append(Comparison(label, no, bn, margin))
    for bs in (16, 64, 256):  # the sweep's larger batches, where it has them
        no = arm(t, "test_acc", model__norm="none", data__batch_size=bs)
        bn = arm(t, "test_acc_running", model__norm="batch", data__batch_size=bs)
        if len(no) and len(bn):
            c.notes.append(
                f"batch {bs}: BN - no BN = {bn.mean() - no.mean():+.4f} "
                "(faithful, running statistics)"
            )
    if ghost is not None:
        c.notes.append(_ghost_note(ghost, "test_acc", "test accuracy", "C22"))
    return out


def _ghost_note(ghost: pd.DataFrame, measure: str, what: str, claim: str) -> str:
    """study_ghost's `measure` by BN group size at a fixed SGD batch of 64, as a note."""
    means = ghost.groupby(["model.activation", "model.bn_group"])[measure].mean()
    parts = [
        f"{act} " + ", ".join(f"{g or 64}: {means.get((act, g), np.nan):.4f}" for g in (4, 16, 0))
        for act in RELU_SIGMOID
    ]
    return (
        f"ghost BN ({claim}; SGD batch 64, BN statistics over groups of 4 / 16 / 64, the SGD "
        f"noise the same), {what}: " + "; ".join(parts)
    )


@claim(
    "C7",
    statement="Batch Renorm removes most of the small-batch penalty.",
    source="2017 study, Fig. 9; Ioffe 2017",
    experiment="mlds2017_fig9",
    margin=ACC_MARGIN,
    batch=4,
    protocol="Decided on the 2017 protocol (its Fig. 9), with Batch Renorm as published (Ioffe "
    "2017).",
    test="final test accuracy at batch {batch} (faithful Fig. 6 protocol; Batch Renorm with the "
    "paper's r_max/d_max schedule), both evaluated with running statistics: Batch Renorm > BN, "
    "margin {margin:g}; the size of the penalty it removes as a note.",
)
def c7(c, t, margin, batch):
    """At batch 4, Batch Renorm > BN (it corrects batch statistics towards the running ones);
    the penalty it removes, and layer norm if run, as notes."""
    no = arm(t, "test_acc", model__norm="none", data__batch_size=batch)
    bn = arm(t, "test_acc_running", model__norm="batch", data__batch_size=batch)
    rn = arm(t, "test_acc_running", model__norm="renorm", data__batch_size=batch)
    c.notes.append(
        f"small-batch penalty of BN (no BN - BN) = {no.mean() - bn.mean():+.4f}; Batch Renorm - "
        f"BN = {rn.mean() - bn.mean():+.4f}; Batch Renorm - no BN = {rn.mean() - no.mean():+.4f}"
    )
    ln = arm(t, "test_acc", model__norm="layer", data__batch_size=batch)
    if len(ln):
        c.notes.append(f"layer norm (batch-independent): {ln.mean():.4f} vs BN {bn.mean():.4f}")
    return [Comparison(f"batch {batch}: Batch Renorm > BN", rn, bn, margin)]


@claim(
    "C8",
    statement="BN degrades under train/test distribution mismatch.",
    source="2017 study (mismatch experiment)",
    experiment="mlds2017_mismatch",
    margin=ACC_MARGIN,
    ratios=(9.0, 19.0, 99.0),
    protocol="Decided on the mismatch study, with BN evaluated with the test batch's statistics "
    "(the mechanism the claim names) and with running statistics.",
    test="test accuracy after 1,000 steps on digits 0/1 (sigmoid, SGD lr 1e-4), test sets with "
    "1:0 ratios {ratios:g}: no BN > BN, with BN evaluated on the test batch's statistics and on "
    "running statistics; margin {margin:g}.",
)
def c8(c, t, margin, ratios):
    """On skewed test sets, no BN > BN, with BN normalising by the test batch (whose statistics
    shift with its class mix: the study's mechanism) and by running statistics."""
    out = []
    for col, what in (
        ("test_acc_batch", "test-batch statistics (the study's)"),
        ("test_acc_running", "running statistics"),
    ):
        for ratio in ratios:
            no = arm(t, "test_acc", model__norm="none", data__test_ratio=ratio)
            bn = arm(t, col, model__norm="batch", data__test_ratio=ratio)
            label = f"1:0 = {ratio:g}:1, BN with {what}: no BN > BN"
            out.append(Comparison(label, no, bn, margin))
    return out


@claim(
    "C9a",
    statement="BN reduces internal covariate shift: the distribution of each layer's input "
    "changes less during training.",
    source="Ioffe & Szegedy 2015 (their motivation for BN)",
    experiment="study_lr",
    optional=["santurkar2018_ics"],
    growth=0.25,
    losses=(0.3, 0.1),
    protocol="Decided on the scale-free drift of the inputs of layers 2 and 3 as they are in "
    "training, at matched training loss (study_lr). The faithful measures (the mean "
    "Gaussian KL and mean shift on the 2017 runs) are notes: one nearly dead unit "
    "dominates the KL, the mean shift is in the layer's own units, and both grow with how "
    "fast a network trains.",
    test="per unit of the inputs of layers 2 and 3, in training mode (BN with the batch's "
    "statistics) on 500 fixed training images, the drift |d mu|/sqrt(v_ref + delta) + "
    "0.5|log((v + delta)/(v_ref + delta))| between consecutive probes (250 steps apart; delta "
    "= 1% of the median reference variance), median over units; at the first evaluation with "
    "training loss <= {losses:g}, at each learning rate of study_lr (relu, mean loss) where "
    "both arms get there; no BN > BN as a ratio, margin {growth:.0%}.",
)
def c9a(c, t, faithful, growth, losses):
    """Distributional ICS at the inputs of layers 2 and 3, larger without BN (the BN paper's
    claim: normalising the inputs of a layer stabilises their distribution), per unit and
    scale-free, at matched training loss so that faster training is not read as more shift."""
    out = []
    for lr in sorted(t["optim.lr"].unique()):
        for loss in losses:
            for layer in ("fc2", "fc3"):
                col = f"train_drift_prev_{layer}_at_{loss:g}"
                if col not in t:  # no member of the sweep got that far
                    continue
                no = arm(t, col, sometimes=True, model__norm="none", optim__lr=lr)
                bn = arm(t, col, sometimes=True, model__norm="batch", optim__lr=lr)
                if no.notna().sum() >= 2 and bn.notna().sum() >= 2:
                    label = f"lr {lr:g}, loss <= {loss:g}, input of {layer}: no BN > BN"
                    out.append(Comparison(label, no, bn, math.log(1 + growth), log=True))
    for layer in ("fc2", "fc3"):
        col = f"train_drift_prev_{layer}"
        g = require(t, col).groupby(["model.norm", "optim.lr"])[col].median()
        c.notes.append(
            f"input of {layer}, median over seeds of the drift between probes averaged over the "
            "run (not matched): "
            + "; ".join(
                f"{_bn(n)} " + ", ".join(f"lr {lr:g}: {v:.3g}" for lr, v in g[n].items())
                for n in NORMS2
                if n in g
            )
        )
    if faithful is not None:
        for layer in ("fc2", "fc3"):
            for measure, what in (("ics_kl", "Gaussian KL"), ("ics_mean_shift", "mean shift")):
                label = f"{what}, input of {layer}, {{act}}: no BN > BN"
                for x in _smaller_with_bn(
                    faithful, f"{measure}_{layer}", 1 + growth, label, RELU_SIGMOID
                ):
                    c.notes.append(_as_note("2017 runs, faithful measure (not judged)", x))
    return out


@claim(
    "C9b",
    statement="In the gradient sense, BN does not reduce internal covariate shift: with BN a "
    "layer's gradient changes as much or more when the layers below it move.",
    source="Santurkar et al. 2018, Def. 2.1 and Fig. 5",
    experiment="santurkar2018_ics",
    growth=0.25,
    protocol="Decided on Santurkar et al.'s definition on the 2017 runs: the change of a layer's "
    "gradient when the layers below it take their step is measured directly.",
    test="gradient ICS ||G - G'||/||G|| of layers 2 and 3 (Santurkar Def. 2.1: G' is the layer's "
    "gradient after the layers below it took their step), averaged over the probes (every "
    "1,000 steps) of the 40,000-step SGD runs (relu, sigmoid): BN > no BN; ratio, margin "
    "{growth:.0%} (negligible: as large with BN, which the claim also allows).",
)
def c9b(c, t, growth):
    """Gradient ICS larger with BN (Santurkar et al. found it as large or larger)."""
    out = []
    for layer in ("fc2", "fc3"):
        label = f"gradient ICS, {layer}, {{act}}: BN > no BN"
        out += _bn_vs_none(
            t,
            f"ics_grad_rel_{layer}",
            math.log(1 + growth),
            RELU_SIGMOID,
            log=True,
            label=label,
            optim__name="sgd",
        )
    return out


@claim(
    "C10",
    statement="BN makes the loss landscape smoother.",
    source="Santurkar et al. 2018, Sec. 3; Cohen et al. 2021",
    experiment="santurkar2018_landscape_lr",
    optional=["santurkar2018_landscape"],
    growth=0.25,
    lrs=(0.3, 1.0),
    losses=(0.3, 0.1),
    protocol="Decided on SGD at lr 0.3 and 1 (santurkar2018_landscape_lr). At the 2017 protocol's "
    "lr 1e-4 every step stays first-order, so its loss range and gradient change measure "
    "||g||^2, which BN's gain enlarges, not curvature; they remain as a labelled control.",
    test="SGD on the mean loss (studies protocol, relu and sigmoid) at lr {lrs:g}, probes every "
    "250 steps on the step's batch (BN in training mode): the overshoot D of the first-order "
    "prediction along -eta g (eta = 0.25-4 x lr) and lr x the top Hessian eigenvalue, each "
    "averaged over the run and taken at the first evaluation with training loss <= {losses:g}; "
    "no BN > BN (BN smoother); ratio, margin {growth:.0%}.",
)
def c10(c, t, first_order, growth, lrs, losses):
    """Smoothness where it can be judged: at learning rates where a step along the gradient
    leaves the first-order regime (lr x lambda_max not tiny), by how far the loss departs from
    its linear prediction (D) and by the sharpness lr x lambda_max (2: the edge of stability),
    over the run and at matched training loss (faster training is not read as smoother). The
    2017 protocol's lr 1e-4 stays first-order: its loss range and gradient change measure
    ||g||^2, which BN's gain enlarges; they are reported as a control, not judged."""
    out = []
    for lr in lrs:
        for measure, what in (
            ("curv_overshoot", "overshoot D"),
            ("curv_lr_lambda", "lr x lambda_max"),
        ):
            for suffix, when in (
                ("_mean", "over the run"),
                *((f"_at_{x:g}", f"at loss {x:g}") for x in losses),
            ):
                for act in RELU_SIGMOID:
                    where = dict(model__activation=act, optim__lr=lr, sometimes=suffix != "_mean")
                    no = arm(t, measure + suffix, model__norm="none", **where)
                    bn = arm(t, measure + suffix, model__norm="batch", **where)
                    if no.notna().sum() and bn.notna().sum():
                        label = f"lr {lr:g}, {what}, {when}, {act}: no BN > BN"
                        out.append(Comparison(label, no, bn, math.log(1 + growth), log=True))
    for act in RELU_SIGMOID:
        g = t[t["model.activation"] == act].groupby(["optim.lr", "model.norm"])[
            "curv_lr_lambda_mean"
        ]
        c.notes.append(
            f"{act}: mean lr x lambda_max "
            + ", ".join(f"lr {lr:g} {_bn(n)} {v:.3g}" for (lr, n), v in g.mean().items())
        )
    if first_order is None:
        return out
    for measure in ("landscape_loss_range", "landscape_grad_diff_max", "landscape_beta"):
        for act in RELU_SIGMOID:
            where = dict(model__activation=act, optim__name="sgd")
            no = arm(first_order, measure, model__norm="none", **where)
            bn = arm(first_order, measure, model__norm="batch", **where)
            c.notes.append(
                f"first-order control (2017 runs, lr 1e-4, not judged), {measure}, {act}: "
                f"BN / no BN = {bn.mean() / no.mean():.3g}"
            )
    return out


@claim(
    "C11",
    statement="Noisy BN trains about as well as BN; the same noise without BN fails.",
    source="Santurkar et al. 2018, Sec. 2.1",
    experiment="santurkar2018_noisy_bn",
    margin=0.01,
    harm=0.05,
    growth=0.25,
    protocol="Decided on the noisy-BN study, with the layers' instability measured in training "
    "mode, noise on: in eval mode the noise layer is the identity, so eval-mode probes "
    "made noisy BN look as stable as BN. Noise without BN is an extra arm, not from the "
    "paper.",
    test="final test accuracy after 5,000 steps (studies protocol: SGD lr 0.1 on the mean loss, "
    "batch 64): noisy BN equivalent to BN within {margin:g}; no BN > noise without BN by at "
    "least {harm:g} (an extra arm, not from the paper). The premise, that noisy BN's layer "
    "inputs are less stable than BN's: the scale-free drift of the inputs of layers 2 and 3 "
    "between consecutive probes (every 250 steps, training mode with the noise on, median over "
    "units, averaged over the run), noisy BN > BN as a ratio, margin {growth:.0%}.",
)
def c11(c, t, margin, harm, growth):
    """Noisy BN ~ BN (BN's benefit is not stable activation moments) and no BN > the noise
    without BN, per activation; each norm's drift of the layer-3 input as a note."""
    out = []
    for act in RELU_SIGMOID:
        nb = arm(t, "test_acc", model__norm="noisy_batch", model__activation=act)
        bn = arm(t, "test_acc", model__norm="batch", model__activation=act)
        out.append(Comparison(f"{act}: noisy BN ~ BN", nb, bn, margin, "equivalent"))
        no = arm(t, "test_acc", model__norm="none", model__activation=act)
        nz = arm(t, "test_acc", model__norm="noise", model__activation=act)
        out.append(Comparison(f"{act}: no BN > noise without BN (noise hurts)", no, nz, harm))
        for layer in ("fc2", "fc3"):
            col = f"train_drift_prev_{layer}"
            noisy = arm(t, col, model__norm="noisy_batch", model__activation=act)
            std = arm(t, col, model__norm="batch", model__activation=act)
            label = f"{act}: input of {layer} less stable with noisy BN than BN (noise on)"
            out.append(Comparison(label, noisy, std, math.log(1 + growth), log=True))
        for n in ("batch", "noisy_batch", "none", "noise"):
            d = arm(t, "drift_prev_fc3", model__norm=n, model__activation=act)
            if len(d):
                c.notes.append(
                    f"{act}, {n}: drift of the layer-3 input between probes in eval mode, where "
                    f"the noise is off (not judged) = {d.mean():.3g}"
                )
    return out


@claim(
    "C12",
    statement="BN permits higher learning rates.",
    source="Ioffe & Szegedy 2015; seed explainers",
    experiment="study_lr",
    optional=["study_tuned"],
    margin=ACC_MARGIN,
    ratio=2.0,
    target=0.9,
    lr=3.0,
    protocol="Decided on a learning-rate grid (study_lr); the 2017 protocol runs one learning rate "
    "and cannot test it.",
    test="SGD on the mean loss (relu, batch 64) at learning rates 0.01-3 for 5,000 steps, "
    "diverged members counting as accuracy 0: the highest learning rate at which a member "
    "reaches {target:.0%} test accuracy (a seed that reaches it at no lr counts as one grid "
    "step below the lowest), BN > no BN (per seed, ratio, margin {ratio:g}x); and the test "
    "accuracy at lr {lr:g}, BN > no BN (margin {margin:g}). The learning rates study_tuned "
    "chooses on held-out images as a note.",
)
def c12(c, t, tuned, margin, ratio, target, lr):
    """Per seed, the highest grid lr still reaching the target, BN > no BN as a ratio; at a
    high lr, BN > no BN in accuracy (diverged = 0). Accuracy per lr as notes."""
    t = with_acc0(t)
    lrs = sorted(t["optim.lr"].unique())
    below = lrs[0] ** 2 / lrs[1]  # one grid step below the grid: the target is never reached
    ok = t["optim.lr"].where(t["acc0"] >= target, below)
    ok = ok.groupby([t["model.norm"], t["seed"]]).max()
    bn, no = ok.get("batch", pd.Series(dtype=float)), ok.get("none", pd.Series(dtype=float))
    label = f"highest lr reaching {target:.0%}: BN > no BN"
    out = [Comparison(label, bn, no, math.log(ratio), log=True)]
    bn = arm(t, "acc0", model__norm="batch", optim__lr=lr)
    no = arm(t, "acc0", model__norm="none", optim__lr=lr)
    out.append(Comparison(f"lr {lr:g}: BN > no BN (diverged = 0)", bn, no, margin))
    for n in ("none", "batch"):
        g = t[t["model.norm"] == n].groupby("optim.lr")["acc0"].mean()
        c.notes.append(
            f"{_bn(n)}: best lr {g.idxmax():g} ({g.max():.4f}); mean accuracy per lr "
            + ", ".join(f"{x:g}: {v:.3f}" for x, v in g.items())
        )
    top = t["optim.lr"].max()
    c.notes.append(f"the grid ends at lr {top:g}: a highest lr of {top:g} means 'at least {top:g}'")
    if tuned is not None:
        c.notes.append("study_tuned (20,000 steps), " + _best_lr_note(at_best_lr(tuned)))
    return out


@claim(
    "C13",
    statement="BN reduces sensitivity to the weight-initialisation scale.",
    source="seed explainers",
    experiment="study_init_scale",
    margin=ACC_MARGIN,
    scales=(0.1, 0.3, 3.0, 10.0),
    protocol="Decided on the interaction across initial scales (study_init_scale): BN > no BN at "
    "one scale would also hold if BN were simply better everywhere.",
    test="test accuracy after 5,000 steps (studies protocol, relu) with every initial weight "
    "scaled by {scales[0]:g}-{scales[3]:g}: the interaction, i.e. the accuracy lost against "
    "scale 1 without BN minus the accuracy lost with BN, per scale and paired by seed, > 0; "
    "margin {margin:g}.",
)
def c13(c, t, margin, scales):
    """Sensitivity is an interaction: at each scale away from 1, the accuracy each norm loses
    against its own scale-1 runs (diverged = 0), larger without BN. (BN > no BN at one scale
    would also hold if BN were simply better everywhere.) BN's own loss at large scales is its
    effective learning rate: scaling the weights feeding BN by a divides lr/||w||^2 by a^2."""
    t = with_acc0(t)
    out = []
    base = {n: arm(t, "acc0", model__norm=n, model__init_scale=1.0) for n in NORMS2}
    for s in scales:
        drop = {n: base[n] - arm(t, "acc0", model__norm=n, model__init_scale=s) for n in NORMS2}
        label = f"init scale {s:g}: accuracy lost without BN > lost with BN"
        out.append(Comparison(label, drop["none"], drop["batch"], margin))
    for n in NORMS2:
        g = t[t["model.norm"] == n].groupby("model.init_scale")["acc0"].mean()
        c.notes.append(
            f"{_bn(n)}: mean accuracy per scale "
            + ", ".join(f"{x:g}: {v:.4f}" for x, v in g.items())
            + f" (range {g.max() - g.min():.4f})"
        )
    w = t[t["model.norm"] == "batch"].groupby("model.init_scale")["w2_mean_abs_start"].mean()
    c.notes.append(
        "with BN the effective lr of the weights feeding BN is lr/||w||^2: initial mean |W2| "
        + ", ".join(f"{x:g}: {v:.3g}" for x, v in w.items())
        + " (scale 10: a 100x smaller effective lr)"
    )
    return out


@claim(
    "C14",
    statement="BN before the activation (the BN paper's placement) is better than after it.",
    source="seed explainers (debated: some recommend after)",
    experiment="study_tuned",
    optional=["study_placement"],
    margin=ACC_MARGIN,
    protocol="Decided on each placement at its own best learning rate (study_tuned): at one fixed "
    "learning rate a placement may just prefer another one; study_placement's fixed-lr "
    "results for every activation are notes.",
    test="final test accuracy after 20,000 steps (studies protocol) with each placement at its "
    "own best learning rate of 0.03-3, chosen on the held-out images (diverged = 0): BN before "
    "vs after the activation, relu and sigmoid, either way (before > after supported, after > "
    "before contradicted); margin {margin:g}. Every activation at the fixed lr 0.1 (5,000 "
    "steps) as notes: a placement may just prefer another learning rate.",
)
def c14(c, t, fixed, margin):
    """Per activation, BN before > BN after it in accuracy, each at its own best lr; the
    placement each interval favours as a note (the explainers disagree), and the fixed-lr
    result of every activation."""
    best = at_best_lr(t)
    c.notes.append(_best_lr_note(best))
    out = []
    for act in RELU_SIGMOID:
        b = arm(best, "acc0", model__placement="before", model__activation=act)
        a = arm(best, "acc0", model__placement="after", model__activation=act)
        if len(a) and len(b):
            out.append(Comparison(f"{act}: before > after", b, a, margin))
    better = {}
    for cmp in out:
        _, lo, hi, _ = cmp.diff()
        which = "before" if lo > 0 else "after" if hi < 0 else "no detectable difference"
        better.setdefault(which, []).append(cmp.label.split(":")[0])
    c.notes.append(
        "better placement per activation at the best learning rates: "
        + "; ".join(f"{k}: {', '.join(v)}" for k, v in sorted(better.items()))
    )
    for act in ACTS if fixed is not None else []:
        b = arm(fixed, "test_acc", model__placement="before", model__activation=act)
        a = arm(fixed, "test_acc", model__placement="after", model__activation=act)
        if len(a) and len(b):
            cmp = Comparison(f"{act}: before > after", b, a, margin)
            c.notes.append(_as_note("fixed lr 0.1, 5,000 steps (not judged)", cmp))
    return out


@claim(
    "C15",
    statement="Dropout combined with BN hurts ('never apply dropout with BN'); dropout only after "
    "the last BN is harmless.",
    source="seed explainer; Li et al. 2019",
    experiment=["study_dropout", "study_lr"],
    margin=ACC_MARGIN,
    protocol="Decided on study_dropout against study_lr's runs without dropout; the variance-shift "
    "mechanism is tested by removing it alone (population statistics gathered with "
    "dropout off).",
    test="test accuracy after 5,000 steps (studies protocol, relu, dropout 0.5): the accuracy "
    "lost to dropout is larger with BN than without, i.e. BN's gain over no BN (per seed, within "
    "a table) is larger without dropout (study_lr at lr 0.1) than with it (Welch across the two "
    "tables, margin {margin:g}), for dropout after the activation and directly before BN; "
    "dropout only before the output layer with BN equivalent to BN without dropout within "
    "{margin:g} (Welch). The mechanism, as notes: Li et al.'s variance shift is removed by "
    "evaluating with population statistics gathered with dropout off (instead of the running "
    "statistics, gathered with it on); if that recovers nothing, dropout's cost is underfitting.",
)
def c15(c, d, base, margin):
    """Dropout's cost is larger with BN, whose test-time variance it shifts (Li et al.): BN's
    gain per seed is larger in study_lr at lr 0.1 (no dropout) than with dropout. The two
    tables' seeds do not share weights: Welch. Dropout after the last BN ~ none."""
    bn0 = arm(base, "test_acc", model__norm="batch", optim__lr=0.1)
    no0 = arm(base, "test_acc", model__norm="none", optim__lr=0.1)
    out = []
    for where in ("after_act", "before_bn"):
        bnd = arm(d, "test_acc", model__norm="batch", model__dropout_at=where)
        nod = arm(d, "test_acc", model__norm="none", model__dropout_at=where)
        label = f"dropout {where}: BN - no BN without dropout > with it (dropout costs BN more)"
        gain0, gain = (bn0 - no0).dropna(), (bnd - nod).dropna()
        out.append(Comparison(label, gain0, gain, margin, paired=False))
        vs = arm(d, "var_shift_bn2_final", model__norm="batch", model__dropout_at=where)
        if len(vs.dropna()):  # all NaN only if every BN member diverged (arm checks the rest)
            c.notes.append(f"dropout {where} with BN: variance shift at bn2 = {vs.mean():.3g}")
        c.notes.append(_dropout_mechanism(d, where, margin))
    fin = arm(d, "test_acc", model__norm="batch", model__dropout_at="final")
    label = "dropout only after the last BN ~ BN without dropout"
    out.append(Comparison(label, fin, bn0, margin, "equivalent", paired=False))
    return out


def _dropout_mechanism(d: pd.DataFrame, where: str, margin: float) -> str:
    """Does removing the variance shift (population statistics with dropout off) recover the
    accuracy dropout costs BN? The recovered accuracy with its interval, and the fit: a
    training accuracy no higher than the test accuracy means the network underfits."""
    bn = dict(model__norm="batch", model__dropout_at=where)
    pop, run = arm(d, "test_acc_population", **bn), arm(d, "test_acc_running", **bn)
    cmp = Comparison("population (dropout off) > running statistics", pop, run, margin)
    mean, lo, hi, _ = cmp.diff()
    gap = (arm(d, "train_acc", **bn) - arm(d, "test_acc", **bn)).mean()
    verdict = (
        "removing the variance shift recovers accuracy"
        if lo > 0
        else "removing the variance shift recovers nothing detectable: dropout's cost here is "
        "underfitting, not variance shift"
        if hi < margin
        else "the seeds spread too much to tell whether removing the variance shift helps"
    )
    return (
        f"dropout {where} with BN, {cmp.label}: {mean:+.4f} [{lo:+.4f}, {hi:+.4f}]; train - test "
        f"accuracy {gap:+.4f}; {verdict}"
    )


@claim(
    "C16",
    statement="The bias before BN is redundant (beta subsumes it).",
    source="seed explainer",
    experiment="study_bias",
    margin=ACC_MARGIN,
    protocol="Decided on study_bias, and the exact identity that the gradient of a bias before BN "
    "is zero (a test of bnlab's layers).",
    test="test accuracy after 5,000 steps (studies protocol) with and without the bias of the "
    "linear layers feeding BN: equivalent within {margin:g}.",
)
def c16(c, t, margin):
    """With ~ without the bias before BN, per activation: BN subtracts the batch mean, which
    removes any constant the bias adds."""
    out = []
    for act in RELU_SIGMOID:
        on = arm(t, "test_acc", model__bias_before_norm=True, model__activation=act)
        off = arm(t, "test_acc", model__bias_before_norm=False, model__activation=act)
        out.append(Comparison(f"{act}: with bias ~ without bias", on, off, margin, "equivalent"))
    return out


@claim(
    "C17",
    statement="The order of mini-batches changes the learned running statistics, but the effect "
    "averages out under shuffling.",
    source="seed explainer",
    experiment="study_order",
    optional=["study_lr", "running_stats.csv"],
    margin=ACC_MARGIN,
    orders=10,
    batches=1000,
    protocol="Decided by an intervention that changes the order alone: with the weights frozen at "
    "the end of training, BN's running statistics are recomputed over each member's last "
    "batches in shuffled orders. Comparing members whose weights also diverge measured the "
    "spread of the weights, not of the order.",
    test="BN, studies protocol, 5,000 steps: with the final weights frozen, the running "
    "statistics recomputed over each member's last {batches:g} training batches in {orders:g} "
    "random orders, and the test set evaluated with each: the mean accuracy over orders minus "
    "the accuracy with the run's own running statistics equivalent to 0 within {margin:g}, and "
    "the SD of the accuracy across orders equivalent to 0 within {margin:g} (one value per "
    "member). How much the order moves the running statistics themselves as notes.",
)
def c17(c, t, base, running, margin, orders, batches):
    """Order alone: the accuracy with the running statistics of shuffled orders of the same
    last batches (frozen weights) ~ the run's own, and it varies little across orders. The
    order's effect on the statistics, and the older comparison across members whose weights
    differ, as notes."""
    out = []
    for measure, what in (("reorder_acc_shift", "mean shift"), ("reorder_acc_sd", "SD")):
        v = arm(t, measure, model__norm="batch")
        zero = pd.Series(0.0, index=v.index)
        zero.attrs = v.attrs
        label = f"test accuracy over shuffled orders, {what} ~ 0"
        out.append(Comparison(label, v, zero, margin, "equivalent"))
    for layer in ("bn1", "bn2"):
        for stat in ("mean", "log_var"):
            r = arm(t, f"reorder_{stat}_ratio_{layer}", model__norm="batch")
            c.notes.append(
                f"{layer} running {stat}: SD across orders = {r.mean():.3g} x the SD across "
                "units (mean over members)"
            )
    if running is not None:  # written only where members kept their model.pt
        for _, r in running[running["sweep"] == "study_order"].iterrows():
            c.notes.append(
                f"{r['layer']} running {r['stat']}: SD across members (same initial weights, "
                f"weights diverge with the order) = {r['ratio']:.2f} x the SD across units"
            )
    if base is not None:
        same = arm(t, "test_acc", model__norm="batch")
        own = arm(base, "test_acc", model__norm="batch", optim__lr=0.1)
        c.notes.append(
            f"BN, accuracy SD across members: {same.std():.4f} (same init, data order differs) "
            f"vs {own.std():.4f} (init and order differ; study_lr at lr 0.1)"
        )
    return out


@claim(
    "C18",
    statement="BN adds a mild regularisation effect: a smaller train/test gap.",
    source="seed explainers",
    experiment="study_tuned",
    optional=["study_lr", "mlds2017_fig4", "study_ghost"],
    margin=ACC_MARGIN,
    fit=0.02,
    protocol="Decided on matched fit at each arm's own best learning rate (study_tuned): at the "
    "end of a fixed-length run the arm that fits the training set better has the larger "
    "gap whatever regularises.",
    test="at matched fit: the first evaluation whose training-subset loss is <= {fit:g} (studies "
    "protocol, 20,000 steps, each arm at its own best learning rate, chosen on the held-out "
    "images), BN before the activation vs no BN, relu and sigmoid: test loss without BN > with "
    "BN (margin {margin:g}) and train-test accuracy gap without BN > with BN (margin "
    "{margin:g}). study_lr's fixed learning rates and the gaps at the end of the 2017 runs as "
    "notes: at the end of a fixed-length run the arms fit the training set to different "
    "degrees.",
)
def c18(c, t, fixed, faithful, ghost, margin, fit):
    """A regulariser shows at equal fit: BN and no BN compared at the first evaluation where
    each has fit the training subset to loss <= fit (at the end of a fixed-length run the arm
    that fits better has the larger gap, whatever regularises)."""
    best = at_best_lr(t)
    best = best[best["model.placement"] != "after"]
    c.notes.append(_best_lr_note(best))
    out = []
    for act in RELU_SIGMOID:
        for measure, what in (("test_loss_at_fit", "test loss"), ("gap_at_fit", "gap")):
            where = dict(sometimes=True, model__activation=act)
            no = arm(best, measure, model__norm="none", **where)
            bn = arm(best, measure, model__norm="batch", **where)
            label = f"{act}, {what} at matched fit: without BN > with BN"
            out.append(Comparison(label, no, bn, margin))
        steps = {
            n: arm(best, "fit_step", sometimes=True, model__norm=n, model__activation=act)
            for n in NORMS2
        }
        c.notes.append(
            f"{act}, members reaching training loss {fit:g} at their best lr: "
            + ", ".join(
                f"{_bn(n)} {v.notna().sum()} of {len(v)}"
                + (f" (mean step {v.mean():.0f})" if v.notna().any() else "")
                for n, v in steps.items()
            )
        )
    for lr in sorted(fixed["optim.lr"].unique()) if fixed is not None else []:
        for measure, what in (("test_loss_at_fit", "test loss"), ("gap_at_fit", "gap")):
            no = arm(fixed, measure, sometimes=True, model__norm="none", optim__lr=lr)
            bn = arm(fixed, measure, sometimes=True, model__norm="batch", optim__lr=lr)
            if no.notna().sum() >= 2 and bn.notna().sum() >= 2:
                cmp = Comparison(f"{what} at matched fit: without BN > with BN", no, bn, margin)
                c.notes.append(_as_note(f"study_lr, relu, lr {lr:g} (not judged)", cmp))
    if faithful is not None:
        for x in _bn_vs_none(faithful, "gap", margin, flip=True, optim__name="sgd"):
            c.notes.append(_as_note("end of the 2017 runs (not matched, not judged)", x))
    if ghost is not None:
        c.notes.append(_ghost_note(ghost, "test_loss", "final test loss", "C22"))
        c.notes.append(_ghost_note(ghost, "gap", "train - test accuracy gap", "C22"))
    return out


@claim(
    "C19",
    statement="BN speeds up training: fewer steps to reach a given accuracy.",
    source="Ioffe & Szegedy 2015 (14x on ImageNet; MNIST Fig. 1a)",
    experiment="study_tuned",
    optional=["mlds2017_fig4", "ioffe2015_fig1"],
    ratio=1.5,
    target=0.97,
    faithful_target=0.9,
    protocol="Decided on each arm at its own best learning rate (study_tuned): at one fixed "
    "learning rate (the 2017 protocol's 1e-4, the Ioffe setting's unstated one) the "
    "learning rate decides which arm is faster.",
    test="first evaluated step (every 500) with test accuracy >= {target:g} in the 20,000-step "
    "runs of the studies protocol, each arm at its own best learning rate, chosen on the "
    "held-out images (members that never reach it count as the run length + 1): no BN > BN "
    "as a ratio, margin {ratio:g}x, relu and sigmoid. As notes: steps to {faithful_target:g} "
    "in the 2017 protocol's runs (SGD lr 1e-4 for both arms) and the Ioffe Fig. 1 setting, "
    "whose learning rate the paper does not state.",
)
def c19(c, t, faithful, ioffe, ratio, target, faithful_target):
    """Steps to the target accuracy at each arm's best lr, more without BN, per activation;
    the fixed-lr protocols' steps as notes."""
    best = at_best_lr(t)
    best = best[best["model.placement"] != "after"]
    c.notes.append(_best_lr_note(best))
    out = _fewer_steps_with_bn(best, target, ratio)
    for act in RELU_SIGMOID:
        reached = select(best, model__activation=act).groupby("model.norm")[f"reached_{target}"]
        c.notes.append(
            f"{act}: {target:.0%} reached by "
            + ", ".join(f"{_bn(n)} {int(v.sum())} of {len(v)}" for n, v in reached)
        )
    if faithful is not None:
        label = f"{{act}}: steps to {faithful_target:.0%} without BN > with BN"
        for x in _smaller_with_bn(faithful, f"steps_to_{faithful_target}", ratio, label):
            c.notes.append(_as_note("2017 protocol, lr 1e-4 (not judged)", x))
    if ioffe is None:
        c.notes.append("ioffe2015 not run")
    else:
        no = arm(ioffe, f"steps_to_{target}", model__norm="none")
        bn = arm(ioffe, f"steps_to_{target}", model__norm="batch")
        cmp = Comparison(f"steps to {target:.0%} without BN > with BN", no, bn, 0.0, log=True)
        c.notes.append(_as_note("Ioffe Fig. 1 setting, uncalibrated lr (not judged)", cmp))
    return out


@claim(
    "C20",
    statement="With BN the weights feeding it are scale-invariant: scaling them by a at "
    "initialisation and their learning rate by a^2 trains the same network, so what their "
    "learning rate sets is the effective learning rate lr/||w||^2.",
    source="Ioffe & Szegedy 2015, Sec. 3.3; van Laarhoven 2017; Arora et al. 2019",
    experiment="study_scale_equiv",
    margin=ACC_MARGIN,
    eff=1.05,
    protocol="Decided on paired runs built for it (study_scale_equiv): the same seed, data order "
    "and every other parameter, only the weights feeding BN, their learning rate and BN's eps "
    "rescaled; no other protocol isolates the equivalence.",
    test="studies protocol (relu, BN before the activation, SGD lr 0.1 on the mean loss, 5,000 "
    "steps): each rescaled version against the reference of the same seed, final test accuracy "
    "equal within {margin:g} (TOST), for a = 4 and a = 3 with eps x a^2 and for a = 4 and 1/4 "
    "with eps fixed; and for a = 4 and 3 the final effective learning rate lr/||w_j||^2 of "
    "fc1 and fc2 equal within a factor {eff:g}. How far each version's loss history drifts "
    "from the reference's, and whether it is bit for bit the same, as notes.",
)
def c20(c, t, margin, eff):
    """Rescaled versions against the reference of the same seed: equal accuracy (TOST) and
    equal effective lr; the histories' distance and exactness as notes."""
    versions = (
        (4.0, True, "a = 4, eps x16"),
        (3.0, True, "a = 3, eps x9"),
        (4.0, False, "a = 4, eps fixed"),
        (0.25, False, "a = 1/4, eps fixed"),
    )
    t = require(t, "model.invariant_init_scale", "model.bn_eps", "equiv_max_rel_loss")
    eps0 = t.loc[t["model.invariant_init_scale"] == 1.0, "model.bn_eps"].iloc[0]
    ref = dict(model__invariant_init_scale=1.0)
    out = []
    for a, scaled, label in versions:
        where = dict(model__invariant_init_scale=a, model__bn_eps=eps0 * a * a if scaled else eps0)
        if select(t, **where).empty:
            continue
        acc, acc_ref = arm(t, "test_acc", **where), arm(t, "test_acc", **ref)
        out.append(
            Comparison(f"{label}: test accuracy ~ reference", acc, acc_ref, margin, "equivalent")
        )
        if scaled:
            for layer in ("fc1", "fc2"):
                col = f"eff_lr_{layer}_final"
                cmp = Comparison(
                    f"{label}: {layer} effective lr ~ reference",
                    arm(t, col, **where),
                    arm(t, col, **ref),
                    math.log(eff),
                    "equivalent",
                    log=True,
                )
                out.append(cmp)
        m = select(t, **where)
        c.notes.append(
            f"{label}: loss history (test and training subset, every 250 steps) bit for bit the "
            f"reference's in {int(m['equiv_exact'].astype(bool).sum())} of {len(m)} seeds; largest "
            f"relative loss difference {m['equiv_max_rel_loss'].max():.2g}, largest test "
            f"accuracy difference {m['equiv_max_acc'].max():.4f}"
        )
    r = select(t, **ref)
    c.notes.append(
        "reference, effective lr lr/||w_j||^2 (mean over units) from half-way to the end: "
        + ", ".join(
            f"{layer} {r[f'eff_lr_{layer}_half'].mean():.3g} -> "
            f"{r[f'eff_lr_{layer}_final'].mean():.3g}"
            for layer in ("fc1", "fc2")
        )
        + f"; growth identity ratio (C1) fc1 {r['scale_ratio_fc1'].mean():.4f}, fc2 "
        f"{r['scale_ratio_fc2'].mean():.4f}"
    )
    return out


@claim(
    "C21",
    statement="With BN, weight decay does not shrink the function but the weights feeding BN: "
    "it keeps their effective learning rate lr/||w||^2 high, and their angular update settles "
    "at sqrt(2 lr wd), an equilibrium; without weight decay the angular update dies out.",
    source="van Laarhoven 2017; Zhang et al. 2019; Li & Arora 2020; Wan et al. 2021",
    experiment="study_wd",
    ratio=1.5,
    eff=1.25,
    wd=0.005,
    protocol="Decided on a weight-decay sweep built for it (study_wd); no faithful protocol uses "
    "weight decay.",
    test="studies protocol (relu, SGD lr 0.1 on the mean loss, batch 64) for 10,000 steps, BN "
    "before the activation, for fc1 and fc2: the angle one step turns a unit's incoming "
    "weights (mean over units, averaged over the run's last quarter) equal to sqrt(2 lr wd) "
    "within a factor {ratio:g} at weight decay {wd:g}, and larger than without weight decay "
    "(ratio, margin {ratio:g}x); the final effective learning rate larger with weight decay "
    "{wd:g} than without (ratio, margin {eff:g}x). The milder weight decay 5e-4, test accuracy "
    "with and without BN, and the norms as notes.",
)
def c21(c, t, ratio, eff, wd):
    """The equilibrium angular update sqrt(2 lr wd) (Wan et al. 2021's spherical motion
    dynamics for plain SGD), its absence without weight decay, and the effective lr."""
    bn = select(t, model__norm="batch")
    bn.attrs = t.attrs
    out = []
    for layer in ("fc1", "fc2"):
        col = f"angular_step_{layer}_late"
        turned = arm(bn, col, optim__weight_decay=wd)
        lr = bn.loc[bn["optim.weight_decay"] == wd, "optim.lr"].iloc[0]
        theory = pd.Series(math.sqrt(2 * lr * wd), index=turned.index)
        theory.attrs = turned.attrs
        label = f"{layer}: late angular update at wd {wd:g} ~ sqrt(2 lr wd) = {theory.iloc[0]:.4f}"
        out.append(Comparison(label, turned, theory, math.log(ratio), "equivalent", log=True))
        none = arm(bn, col, optim__weight_decay=0.0)
        label = f"{layer}: late angular update, wd {wd:g} > wd 0"
        out.append(Comparison(label, turned, none, math.log(ratio), log=True))
    for layer in ("fc1", "fc2"):
        col = f"eff_lr_{layer}_final"
        a, b = (arm(bn, col, optim__weight_decay=w) for w in (wd, 0.0))
        label = f"{layer}: final effective lr, wd {wd:g} > wd 0"
        out.append(Comparison(label, a, b, math.log(eff), log=True))
    for w, g in bn.groupby("optim.weight_decay"):
        pred = math.sqrt(2 * g["optim.lr"].iloc[0] * w)
        c.notes.append(
            f"BN, wd {w:g}: late angular update fc1 {g['angular_step_fc1_late'].mean():.4f}, fc2 "
            f"{g['angular_step_fc2_late'].mean():.4f} (sqrt(2 lr wd) = {pred:.4f}); fc2 "
            f"effective lr half-way {g['eff_lr_fc2_half'].mean():.3g}, end "
            f"{g['eff_lr_fc2_final'].mean():.3g}; ||W2|| {g['w_fro_fc2_half'].mean():.3g} -> "
            f"{g['w_fro_fc2_final'].mean():.3g}"
        )
    for norm in NORMS2:
        accs = t[t["model.norm"] == norm].groupby("optim.weight_decay")["test_acc"].mean()
        c.notes.append(
            f"{_bn(norm)}, mean final test accuracy by weight decay: "
            + ", ".join(f"{w:g}: {v:.4f}" for w, v in accs.items())
        )
    return out


@claim(
    "C22",
    statement="The noise of BN's batch statistics, apart from SGD's noise, costs accuracy when "
    "BN normalises over very few examples, and regularises at moderate group sizes (ghost "
    "batch norm).",
    source="Hoffer et al. 2017; the small-batch claims C6 and C18",
    experiment="study_ghost",
    margin=ACC_MARGIN,
    loss=1.05,
    small=4,
    ghost=16,
    protocol="Decided on ghost batch norm at one fixed SGD batch of 64 (study_ghost), which "
    "changes the noise of BN's statistics and nothing else; the 2017 batch-size runs change "
    "both noises, and the number of epochs, together.",
    test="studies protocol (SGD lr 0.1 on the mean loss, batch 64, 5,000 steps), relu and "
    "sigmoid, BN evaluated with running statistics: final test accuracy with statistics over "
    "all 64 examples > over groups of {small} (margin {margin:g}); final test loss with "
    "statistics over all 64 > over groups of {ghost} (ratio, margin {loss:g}x).",
)
def c22(c, t, margin, loss, small, ghost):
    """At a fixed SGD batch, tiny BN groups cost accuracy; moderate groups lower the test
    loss (Hoffer et al.'s regularisation)."""
    out = []
    for act in RELU_SIGMOID:
        full = arm(t, "test_acc", model__bn_group=0, model__activation=act)
        few = arm(t, "test_acc", model__bn_group=small, model__activation=act)
        label = f"{act}: test accuracy, BN over 64 > over groups of {small}"
        out.append(Comparison(label, full, few, margin))
    for act in RELU_SIGMOID:
        full = arm(t, "test_loss", model__bn_group=0, model__activation=act)
        grouped = arm(t, "test_loss", model__bn_group=ghost, model__activation=act)
        label = f"{act}: test loss, BN over 64 > over groups of {ghost}"
        out.append(Comparison(label, full, grouped, math.log(loss), log=True))
    for act in RELU_SIGMOID:
        g = select(t, model__activation=act).groupby("model.bn_group")
        c.notes.append(
            f"{act}, by group size (0 = all 64): test accuracy with running / batch statistics, "
            "train - test gap: "
            + "; ".join(
                f"{int(k)}: {v['test_acc_running'].mean():.4f} / {v['test_acc_batch'].mean():.4f}, "
                f"{v['gap'].mean():+.4f}"
                for k, v in g
            )
        )
    return out


@claim(
    "C23",
    statement="BN fights vanishing gradients: the loss gradient reaches the first hidden "
    "layer's pre-activations about as large as the last hidden layer's.",
    source="seed explainers; 2017 study (Fig. 2); Yang et al. 2019 (the opposite at depth)",
    experiment="mlds2017_fig2",
    optional=["yang2019_depth"],
    figure="activation_grads",
    ratio=0.1,
    protocol="Decided in activation space, where vanishing gradients are defined: C2 reads "
    "weight gradients, which also scale with the layer's input, so a larger dL/dW1 does "
    "not say the backpropagated signal is larger.",
    test="per-example ||dL/dz|| at each hidden layer's pre-activation z (the activation's "
    "input), log10 of its ratio between hidden layer 1 and the last hidden layer: |log10 "
    "ratio| without BN > with BN (margin {ratio:g}, i.e. x1.26) averaged over steps 1-1,000 of "
    "the 2017 Fig. 2 runs (sigmoid and relu), and at the initial weights in the depth study "
    "(8 and 32 hidden layers, BN in training mode).",
)
def c23(c, t, depth, ratio):
    """|log ratio| of first- to last-layer activation gradients, smaller with BN: in the 2017
    runs, and at initialisation at depth."""
    t = t.assign(agrad_abs=require(t, "agrad_log_ratio_1k")["agrad_log_ratio_1k"].abs())
    t.attrs["table"] = t.attrs.get("table")
    out = _bn_vs_none(
        t,
        "agrad_abs",
        ratio,
        acts=["sigmoid", "relu"],
        flip=True,
        label="{act}, 2017 Fig. 2 runs: |log10 ratio| without BN > with BN",
    )
    for act in ("sigmoid", "relu"):
        signed = {
            n: arm(t, "agrad_log_ratio_1k", model__norm=n, model__activation=act) for n in NORMS2
        }
        c.notes.append(
            f"{act}, 2017 runs, signed log10(first / last): "
            + ", ".join(f"{_bn(n)} {v.mean():+.3f}" for n, v in signed.items())
        )
    if depth is None:
        c.notes.append("yang2019_depth not run")
        return out
    d = depth.assign(
        agrad_abs=require(depth, "agrad_log_ratio_first")["agrad_log_ratio_first"].abs()
    )
    d.attrs = depth.attrs
    for layers in (8, 32):
        out += _bn_vs_none(
            d,
            "agrad_abs",
            ratio,
            acts=["sigmoid", "relu"],
            flip=True,
            depth=layers,
            label=f"{{act}}, {layers} layers at initialisation: |log10 ratio| without BN > with BN",
        )
    for act in ("relu", "sigmoid"):
        g = select(depth, model__activation=act).groupby(["depth", "model.norm"])
        signed = g["agrad_log_ratio_first"].mean()
        c.notes.append(
            f"{act} at initialisation, signed log10(first / last) by depth: "
            + "; ".join(
                f"{k:g}: {_none_bn(signed, (k,), '+.2f')}" for k in sorted(depth["depth"].unique())
            )
        )
    return out


@claim(
    "C24",
    statement="BN makes deep MLPs trainable where plain ones fail.",
    source="Ioffe & Szegedy 2015; Yang et al. 2019; Santurkar et al. 2018",
    experiment="study_depth",
    optional=["yang2019_depth"],
    margin=ACC_MARGIN,
    depths=(8, 16, 32),
    protocol="Decided on a depth sweep with each arm at its own best learning rate, chosen on "
    "held-out images (study_depth): at one learning rate, depth and learning rate are "
    "confounded.",
    test="hidden layers of width 100, 1,000 steps of SGD (batch 64, mean loss) at lr 0.01, 0.1 "
    "or 1, each arm (activation x BN x depth) at its best lr on the held-out images (diverged "
    "= 0): final test accuracy with BN > without, at {depths:d} hidden layers, relu and "
    "sigmoid; margin {margin:g}. Depths 2 and 4, and the end-to-end Jacobian's gain at "
    "initialisation, as notes.",
)
def c24(c, t, init, margin, depths):
    """BN vs none per depth at each arm's best lr."""
    best = at_best_lr(t, extra=("depth",))
    out = []
    for act in RELU_SIGMOID:
        for layers in depths:
            out += _bn_vs_none(
                best,
                "acc0",
                margin,
                acts=[act],
                depth=layers,
                label=f"{{act}}, {layers} layers: BN > no BN",
            )
    for act in RELU_SIGMOID:
        m = select(best, model__activation=act).groupby(["depth", "model.norm"])
        acc, lr = m["acc0"].mean(), m["optim.lr"].first()
        c.notes.append(
            f"{act}, test accuracy (lr chosen) by depth: "
            + "; ".join(
                f"{k:g}: {_none_bn(acc, (k,), '.4f')} (lr {_none_bn(lr, (k,), 'g')})"
                for k in sorted(best["depth"].unique())
            )
        )
    if init is not None and "init_jac_gain_hidden" in init:
        g = init.groupby(["model.activation", "depth", "model.norm"])["init_jac_gain_hidden"].mean()
        for act in RELU_SIGMOID:
            c.notes.append(
                f"{act}, end-to-end Jacobian gain mean(s^2) at initialisation (yang2019_depth; BN "
                "in training mode) by depth: "
                + "; ".join(
                    f"{k:g}: {_none_bn(g, (act, k), '.3g')}" for k in sorted(init["depth"].unique())
                )
            )
    return out


@claim(
    "C25",
    statement="Under covariate shift at test time, re-estimating BN's statistics on the "
    "shifted data recovers accuracy that BN's running statistics lose.",
    source="Nado et al. 2020; Schneider et al. 2020",
    experiment="study_shift",
    margin=ACC_MARGIN,
    shifts=("rotation:45", "noise:0.6", "contrast:0.2"),
    protocol="Decided on test sets shifted by bnlab itself (rotation, pixel noise, lower "
    "contrast), a shift of the inputs; the mismatch study (C8) shifts the labels.",
    test="studies protocol networks (relu and sigmoid, BN before the activation, 5,000 steps of "
    "SGD lr 0.1): accuracy on the shifted test set with BN's statistics re-estimated on the "
    "whole shifted set > with its running statistics, at the strongest shift of each kind "
    "({shifts}); margin {margin:g}. The milder shifts, prediction-time BN on test batches of "
    "64, and the networks without BN as notes.",
)
def c25(c, t, margin, shifts):
    """Adapted > running statistics at the strongest shifts."""
    out = []
    for act in RELU_SIGMOID:
        for entry in shifts:
            where = dict(model__norm="batch", model__activation=act)
            adapted = arm(t, f"shift_acc_adapted_{entry}", **where)
            running = arm(t, f"shift_acc_running_{entry}", **where)
            out.append(
                Comparison(f"{act}, {entry}: re-estimated > running", adapted, running, margin)
            )
    entries = sorted({col.split("_", 3)[3] for col in t if col.startswith("shift_acc_running_")})
    for act in RELU_SIGMOID:
        bn = select(t, model__norm="batch", model__activation=act)
        no = select(t, model__norm="none", model__activation=act)
        c.notes.append(
            f"{act}, mean test accuracy, BN running / re-estimated / per batch of 64; no BN: "
            + "; ".join(
                f"{e}: "
                + " / ".join(f"{bn[f'shift_acc_{m}_{e}'].mean():.3f}" for m in SHIFT_MODES)
                + f"; {no[f'shift_acc_running_{e}'].mean():.3f}"
                for e in entries
            )
        )
    return out


@claim(
    "C26",
    statement="BN's benefits hold with SGD with momentum and a learning-rate schedule, the "
    "setup people use: better accuracy and faster training.",
    source="the setups of Ioffe & Szegedy 2015 and later practice; C4 and C19 under plain SGD",
    experiment="study_momentum",
    optional=["study_tuned"],
    margin=ACC_MARGIN,
    ratio=1.5,
    target=0.97,
    protocol="Decided on study_tuned's comparison with SGD momentum 0.9 and a cosine schedule "
    "(study_momentum), each arm at its own best learning rate chosen on held-out images.",
    test="10,000 steps (batch 64, mean loss), SGD momentum 0.9, cosine schedule, lr 0.003-1, "
    "each arm at its best lr on the held-out images (diverged = 0), relu and sigmoid, BN "
    "before the activation vs no BN: final test accuracy BN > no BN (margin {margin:g}), and "
    "steps to {target:g} test accuracy no BN > BN (ratio, margin {ratio:g}x). study_tuned's "
    "plain-SGD results (C4, C19) as notes, to say what changes.",
)
def c26(c, t, tuned, margin, ratio, target):
    """C4 and C19 again with momentum and a cosine schedule."""
    best = at_best_lr(t)
    c.notes.append(_best_lr_note(best))
    out = _bn_vs_none(best, "acc0", margin, acts=RELU_SIGMOID, label="{act}: accuracy BN > no BN")
    out += _fewer_steps_with_bn(best, target, ratio)
    if tuned is not None:
        plain = at_best_lr(tuned)
        plain = plain[plain["model.placement"] != "after"]
        for x in _bn_vs_none(plain, "acc0", margin, acts=RELU_SIGMOID):
            c.notes.append(_as_note("plain SGD, constant lr (study_tuned, C4)", x))
        for x in _fewer_steps_with_bn(plain, target, ratio):
            c.notes.append(_as_note("plain SGD, constant lr (study_tuned, C19)", x))
    return out


def _fewer_steps_with_bn(best: pd.DataFrame, target: float, ratio: float) -> list[Comparison]:
    """Per activation (relu, sigmoid), steps to `target` test accuracy without BN > with BN,
    as a ratio with margin `ratio` (C19, C26)."""
    label = f"{{act}}: steps to {target:.0%} without BN > with BN"
    measure = f"steps_to_{target}"
    return _bn_vs_none(
        best, measure, math.log(ratio), RELU_SIGMOID, flip=True, log=True, label=label
    )


def _fmt(x: float) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.4g}"


def _cells(cmp: Comparison, r: Result) -> tuple[str, str]:
    """A comparison's 'A - B [CI]' and 'p, test' cells."""
    if not r.test:
        return "n/a", "n/a (fewer than 2 values in an arm)"
    if cmp.log:  # the ratio A/B
        mean, lo, hi = (_fmt(math.exp(x)) for x in (r.mean, r.lo, r.hi))
        diff = f"x{mean} [{lo}, {hi}]"
    else:
        diff = f"{r.mean:+.4f} [{r.lo:+.4f}, {r.hi:+.4f}]"
    p = "<0.0001" if r.p < 1e-4 else f"{r.p:.2g}"
    return f"{diff} {'paired' if r.paired else 'Welch'}", f"{p}, {TESTS[r.test]}"


def _arm_text(s: pd.Series) -> str:
    s = s.dropna()
    if s.empty:
        return "no members"
    return f"{_fmt(s.mean())} [{_fmt(s.min())}, {_fmt(s.max())}] (n={len(s)})"


DIFFERENCES = """\
## Settings that differ from the originals, and why

- **Seeds.** Every configuration runs 5 seeds (3 in study_tuned; the 2017 study ran one).
  Within one sweep, BN and no-BN members of a seed start from the same weights, so
  comparisons within a sweep's table are paired by seed; comparisons across tables (C15) use
  Welch's t-test.
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
    level, method = f"{1 - verdicts.ALPHA:.0%}", verdicts.CORRECTION.capitalize()
    header = (
        "Generated by `bnlab claims` from the tables in `results/tables/` (written by `bnlab "
        "reproduce`). Do not edit by hand. Numbers: mean [min, max] over seeds, n = members; "
        "A - B: the mean difference (a ratio A/B for quantities compared on a log scale) with "
        f"its unadjusted {level} interval (paired: by seed; Welch: Welch's t-interval); p: the "
        f"{method}-adjusted p-value of the test that decided the verdict (of the claim's own "
        "test when inconclusive)."
    )
    lines = [
        "# Which claims about batch normalization hold? (bnlab claims report)",
        "",
        textwrap.fill(header, 92, break_on_hyphens=False),
        "",
        textwrap.fill(f"**Verdicts** (`bnlab/verdicts.py`). {verdicts.RULES}", 92),
        "",
        "| claim | statement | verdict |",
        "|---|---|---|",
    ]
    for c in claims:
        lines.append(f"| [{c.key}](#{c.key.lower()}) | {c.statement} | **{c.verdict}** |")
    lines.append("")
    for c in claims:
        lines += [f"## {c.key}", "", f"**Claim.** {c.statement} *Source:* {c.source}", ""]
        lines += [f"**Test.** {c.test}", "", f"**Protocol.** {c.protocol}", ""]
        if c.figure:
            lines += [f"**Figure.** [{c.figure}]({figures}/{c.figure}.png)", ""]
        if c.missing:
            lines += [f"**Verdict: not run** ({c.missing}).", ""]
            continue
        lines += [
            f"| comparison | arm A | arm B | A - B [{level} CI] | p ({method}), test | verdict |",
            "|---|---|---|---|---|---|",
        ]
        for cmp, r in zip(c.comparisons, c.results):
            diff, p = _cells(cmp, r)
            lines.append(
                f"| {cmp.label} | {_arm_text(cmp.a)} | {_arm_text(cmp.b)} | {diff} | {p} "
                f"| {r.verdict} |"
            )
        lines.append("")
        for note in c.notes:
            lines.append(f"- {note}")
        lines += ["", f"**Verdict: {c.verdict}.**", ""]
    lines.append(DIFFERENCES)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="bnlab claims",
        description=__doc__,
        epilog="verdict rules:\n" + textwrap.fill(verdicts.RULES, 90, break_on_hyphens=False),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
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
    except (TableError, ClaimError) as e:
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
