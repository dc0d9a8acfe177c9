"""The claims report (RESULTS/CLAIMS.md) as Markdown: a summary table of the verdicts, the
margins, the members planned and done, one section per claim and the settings that differ
from the originals (render)."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd

from ...runs import experiments
from .. import verdicts
from ..margins import FRAGILITY, MARGINS, Margin
from ..sequential import RULE
from ..verdicts import TESTS, Comparison, Result, counts
from .framework import Claim, Tables


def _fmt(x: float) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.4g}"


def _cells(cmp: Comparison, r: Result) -> tuple[str, str]:
    """A comparison's 'A - B [CI]' and 'p, test' cells."""
    if not r.test:
        return "n/a", "n/a"
    if cmp.log:  # the ratio A/B
        mean, lo, hi = (_fmt(math.exp(x)) for x in (r.mean, r.lo, r.hi))
        diff = f"x{mean} [{lo}, {hi}]"
    else:
        diff = f"{r.mean:+.4f} [{r.lo:+.4f}, {r.hi:+.4f}]"
    p = "<0.0001" if r.p < 1e-4 else f"{r.p:.2g}"
    return f"{diff} {'paired' if r.paired else 'Welch'}", f"{p}, {TESTS[r.test]}"


def _arm_text(s: pd.Series) -> str:
    """'mean [min, max] (n=values)', 'of members' where some give no value."""
    given = s.dropna()
    if given.empty:
        return f"no values ({len(s)} members)" if len(s) else "no members"
    of = "" if len(given) == len(s) else f" of {len(s)}"
    return f"{_fmt(given.mean())} [{_fmt(given.min())}, {_fmt(given.max())}] (n={len(given)}{of})"


def _margin_text(m: Margin) -> str:
    kind = "ratio" if m.ratio else "difference"
    return f"{m.name} margin {m} ({kind}): {m.why}"


STATIC_DIFFERENCES = """\
- **BN at test time.** Curves use BN's running statistics (the correct inference mode); the
  2017 study used the test batch's own statistics. Every run also reports its final accuracy
  with running, population (Algorithm 2) and batch statistics where its claims need them.
- **Batch Renorm.** bnlab's Batch Renorm is Ioffe 2017 as published (r_max and d_max
  schedules as in the paper); the 2017 study's variant had the affine transform in the wrong
  place and used batch statistics at test time (available as model.norm=renorm_mlds2017, not
  used here).
- **Layer-Jacobian.** The per-sample Jacobian with BN in eval mode (well defined); the
  study's batch-sum quantity is drawn next to it in Fig. 3, labelled.
- **Mismatch test sets** are built as labelled (1:0 ratios from the test digits 0 and 1); the
  study's code built them wrongly.
- **Batch-size study.** The faithful runs confound batch size with epochs seen (summed loss,
  fixed steps); a corrected companion (mean loss, equal epochs for every batch size) is
  reported next to it.
- **Ioffe & Szegedy Fig. 1.** The paper does not state the optimiser, learning rate or weight
  scale; bnlab's choice is in configs/experiment/ioffe2015_fig1.yaml.
- **Out of scope:** "BN should not be used in RNNs": bnlab has no recurrent model."""


def differences(claims: list[Claim]) -> str:
    """The section on settings that differ from the originals, built from the experiments
    registry and the claims' own protocol fields (so it cannot go stale)."""
    by_seeds: dict[int, list[str]] = {}
    for e in experiments.EXPERIMENTS.values():
        if e.reproduce:
            by_seeds.setdefault(e.seeds, []).append(e.name)
    seeds = "; ".join(f"{n} seeds: {', '.join(names)}" for n, names in sorted(by_seeds.items()))
    welch = [c.key for c in claims if any(not x.paired for x in c.comparisons)]
    lines = [
        "## Settings that differ from the originals, and why",
        "",
        textwrap.fill(
            f"- **Seeds** (the 2017 study ran one), per configuration in the reproduction: "
            f"{seeds}. Within one sweep table, the members of a seed start from the same "
            "weights, so comparisons within a table are paired by seed; comparisons across "
            f"tables ({', '.join(welch) or 'none'}) use Welch's t-test.",
            92,
            subsequent_indent="  ",
            break_on_hyphens=False,
        ),
        textwrap.fill(
            "- **Which protocol decides each claim.** The faithful protocols reproduce the "
            "papers' figures; where one cannot test the claim it is cited for, another decides "
            "it (each claim's protocol field):",
            92,
            subsequent_indent="  ",
        ),
        "",
        "| claim | decided on | chosen before judging | protocol |",
        "|---|---|---|---|",
    ]
    for c in claims:
        arms = [s.attrs.get("table") for x in c.comparisons for s in (x.a, x.b)]
        names = [experiments.sweep(e) for e in c.experiments] + [Path(a).stem for a in arms if a]
        tables = ", ".join(dict.fromkeys(names))  # its tables, and those its arms come from
        lines.append(f"| {c.key} | {tables} | {c.selection or 'nothing'} | {c.protocol} |")
    return "\n".join([*lines, "", STATIC_DIFFERENCES, ""])


def _census(tables: Tables | None) -> list[str]:
    """The members planned and done per table, as a Markdown table."""
    if tables is None:
        return []
    rows = tables.census()
    lines = [
        "## Members planned and done",
        "",
        textwrap.fill(
            "Per sweep table: members planned (the sweep's rows, members not started "
            "included), done (finished or diverged), and of those diverged and collapsed "
            "(trained, but their training loss is not below the loss of predicting the class "
            "frequencies, or their test accuracy is at chance: accuracy counts, every other "
            "measure is missing). A claim that reads a table with members not done is marked "
            "*partial*.",
            92,
        ),
        "",
        "| table | planned | done | diverged | collapsed |",
        "|---|---|---|---|---|",
    ]
    for sweep, n in rows:
        done = f"{n['done']}" + ("" if n["done"] == n["planned"] else " (**short**)")
        lines.append(
            f"| {sweep}.csv | {n['planned']} | {done} | {n['diverged']} | {n['collapsed']} |"
        )
    return [*lines, ""]


def render(claims: list[Claim], figures: str = "figures", tables: Tables | None = None) -> str:
    """The report as Markdown (with `tables`: the members planned and done per table)."""
    level, method = f"{1 - verdicts.ALPHA:.0%}", verdicts.CORRECTION.capitalize()
    header = (
        "Generated by `bnlab claims` from the tables in `results/tables/` (written by `bnlab "
        "reproduce`). Do not edit by hand. Numbers: mean [min, max] over seeds, n = members "
        "giving a value (of how many, where some give none); A - B: the mean difference (a "
        "ratio A/B for quantities compared on a log scale) with "
        f"its unadjusted {level} interval (paired: by seed; Welch: Welch's t-interval); p: the "
        f"{method}-adjusted p-value of the test that decided the verdict (of the claim's own "
        "test when inconclusive). Robustness: every comparison judged again at half and at "
        "double its margin; a claim whose headline changes is *fragile*, and the report says "
        "what it becomes."
    )
    lines = [
        "# Which claims about batch normalization hold? (bnlab claims report)",
        "",
        textwrap.fill(header, 92, break_on_hyphens=False),
        "",
        textwrap.fill(f"**Verdicts** (`bnlab/analysis/verdicts.py`). {verdicts.RULES} {RULE}", 92),
        "",
        "| claim | statement | headline | comparisons | robustness |",
        "|---|---|---|---|---|",
    ]
    for c in claims:
        n = "" if c.missing else counts(c.results)
        lines.append(
            f"| [{c.key}](#{c.key.lower()}) | {c.statement} | **{c.verdict}** | {n} "
            f"| {c.robustness} |"
        )
    lines += [
        "",
        "## Margins",
        "",
        textwrap.fill(
            "The smallest effect that matters, fixed per kind of measure before the results "
            "are read (`bnlab/analysis/margins.py`; the reasons at length in the documentation's "
            "page on verdicts). A claim-specific margin is stated, with its reason, in its claim's "
            "section.",
            92,
        ),
        "",
        "| margin | value | why |",
        "|---|---|---|",
    ]
    for m in MARGINS.values():
        lines.append(f"| {m.name} | {m} ({'ratio' if m.ratio else 'difference'}) | {m.why} |")
    lines.append("")
    lines += _census(tables)
    for c in claims:
        lines += _section(c, figures, level, method)
    lines.append(differences(claims))
    return "\n".join(lines)


def _section(c: Claim, figures: str, level: str, method: str) -> list[str]:
    """One claim's section of the report."""
    lines = [f"## {c.key}", "", f"**Claim.** {c.statement} *Source:* {c.source}", ""]
    lines += [f"**Test.** {c.test}", "", f"**Protocol.** {c.protocol}", ""]
    for m in dict.fromkeys(c.margins):
        lines += [f"**Margin.** {_margin_text(m)}", ""]
    if c.figure:
        lines += [f"**Figure.** [{c.figure}]({figures}/{c.figure}.png)", ""]
    if c.missing:
        return [*lines, f"**Verdict: not run** ({c.missing}).", ""]
    confirmed = any(x.looks > 1 for x in c.comparisons)
    chosen = (
        f"the selection seeds chose {c.selection}; only the confirmation seeds, trained at the "
        "chosen rates afterwards, gave the numbers judged here, added in looks while a "
        "comparison was undecided (each test at the sequential rule's level)"
        if c.selection and confirmed
        else f"the same seeds chose {c.selection} and gave the numbers judged here (no separate "
        "confirmation seeds, none added): the chosen arms may look better than fresh seeds "
        "would show (the winner's curse)"
        if c.selection
        else "nothing is chosen on them before they are judged; none added"
    )
    lines += [f"**Seeds.** {'; '.join(c.seeds)}: {chosen}.", ""]
    failed = "; ".join(c.failed) if c.failed else "none"
    lines += [f"**Collapsed and diverged members** (tables it reads). {failed}.", ""]
    if c.short:
        lines += [f"**Partial.** Members planned but not done: {'; '.join(c.short)}.", ""]
    lines += [
        f"| comparison | arm A | arm B | A - B [{level} CI] | p ({method}), test | verdict "
        "| at 0.5x / 2x margin |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, (cmp, r) in enumerate(zip(c.comparisons, c.results)):
        diff, p = _cells(cmp, r)
        verdict = r.verdict + (f": {r.why}" if r.why else "")
        other = [c.rejudged[k][i].verdict for k in FRAGILITY]
        other = "same" if set(other) == {r.verdict} else " / ".join(other)
        lines.append(
            f"| {cmp.label} | {_arm_text(cmp.a)} | {_arm_text(cmp.b)} | {diff} | {p} | {verdict} "
            f"| {other} |"
        )
    lines.append("")
    for note in c.notes:
        lines.append(f"- {note}")
    lines += [
        "",
        f"**Verdict: {c.verdict}.** Comparisons: {counts(c.results)}. Robustness: {c.robustness}.",
        "",
    ]
    return lines
