"""Where a sweep stands: `python -m bnlab.status SWEEP_DIR`.

Counts members finished, diverged, failed, unfinished (a run folder but no summary yet:
running or killed) and missing (planned by the sweep, no run folder yet), and lists the ones
that need attention with their error. Reads only; safe while the sweep runs. Exit status 0
when every member is finished or diverged, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .collect import collect, status_counts
from .records import DONE_STATUSES


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bnlab.status", description=__doc__)
    p.add_argument("sweep_dir", type=Path)
    args = p.parse_args(argv)
    runs, _ = collect(args.sweep_dir)
    if runs.empty:
        print(f"{args.sweep_dir}: no bnlab runs yet")
        return 1
    counts = status_counts(runs)
    done = sum(counts.get(s, 0) for s in DONE_STATUSES)
    print(
        f"{args.sweep_dir}: {done}/{len(runs)} members done; "
        + ", ".join(
            f"{s} {counts.get(s, 0)}"
            for s in ("finished", "diverged", "failed", "unfinished", "missing")
        )
    )
    for row in runs[~runs["status"].isin(["finished"])].itertuples():
        error = f": {row.error}" if isinstance(row.error, str) else ""
        print(f"  {row.status:10s} {row.run} seed {row.seed}{error}")
    return 0 if done == len(runs) else 1


if __name__ == "__main__":
    sys.exit(main())
