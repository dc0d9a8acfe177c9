"""One source for defaults, and a documentation site that builds.

The schema (bnlab/runs/config.py) is the source of every default and of its documentation: the
YAML configs set only what differs from it, every field needs a doc comment, and the
configuration reference is generated from it when the site is built (docs/hooks.py). The
site must build with `mkdocs build --strict`: no broken link, missing page or snippet."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO
from omegaconf import OmegaConf

from bnlab.runs.compose import CONFIG_DIR, compose_dict, schema_defaults
from bnlab.runs.config import RunConfig, to_dict

# Fields without a doc comment in bnlab/runs/config.py when this test was written. Add a comment
# beside the field (what it means, its unit, its choices) and remove the key from this list;
# a new field must come with its comment.
UNDOCUMENTED: set[str] = set()  # fields still waiting for their doc comment
# groups added after the experiment: +arm=..., +reparam=..., +matched_lr=..., +decay=...
ADDED_GROUPS = ("arm", "reparam", "matched_lr", "decay")


def _hooks():
    spec = importlib.util.spec_from_file_location("bnlab_docs_hooks", REPO / "docs" / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _leaves(node, prefix: str = "") -> dict:
    """{'model.renorm.r_max': 3.0, ...}: every leaf of nested dicts (lists are leaves)."""
    out = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _same(a, b) -> bool:
    """Equal values of the same kind: 1 and 1.0 match, True and 1 do not."""
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    return type(a) is type(b) and a == b


def _parents(path: Path) -> list[str]:
    """The overrides that compose what a YAML file is applied onto: the entries of its
    defaults list (`/protocol/mlds2017`, or `mlds2017_fig2` of its own group)."""
    if path.parent == Path(CONFIG_DIR):  # config.yaml: its defaults list is the base
        return []
    entries = (yaml.safe_load(path.read_text()) or {}).get("defaults", [])
    out = []
    for entry in entries:
        if isinstance(entry, str) and entry != "_self_":
            group, _, option = entry.lstrip("/").rpartition("/")
            out.append(f"+{group}={option}" if group else f"{path.parent.name}={option}")
    return out


def repeated(path: Path) -> list[str]:
    """The settings a YAML file gives the value they already have: the schema's default, or
    the value of the configs it builds on (its defaults list). One line each."""
    text = path.read_text()
    node = yaml.safe_load(text) or {}
    node.pop("defaults", None)
    node.pop("hydra", None)
    if "@package _global_" not in text and path.parent != Path(CONFIG_DIR):
        node = {path.parent.name: node}  # a group's package: data/mnist5k.yaml is under data.
    base = _leaves(OmegaConf.to_container(compose_dict(_parents(path)), resolve=False))
    return [
        f"{path.parent.name}/{path.name}: {key}={value!r} is already its value there; remove it"
        for key, value in _leaves(node).items()
        if key in base and _same(value, base[key])
    ]


def test_no_yaml_value_repeats_a_default():
    """Defaults are written once, in the schema (bnlab/runs/config.py): every YAML file sets only
    what differs from the schema's default or from the configs it builds on. Options of the
    groups added after an experiment (+arm=none, +reparam=none) are left out: each sets its
    keys over whatever the experiment set."""
    conf = Path(CONFIG_DIR)
    files = [p for p in sorted(conf.rglob("*.yaml")) if p.parent.name not in ADDED_GROUPS]
    files = [p for p in files if "hydra" not in p.relative_to(conf).parts]
    assert len(files) > 30 and conf / "config.yaml" in files
    problems = [line for path in files for line in repeated(path)]
    assert not problems, "defaults written twice:\n" + "\n".join(problems)


def test_a_repeated_default_is_found(tmp_path):
    (tmp_path / "optim").mkdir()
    path = tmp_path / "optim" / "sgd2.yaml"
    path.write_text("name: sgd\nlr: 1.0e-4\nmomentum: 0.9\nbetas: [0.9, 0.999]\n")
    assert repeated(path) == [
        "optim/sgd2.yaml: optim.name='sgd' is already its value there; remove it",
        "optim/sgd2.yaml: optim.lr=0.0001 is already its value there; remove it",
        "optim/sgd2.yaml: optim.betas=[0.9, 0.999] is already its value there; remove it",
    ]
    (tmp_path / "experiment").mkdir()
    path = tmp_path / "experiment" / "mine.yaml"  # a protocol's value, and the default again
    path.write_text(
        "# @package _global_\ndefaults:\n  - /protocol/studies\n"
        "optim:\n  lr: 0.1\ntrain:\n  loss: sum\n  steps: 2000\n"
    )
    assert repeated(path) == [
        "experiment/mine.yaml: optim.lr=0.1 is already its value there; remove it"
    ]


def test_composition_starts_from_the_schema():
    """configs/config.yaml composes onto every setting at its schema default, so `bnlab train
    --cfg job` shows each one."""
    composed = OmegaConf.to_container(compose_dict([]), resolve=False)
    assert composed == schema_defaults()
    assert _leaves(composed).keys() == _leaves(to_dict(RunConfig())).keys()


def test_every_schema_field_has_a_doc_comment():
    """The configuration reference shows each field's comment: a field without one is a
    blank line in the docs."""
    missing = set(_hooks().undocumented_fields())
    new = sorted(missing - UNDOCUMENTED)
    assert not new, (
        f"fields without a doc comment in bnlab/runs/config.py: {new}; write one beside each "
        "(what it means, its unit or choices): it is their text in the configuration reference"
    )
    documented = sorted(UNDOCUMENTED - missing)
    assert not documented, f"{documented} have doc comments now: remove them from UNDOCUMENTED"


def test_configuration_reference_lists_every_field_with_its_default():
    hooks = _hooks()
    text = hooks.config_reference()
    rows = {r.key: r for *_, fields in hooks.config_sections() for r in fields}
    assert set(rows) == set(_leaves(to_dict(RunConfig())))
    for key in rows:
        assert f"| `{key}` |" in text
    assert rows["model.bn_eps"].default == "1e-3" and rows["model.bn_eps"].type == "float"
    assert rows["probes.jacobian.every"].default == "5000"
    assert rows["model.placement"].default == "null"
    assert rows["data.root"].default == "default_data_root()"  # not this machine's value
    assert "BNLAB_DATA_ROOT" in rows["data.root"].doc and "data/" in rows["data.root"].doc


def test_plain_docstrings_are_shown_as_written():
    hooks = _hooks()
    text = "y = (gamma*xhat + beta)*r, `a*b` a_ij\nLayout:\n    seed{S}/  one\n    x  two\nend"
    assert hooks.plain_to_markdown(text) == (
        "y = (gamma\\*xhat + beta)\\*r, `a*b` a\\_ij\nLayout:\n\n"
        "    seed{S}/  one\n    x  two\n\nend"
    )


@pytest.mark.slow
def test_the_site_builds_strict(tmp_path):
    """`mkdocs build --strict`: any warning (a broken link or anchor, a page missing from the
    nav, a missing snippet, an API object that does not exist) fails the build."""
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    config_page = (site / "reference" / "configuration" / "index.html").read_text()
    assert "model.bn_eps" in config_page and "bnlab:config-reference" not in config_page
    assert "bnlab reproduce" in (site / "reference" / "cli" / "index.html").read_text()
    assert (site / "results" / "CLAIMS" / "index.html").exists()
    assert (site / "results" / "figures" / "mlds2017_fig4.png").exists()
