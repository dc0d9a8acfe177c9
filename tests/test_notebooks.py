"""Notebooks are kept as jupytext py:percent sources with paired .ipynb files whose outputs
are stripped; the pair must agree (CI executes the .ipynb files with nbmake: `make test`)."""

from __future__ import annotations

import jupytext
import pytest
from conftest import REPO

SOURCES = sorted((REPO / "notebooks").glob("*.py"))


def test_the_four_notebooks_exist():
    names = [p.stem for p in SOURCES]
    assert names == ["01_quickstart", "02_explore_results", "03_bn_mechanics", "04_ics_debate"]


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_paired_notebook_matches_its_source_and_has_no_outputs(source):
    paired = source.with_suffix(".ipynb")
    assert paired.exists(), f"run: jupytext --to ipynb {source.relative_to(REPO)}"
    py, nb = jupytext.read(source), jupytext.read(paired)
    cells = [(c.cell_type, c.source) for c in py.cells]
    assert cells == [(c.cell_type, c.source) for c in nb.cells], (
        f"{paired.name} is out of date: run jupytext --sync {source.relative_to(REPO)}"
    )
    for cell in nb.cells:
        assert not cell.get("outputs") and not cell.get("execution_count"), (
            f"{paired.name} holds outputs: strip them (jupytext --to ipynb regenerates it)"
        )
    text = source.read_text()
    assert "**What it shows.**" in text and "**Time:**" in text
    assert "\nassert " in text  # ends with checks on what it computed
