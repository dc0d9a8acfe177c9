"""bnlab as a real package: the wheel carries its configs and sweeper, installs into a fresh
virtual environment, and its `bnlab` command trains a sweep and collects it from a folder
outside the checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO


def test_every_folder_of_the_package_is_declared():
    """setuptools warns at length (about 380 lines on `pip install -e .`) about each folder of
    data files (the configs) that is not a declared package, and leaves out code folders. The
    configs live in configs/ and ship as bnlab.conf (a package-dir mapping)."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    setup = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setup["package-dir"] == {"bnlab.conf": "configs"}
    declared = set(setup["packages"])
    files = [p for d in ("bnlab", "configs", "hydra_plugins") for p in (REPO / d).rglob("*.*")]
    folders = {
        ".".join(p.parent.relative_to(REPO).parts).replace("configs", "bnlab.conf", 1)
        for p in files
        if p.suffix in (".py", ".yaml") and "__pycache__" not in p.parts
    }
    folders |= {f.rsplit(".", 1)[0] for f in folders if f.startswith("bnlab.conf.")}  # parents
    assert {"bnlab.conf.experiment", "bnlab.conf.hydra.launcher"} <= folders
    assert folders - {"hydra_plugins"} == declared, sorted(folders ^ declared)


def _run(cmd, **kw):
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)
    assert out.returncode == 0, f"{cmd}\n{out.stdout}\n{out.stderr}"
    return out


@pytest.mark.slow
def test_wheel_installs_and_trains_outside_the_checkout(tmp_path, mnist_root):
    src, wheels = tmp_path / "src", tmp_path / "wheels"  # a copy: the build leaves build/ files
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for name in ("bnlab", "configs", "hydra_plugins"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    build = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                  "-v", "-w", str(wheels), str(src)])  # fmt: skip
    assert "absent from the `packages` configuration" not in build.stdout + build.stderr
    wheel = next(wheels.glob("bnlab-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {
        "bnlab/conf/" + p.relative_to(REPO / "configs").as_posix()
        for p in (REPO / "configs").rglob("*.yaml")
    }
    assert configs and configs <= names  # every config ships, experiments included
    assert "hydra_plugins/bnlab_sweeper/bnlab_sweeper.py" in names

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])
    py = venv / "bin" / "python"
    _run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)])
    # torch and the other dependencies come from this environment (gigabytes to reinstall):
    # its site-packages goes on the path after the new environment's own, so bnlab itself is
    # imported from the wheel and never from the checkout
    site = _run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
    (Path(site.stdout.strip()) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(BNLAB_DATA_ROOT=str(mnist_root), HYDRA_FULL_ERROR="0")
    where = _run([str(py), "-c", "import bnlab; print(bnlab.__file__)"], cwd=work, env=env)
    assert where.stdout.startswith(str(venv))
    # no checkout here: without BNLAB_DATA_ROOT, MNIST lives in the per-user cache folder
    bare = {k: v for k, v in env.items() if k != "BNLAB_DATA_ROOT"}
    bare["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    root = _run([str(py), "-c", "import bnlab; print(bnlab.compose([]).data.root)"], cwd=work,
                env=bare)  # fmt: skip
    assert root.stdout.strip() == str(tmp_path / "cache" / "bnlab")

    bnlab = str(venv / "bin" / "bnlab")
    sweep = work / "sweep"
    out = _run(
        [bnlab, "train", "-m", "model.norm=none,batch", "seeds=[0,1]", "train.steps=20",
         "train.eval_every=10", "data.eval_train_size=500", f"hydra.sweep.dir={sweep}"],
        cwd=work, env=env,
    )  # fmt: skip
    assert "sweep finished: 4/4 members done" in out.stderr + out.stdout
    assert len(list(sweep.glob("*/bnlab.log"))) == 2  # Hydra's job is named bnlab
    out = _run([bnlab, "collect", str(sweep)], cwd=work, env=env)
    assert "4/4 members done (finished 4)" in out.stdout
    runs = pd.read_parquet(sweep / "runs.parquet")
    assert set(runs["status"]) == {"finished"} and (runs["steps_done"] == 20).all()
    # an installed package is not a checkout: no commit is claimed for it
    assert runs["git_commit"].isna().all() and runs["torch_version"].notna().all()
