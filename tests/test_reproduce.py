"""Partial reruns keep what they did not run, `--check` retrains and compares, `--tiny` never
overwrites full tables, `bnlab tables` survives bad files, figures from any sweep folder; one
tiny study_bias reproduction (2 seeds, 24 steps) next to copies of the committed tables."""

from __future__ import annotations

import re
import shutil

import pandas as pd
import pytest
import torch
from conftest import REPO

from bnlab import reproduce
from bnlab.analysis import figures, tables
from bnlab.runs.collect import read_tables, write_tables
from bnlab.runs.records import manifest

COMMITTED = REPO / "results" / "tables"
NAME = "study_bias"  # 4 runs: cheap, BN in every run (running_stats rows)


@pytest.fixture(scope="module")
def rerun(mnist_root, tmp_path_factory):
    """A results folder holding the committed tables, after `bnlab reproduce --only
    study_bias` with the tiny overrides: (folder, exit code, output)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("BNLAB_DATA_ROOT", str(mnist_root))
    results = tmp_path_factory.mktemp("rerun")
    shutil.copytree(COMMITTED, results / "tables")
    argv = [*reproduce.TINY, "--only", NAME, "--jobs", "1", "--results", str(results)]
    rc = reproduce.main(argv)
    yield results, rc
    mp.undo()


def _lines(path, keep=lambda line: True):
    return [line for line in path.read_text().splitlines() if keep(line)]


def test_a_partial_rerun_keeps_every_other_table_and_timing_row(rerun):
    results, rc = rerun
    assert rc == 0
    _others_as_committed(results)


def test_the_report_stage_after_a_partial_rerun_keeps_them_too(rerun, capsys):
    """The issue's sequence: `--only study_bias`, then `--stage report` over everything."""
    results, _ = rerun
    assert reproduce.main(["--stage", "report", "--results", str(results)]) == 0
    _others_as_committed(results)
    assert "Traceback" not in capsys.readouterr().err


def _others_as_committed(results):
    out = results / "tables"
    own = {f"{NAME}.csv", "running_stats.csv", "reproduction_times.csv", "manifest.json"}
    for path in COMMITTED.iterdir():
        if path.name not in own:
            assert (out / path.name).read_bytes() == path.read_bytes(), path.name
    assert pd.read_csv(out / f"{NAME}.csv")["steps_done"].max() == 24  # this one was rerun

    def others(line):
        return not line.startswith(f"{NAME},")

    # running_stats.csv: every other sweep's rows as committed, in place; this sweep's new
    assert _lines(out / "running_stats.csv", others) == _lines(
        COMMITTED / "running_stats.csv", others
    )
    assert len(_lines(out / "running_stats.csv")) > len(_lines(out / "running_stats.csv", others))
    # timing: the other experiments' rows and the last full run's total stay; this row is new
    assert _lines(out / "reproduction_times.csv", others) == _lines(
        COMMITTED / "reproduction_times.csv", others
    )
    times = pd.read_csv(out / "reproduction_times.csv")
    assert list(times["experiment"]) == list(
        pd.read_csv(COMMITTED / "reproduction_times.csv")["experiment"]
    )
    row = times.set_index("experiment").loc[NAME]
    assert row["member_steps"] == 4 * 2 * 24
    # the manifest lists the other tables as they were; the report reads the merged tables
    old, new = manifest(COMMITTED), manifest(out)
    assert {k: v for k, v in new.items() if k not in own} == {
        k: v for k, v in old.items() if k not in own
    }
    report = (results / "CLAIMS.md").read_text()  # C17's notes read running_stats.csv
    assert re.search(r"bn1 running mean: SD across members .* x the SD across units", report)


def test_tiny_into_full_tables_is_refused(rerun, tmp_path, capsys):
    shutil.copytree(COMMITTED, tmp_path / "tables")
    before = {p.name: p.read_bytes() for p in (tmp_path / "tables").iterdir()}
    assert reproduce.main(["--tiny", "--only", NAME, "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"--tiny --results {tmp_path}" in err and "full runs" in err and "empty folder" in err
    assert {p.name: p.read_bytes() for p in (tmp_path / "tables").iterdir()} == before
    assert not (tmp_path / "sweeps").exists()  # nothing trained
    assert reproduce.full_tables(rerun[0] / "tables", 24)  # the committed tables are full
    shutil.copy(rerun[0] / "tables" / f"{NAME}.csv", tmp_path / "tiny.csv")
    assert reproduce.full_tables(tmp_path, 24) == []  # a folder of tiny tables may be rerun


def test_check_retrains_a_sample_and_compares(rerun, tmp_path, capsys):
    results, _ = rerun
    capsys.readouterr()
    assert reproduce.main([*reproduce.TINY, "--check", NAME, "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert out.count("== retraining") == 2 and "4 members of 2 runs" in out
    assert re.search(r"test_acc +0 +ok", out) and "check passed" in out
    # a committed table that the code no longer reproduces: exit 1, naming the column
    shutil.copytree(results / "tables", tmp_path / "tables")
    table = pd.read_csv(tmp_path / "tables" / f"{NAME}.csv")
    table.loc[table["run"] == table["run"].min(), "test_acc"] += 0.001
    table.to_csv(tmp_path / "tables" / f"{NAME}.csv", index=False, float_format="%.6g")
    assert reproduce.main([*reproduce.TINY, "--check", NAME, "--results", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert re.search(r"test_acc +0\.001 +DIFFERS", out)
    assert "check failed: test_acc differ by more than float32 rounding (1e-05 x" in out


def _sweep_copy(rerun, root, name):
    shutil.copytree(rerun[0] / "sweeps" / NAME, root / "sweeps" / name)
    return root / "sweeps" / name


def test_tables_mark_members_with_bad_files_corrupt(rerun, tmp_path, capsys):
    sweep = _sweep_copy(rerun, tmp_path, NAME)
    runs, history = read_tables(sweep)
    names = sorted(runs["run"].unique())
    model = sweep / names[0] / "seed0" / "model.pt"
    model.write_bytes(model.read_bytes()[:100])  # truncated
    torch.save([1, 2, 3], sweep / names[1] / "seed1" / "model.pt")  # foreign
    state = torch.load(sweep / names[2] / "seed0" / "model.pt", weights_only=True)
    renamed = {k.replace("bn1", "norm1"): v for k, v in state.items()}
    torch.save(renamed, sweep / names[2] / "seed0" / "model.pt")  # other keys
    dup = history[(history["run"] == names[3]) & (history["seed"] == 1)].head(5)
    write_tables(sweep, runs, pd.concat([history, dup], ignore_index=True))  # repeated rows
    assert tables.main(["--results", str(tmp_path), NAME]) == 0
    table = pd.read_csv(tmp_path / "tables" / f"{NAME}.csv").set_index(["run", "seed"])
    bad = [(names[0], 0), (names[1], 1), (names[2], 0), (names[3], 1)]
    assert (table.loc[bad, "status"] == "corrupt").all()
    assert (table.drop(bad)["status"] == "finished").all() and len(table) == 8
    err = capsys.readouterr().err
    assert "unreadable" in err and "not a state dict" in err and "other keys" in err
    assert "repeated rows" in err
    # each run has one usable member left: no running statistics to compare
    assert not (tmp_path / "tables" / "running_stats.csv").exists()
    assert f"{NAME}.csv" in manifest(tmp_path / "tables")


def test_tables_skip_unreadable_sweeps_and_write_the_rest(rerun, tmp_path, capsys):
    cut = _sweep_copy(rerun, tmp_path, "cut")
    (cut / "runs.parquet").write_bytes((cut / "runs.parquet").read_bytes()[:200])
    garbage = _sweep_copy(rerun, tmp_path, "garbage")
    (garbage / "history.parquet").write_bytes(b"PAR1 not a parquet file at all PAR1")
    _sweep_copy(rerun, tmp_path, "good")
    assert tables.main(["--results", str(tmp_path), "cut", "garbage", "good"]) == 1
    err = capsys.readouterr().err
    assert "cut: skipped: unreadable" in err and "garbage: skipped: unreadable" in err
    assert "Traceback" not in err
    assert (tmp_path / "tables" / "good.csv").exists()
    assert set(manifest(tmp_path / "tables")) == {"good.csv", "running_stats.csv"}


def test_tables_of_any_sweep_folder(rerun, tmp_path, capsys):
    folder = _sweep_copy(rerun, tmp_path, "mine")
    assert tables.main(["--sweep", str(folder)]) == 0
    assert len(pd.read_csv(folder / "mine.csv")) == 8
    assert tables.main(["--results", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "--results" in err and "missing" in err and not (tmp_path / "missing").exists()


def test_figures_all_keeps_figures_whose_runs_are_not_here(rerun, tmp_path, capsys):
    _sweep_copy(rerun, tmp_path, NAME)
    committed = REPO / "results" / "figures" / "study_lr.png"
    (tmp_path / "figures").mkdir()
    shutil.copy(committed, tmp_path / "figures")
    assert figures.main(["all", "--results", str(tmp_path)]) == 0
    assert (tmp_path / "figures" / "study_lr.png").read_bytes() == committed.read_bytes()
    assert (tmp_path / "figures" / f"{NAME}.png").exists()
    assert "kept as they are" in capsys.readouterr().out


def test_figures_from_any_sweep_folder_label_its_steps(rerun, tmp_path, capsys):
    folder = shutil.copytree(rerun[0] / "sweeps" / NAME, tmp_path / "elsewhere")
    assert figures.main([NAME, "--sweep", str(folder), "--results", str(tmp_path / "r")]) == 0
    assert (folder / f"{NAME}.png").exists()
    fig = figures.study_bias(figures.Results(tmp_path / "r", {NAME: folder}))
    assert fig.axes[0].get_ylabel() == "test accuracy after 24 steps"
    assert figures.main(["all", "--sweep", str(folder)]) == 2
    assert figures.main([NAME, "--sweep", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(line.startswith("error: --sweep ") for line in err)


def test_the_train_it_first_hint_names_a_command_that_works(tmp_path, capsys):
    (tmp_path / "tables").mkdir()
    shutil.copy(COMMITTED / "reproduction_times.csv", tmp_path / "tables")
    for name in ("study_lr", "mlds2017_fig1", "demo"):
        assert figures.main([name, "--results", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    # study_lr: its 12 runs' job-seconds, two at a time; fig1: 2 of mlds2017's runs, timed
    # under mlds2017_fig4 and _fig5 (their job-seconds per run, times 2, two at a time)
    t = pd.read_csv(COMMITTED / "reproduction_times.csv").set_index("experiment")
    lr_min = round(t.loc["study_lr", "job_s"] / 60 / 2)
    mates = t.loc[["mlds2017_fig4", "mlds2017_fig5"]]
    fig1_min = round(mates["job_s"].sum() / mates["runs"].sum() * 2 / 60 / 2)
    assert f"train it first: bnlab reproduce --only study_lr (about {lr_min} min on 2 " in err
    assert f"bnlab reproduce --only mlds2017_fig1 (about {fig1_min} min on 2 cores)" in err
    assert "train it first: bnlab train -m experiment=demo," in err
    assert "--only demo" not in err


def test_readme_times_match_the_committed_timings():
    """The README's Fig. 4 time is the committed reproduction_times.csv's."""
    readme = (REPO / "README.md").read_text()
    cpu, wall = map(
        int, re.search(r"about (\d+) minutes of CPU: about (\d+) minutes", readme).groups()
    )
    job_s = pd.read_csv(COMMITTED / "reproduction_times.csv").set_index("experiment")["job_s"]
    assert cpu == round(job_s["mlds2017_fig4"] / 60)
    assert wall == figures.training_minutes("mlds2017_fig4", REPO / "results")


def test_the_total_row_is_the_last_full_runs(tmp_path):
    """'all' sums the rows of a run that trained the whole default reproduction (the extras'
    rows, measured by other runs, stay beside it); a partial run leaves it as it was."""
    out = tmp_path / "reproduction_times.csv"
    zero = {"runs": 1, "members": 5, "member_steps": 100, "eval_s": 1.0}

    def rows(names, job_s):
        return pd.DataFrame([{"experiment": n, **zero, "job_s": job_s} for n in names])

    extras = reproduce.EXTRAS[:1]
    reproduce.write_times(rows(extras, 7.0), 7.0, out, full=False)  # an extra on its own
    default = reproduce.REPRODUCTION
    reproduce.write_times(rows(default, 10.0), 123.0, out, full=True)
    t = pd.read_csv(out).set_index("experiment")
    assert t.loc["all", "wall_s"] == 123.0 and t.loc["all", "job_s"] == 10.0 * len(default)
    assert t.loc[extras[0], "job_s"] == 7.0  # kept, not in the total
    reproduce.write_times(rows(default[:1], 99.0), 5.0, out, full=False)
    t2 = pd.read_csv(out).set_index("experiment")
    assert t2.loc["all"].equals(t.loc["all"]) and t2.loc[default[0], "job_s"] == 99.0


def test_breakdown_times_an_experiment_of_fresh_seeds_but_not_a_confirmation_stage(tmp_path):
    """A two-stage experiment's row counts its selection seeds (its confirmation seeds have a
    row of their own); an experiment whose own seeds are numbered from 100 counts them all."""
    from bnlab.runs.records import JOBS_FILE, member_dir, write_json

    for name, seeds in (("study_tuned", [0, 1, 100]), ("study_matched_lr", [100, 101])):
        sweep = tmp_path / "sweeps" / reproduce.EXPERIMENTS[name].sweep
        job = {"dir": "p", "overrides": [f"experiment={name}"], "seeds": seeds}
        write_json(sweep / JOBS_FILE, {"jobs": [job]})
        for s in seeds:
            member_dir(sweep / "p", s).mkdir(parents=True)
            summary = {"steps_done": 10, "wall_s": 5.0 + s, "eval_s": 1.0}
            write_json(member_dir(sweep / "p", s) / "summary.json", summary)
    t = reproduce.breakdown(["study_tuned", "study_matched_lr"], tmp_path)
    t = t.set_index("experiment")
    assert t.loc["study_tuned", "members"] == 2 and t.loc["study_tuned", "job_s"] == 6.0
    assert t.loc["study_matched_lr", "members"] == 2 and t.loc["study_matched_lr", "job_s"] == 106
