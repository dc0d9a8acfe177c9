"""Where a sweep stands: `bnlab status SWEEP_DIR`.

Counts members finished, diverged, failed, unfinished (a run folder but no summary yet:
running or killed), missing (planned by the sweep, no run folder yet) and corrupt (a file
that cannot be read), and lists the ones that need attention with their error. Reads only;
safe while the sweep runs. Exit status 0 when every member is finished or diverged, 1
otherwise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .collect import collect, counts_line
from .records import DONE_STATUSES


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bnlab status", description=__doc__)
    p.add_argument("sweep_dir", type=Path)
    args = p.parse_args(argv)
    if not args.sweep_dir.is_dir():
        print(f"error: {args.sweep_dir} is not a folder", file=sys.stderr)
        return 2
    runs, _ = collect(args.sweep_dir)
    if runs.empty:
        print(f"{args.sweep_dir}: no bnlab runs yet")
        return 1
    print(f"{args.sweep_dir}: {counts_line(runs)}")
    for row in runs[~runs["status"].isin(["finished"])].itertuples():
        error = f": {row.error}" if isinstance(row.error, str) else ""
        seed = "" if row.seed is None or row.seed != row.seed else f" seed {int(row.seed)}"
        print(f"  {row.status:10s} {row.run}{seed}{error}")
    return 0 if runs["status"].isin(DONE_STATUSES).all() else 1


if __name__ == "__main__":
    sys.exit(main())
