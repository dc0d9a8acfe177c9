"""The two stages of an experiment that tunes each arm's learning rate (bnlab.analysis.sequential):
the selection grid extended at its edges, then the confirmation seeds, trained in looks while a
comparison is undecided. `bnlab reproduce` runs confirm() after the experiment's sweep.

Every decision reads the tables this writes (the sweep collected, its table rebuilt, the claims
that read it judged), so a rerun on the same tables decides the same and trains only members
that are missing; a member is trained in the run folder of its point, next to the selection
members (confirmation seeds are added to the folder's seeds, as a resumed run adds members).
"""

from __future__ import annotations

import json
import multiprocessing
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd

from .analysis.sequential import (
    FIRST,
    MAX_EXTENSIONS,
    confirmation_seeds,
    is_confirmation,
    next_rate,
    wants_more,
)
from .runs.experiments import EXPERIMENTS, point_dirname
from .runs.records import JOBS_FILE, read_summary, write_json


def confirm(name: str, results: Path, jobs: int) -> dict:
    """Extend experiment `name`'s grid where an arm's chosen rate is on its edge, then train
    its confirmation seeds in looks; return its timing row (reproduce.TIME_COLUMNS) of what
    this call trained."""
    exp = EXPERIMENTS[name]
    sweep = results / "sweeps" / exp.sweep
    trained = Counter()
    for _ in range(MAX_EXTENSIONS):
        table = _table(name, results)
        new = edge_points(table, _points(sweep), exp.arm_keys)
        if not new:
            break
        print(f"== {name}: {len(new)} rates beyond the grid's edge: {', '.join(new)}", flush=True)
        trained += _train(sweep, new, jobs)
    want = {run: FIRST for run in chosen_runs(_table(name, results), exp.arm_keys)}
    while True:
        points = _points(sweep)
        todo = {
            run: (points[run][0], _seeds(points[run][1], n))
            for run, n in want.items()
            if not all(_done(sweep / run, s) for s in confirmation_seeds(n))
        }
        if todo:
            looks = sorted({n for n in want.values()})
            print(
                f"== {name}: confirmation seeds ({looks} per arm) for {len(todo)} arms", flush=True
            )
            trained += _train(sweep, todo, jobs)
        _table(name, results)  # collected and measured again: the next look reads these seeds
        more = more_seeds(name, results)
        grown = {run: n for run, n in more.items() if n > want.get(run, 0)}
        if not grown:
            zero = dict.fromkeys(["runs", "members", "member_steps", "job_s", "eval_s"], 0)
            return {"experiment": f"{name}_confirmation", **zero, **trained}
        want.update(grown)


def _done(folder: Path, seed: int) -> bool:
    return (read_summary(folder, seed) or {}).get("status") in ("finished", "diverged")


def _seeds(seeds: list[int], n: int) -> list[int]:
    """The folder's selection seeds and the first n confirmation seeds."""
    return [s for s in seeds if not is_confirmation(s)] + confirmation_seeds(n)


def _table(name: str, results: Path) -> pd.DataFrame:
    """The experiment's members, freshly collected and measured (bnlab.analysis.tables), with the
    rules for diverged and collapsed members (claims.Tables.get)."""
    from .analysis import tables
    from .analysis.claims.framework import Tables
    from .runs.collect import main as collect_main

    exp = EXPERIMENTS[name]
    if collect_main([str(results / "sweeps" / exp.sweep)]) != 0:
        raise RuntimeError(f"collecting {results / 'sweeps' / exp.sweep} failed")
    if tables.main(["--results", str(results), exp.sweep]) != 0:
        raise RuntimeError(f"the table of {exp.sweep} could not be written")
    return Tables(results / "tables").get(name)


def _points(sweep: Path) -> dict[str, tuple[list[str], list[int]]]:
    """{run folder: (its point's overrides, its seeds)} from the sweep's jobs.json."""
    jobs = json.loads((sweep / JOBS_FILE).read_text())["jobs"]
    return {j["dir"]: (list(j["overrides"]), list(j["seeds"])) for j in jobs}


def _arms(table: pd.DataFrame, keys: tuple[str, ...]):
    from .analysis.selection import ARM_KEYS

    keys = [k for k in [*ARM_KEYS, *keys] if k in table]
    return table.groupby([table[k].astype(str) for k in keys], dropna=False)


def chosen_runs(table: pd.DataFrame, keys: tuple[str, ...] = ()) -> list[str]:
    """The run folder of each arm at its chosen rate (selection.at_best_lr)."""
    from .analysis.selection import at_best_lr

    best = at_best_lr(table, extra=keys)
    return sorted(best["run"].unique())


def edge_points(
    table: pd.DataFrame, points: dict[str, tuple[list[str], list[int]]], keys: tuple[str, ...] = ()
) -> dict[str, tuple[list[str], list[int]]]:
    """{new run folder: (overrides, selection seeds)}: for each arm whose chosen rate is the
    highest (lowest) of the rates it was trained at, the next half-decade rate above (below)."""
    from .analysis.selection import at_best_lr

    best = at_best_lr(table, extra=keys)
    selection = table[~table["seed"].map(is_confirmation)]
    rates = {arm: sorted(set(g["optim.lr"])) for arm, g in _arms(selection, keys)}
    out = {}
    for arm, g in _arms(best, keys):
        lr, tried = float(g["optim.lr"].iloc[0]), rates[arm]
        if len(tried) < 2 or lr not in (tried[0], tried[-1]):
            continue
        new = next_rate(lr, up=lr == tried[-1])
        overrides, seeds = points[g["run"].iloc[0]]
        moved = [o for o in overrides if not o.startswith("optim.lr=")] + [f"optim.lr={new}"]
        out[point_dirname(moved)] = (moved, [s for s in seeds if not is_confirmation(s)])
    return out


def more_seeds(name: str, results: Path) -> dict[str, int]:
    """{run folder: confirmation seeds it should have}: BATCH more for both arms of every
    comparison of experiment `name`'s claims (those it decides: it is the first experiment
    they read) that sequential.wants_more. A claim that reads it second (C27 reads study_tuned
    beside the study it decides) adds no seeds here."""
    from .analysis.claims.framework import LEDGER, Tables, build_claims

    keys = [k for k, c in LEDGER.items() if c.experiments[0] == name]
    out: dict[str, int] = {}
    for c in build_claims(Tables(results / "tables"), keys):
        for cmp, res in zip(c.comparisons, [] if c.missing else c.results):
            if n := wants_more(cmp, res):
                for run in (*cmp.a.attrs.get("runs", ()), *cmp.b.attrs.get("runs", ())):
                    out[run] = max(out.get(run, 0), n)
    return out


def _train(sweep: Path, todo: dict[str, tuple[list[str], list[int]]], jobs: int) -> Counter:
    """Train these points (run folder: (overrides, seeds)) in the sweep, `jobs` at a time, after
    recording them in its jobs.json (so collect and status know the members not done yet);
    return what was trained: runs, members, member_steps, job_s, eval_s."""
    path = sweep / JOBS_FILE
    kept = json.loads(path.read_text())["jobs"]
    entries = {j["dir"]: j for j in kept}
    for run, (overrides, seeds) in todo.items():
        old = entries.get(run, {}).get("seeds", [])
        seeds = [*old, *(s for s in seeds if s not in old)]
        entries[run] = {"dir": run, "overrides": overrides, "seeds": seeds}
    write_json(path, {"jobs": list(entries.values())})
    work = [(overrides, seeds, str(sweep / run)) for run, (overrides, seeds) in todo.items()]
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max(1, min(jobs, len(work))), mp_context=ctx) as pool:
        return sum(pool.map(_train_one, *zip(*work)), Counter())


def _train_one(overrides: list[str], seeds: list[int], folder: str) -> Counter:
    """Train one point's members that are not done in its folder; what was trained."""
    from .runs.compose import compose
    from .runs.train import run

    cfg = compose([*(o for o in overrides if not o.startswith("seeds=")), f"seeds={seeds}"])
    new = [s for s in seeds if not _done(Path(folder), s)]
    if not new:
        return Counter()
    run(cfg, folder)
    done = [read_summary(folder, s) or {} for s in new]
    print(f"{folder}: seeds {new} trained", flush=True)
    return Counter(
        runs=1,
        members=len(new),
        member_steps=sum(d.get("steps_done", 0) for d in done),
        job_s=max(d.get("wall_s", 0.0) for d in done),
        eval_s=max(d.get("eval_s", 0.0) for d in done),
    )
