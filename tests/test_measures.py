"""The registry of per-member measures (bnlab.analysis.tables.TABLE): every column of a table is a
named measure, every measure makes its columns on a real small sweep, and the docs list them all."""

from __future__ import annotations

import importlib.util
import re

import pytest
from conftest import REPO, make_cfg

from bnlab.analysis.tables import MEASURES, measures
from bnlab.engine.data import Data
from bnlab.runs.collect import collect
from bnlab.runs.config import PROBES
from bnlab.runs.train import run


def pattern(name: str) -> re.Pattern:
    """A measure's name as a regular expression: {a,b} either, MODE and ENTRY any name."""
    parts = []
    for token in re.split(r"(\{[^}]*\}|MODE|ENTRY)", name):
        if token.startswith("{"):
            parts.append("(" + "|".join(map(re.escape, token[1:-1].split(","))) + ")")
        else:
            parts.append({"MODE": "[a-z]+", "ENTRY": ".+"}.get(token, re.escape(token)))
    return re.compile("".join(parts))


def owners(column: str) -> list[str]:
    """The measures one of whose patterns gives `column`."""
    return [
        m.name for m in MEASURES if any(pattern(p).fullmatch(column) for p in m.name.split(", "))
    ]


# A sweep that records every measure: two runs of 2 members on 64 training images, which they
# fit within 40 steps (the matched-loss measures), every probe at every other step, the held-out
# images, the batch-order intervention and a shifted test set; the second run's weights feeding
# BN scaled by 2 with the lr and eps rescaled to match (the equivalence measures).
TINY = [
    "model.norm=batch",
    "model.widths=[32,32]",
    "model.bn_momentum=0.5",
    "data.batch_size=16",
    "data.holdout=64",
    "data.eval_holdout=true",
    "data.eval_train_size=64",
    "optim.lr=0.5",
    "train.loss=mean",
    "train.steps=40",
    "train.eval_every=2",
    "train.reorder=2",
    "train.reorder_batches=10",
    "train.shifts=[rotation:15]",
    "seeds=[0,1]",
    "probes.batch=32",
    "probes.jacobian_samples=8",
    "probes.curvature_iters=5",
    *(f"probes.{name}.every=2" for name in PROBES),
]
RESCALED = ["model.invariant_init_scale=2.0", "optim.invariant_lr_scale=4.0", "model.bn_eps=4e-3"]


@pytest.fixture(scope="module")
def table(mnist, tmp_path_factory):
    data = Data(
        mnist.x_train[:64],
        mnist.y_train[:64],
        mnist.x_test[:256],
        mnist.y_test[:256],
        mnist.name,
        mnist.x_train[64:128],
        mnist.y_train[64:128],
    )
    sweep = tmp_path_factory.mktemp("sweep")
    run(make_cfg(*TINY), sweep / "plain", data=data)
    run(make_cfg(*TINY, *RESCALED), sweep / "rescaled", data=data)
    runs, history = collect(sweep)
    return measures(runs, history)


def test_every_column_is_a_named_measure(table):
    results = ["run", "seed", "status", "steps_done", "test_acc", "train_acc", "best_test_acc"]
    results += ["test_loss", "train_loss"]
    measured = [c for c in table if "." not in c and c not in results]
    assert {c: owners(c) for c in measured if len(owners(c)) != 1} == {}


@pytest.mark.parametrize("measure", MEASURES, ids=lambda m: m.name.split(", ")[0])
def test_every_measure_makes_its_columns(table, measure):
    """Each of the measure's patterns gives a column with a value, on the tiny sweep."""
    for p in measure.name.split(", "):
        columns = [c for c in table if pattern(p).fullmatch(c)]
        assert columns, f"no column of {p}"
        assert table[columns].notna().any().any(), f"{p}: no member has a value"


def test_the_docs_list_every_measure():
    spec = importlib.util.spec_from_file_location("bnlab_docs_hooks", REPO / "docs" / "hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    text = hooks.measures_reference()
    for m in MEASURES:
        assert f"| `{m.name}` |" in text
    assert hooks.MEASURES_MARKER in (REPO / "docs" / "measures.md").read_text()
