"""Notebooks are kept as jupytext py:percent sources with paired .ipynb files whose outputs
are stripped; the pair must agree, and each notebook is executed here (nbclient, the same
kernel a user gets): it must run to the end, and a notebook that draws must show figures."""

from __future__ import annotations

import re

import jupytext
import nbformat
import pytest
from conftest import REPO
from nbclient import NotebookClient

SOURCES = sorted((REPO / "notebooks").glob("*.py"))
DRAWS = re.compile(r"\b(plt\.|plots\.|curves\()")  # calls that make a figure


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


@pytest.mark.slow
@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_notebook_runs_and_shows_its_figures(source, mnist_root):
    nb = nbformat.read(source.with_suffix(".ipynb"), as_version=4)
    NotebookClient(nb, timeout=600, resources={"metadata": {"path": str(source.parent)}}).execute()
    for cell in nb.cells:
        if cell.cell_type != "code" or not DRAWS.search(cell.source):
            continue
        kinds = {k for out in cell.outputs for k in out.get("data", {})}
        assert "image/png" in kinds, f"{source.name}: no figure shown by\n{cell.source}"
