"""The claims' framework: the Claim record, the @claim decorator that registers each claim in
LEDGER, reading and verifying the tables (Tables), the rules for failed members
(diverged_rule, collapsed_rule), arm selection (arm) and building the claims on the tables
(build_claims). A claim function receives each table it declares as the keyword argument
named after its experiment (claim says how), so the order of the declarations cannot matter."""

from __future__ import annotations

import inspect
import re
import string
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cached_property
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from ...runs import experiments
from ...runs.collect import select
from ...runs.records import MANIFEST, manifest, verify
from ..margins import FRAGILITY, Margin
from ..selection import ClaimError, require
from ..sequential import LOOKS, is_confirmation
from ..verdicts import Comparison, Result, at_margins, headline, judge


@dataclass
class Claim:
    """One claim of the ledger: what is claimed, how bnlab tests it and what it reads; once
    built on the tables (build_claims), its comparisons and notes."""

    key: str
    statement: str
    source: str
    test: str
    figure: str | None
    experiments: tuple[str, ...] = ()  # the tables it needs, by experiment (bnlab.runs.experiments)
    optional: tuple[str, ...] = ()  # tables it uses if present (Tables.find)
    numbers: dict = field(default_factory=dict)  # its margins and thresholds, by name
    compare: Callable[..., list[Comparison]] | None = None
    comparisons: list[Comparison] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    missing: str | None = None
    protocol: str = ""  # which protocol decides the verdict, and why (not the faithful one)
    selection: str | None = None  # what the seeds choose before they are judged (the lr)
    failed: list[str] = field(default_factory=list)  # collapsed and diverged members, by arm
    seeds: list[str] = field(default_factory=list)  # the seeds of each table it reads
    short: list[str] = field(default_factory=list)  # tables it reads with members not done

    @cached_property
    def results(self) -> list[Result]:
        """Its comparisons' verdicts, judged together (verdicts.judge) once built."""
        return judge(self.comparisons)

    @property
    def margins(self) -> list[Margin]:
        """The margins it judges with (bnlab.analysis.margins, or its own with their reason)."""
        return [v for v in self.numbers.values() if isinstance(v, Margin)]

    @property
    def verdict(self) -> str:
        """The claim's headline: its scope (verdicts.headline), 'partial: ...' where a table it
        reads has members not done, or 'not run'."""
        if self.missing:
            return "not run"
        text = headline(self.comparisons, self.results)
        return f"partial: {text}" if self.short else text

    @cached_property
    def rejudged(self) -> dict[float, list[Result]]:
        """{factor: the verdicts with every margin times factor} for FRAGILITY's factors."""
        return {k: at_margins(self.comparisons, k) for k in FRAGILITY}

    @cached_property
    def fragility(self) -> dict[float, str]:
        """{factor: headline} for each factor of FRAGILITY whose headline differs from the
        claim's at its own margins: empty if the claim is robust."""
        if self.missing:
            return {}
        own = headline(self.comparisons, self.results)
        out = {}
        for k, results in self.rejudged.items():
            other = headline(self.comparisons, results)
            if other != own:
                out[k] = other
        return out

    @property
    def robustness(self) -> str:
        """'robust', or 'fragile' and what the headline becomes at half and double margins."""
        if self.missing:
            return "n/a"
        if not self.fragility:
            return "robust"
        return "fragile: " + "; ".join(f"at {k:g}x margins: {h}" for k, h in self.fragility.items())


class _Text(string.Formatter):
    """str.format, writing a tuple comma-separated: '{ratios:g}' -> '9, 19, 99'."""

    def format_field(self, value, format_spec):
        if isinstance(value, tuple):
            return ", ".join(format(v, format_spec) for v in value)
        return format(value, format_spec)


_TEXT = _Text()
LEDGER: dict[str, Claim] = {}  # key -> claim, in report order


def claim(
    key,
    *,
    statement,
    source,
    test,
    experiment,
    protocol,
    figure=None,
    optional=(),
    selection=None,
    **numbers,
):
    """Register the decorated function as claim `key` of LEDGER.

    experiment: the experiment (or list of them) whose tables the claim needs; optional: the
    tables it uses if present (Tables.find); protocol: which protocol decides the verdict and
    why (where the faithful one cannot test the claim); selection: what the seeds choose before
    the same seeds are judged (each arm's learning rate), None if nothing; figure: the one the
    report links (default: the first experiment's first, bnlab.runs.experiments). `numbers` holding
    a bnlab.analysis.margins.Margin are the claim's margins. The function is called as
    fn(claim, **tables, **numbers): each table it declares by keyword, named after its
    experiment (a file's name without '.csv': running_stats), None for an absent optional
    table, so the order of the declarations does not matter; its parameters must be exactly
    those names and the numbers. It returns the comparisons (it may add notes to
    claim.notes). `numbers` are the claim's margins and thresholds; the `statement` and
    `test` texts are str.format templates over them that state each one."""
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
        takes = list(inspect.signature(fn).parameters)[1:]  # after the claim itself
        given = [*map(table_arg, (*needed, *optional)), *numbers]
        if sorted(takes) != sorted(given):
            raise ValueError(f"claim {key}: its function takes {takes}, not {given}")
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
            selection=selection,
        )
        return fn

    return register


def table_arg(name: str) -> str:
    """The keyword a claim function gets a table by: its experiment, or a file's name without
    '.csv' ('running_stats.csv' -> running_stats)."""
    return name.removesuffix(".csv")


def order_ledger() -> None:
    """LEDGER in report order (C1, ..., C9a, C9b, C10, ...), once every module of claims has
    registered its own."""
    number = {k: int(re.match(r"C(\d+)", k).group(1)) for k in LEDGER}
    ordered = sorted(LEDGER.items(), key=lambda kv: (number[kv[0]], kv[0]))
    LEDGER.clear()
    LEDGER.update(ordered)


class MissingTable(LookupError):
    """A sweep's table is not in RESULTS/tables (its experiment has not been run)."""


class TableError(ValueError):
    """A table that is not what bnlab tables wrote: the report is not written."""


class Tables:
    """The per-member tables of RESULTS/tables, asked for by experiment (bnlab.runs.experiments)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def get(self, experiment: str) -> pd.DataFrame:
        """The members of the experiment's sweep table that finished or diverged, with the
        rules for failed members applied (diverged_rule, collapsed_rule); MissingTable if
        absent. attrs: 'table' (its path), 'short' (members planned but not done, or None)."""
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
        table = read_table(path)
        done = table[table["status"].isin(["finished", "diverged"])]
        t = collapsed_rule(diverged_rule(done), frequency_loss(_train_classes(experiment)))
        t.attrs["table"] = str(path)  # for arm's errors
        t.attrs["planned"] = len(table)  # members not started have rows too (bnlab collect)
        short = len(done) < len(table)
        t.attrs["short"] = (
            f"{path.name}: {len(done)} of {len(table)} members done" if short else None
        )
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

    def census(self) -> list[tuple[str, dict]]:
        """Per sweep table present: members planned (rows, missing ones included), done
        (finished or diverged), diverged and collapsed."""
        out = []
        for sweep in experiments.sweeps():
            if not (self.folder / f"{sweep}.csv").exists():
                continue
            t = self.get(experiments.experiments_of(sweep)[0])
            diverged, collapsed = (t["status"] == "diverged").sum(), t["collapsed"].sum()
            n = dict(
                planned=t.attrs["planned"], done=len(t), diverged=diverged, collapsed=collapsed
            )
            out.append((sweep, {k: int(v) for k, v in n.items()}))
        return out


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


# MNIST's 60,000 training images per digit 0-9: the class frequencies a network that learned
# nothing predicts (the training subset bnlab evaluates on is a sample of the same set)
MNIST_TRAIN_COUNTS = (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949)
MNIST_TEST_MAJORITY = 1135 / 10000  # the largest class share of MNIST's test set (digit 1)
CHANCE_SLACK = 0.01  # about 3 binomial standard errors of an accuracy near 0.11 on 10,000 images
INIT_STEPS = 1  # a member that trained this many steps is a measurement at initialisation


def frequency_loss(classes: list[int] | None = None) -> float:
    """The cross-entropy of predicting the training classes' frequencies, in nats: their
    entropy (2.3012 for MNIST's ten digits, ln 10 = 2.3026 if balanced; 0.6911 for 0 and 1)."""
    counts = np.array([MNIST_TRAIN_COUNTS[c] for c in (classes or range(10))], float)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())


def _train_classes(experiment: str) -> list[int] | None:
    """The digits the experiment trains on (data.train_classes of its config), None for all."""
    path = Path(str(resources.files("bnlab.conf"))) / "experiment" / f"{experiment}.yaml"
    if not path.exists():
        return None
    data = (yaml.safe_load(path.read_text()) or {}).get("data") or {}
    return data.get("train_classes")


def _accuracy_like(column: str) -> bool:
    """Columns whose value a failed member keeps: accuracies and when one was reached."""
    return "acc" in column or column.startswith(("reached_", "steps_to_"))


def collapsed_rule(table: pd.DataFrame, loss_floor: float) -> pd.DataFrame:
    """The rule for members that trained but learned nothing: a member whose final training
    loss is not below `loss_floor` (the loss of predicting the class frequencies), or whose
    test accuracy on MNIST's test set is at chance (at most the majority class's share plus
    CHANCE_SLACK), is collapsed (column 'collapsed'): its accuracies count as they are (and
    steps to a target as never reached), every other measure is missing, as for a diverged
    member. Not applied to measurements at initialisation (INIT_STEPS) nor, for accuracy, to
    skewed test sets (data.test_ratio), where chance is not the majority share of MNIST's."""
    t = table.copy()
    trained = t["status"] == "finished"
    if "steps_done" in t:
        trained &= t["steps_done"].fillna(0) > INIT_STEPS
    failed = pd.Series(False, index=t.index)
    if "train_loss" in t:
        failed |= t["train_loss"] >= loss_floor
    if "test_acc" in t:
        standard = t["data.test_ratio"].isna() if "data.test_ratio" in t else True
        failed |= standard & (t["test_acc"] <= MNIST_TEST_MAJORITY + CHANCE_SLACK)
    t["collapsed"] = trained & failed
    results = [c for c in _results(t) if not _accuracy_like(c)]
    t.loc[t["collapsed"], results] = np.nan
    return t


def _results(t: pd.DataFrame) -> list[str]:
    """The numeric columns that are results, not settings."""
    settings = ("seed", "data.", "model.", "optim.", "train.", "probes.", "depth", "collapsed")
    return [c for c in t.select_dtypes("number").columns if not c.startswith(settings)]


def failed_members(t: pd.DataFrame) -> list[str]:
    """'collapsed: model.norm=none, optim.lr=3: 5 of 5': the failed members of a table by the
    settings that vary in it."""
    prefixes = ("data.", "model.", "optim.", "train.", "depth")
    keys = [c for c in t if c.startswith(prefixes) and t[c].nunique(dropna=False) > 1]
    if "depth" in keys and "model.widths" in keys:  # the widths spell out the depth
        keys.remove("model.widths")
    name = Path(t.attrs.get("table") or "table").name
    out = []
    flags = {"collapsed": t["collapsed"], "diverged": t["status"] == "diverged"}
    for what, flag in flags.items():
        if not flag.any():
            continue
        groups = t.assign(_f=flag).groupby(keys, dropna=False)["_f"] if keys else None
        parts = []
        for k, g in groups if groups is not None else [((), flag)]:
            if g.sum():
                k = k if isinstance(k, tuple) else (k,)
                where = ", ".join(f"{c}={_plain(v)}" for c, v in zip(keys, k))
                parts.append(f"{where or 'all'}: {int(g.sum())} of {len(g)}")
        out.append(f"{name}, {what}: " + "; ".join(parts))
    return out


def _plain(v) -> str:
    return format(v, "g") if isinstance(v, float) else str(v)


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
    if len(rows) and rows["seed"].map(is_confirmation).all():  # added in looks: tested so
        values.attrs["looks"] = LOOKS
    if "run" in rows:  # the run folders it reads (bnlab.confirm adds seeds to them)
        values.attrs["runs"] = tuple(sorted(rows["run"].unique()))
    trained = rows["status"] != "diverged"
    if "collapsed" in rows:  # its measures are missing too
        trained &= ~rows["collapsed"].astype(bool)
    trained = trained.to_numpy()
    if not sometimes and trained.any() and values[trained].isna().all():
        raise ClaimError(
            f"{name}: column {measure!r} is NaN for every member with {what}; did their runs "
            "record it (its probe on)?"
        )
    return values


def build_claims(tables: Tables, keys: list[str] | None = None) -> list[Claim]:
    """The claims of the ledger (or those of `keys`) on the tables; claims whose runs are
    missing say so. ClaimError, naming the claim, if one reads a column that its table lacks."""
    return [_build(LEDGER[k], tables) for k in (LEDGER if keys is None else keys)]


def _build(spec: Claim, tables: Tables) -> Claim:
    """A copy of the claim with its comparisons and notes on the tables, or 'not run'."""
    c = replace(spec, comparisons=[], notes=[])
    try:
        needed = {e: tables.get(e) for e in c.experiments}
    except MissingTable as e:
        c.missing = f"table {e.args[0]}.csv not found: run its experiment"
        return c
    given = needed | {name: tables.find(name) for name in c.optional}
    try:
        c.comparisons = c.compare(
            c, **{table_arg(name): t for name, t in given.items()}, **c.numbers
        )
    except ClaimError as e:
        raise ClaimError(f"claim {c.key}: {e}") from None
    read = [t for t in given.values() if t is not None and "status" in t]
    c.short = [t.attrs["short"] for t in read if t.attrs.get("short")]
    c.failed = list(dict.fromkeys(line for t in read for line in failed_members(t)))
    c.seeds = list(dict.fromkeys(f"{_seed_list(t['seed'])} ({_name(t)})" for t in read))
    return c


def _name(t: pd.DataFrame) -> str:
    return Path(t.attrs.get("table") or "table").name


def _seed_list(seeds: pd.Series) -> str:
    """'seeds 0-4' (consecutive) or 'seeds 0, 2, 5'; with confirmation seeds
    (bnlab.analysis.sequential) 'selection seeds 0-2, confirmation seeds 100-109'."""
    s = sorted(int(x) for x in seeds.dropna().unique())
    confirm = [x for x in s if is_confirmation(x)]
    if confirm and len(confirm) < len(s):
        chose = [x for x in s if not is_confirmation(x)]
        both = _seed_list(pd.Series(chose)), _seed_list(pd.Series(confirm))
        return "selection {}, confirmation {}".format(*both)
    if len(s) > 2 and s == list(range(s[0], s[-1] + 1)):
        return f"seeds {s[0]}-{s[-1]}"
    return "seeds " + ", ".join(map(str, s))
