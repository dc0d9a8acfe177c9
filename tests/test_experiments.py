"""Every experiment config composes and validates at every sweep point; the experiments
registry matches the configs and the figures; a tiny reproduction runs end to end."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pandas as pd
import pytest
from conftest import DATA_ROOT, REPO
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from bnlab.analysis.figures import FIGURES
from bnlab.runs.config import load_config
from bnlab.runs.experiments import EXPERIMENTS, EXTRAS, REPRODUCTION, figures_of

CONFIGS = REPO / "configs"
EXPERIMENT_FILES = sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml"))


def _points(name: str):
    """(sweep dir, [overrides of each point]) of an experiment, as Hydra's sweeper sees them."""
    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        cfg = compose("config", [f"experiment={name}"], return_hydra_config=True)
        params = OmegaConf.to_container(cfg.hydra.sweeper.params) or {}
        parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
        points = BasicSweeper.split_arguments(parsed, None)[0]  # Hydra's own expansion
        composed = [
            compose("config", [f"experiment={name}", f"data.root={DATA_ROOT}", *p]) for p in points
        ]
    return cfg.hydra.sweep.dir, composed


@pytest.mark.parametrize("name", EXPERIMENT_FILES)
def test_every_sweep_point_validates(name):
    sweep_dir, points = _points(name)
    assert points
    configs = [load_config({k: v for k, v in c.items() if k != "hydra"}) for c in points]
    assert sweep_dir == f"results/sweeps/{EXPERIMENTS[name].sweep}"  # the registry's folder
    if name in REPRODUCTION + EXTRAS:
        seeds = EXPERIMENTS[name].seeds  # 5, or fewer where the registry says so
        assert all(len(c.seeds) == seeds for c in configs)


def test_registry_lists_every_experiment_and_figure_once():
    assert set(EXPERIMENTS) == set(EXPERIMENT_FILES)
    drawn = figures_of(list(EXPERIMENTS))
    assert sorted(drawn) == sorted(FIGURES)  # every figure has one experiment, and exists


def test_shared_sweep_folders_give_identical_configs():
    """Experiments that share a folder must build the same run for the same point, or one
    would silently reuse another's runs under a different protocol."""
    _, fig4 = _points("mlds2017_fig4")
    _, fig1 = _points("mlds2017_fig1")
    for c in fig1:
        same = [
            f
            for f in fig4
            if (f.model.activation, f.model.norm) == (c.model.activation, c.model.norm)
        ]
        assert len(same) == 1
        strip = {"hydra"}
        assert {k: v for k, v in same[0].items() if k not in strip} == {
            k: v for k, v in c.items() if k not in strip
        }


@pytest.mark.slow
def test_tiny_reproduction_end_to_end(mnist_root, tmp_path):
    """experiment -> collect -> tables -> figures -> claims report, a few steps and 2 seeds."""
    only = ["mlds2017_fig2", "mlds2017_mismatch", "study_lr", "study_order"]
    env = {**os.environ, "BNLAB_DATA_ROOT": str(mnist_root), "HYDRA_FULL_ERROR": "0"}
    cmd = [sys.executable, "-m", "bnlab.reproduce", "--tiny", "--jobs", "1"]
    proc = subprocess.run(
        [*cmd, "--results", str(tmp_path), "--only", *only],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    times = pd.read_csv(tmp_path / "tables" / "reproduction_times.csv")
    assert list(times["experiment"]) == [*only, "all"]
    text = (tmp_path / "tables" / "reproduction_times.csv").read_text()
    assert not re.search(r"\.\d\d", text)  # seconds and percentages to one decimal
    per_experiment, total = times.iloc[:-1], times.iloc[-1]
    assert (per_experiment["runs"] == [4, 8, 12, 2]).all()  # the experiments' sweep points
    assert (per_experiment["member_steps"] == per_experiment["members"] * 24).all()
    assert total["runs"] == 26 and total["job_s"] == pytest.approx(
        per_experiment["job_s"].sum(), abs=0.3
    )
    assert ((times["eval_pct"] > 0) & (times["eval_pct"] < 100)).all()  # part of each job
    mismatch = pd.read_csv(tmp_path / "tables" / "mlds2017_mismatch.csv")
    assert len(mismatch) == 2 * 4 * 2  # 2 seeds x 4 ratios x BN on/off
    assert set(mismatch["status"]) == {"finished"}
    for fig in ("mlds2017_fig2.png", "mlds2017_fig3.png", "mlds2017_mismatch.png", "study_lr.png"):
        assert (tmp_path / "figures" / fig).stat().st_size > 10_000
    assert (tmp_path / "figures" / "mlds2017_fig3_anim.gif").exists()
    assert not (tmp_path / "figures" / "mlds2017_fig4.png").exists()  # its runs were not made
    report = (tmp_path / "CLAIMS.md").read_text()
    assert "| [C8](#c8) |" in report and "**Verdict: not run** (table mlds2017.csv" in report
    c8 = report.split("## C8")[1].split("## C9")[0]
    assert "1:0 = 99:1, BN with running statistics" in c8 and "n=2" in c8

    # a metric renamed in the probes: the tables and the figure refuse instead of going quiet
    from bnlab.analysis import figures, tables
    from bnlab.runs.collect import read_tables

    runs, hist = read_tables(tmp_path / "sweeps" / "mlds2017_early")
    renamed = hist.assign(metric=hist["metric"].astype(str).replace("grad_mean_abs", "grad_abs"))
    tables.check_sources(runs, hist, "mlds2017_early")
    with pytest.raises(tables.MissingMeasure, match="'grad_mean_abs'.*probes.grads"):
        tables.check_sources(runs, renamed, "mlds2017_early")
    res = figures.Results(tmp_path)
    res._cache["mlds2017_early"] = (runs, renamed)
    with pytest.raises(ValueError, match="grad_mean_abs|panels without data"):
        figures.draw("mlds2017_fig2", res, tmp_path / "redrawn")
