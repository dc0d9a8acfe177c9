"""The command `bnlab claims` (and `python -m bnlab.analysis.claims`): the claims on RESULTS/tables,
written to RESULTS/CLAIMS.md. Its help is the package's docstring."""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

from ...runs.records import write_atomic
from .. import claims as package
from .. import sequential, verdicts
from ..selection import ClaimError
from .framework import TableError, Tables, build_claims
from .report import render


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="bnlab claims",
        description=package.__doc__,
        epilog="verdict rules:\n"
        + textwrap.fill(f"{verdicts.RULES} {sequential.RULE}", 90, break_on_hyphens=False),
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
    try:
        text = render(claims, tables=Tables(args.results / "tables"))
    except (TableError, ClaimError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    write_atomic(out, text)
    for c in claims:
        print(f"{c.key}: {c.verdict}")
    print(f"wrote {out}")
    return 0
