"""One data location for every entry point: $BNLAB_DATA_ROOT, else the checkout's data/ (found
from the package, not the working directory), else the per-user cache folder; `bnlab data
fetch` puts MNIST there and `make demo` links data/ to the folder it was given."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest
from conftest import REPO

import bnlab.engine.data
import bnlab.engine.locations
from bnlab import compose
from bnlab.engine.data import DATA_ROOT_ENV, default_root, main, project_root, user_cache
from bnlab.runs.config import RunConfig


def _python(code: str, cwd, env: dict) -> str:
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_the_variable_wins_then_the_checkout_then_the_user_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path / "mine"))
    assert default_root() == str(tmp_path / "mine")
    assert compose([]).data.root == RunConfig().data.root == str(tmp_path / "mine")
    monkeypatch.delenv(DATA_ROOT_ENV)
    assert project_root() == REPO  # the tests run from a checkout
    assert default_root() == str(REPO / "data")
    # an installed package
    monkeypatch.setattr(bnlab.engine.locations, "project_root", lambda: None)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert user_cache() == tmp_path / "cache" / "bnlab"
    assert default_root() == str(tmp_path / "cache" / "bnlab")
    assert compose([]).data.root == str(tmp_path / "cache" / "bnlab")  # the YAML's default too


def test_the_checkout_folder_does_not_depend_on_the_working_directory(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != DATA_ROOT_ENV}
    code = "import bnlab; print(bnlab.compose([]).data.root)"
    assert _python(code, tmp_path, env) == str(REPO / "data")
    env["PYTHONPATH"] = str(REPO)
    out = subprocess.run(
        [sys.executable, "-m", "bnlab", "train", "--cfg", "job", "--resolve"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert f"root: {REPO / 'data'}" in out.stdout  # the command line's default is the same


def test_data_fetch_and_check_default_to_the_same_folder(mnist_root, monkeypatch, capsys):
    monkeypatch.setenv(DATA_ROOT_ENV, str(mnist_root))
    assert main(["check"]) == 0
    assert f"MNIST ok under {mnist_root}" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["fetch", "--help"])
    assert str(mnist_root) in capsys.readouterr().out


def test_a_broken_torchvision_is_named(tmp_path, monkeypatch):
    """torch and torchvision of different builds fail at import with an operator error: that
    is a broken install, not a failed download."""
    import builtins

    real_import = builtins.__import__

    def broken(name, *args, **kwargs):
        if name.startswith("torchvision"):
            raise RuntimeError("operator torchvision::nms does not exist")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", broken)
    with pytest.raises(bnlab.engine.data.DataError) as err:
        bnlab.engine.data.load_mnist(tmp_path, download=True)
    assert "the torchvision install is broken" in str(err.value)
    assert "download failed" not in str(err.value) and "reinstall" in str(err.value)


def test_make_demo_links_data_to_the_folder_it_was_given(tmp_path, mnist_root):
    shutil.copy(REPO / "Makefile", tmp_path / "Makefile")
    env = {**os.environ, DATA_ROOT_ENV: str(mnist_root)}
    out = subprocess.run(["make", "-s", "link-data"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "data").is_symlink() and (tmp_path / "data").resolve() == mnist_root
    env[DATA_ROOT_ENV] = str(tmp_path / "other")  # run again: the link follows the variable
    subprocess.run(["make", "-s", "link-data"], cwd=tmp_path, env=env, check=True, timeout=60)
    assert (tmp_path / "data").resolve() == tmp_path / "other"
    (tmp_path / "data").unlink()
    (tmp_path / "data").mkdir()  # a folder of real files is never replaced
    subprocess.run(["make", "-s", "link-data"], cwd=tmp_path, env=env, check=True, timeout=60)
    assert (tmp_path / "data").is_dir() and not (tmp_path / "data").is_symlink()
    make = (REPO / "Makefile").read_text()
    assert re.search(r"^demo: .*link-data", make, re.M)


def test_git_ignores_the_data_link():
    """`/data/` matches a folder only; the link make demo creates is a file to git."""
    out = subprocess.run(["git", "check-ignore", "--no-index", "-q", "data"], cwd=REPO)
    assert out.returncode == 0


def test_user_facing_text_names_no_machine_layout():
    """README, docs, the package, its configs, the notebooks and the Makefile say "a folder
    holding MNIST/raw"; the test machines' folder appears only in CI and the tests."""
    files = [REPO / "README.md", REPO / "Makefile"]
    for folder, pattern in [("docs", "*.md"), ("bnlab", "*.py"), ("bnlab", "*.yaml"),
                            ("notebooks", "*.py"), ("notebooks", "*.ipynb")]:  # fmt: skip
        files += (REPO / folder).rglob(pattern)
    for path in files:
        text = path.read_text()
        for word in ("../shared", "shared/data", "../data", "protocols.md"):
            assert word not in text, f"{path.relative_to(REPO)} mentions {word}"
