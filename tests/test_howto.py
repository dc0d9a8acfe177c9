"""The how-to pages followed to the letter: each code block marked `<!-- howto: FILE, WHERE -->`
is applied to a copy of bnlab where its marker says, and the copy trains with the addition,
so a page cannot drift from the code.

WHERE is `before LINE` or `after LINE` (the first line of FILE containing LINE), `end`, `new`
(the block is the whole file), or `into NAME` (the entries of a `NAME = {...}` or `(...)`
block, those after its `...` line, go at the end of that literal in FILE).
"""

from __future__ import annotations

import importlib.resources
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bnlab.runs.records import read_history

ROOT = Path(__file__).resolve().parents[1]
HOWTO = ROOT / "docs" / "how-to"
MARK = re.compile(
    r"<!-- howto: (?P<path>[^,\n]+), (?P<where>before|after|end|new|into) ?(?P<anchor>[^\n]*?)"
    r" -->\n```\w*\n(?P<code>.*?)```",
    re.S,
)
CONF = Path(str(importlib.resources.files("bnlab.conf"))).resolve()  # bnlab/conf or configs/

pytestmark = pytest.mark.slow


def marked_blocks(page: str) -> list[dict]:
    found = [m.groupdict() for m in MARK.finditer((HOWTO / page).read_text())]
    assert found, f"{page} marks no code block"
    return found


def copy_of_bnlab(dest: Path) -> Path:
    """bnlab, its configs, the sweeper plugin and pyproject.toml, copied to dest. Configs kept
    outside the package are also linked as bnlab/conf, so that the copy's bnlab.conf (what
    Hydra reads) is the copy's configs, however the checkout maps it."""
    ignore = shutil.ignore_patterns("__pycache__")
    for folder in ("bnlab", "hydra_plugins", CONF.relative_to(ROOT)):
        if not (dest / folder).exists():
            shutil.copytree(ROOT / folder, dest / folder, ignore=ignore)
    if not (dest / "bnlab" / "conf").exists():
        (dest / "bnlab" / "conf").symlink_to(dest / CONF.relative_to(ROOT))
    shutil.copy(ROOT / "pyproject.toml", dest)
    return dest


def target(copy: Path, path: str) -> Path:
    """The file a marker names, in the copy; configs/... wherever the configs live."""
    if path.startswith("configs/"):
        return copy / CONF.relative_to(ROOT) / path.removeprefix("configs/")
    return copy / path


def apply(copy: Path, block: dict) -> None:
    """Put one marked code block where its marker says."""
    path, where, anchor, code = (block[k] for k in ("path", "where", "anchor", "code"))
    f = target(copy, path)
    if where == "new":
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(code)
        return
    lines = f.read_text().splitlines(keepends=True)
    if where == "end":
        lines.append("\n\n" + code)
    elif where in ("before", "after"):
        hits = [i for i, line in enumerate(lines) if anchor in line]
        assert hits, f"{path} has no line {anchor!r}"
        lines.insert(hits[0] + (where == "after"), code)
    else:  # into NAME
        body = code.splitlines(keepends=True)
        dots = [i for i, line in enumerate(body) if line.strip() == "..."]
        body = body[dots[0] + 1 : -1] if dots else body
        starts = [i for i, line in enumerate(lines) if re.match(rf"{anchor}\b.*[{{(]$", line)]
        assert starts, f"{path} has no literal {anchor} = {{...}} or (...)"
        end = next(i for i in range(starts[0], len(lines)) if lines[i].rstrip() in ("}", ")"))
        lines[end:end] = body
    f.write_text("".join(lines))


def follow(page: str, tmp_path: Path) -> Path:
    copy = copy_of_bnlab(tmp_path / "repo")
    for block in marked_blocks(page):
        apply(copy, block)
    return copy


def train(copy: Path, root: Path, *args: str) -> Path:
    """`python -m bnlab train ARGS` of the copy, a few steps on two seeds; its results."""
    tiny = ["train.steps=20", "train.eval_every=10", "seeds=[0,1]"]
    return bnlab(copy, "train", *args, *tiny, f"data.root={root}", "data.download=false")


def bnlab(copy: Path, *args: str) -> Path:
    """`python -m bnlab ARGS` of the copy; its results folder."""
    env = {**os.environ, "PYTHONPATH": str(copy), "BNLAB_RESULTS": str(copy / "results")}
    done = subprocess.run(
        [sys.executable, "-m", "bnlab", *args],
        cwd=copy,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return copy / "results"


def test_add_norm(tmp_path, mnist_root):
    """RMSNorm as the page writes it trains with every default probe on, Jacobian included,
    and its gamma and beta reach the weight and gradient probes."""
    copy = follow("add-norm.md", tmp_path)
    probes = ["probes.jacobian.every=10", "probes.weights.every=10", "probes.grads.every=10"]
    results = train(copy, mnist_root, "model.norm=rms", *probes)
    run = sorted(results.glob("runs/*/*"))
    assert len(run) == 1
    h = read_history(run[0], 0)
    metrics = set(zip(h["metric"], h["layer"]))
    assert {("gamma_norm", "bn1"), ("beta_norm", "bn2"), ("grad_xhat_norm", "bn1")} <= metrics
    assert not any(m.startswith("jac_") for m, _ in metrics)  # not diagonal: no Jacobian


def test_add_activation(tmp_path, mnist_root):
    """ELU as the page adds it trains, and the Jacobian probe multiplies its derivative in."""
    copy = follow("add-activation.md", tmp_path)
    over = ["model.activation=elu", "model.norm=batch", "probes.jacobian.every=10"]
    (run,) = sorted(train(copy, mnist_root, *over).glob("runs/*/*"))
    h = read_history(run, 1)
    assert {"fc1", "fc2", "hidden"} <= set(h[h["metric"] == "jac_s_mean"]["layer"])


def test_add_probe(tmp_path, mnist_root):
    """The page's bias probe fires on its schedule, on every linear layer with a bias."""
    copy = follow("add-probe.md", tmp_path)
    (run,) = sorted(train(copy, mnist_root, "probes.bias.every=10").glob("runs/*/*"))
    h = read_history(run, 0)
    bias = h[h["metric"] == "bias_norm"]
    assert set(bias["step"]) == {0, 10, 20} and set(bias["layer"]) == {"fc1", "fc2", "fc3"}


def test_add_experiment(tmp_path, mnist_root):
    """The page's experiment trains as a sweep of its grid, into its own folder, and its figure
    is drawn from the runs."""
    copy = follow("add-experiment.md", tmp_path)
    results = train(copy, mnist_root, "-m", "experiment=my_study")
    finished = (results / "sweeps" / "my_study").glob("*/seed*/summary.json")
    assert len(list(finished)) == 4 * 2  # the grid's 4 points, 2 seeds each
    bnlab(copy, "figures", "my_study", "--results", str(results))
    assert (results / "figures" / "my_study.png").is_file()
