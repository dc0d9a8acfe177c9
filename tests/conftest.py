"""Shared fixtures. Real-MNIST tests read $BNLAB_DATA_ROOT, else the test machines' folder
../shared/data beside the checkout when it holds MNIST, else bnlab's own rule
(bnlab.engine.locations.default_root); they fail, never skip, when the files are missing: CI must
not pass without having trained on MNIST. The choice is exported as BNLAB_DATA_ROOT, so the
notebooks and the commands the tests start read the same files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from bnlab.engine.data import DATA_ROOT_ENV, MNIST_FILES, Data, default_root, load_data, raw_dir
from bnlab.runs.config import DataConfig, RunConfig, load_config

REPO = Path(__file__).resolve().parents[1]
TEST_MACHINES = REPO.parent / "shared" / "data"  # the test machines' layout, named only here
if not os.environ.get(DATA_ROOT_ENV) and raw_dir(TEST_MACHINES).is_dir():
    os.environ[DATA_ROOT_ENV] = str(TEST_MACHINES)
DATA_ROOT = Path(default_root()).resolve()
os.environ[DATA_ROOT_ENV] = str(DATA_ROOT)


def make_cfg(*overrides: str, root: Path | None = None) -> RunConfig:
    """A validated RunConfig from dotted overrides, e.g. make_cfg('model.norm=batch')."""
    base = [f"data.root={root or DATA_ROOT}", "data.download=false", "train.progress=false"]
    return load_config(OmegaConf.from_dotlist([*base, *overrides]))


def run_bnlab(*args: str, root=None, cwd=REPO, env=None, timeout=300):
    """`python -m bnlab ARGS` in a subprocess (on MNIST under `root` when given), its output
    captured; Hydra's own traceback off, as a user sees it."""
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", **(env or {})}
    if root is not None:
        env[DATA_ROOT_ENV] = str(root)
    return subprocess.run(
        [sys.executable, "-m", "bnlab", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    raw = raw_dir(DATA_ROOT)
    missing = [n for n in MNIST_FILES if not ((raw / n).exists() or (raw / f"{n}.gz").exists())]
    if missing:
        pytest.fail(
            f"real MNIST files missing under {raw}: {missing}. Set BNLAB_DATA_ROOT to a "
            "folder holding MNIST/raw/, or run: bnlab data fetch"
        )
    return DATA_ROOT


@pytest.fixture(scope="session")
def mnist(mnist_root) -> Data:
    return load_data(DataConfig(root=str(mnist_root), download=False))


def synthetic_data(n_train: int = 512, n_test: int = 256, seed: int = 0) -> Data:
    """Random images and labels, for unit tests only (never a user-facing dataset)."""
    g = torch.Generator().manual_seed(seed)

    def labels(n):
        return torch.randint(0, 10, (n,), generator=g)

    return Data(
        torch.rand(n_train, 784, generator=g),
        labels(n_train),
        torch.rand(n_test, 784, generator=g),
        labels(n_test),
        name="synthetic",
    )


def explicit_pass(layer, x, dy):
    """A layer's explicit forward and backward in training mode: (y, dx, dgamma, dbeta)."""
    layer.train()
    with torch.no_grad():
        y = layer(x)
        dx = layer.backward(dy)
    return y, dx, layer.weight.grad, layer.bias.grad


def model_settings(dropout: bool = True) -> list:
    """Every model structure the registries allow, as pytest params of override lists: each
    activation (bnlab.engine.layers.ACTIVATIONS) x norm (bnlab.engine.norms.NORMS and none) x
    placement x dropout position (none, and each of DROPOUT_AT). A new activation, norm or position
    is tested by every test that uses this, with nothing to remember."""
    from bnlab.engine.layers import ACTIVATIONS
    from bnlab.engine.norms import NORMS
    from bnlab.runs.config import DROPOUT_AT, PLACEMENTS

    out = []
    for act in ACTIVATIONS:
        for norm in ["none", *NORMS]:
            for place in PLACEMENTS if norm != "none" else [None]:
                for drop in [None, *DROPOUT_AT] if dropout else [None]:
                    over = [f"model.activation={act}", f"model.norm={norm}"]
                    over += [f"model.placement={place}"] if place else []
                    over += ["model.dropout=0.3", f"model.dropout_at={drop}"] if drop else []
                    name = "-".join([act, norm, *([place] if place else []), drop or "nodrop"])
                    out.append(pytest.param(over, id=name))
    return out


# --------------------------------------------------------------------------- test durations
# `make test-durations` runs the whole suite with --durations-file and keeps where the time
# goes in docs/generated/test-durations.md (with xdist the controller sees every report).
_DURATIONS: dict[str, float] = {}


def pytest_addoption(parser):
    parser.addoption("--durations-file", help="write every test's seconds here (markdown)")


def pytest_runtest_logreport(report):
    _DURATIONS[report.nodeid] = _DURATIONS.get(report.nodeid, 0.0) + report.duration


def pytest_sessionfinish(session):
    path = session.config.getoption("--durations-file")
    if not path or hasattr(session.config, "workerinput"):  # the controller writes it
        return
    rows = sorted(_DURATIONS.items(), key=lambda kv: -kv[1])
    total = sum(_DURATIONS.values())
    files: dict[str, float] = {}
    for node, seconds in rows:
        files[node.split("::")[0]] = files.get(node.split("::")[0], 0.0) + seconds
    lines = [
        "# Where the test time goes",
        "",
        f"Written by `make test-durations`: {len(rows)} tests, {total:.0f} s of test time in all",
        "(setup, call and teardown; with two workers the wall time is about half).",
        "",
        "| file | seconds |",
        "|---|---:|",
        *(f"| {f} | {s:.1f} |" for f, s in sorted(files.items(), key=lambda kv: -kv[1])),
        "",
        "The 30 slowest tests:",
        "",
        "| test | seconds |",
        "|---|---:|",
        *(f"| `{node}` | {s:.1f} |" for node, s in rows[:30]),
    ]
    Path(path).write_text("\n".join(lines) + "\n")
